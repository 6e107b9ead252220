"""WSGI entry point: the HTTP pages and the API served by a process-per-core server (gunicorn, ``make web``).
Websockets (``/ws/``) are ASGI only: ``baton_site.asgi`` (daphne, ``make web-live``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "baton_site.settings")
application = get_wsgi_application()
