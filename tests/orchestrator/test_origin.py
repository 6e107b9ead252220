"""The websocket Origin check (orchestrator/origin.py) through the real ASGI application, with a signed-in cookie.

Each handshake carries a valid session, so a refusal can only come from the Origin (or the Host) check.
"""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from baton_site.asgi import application
from tests.orchestrator.test_consumers import (  # noqa: F401 (the two autouse fixtures apply here too)
    _close_sync_thread_connections,
    _redis_channel_layer,
    _session_cookie,
)
from tests.sockets import HANDSHAKE_TIMEOUT

pytestmark = [pytest.mark.asyncio, pytest.mark.django_db(transaction=True)]

TRUSTED = ["https://baton.example.com", "https://*.corp.example"]


@pytest.fixture(autouse=True)
def _deployment(settings) -> None:
    """Served as 127.0.0.1 and localhost (any port), behind a TLS proxy that names two public origins."""
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "baton.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = TRUSTED
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")


async def handshake(users, origin: str | None, host: str = "127.0.0.1", *, secure: bool = False, extra=()) -> bool:
    """Whether a signed-in socket to ``host`` from a page on ``origin`` (None: no header) is accepted."""
    headers = [(b"host", host.encode()), (b"cookie", await sync_to_async(_session_cookie)(users.staff)), *extra]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    communicator = WebsocketCommunicator(application, "/ws/live/", headers=headers)
    if secure:
        communicator.scope["scheme"] = "wss"
    accepted, _ = await communicator.connect(timeout=HANDSHAKE_TIMEOUT)
    if accepted:
        await communicator.disconnect()
    else:
        await communicator.wait()
    return accepted


@pytest.mark.parametrize(
    ("origin", "host", "secure"),
    [
        ("http://127.0.0.1", "127.0.0.1", False),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", False),
        ("http://127.0.0.1:80", "127.0.0.1", False),  # the default port, written out
        ("http://LOCALHOST:8000", "localhost:8000", False),
        ("https://127.0.0.1:8443", "127.0.0.1:8443", True),
        ("https://baton.example.com", "127.0.0.1:8000", False),  # trusted: the proxy's public origin
        ("https://team.corp.example", "127.0.0.1:8000", False),  # trusted by wildcard
    ],
)
async def test_our_own_pages_may_open_a_socket(users, origin, host, secure) -> None:
    assert await handshake(users, origin, host, secure=secure)


async def test_a_tls_proxy_named_by_secure_proxy_ssl_header_makes_https_our_origin(users) -> None:
    """Behind the proxy the socket is plain ws; X-Forwarded-Proto says the page was https."""
    forwarded = [(b"x-forwarded-proto", b"https")]
    assert await handshake(users, "https://localhost:8000", "localhost:8000", extra=forwarded)
    assert not await handshake(users, "http://localhost:8000", "localhost:8000", extra=forwarded)


@pytest.mark.parametrize(
    ("origin", "host", "secure"),
    [
        # wrong scheme
        ("https://127.0.0.1", "127.0.0.1", False),
        ("http://127.0.0.1:8443", "127.0.0.1:8443", True),
        ("http://baton.example.com", "127.0.0.1:8000", False),  # trusted only as https
        ("ws://127.0.0.1", "127.0.0.1", False),
        ("file://", "127.0.0.1", False),
        # wrong port
        ("http://127.0.0.1:9999", "127.0.0.1:8000", False),
        ("http://127.0.0.1:8000", "127.0.0.1", False),
        ("http://127.0.0.1", "127.0.0.1:8000", False),
        ("https://baton.example.com:8443", "127.0.0.1:8000", False),
        ("https://team.corp.example:8443", "127.0.0.1:8000", False),
        # look-alike hosts
        ("http://127.0.0.1.evil.example", "127.0.0.1", False),
        ("http://evil-127.0.0.1", "127.0.0.1", False),
        ("http://localhost.evil.example:8000", "localhost:8000", False),
        ("http://evil.example@127.0.0.1", "127.0.0.1", False),
        ("http://127.0.0.1@evil.example", "127.0.0.1", False),
        ("https://baton.example.com.evil.example", "127.0.0.1:8000", False),
        ("https://evilcorp.example", "127.0.0.1:8000", False),
        ("https://corp.example.evil", "127.0.0.1:8000", False),
        # not an origin
        ("null", "127.0.0.1", False),
        ("", "127.0.0.1", False),
        ("http://127.0.0.1/page", "127.0.0.1", False),
        ("http://127.0.0.1:99999", "127.0.0.1", False),
        ("http://[::1", "127.0.0.1", False),
        # a host we do not serve (DNS rebinding: the page's origin equals the Host it asked for)
        ("http://evil.example", "evil.example", False),
    ],
)
async def test_another_sites_page_may_not(users, origin, host, secure) -> None:
    assert not await handshake(users, origin, host, secure=secure)


async def test_a_handshake_without_origin_is_refused(users) -> None:
    assert not await handshake(users, None)


async def test_a_handshake_without_host_is_refused(users) -> None:
    """No Host header and no server address: there is no origin of ours to compare with."""
    communicator = WebsocketCommunicator(
        application,
        "/ws/live/",
        headers=[(b"origin", b"http://127.0.0.1"), (b"cookie", await sync_to_async(_session_cookie)(users.staff))],
    )
    accepted, _ = await communicator.connect(timeout=HANDSHAKE_TIMEOUT)
    await communicator.wait()
    assert not accepted
