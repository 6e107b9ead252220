"""The websocket Origin check: Django's CSRF origin rule, applied to the websocket handshake.

A browser sends the cookie of our site with a websocket opened by any page, so the Origin header is the only
thing telling our pages from another site's. Channels' ``AllowedHostsOriginValidator`` compares the host alone:
``http://127.0.0.1:9999`` (another program on the same machine) or ``http://`` for an ``https`` site passed. Here
an origin is accepted only when its scheme, host and port are those of the request itself (the Host header, which
must be in ``ALLOWED_HOSTS``, and ``https`` when the socket is secure), or when it is one of
``CSRF_TRUSTED_ORIGINS`` (``https://*.example.com`` allows subdomains, as for forms). No Origin, ``null``, or a
malformed one is refused: a browser always sends one.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

DEFAULT_PORTS = {"http": 80, "https": 443}


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin1")
    return None


def _secure(scope: dict[str, Any]) -> bool:
    """Whether the page behind this socket was served over TLS: wss, or SECURE_PROXY_SSL_HEADER as for HTTP."""
    if scope.get("scheme") == "wss":
        return True
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        name, expected = proxy
        header = name.removeprefix("HTTP_").lower().replace("_", "-").encode()
        value = _header(scope, header)
        return value is not None and value.split(",", 1)[0].strip() == expected
    return False


def _host(scope: dict[str, Any]) -> str | None:
    """The Host the socket was opened for (server address if absent), or None if ALLOWED_HOSTS refuses it."""
    host = _header(scope, b"host")
    if host is None and scope.get("server"):
        address, port = scope["server"][0], scope["server"][1]
        host = address if port is None else f"{address}:{port}"
    if not host:
        return None
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]  # Django's HttpRequest.get_host does the same
    domain, _port = split_domain_port(host)
    return host if domain and validate_host(domain, allowed) else None


def _origin_key(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the default port filled in, or None for anything that is not an http(s) origin."""
    try:
        parsed = urlsplit(f"{scheme}://{netloc}")
        port = parsed.port
    except ValueError:
        return None
    if parsed.scheme not in DEFAULT_PORTS or not parsed.hostname:
        return None
    return parsed.scheme, parsed.hostname.lower(), port or DEFAULT_PORTS[parsed.scheme]


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Whether the websocket handshake in ``scope`` comes from one of our own pages (see the module docstring)."""
    origin = _header(scope, b"origin")
    host = _host(scope)
    if not origin or host is None:
        return False
    try:
        parsed = urlsplit(origin.strip())
    except ValueError:
        return False
    if parsed.path or parsed.query or parsed.fragment or parsed.username is not None:
        return False  # an Origin is scheme://host[:port] and nothing else
    key = _origin_key(parsed.scheme.lower(), parsed.netloc)
    if key is None:
        return False
    if key == _origin_key("https" if _secure(scope) else "http", host):
        return True
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        pattern = urlsplit(trusted)
        if "*" in pattern.netloc:
            if pattern.scheme == key[0] and is_same_domain(parsed.netloc.lower(), pattern.netloc.removeprefix("*")):
                return True
        elif key == _origin_key(pattern.scheme.lower(), pattern.netloc):
            return True
    return False


class SameOriginValidator:
    """ASGI middleware: refuses the websocket handshake (HTTP 403) unless :func:`origin_allowed`."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
