"""The end of a test that used live sockets in its own event loop (pytest-asyncio: a loop per test)."""

from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async
from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
from django.db import connections

# The handshake runs the session and Origin checks in the sync thread pool; a test's first one also starts that pool
# and opens its database session, which took over a second (channels' default) on a loaded CI machine.
HANDSHAKE_TIMEOUT = 10.0


async def close_loop_connections() -> None:
    """Close this event loop's connections of the channel layer and the sync thread's database session.

    The Redis layer's connections and its receiving task belong to the test's event loop: closed in it, or the task
    outlives the loop. The sync thread keeps its PostgreSQL session (CONN_MAX_AGE): closed, so the test database
    can be dropped. Raises what flushing the layer raises."""
    layer = channel_layers[DEFAULT_CHANNEL_LAYER]
    loop_layer = layer._layers.pop(asyncio.get_running_loop(), None)
    if loop_layer is not None:
        await loop_layer.flush()
    await sync_to_async(connections.close_all)()
