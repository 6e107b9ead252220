"""Broadcast to websocket groups after commit. Services call this; consumers only forward.

Group names: ``user.<id>``, ``group.<id>`` (a Django auth group), ``instance.<id>``, ``ops``.

With Redis the channel layer is channels_redis's pub/sub layer: a web process subscribes to a group's Redis
channel while one of its sockets is in the group, and fans each message out to its own sockets. Senders (the
worker, web requests, the sweep) publish one commit's event to all its groups in one pipelined round trip from
the calling thread, in the layer's own wire format, instead of going through the layer's asyncio client on a
loop in another thread: that hand-over cost about 1 ms of CPU per commit, a quarter of a worker's step
(bench/README.md). Live events are hints to re-fetch, never state: one lost while a web process reconnects to
Redis is repaired by the page's next fetch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

import redis
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from channels_redis.utils import _consistent_hash
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

logger = logging.getLogger(__name__)

# The ASGI server's event loop, recorded by the first websocket that connects (orchestrator/consumers.py).
# InMemoryChannelLayer queues are bound to that loop: a worker thread must hand sends to it, because
# async_to_sync from another thread silently drops messages once a queue fills (DESIGN.md).
_server_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def remember_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    global _server_loop
    with _loop_lock:
        _server_loop = loop


def send_now(groups: Iterable[str], event: dict[str, Any]) -> None:
    """Send ``event`` to each group now (use :func:`broadcast_on_commit` from services)."""
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "baton.event", "event": event}
    groups = list(dict.fromkeys(groups))
    try:
        if isinstance(layer, RedisPubSubChannelLayer):
            _publish(layer, groups, message)
        elif isinstance(layer, InMemoryChannelLayer):
            loop = _server_loop
            if loop is None or loop.is_closed():
                return  # nobody has ever connected to this process: there is no one to tell
            for group in groups:
                asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop)
        else:
            raise ImproperlyConfigured(f"Baton broadcasts through the in-memory or Redis pub/sub layer, not {layer!r}")
    except Exception:
        # A lost live update is repaired by the page's resync; it must never undo committed work.
        logger.exception("broadcast to %s failed", groups)


_publishers: dict[tuple[int, str], redis.Redis] = {}


def _publisher(url: str) -> redis.Redis:
    # One client per process and host: Celery's prefork children must not share the parent's socket.
    key = (os.getpid(), url)
    client = _publishers.get(key)
    if client is None:
        client = _publishers[key] = redis.Redis.from_url(url, socket_connect_timeout=2)
    return client


def _publish(layer: RedisPubSubChannelLayer, groups: list[str], message: dict[str, Any]) -> None:
    """PUBLISH ``message`` to each group's channel as RedisPubSubChannelLayer.group_send would, pipelined."""
    config = settings.CHANNEL_LAYERS["default"].get("CONFIG", {})
    hosts = config.get("hosts") or ["redis://127.0.0.1:6379"]
    prefix = config.get("prefix", "asgi")
    payload = layer.serialize(message)
    pipes: dict[str, Any] = {}
    for group in groups:
        channel = f"{prefix}__group__{group}"
        host = hosts[_consistent_hash(channel, len(hosts))] if len(hosts) > 1 else hosts[0]
        url = host if isinstance(host, str) else host["address"]
        pipe = pipes.get(url)
        if pipe is None:
            pipe = pipes[url] = _publisher(url).pipeline(transaction=False)
        pipe.publish(channel, payload)
    for pipe in pipes.values():
        pipe.execute()


def broadcast_on_commit(groups: Iterable[str], event: dict[str, Any]) -> None:
    """Send ``event`` to ``groups`` once the current transaction commits (never for rolled-back work)."""
    groups = list(groups)
    transaction.on_commit(lambda: send_now(groups, event))
