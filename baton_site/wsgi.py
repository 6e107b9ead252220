"""WSGI entry point: the HTTP pages and the API served by a process-per-core server (gunicorn, ``make web``).
Websockets (``/ws/``) are ASGI only: ``baton_site.asgi`` (daphne, ``make web-live``).

A request body sent with ``Transfer-Encoding: chunked`` (curl with that header, Go's and Java's HTTP clients when
they do not know the length up front) has no ``Content-Length``. gunicorn removes the chunk framing, but Django's
``WSGIRequest`` reads exactly ``CONTENT_LENGTH`` bytes, 0 when there is none: such a body arrived empty, and a start
through the API was refused for fields it did contain (or a form action ran without its form). ``BodyRequest`` reads
it first, bounded, and hands it to Django with its length (README, "Production", "Request limits").
"""

from __future__ import annotations

import io
import os
from typing import Any

import django
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler, WSGIRequest

# The bound when DATA_UPLOAD_MAX_MEMORY_SIZE is None (no limit): Django's default. A chunked body is held in memory,
# and Baton takes no file uploads (the one kind of body Django would spool to disk instead).
CHUNKED_BODY_MAX = 2_621_440


def read_chunked_body(environ: dict[str, Any]) -> None:
    """Replace a length-less request body in ``environ`` (``wsgi.input`` without ``CONTENT_LENGTH``) with the body
    read up to ``DATA_UPLOAD_MAX_MEMORY_SIZE`` + 1 bytes, and set ``CONTENT_LENGTH`` to what was read.

    A body past the limit is not read further: its ``CONTENT_LENGTH`` is then the limit + 1, so Django and the API
    refuse it exactly as a request that declared that length (the API with 413 problem+json, a form with its 400
    page); nothing is cut short and taken. Only for a server that ends ``wsgi.input`` at the body's end
    (``wsgi.input_terminated``, as gunicorn does); any other input is left alone. Returns nothing; raises nothing of
    its own (a client that breaks the chunk framing ends in gunicorn's error, as before)."""
    if not environ.get("wsgi.input_terminated"):
        return
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE or CHUNKED_BODY_MAX
    body = environ["wsgi.input"].read(limit + 1)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))


class BodyRequest(WSGIRequest):
    """Django's WSGI request, with a chunked body read first (:func:`read_chunked_body`). Every other request costs
    one header lookup."""

    def __init__(self, environ: dict[str, Any]) -> None:
        if "HTTP_TRANSFER_ENCODING" in environ and not environ.get("CONTENT_LENGTH"):
            read_chunked_body(environ)
        super().__init__(environ)


class BatonWSGIHandler(WSGIHandler):
    """Django's WSGI handler with :class:`BodyRequest`."""

    request_class = BodyRequest


os.environ.setdefault("DJANGO_SETTINGS_MODULE", "baton_site.settings")
# As django.core.wsgi.get_wsgi_application() does, with the handler above.
django.setup(set_prefix=False)
application = BatonWSGIHandler()
