"""ASGI entry point: HTTP through Django, websockets through Channels (origin- and session-checked)."""

import os

from django.core.asgi import get_asgi_application

from orchestrator.startup import load_settings_or_exit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "baton_site.settings")
# A refused setting: one line and exit status 2 from daphne, not its traceback (orchestrator/startup.py).
load_settings_or_exit("baton_site.asgi")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from orchestrator.consumers import LiveConsumer  # noqa: E402
from orchestrator.origin import SameOriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # The Origin must be our own (scheme, host and port, as Django's CSRF check): a page on another site
        # cannot open a socket with our cookie.
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter([path("ws/live/", LiveConsumer.as_asgi())]))),
    }
)
