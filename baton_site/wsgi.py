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
import json
import os
from typing import Any

import django
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler, WSGIRequest
from django.template.loader import render_to_string

from orchestrator.startup import load_settings_or_exit, wsgi_exit_status

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


def unsupported_transfer_coding(environ: dict[str, Any]) -> str | None:
    """The request's ``Transfer-Encoding`` when it holds any coding but ``chunked`` (``gzip, chunked``, ...), else
    None. gunicorn removes the chunk framing and passes any other coding on untouched, so such a body would reach
    Django still compressed: refused instead, as RFC 9112 (section 6.1) has a server do with a coding it does not
    implement. A compressed body is sent with ``Content-Encoding``, which Baton does not take either."""
    header = environ.get("HTTP_TRANSFER_ENCODING")
    if header is None:
        return None
    codings = [coding.strip().lower() for coding in header.split(",") if coding.strip()]
    return None if codings == ["chunked"] else header


def not_implemented(environ: dict[str, Any], coding: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """The 501 answer to a body with transfer coding ``coding``, before anything reads it: problem+json under
    ``/api/`` (the API's error format, api/problems.py), templates/501.html elsewhere. Returns (status line,
    headers, body)."""
    detail = f"Transfer-Encoding {coding[:100]!r} is not supported: send the body with Content-Length, or chunked only."
    if environ.get("PATH_INFO", "").startswith("/api/"):
        problem = {
            "type": "about:blank",
            "title": "Not Implemented",
            "status": 501,
            "detail": detail,
            "code": "transfer_coding",
            "instance": environ.get("PATH_INFO", ""),
        }
        body, content_type = json.dumps(problem).encode(), "application/problem+json"
    else:
        body, content_type = render_to_string("501.html").encode(), "text/html; charset=utf-8"
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Connection", "close")]
    return "501 Not Implemented", headers, body


class BatonWSGIHandler(WSGIHandler):
    """Django's WSGI handler with :class:`BodyRequest`, refusing a transfer coding it cannot read
    (:func:`unsupported_transfer_coding`)."""

    request_class = BodyRequest

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        coding = unsupported_transfer_coding(environ)
        if coding is not None:
            status, headers, body = not_implemented(environ, coding)
            start_response(status, headers)
            return [body]
        return super().__call__(environ, start_response)


os.environ.setdefault("DJANGO_SETTINGS_MODULE", "baton_site.settings")
# A refused setting: one line, not a traceback per worker (orchestrator/startup.py); under gunicorn the status that
# stops its master instead of booting worker after worker into the same refusal.
load_settings_or_exit("baton_site.wsgi", status=wsgi_exit_status())
# As django.core.wsgi.get_wsgi_application() does, with the handler above.
django.setup(set_prefix=False)
application = BatonWSGIHandler()
