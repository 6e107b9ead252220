"""The Celery broker transport: kombu's Redis transport, keeping one Redis client per channel.

kombu builds a new ``redis.Redis`` object for every publish, every reservation and every ack, and redis-py 8
fills each new client's table of about 170 response callbacks, upper-casing every key (redis-py#3624). On this
project's machine that cost 0.1 ms of CPU per publish and 0.17 ms per task in the worker, a sixth of the
worker's whole per-task overhead (bench/README.md). A client is only a thread-safe handle on the channel's
connection pool, so one per channel and pool serves every call; a channel that replaces its pool (after a
disconnect) gets a new client.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(redis.Channel):
    _baton_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        """The channel's Redis client (one per channel and pool). Raises redis' ConnectionError, one of the
        transport's connection errors that Celery handles (logs, reconnects), when the channel's connection is
        gone: after Redis restarts under a worker, a late ack of a message taken before, or the old channel's
        restore of its unacked messages as it closes, reaches a channel whose pool was dropped and whose connection
        was closed, and kombu building a new pool there failed with an AttributeError that ended the worker. A
        closed channel that still holds its pool (a warm shutdown) keeps using it: its acks and its restore of
        unacked messages go through."""
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        if self.__dict__.get("_pool") is None and getattr(self.connection, "client", None) is None:
            raise RedisConnectionError("this broker channel's connection is closed")
        client = self._baton_client
        if client is None or client.connection_pool is not self.pool:
            client = self._baton_client = super()._create_client()  # type: ignore[misc]
        return client


class Transport(redis.Transport):
    Channel = Channel
