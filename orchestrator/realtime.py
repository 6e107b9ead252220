"""Broadcast to websocket groups after commit. Services call this; consumers only forward.

Group names: ``user.<id>``, ``group.<id>`` (a Django auth group), ``instance.<id>``, ``ops``.

With Redis the channel layer is channels_redis's pub/sub layer: a web process subscribes to a group's Redis
channel while one of its sockets is in the group, and fans each message out to its own sockets. Senders (the
worker, web requests, the sweep) publish one commit's event to all its groups in one pipelined round trip from
the calling thread, in the layer's own wire format, instead of going through the layer's asyncio client on a
loop in another thread: that hand-over cost about 1 ms of CPU per commit, a quarter of a worker's step
(bench/README.md). Live events are hints to re-fetch, never state: one lost while a web process reconnects to
Redis is repaired by the page's next fetch.

Any other layer (``BATON_CHANNEL_LAYER=redis``: channels_redis's standard ``RedisChannelLayer``, or a layer a
deployment's own settings name) gets each group's message through the layer's own ``group_send``, awaited on one
event loop thread per process that this module keeps for it: the layer's wire format stays the layer's business.

Every channel name starts with the deployment's ``BATON_CHANNEL_PREFIX`` (the layer's ``prefix``), because Redis
pub/sub ignores the database number: two deployments on one Redis server would otherwise hear each other.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

import redis
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from channels_redis.utils import _consistent_hash
from django.db import transaction

logger = logging.getLogger(__name__)

# The ASGI server's event loop, recorded by the first websocket that connects (orchestrator/consumers.py).
# InMemoryChannelLayer queues are bound to that loop: a worker thread must hand sends to it, because
# async_to_sync from another thread silently drops messages once a queue fills (a probe lost a third of 300).
_server_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def remember_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    global _server_loop
    with _loop_lock:
        _server_loop = loop


def send_now(groups: Iterable[str], event: dict[str, Any]) -> None:
    """Send ``event`` to each group now (use :func:`broadcast_on_commit` from services)."""
    send_all_now([(groups, event)])


def send_all_now(items: Iterable[tuple[Iterable[str], dict[str, Any]]]) -> None:
    """Send each ``(groups, event)`` of ``items`` now, in order: on Redis in one pipelined round trip (a unit of
    work that opened a task sends the instance's news and the inbox's together, one round trip less per step)."""
    messages = []
    for groups, event in items:
        names = list(dict.fromkeys(groups))
        # The groups travel with the event: a socket that has just left them may still find it in its queue.
        messages.append((names, {"type": "baton.event", "event": event, "groups": names}))
    _send_many(messages)


def send_recheck(groups: Iterable[str], ended_session: str | None = None) -> None:
    """Tell the sockets in ``groups`` to re-check their user's authority now (LiveConsumer.baton_recheck).

    ``ended_session`` is :func:`session_digest` of a session that has just ended: sockets opened with it close
    without asking the database (the logout signal fires before the session row is deleted).
    """
    message: dict[str, Any] = {"type": "baton.recheck"}
    if ended_session:
        message["ended_session"] = ended_session
    _send(groups, message)


def session_digest(session_key: str) -> str:
    """A session key as it may travel through Redis: its SHA-256 in hex (the key itself is a credential)."""
    return hashlib.sha256(session_key.encode()).hexdigest()


def _send(groups: Iterable[str], message: dict[str, Any]) -> None:
    _send_many([(list(dict.fromkeys(groups)), message)])


def _send_many(messages: list[tuple[list[str], dict[str, Any]]]) -> None:
    """Each ``(groups, message)`` to its groups, in order, through this process's channel layer."""
    layer = get_channel_layer()
    if layer is None or not messages:
        return
    try:
        if isinstance(layer, RedisPubSubChannelLayer):
            _publish_many(layer, messages)
        elif isinstance(layer, InMemoryChannelLayer):
            loop = _server_loop
            if loop is None or loop.is_closed():
                return  # nobody has ever connected to this process: there is no one to tell
            for groups, message in messages:
                for group in groups:
                    asyncio.run_coroutine_threadsafe(layer.group_send(group, message), loop)
        else:
            for groups, message in messages:
                _group_send(layer, groups, message)
    except Exception:
        # A lost live update is repaired by the page's resync; it must never undo committed work.
        logger.exception("broadcast to %s failed", [groups for groups, _message in messages])


# How long a sender waits for another layer's group_send of one commit before it logs the failure and moves on
# (the sends go on in the background; the page's next fetch repairs whatever they miss).
GROUP_SEND_TIMEOUT = 5.0
_sender_loops: dict[int, asyncio.AbstractEventLoop] = {}
_sender_lock = threading.Lock()


def _sender_loop() -> asyncio.AbstractEventLoop:
    """This process's event loop for other layers' ``group_send``, running in a daemon thread.

    One loop for the process's life, not ``async_to_sync`` per commit: that makes a new loop each time, and a
    layer such as channels_redis's keeps its Redis connections per loop, so every commit would connect afresh.
    Keyed by process id: a Celery prefork child does not inherit its parent's thread.
    """
    pid = os.getpid()
    with _sender_lock:
        loop = _sender_loops.get(pid)
        if loop is None or loop.is_closed():
            loop = _sender_loops[pid] = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="baton-live-sender", daemon=True).start()
    return loop


def _group_send(layer: Any, groups: list[str], message: dict[str, Any]) -> None:
    """``layer.group_send(group, message)`` for each group in order, on the sender loop; waits for them (at most
    GROUP_SEND_TIMEOUT seconds) so that a failure is logged by the caller. Raises what the layer raised."""

    async def send_all() -> None:
        for group in groups:
            await layer.group_send(group, message)

    asyncio.run_coroutine_threadsafe(send_all(), _sender_loop()).result(timeout=GROUP_SEND_TIMEOUT)


_publishers: dict[tuple[int, str], redis.Redis] = {}
# Seconds a publish may wait to connect and for each answer. A Redis that accepts the connection and never answers
# (hung, or behind a partition) otherwise held the sender for ever: a web request's after-commit event until the
# web timeout killed it, answering 500 for work that was committed (tests/test_web_server.py).
PUBLISH_TIMEOUT = 2.0


def _publisher(url: str) -> redis.Redis:
    # One client per process and host: Celery's prefork children must not share the parent's socket.
    key = (os.getpid(), url)
    client = _publishers.get(key)
    if client is None:
        client = _publishers[key] = redis.Redis.from_url(
            url, socket_connect_timeout=PUBLISH_TIMEOUT, socket_timeout=PUBLISH_TIMEOUT
        )
    return client


def _routing(layer: RedisPubSubChannelLayer) -> tuple[list[str], str]:
    """The layer's Redis URLs and group channel prefix, from the layer's own config (what its receivers use).

    Kept on the layer object: worked out once, not per publish. ``layer.__dict__`` because the layer's
    ``__getattr__`` wants a running event loop for any attribute it does not have.
    """
    routing = layer.__dict__.get("_baton_routing")
    if routing is None:
        config = layer._kwargs
        hosts = config.get("hosts") or ["redis://127.0.0.1:6379"]
        urls = [host if isinstance(host, str) else host["address"] for host in hosts]
        # RedisPubSubLoopLayer._get_group_channel_name: "<prefix>__group__<group>".
        routing = layer.__dict__["_baton_routing"] = (urls, f"{config.get('prefix', 'asgi')}__group__")
    return routing


def _publish(layer: RedisPubSubChannelLayer, groups: list[str], message: dict[str, Any]) -> None:
    """PUBLISH ``message`` to each group's channel as RedisPubSubChannelLayer.group_send would, pipelined."""
    _publish_many(layer, [(groups, message)])


def _publish_many(layer: RedisPubSubChannelLayer, messages: list[tuple[list[str], dict[str, Any]]]) -> None:
    """PUBLISH each ``(groups, message)`` to its groups' channels as RedisPubSubChannelLayer.group_send would, in
    order, in one pipeline per Redis host."""
    urls, group_prefix = _routing(layer)
    pipes: dict[str, Any] = {}
    for groups, message in messages:
        payload = layer.serialize(message)
        for group in groups:
            channel = group_prefix + group
            url = urls[_consistent_hash(channel, len(urls))] if len(urls) > 1 else urls[0]
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
