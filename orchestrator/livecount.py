"""How many live sockets are open, across every web process, for ``baton_live_connections`` in /metrics.

Each web process keeps its sockets in :data:`open_sockets` (the consumers add and remove themselves; the count
lives here, below them, so neither module imports the other both ways). With Redis, a process writes its count
under its own key (``<BATON_CHANNEL_PREFIX>live:<host>:<pid>``) with a time to live of three re-check periods,
whenever a socket opens or closes and at most once a period from the sockets' re-check loop; the scrape adds the
keys up.
A process that dies stops refreshing its key, which expires: the total never counts its sockets for ever.
Without Redis (the demo: one process) the count is read in the process.
"""

from __future__ import annotations

import os
import socket
import time
import weakref
from collections import defaultdict
from typing import Any

import redis
from django.conf import settings

_last_published = 0.0
# Open sockets per user id in this process (``orchestrator.consumers.LiveConsumer`` adds itself on connect and
# leaves on disconnect; all consumers of a process share its one event loop: no lock). Weak, so a consumer that
# dies without its disconnect (an exception) does not hold a place for ever.
open_sockets: defaultdict[int, weakref.WeakSet[Any]] = defaultdict(weakref.WeakSet)


def open_here() -> int:
    """Sockets open in this process."""
    return sum(len(sockets) for sockets in open_sockets.values())


def _url() -> str:
    # The settings' reading of BATON_CHANNELS_REDIS_URL (REDIS_URL when unset or empty), checked at start.
    return getattr(settings, "BATON_CHANNELS_REDIS_URL", "") or getattr(settings, "REDIS_URL", "") or ""


def _client() -> redis.Redis:
    from orchestrator.realtime import _publisher

    return _publisher(_url())


def _key() -> str:
    return f"{settings.BATON_CHANNEL_PREFIX}live:{socket.gethostname()}:{os.getpid()}"


def publish(*, force: bool = False) -> None:
    """Write this process's count to Redis (at most once per re-check period unless ``force``). Raises what
    Redis raises; callers in the socket's life log and go on."""
    global _last_published
    if not _url():
        return
    period = float(settings.BATON_LIVE_RECHECK)
    now = time.monotonic()
    if not force and now - _last_published < period / 2:
        return
    _last_published = now
    _client().set(_key(), open_here(), ex=max(1, int(period * 3)))


def total() -> int:
    """Sockets open in every web process (keys not refreshed for three periods have expired). Without Redis:
    this process's. Raises what Redis raises."""
    if not _url():
        return open_here()
    client = _client()
    keys = list(client.scan_iter(match=f"{settings.BATON_CHANNEL_PREFIX}live:*", count=500))
    if not keys:
        return 0
    return sum(int(value) for value in client.mget(keys) if value is not None)
