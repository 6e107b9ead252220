"""Ports for the servers tests start (``make web``, daphne, a private Redis or PostgreSQL).

A port found free by binding port 0 comes from the kernel's ephemeral range, which every other process draws from
too: for its own ``bind(0)`` and for each outgoing connection. Between the moment the port is released here and
the moment the server binds it, another pytest-xdist process, or a client connecting anywhere, may take it; a
server then fails to listen or, worse, a test takes another process's server for its own. The ports here lie below
that range, in a block of their own for each xdist process, so nobody else is handed them.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

BLOCK = 200  # ports per xdist process; `make test` runs at most 8 (--maxprocesses)
BASE = 20000  # below Linux's default ephemeral range, 32768-60999
_next = itertools.count()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and no other test process will be handed.

    Returns a port in this xdist process's block (``BASE + index * BLOCK``, the index from PYTEST_XDIST_WORKER
    "gwN", 0 outside xdist), the next one in turn that binds; consecutive calls return different ports, so a
    server just stopped (its port in TIME_WAIT) is not picked again at once. Where the kernel's ephemeral range
    reaches down into the block, a port from ``bind(0)`` as before. Raises RuntimeError when the whole block is
    in use."""
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    start = BASE + index * BLOCK
    if start + BLOCK > _ephemeral_low():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    for _ in range(BLOCK):
        port = start + next(_next) % BLOCK
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"every port in {start}-{start + BLOCK - 1} is in use")
