"""Broadcast to websocket groups after commit. Services call this; consumers only forward.

Group names: ``user.<id>``, ``group.<id>`` (a Django auth group), ``instance.<id>``, ``ops``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

from channels.layers import InMemoryChannelLayer, get_channel_layer
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


_background: tuple[int, asyncio.AbstractEventLoop] | None = None


def _background_loop() -> asyncio.AbstractEventLoop:
    """One long-lived loop per process for Redis sends, so channels_redis keeps its connection pool.

    async_to_sync would start a fresh loop, and so a fresh Redis connection, for every send. The loop is
    created lazily and per PID because Celery's prefork children must not inherit the parent's thread.
    """
    global _background
    with _loop_lock:
        if _background is None or _background[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="baton-broadcast", daemon=True).start()
            _background = (os.getpid(), loop)
        return _background[1]


def send_now(groups: Iterable[str], event: dict[str, Any]) -> None:
    """Send ``event`` to each group now (use :func:`broadcast_on_commit` from services)."""
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "baton.event", "event": event}
    groups = list(dict.fromkeys(groups))
    try:
        if isinstance(layer, InMemoryChannelLayer):
            loop = _server_loop
            if loop is None or loop.is_closed():
                return  # nobody has ever connected to this process: there is no one to tell
        else:
            loop = _background_loop()
        for group in groups:
            asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop)
    except Exception:
        # A lost live update is repaired by the page's resync; it must never undo committed work.
        logger.exception("broadcast to %s failed", groups)


def broadcast_on_commit(groups: Iterable[str], event: dict[str, Any]) -> None:
    """Send ``event`` to ``groups`` once the current transaction commits (never for rolled-back work)."""
    groups = list(groups)
    transaction.on_commit(lambda: send_now(groups, event))
