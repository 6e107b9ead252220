"""Health for load balancers and orchestrators: liveness (the process answers) and readiness (it can do its work).

Readiness checks what a request or a step needs: the database answers, the broker answers (Redis PING), the
channel layer answers (its Redis PING; the in-memory layer of the demo always does), and the sweep ran within
``BATON_READY_SWEEP_AGE`` seconds (without it due retries, timers, lost leases and deadlines wait). Each check is
bounded by a two-second timeout (``CHECK_TIMEOUT``), so a hung dependency makes the probe fail, not hang: the
database check as ``_database`` says, Redis through redis-py's socket timeouts. The sweep check reads when the
sweep last ran the same bounded way (``_bounded_rows``: a session of its own, ``connect_timeout``, a bounded wait
for the answer), and runs only once the database check answered in time.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import redis
from django.conf import settings
from django.db import connection
from psycopg import pq

from orchestrator import rollups
from orchestrator.models import RollupCursor


@dataclass
class Check:
    """One dependency's answer: ``ok``, a short ``detail`` safe to show anyone, and how long it took (ms)."""

    name: str
    ok: bool
    detail: str
    ms: float


CHECK_TIMEOUT = 2  # seconds; whole seconds, as libpq's connect_timeout (whose minimum is 2)


class NoAnswer(Exception):
    """A dependency accepted the connection but did not answer within ``CHECK_TIMEOUT``."""


def _timed(name: str, probe: Callable[[], str]) -> Check:
    started = time.perf_counter()
    try:
        detail, ok = probe(), True
    except (NoAnswer, psycopg.errors.ConnectionTimeout):
        detail, ok = f"no answer within {CHECK_TIMEOUT} s", False
    except SweepLate as late:
        detail, ok = f"late: last ran {late}", False
    except Exception as exc:
        # The kind of failure only: the message may hold host names or addresses.
        detail, ok = f"unreachable ({type(exc).__name__})", False
    return Check(name, ok, detail, round((time.perf_counter() - started) * 1000, 1))


def _database() -> str:
    """PostgreSQL answers ``SELECT 1`` within ``CHECK_TIMEOUT`` seconds, on a session of the check's own, opened
    with the request's connection settings (``connection.get_connection_params()``) and closed after.

    Both waits are bounded. The start-up by libpq's own ``connect_timeout`` (which psycopg enforces over the whole
    start-up: TCP, TLS, authentication, until the server is ready), per address the host resolves to, as libpq
    does; name resolution itself is outside it. The query by a bounded wait on the socket: ``SELECT 1`` goes out
    through libpq's asynchronous API (``PQsendQuery``) and its answer is waited for with ``select`` up to the
    deadline, then the session is closed. libpq has no option for this: ``tcp_user_timeout`` and keepalives only
    notice a peer whose kernel stops acknowledging (host gone, cable cut), not a server process that hangs while
    its kernel still acknowledges every byte, and ``statement_timeout`` is enforced by the very server that
    stopped answering. No thread is needed, and none is left behind blocked on the socket.

    Its own session rather than the request's: a kept session (``CONN_MAX_AGE``) cannot be given a timeout for
    one query without changing it for every request, and the request path keeps its settings untouched; a
    session that timed out is closed at once instead of being handed to the next request. One start-up per probe
    costs a few milliseconds, and leaves no idle session behind. SQLite (the demo) is a local file: its own
    connection answers or raises.

    Raises ``NoAnswer`` or ``psycopg.errors.ConnectionTimeout`` past the deadline, ``psycopg.Error`` otherwise.
    """
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return "answers"
    _bounded_rows(b"SELECT 1")
    return "answers"


def _bounded_rows(query: bytes, params: Sequence[bytes] = ()) -> list[tuple[bytes | None, ...]]:
    """The rows of one PostgreSQL ``query`` (placeholders ``$1``…, ``params`` as text), each value as the server's
    text (``None`` for NULL), read within ``CHECK_TIMEOUT`` seconds on a session of the check's own, opened with
    the request's connection settings and ``connect_timeout``, and closed after (why, and how each wait is bounded:
    ``_database``). Every database read of the readiness checks goes through it.

    Raises ``NoAnswer`` or ``psycopg.errors.ConnectionTimeout`` past the deadline, ``psycopg.Error`` otherwise."""
    deadline = time.monotonic() + CHECK_TIMEOUT
    settings_ = {**connection.get_connection_params(), "connect_timeout": CHECK_TIMEOUT}
    with psycopg.Connection.connect(**settings_) as session:
        result = _answered(session.pgconn, query, params, deadline)
    if result is None:
        return []
    return [tuple(result.get_value(row, col) for col in range(result.nfields)) for row in range(result.ntuples)]


def _answered(pgconn: pq.abc.PGconn, query: bytes, params: Sequence[bytes], deadline: float) -> pq.abc.PGresult | None:
    """Send ``query`` with ``params`` and read its results through libpq's asynchronous API (the connection is
    non-blocking, as psycopg leaves it), waiting on the socket no later than ``deadline`` (``time.monotonic()``).
    Returns the last result (``None`` if the query returned none).

    Raises ``NoAnswer`` past the deadline, ``psycopg.OperationalError`` when the query fails."""
    pgconn.send_query_params(query, list(params))
    last = None
    with selectors.DefaultSelector() as selector:
        selector.register(pgconn.socket, selectors.EVENT_WRITE)
        while pgconn.flush():  # 1: part of the query is still to be sent
            _wait(selector, deadline)
        selector.modify(pgconn.socket, selectors.EVENT_READ)
        while True:
            pgconn.consume_input()
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    return last
                if result.status != pq.ExecStatus.TUPLES_OK:
                    raise psycopg.OperationalError(result.error_message.decode(errors="replace"))
                last = result
            _wait(selector, deadline)


def _wait(selector: selectors.BaseSelector, deadline: float) -> None:
    if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
        raise NoAnswer


def _ping(url: str) -> str:
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    finally:
        client.close()
    return "answers"


def _broker() -> str:
    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return "in-memory (demo)"
    return _ping(url)


def _channel_layer() -> str:
    layer = settings.CHANNEL_LAYERS["default"]
    hosts = layer.get("CONFIG", {}).get("hosts") or []
    if "Redis" not in layer["BACKEND"] or not hosts:
        return "in-memory (demo)"
    host = hosts[0]
    return _ping(host if isinstance(host, str) else host.get("address", ""))


def _swept_at() -> datetime | None:
    """When the sweep last ran (``None``: never), read the bounded way (``_bounded_rows``) on PostgreSQL: the request's
    own session has no bound on a server that stops answering in the middle of a query, and a kept session
    (``CONN_MAX_AGE``) cannot be given one for this read alone. As seconds since the epoch, so the server's DateStyle
    and TimeZone do not matter. SQLite (the demo) is a local file: the ORM reads it."""
    if connection.vendor != "postgresql":
        return rollups.last_swept()
    table = connection.ops.quote_name(RollupCursor._meta.db_table)
    query = f"SELECT extract(epoch FROM swept_at) FROM {table} WHERE name = $1"  # noqa: S608 (the model's table)
    rows = _bounded_rows(query.encode(), [rollups.CURSOR.encode()])
    if not rows or rows[0][0] is None:
        return None
    return datetime.fromtimestamp(float(rows[0][0]), tz=UTC)


def _sweep() -> str:
    age = rollups.age_since(_swept_at())
    if age is None:
        raise SweepLate("never")
    if age > settings.BATON_READY_SWEEP_AGE:
        raise SweepLate(f"{age:.0f} s ago")
    return f"{age:.1f} s ago"


class SweepLate(Exception):
    """The sweep has not run recently enough."""


def readiness() -> list[Check]:
    """Every readiness check, in order: database, broker, channel layer, sweep."""
    checks = [_timed("database", _database), _timed("broker", _broker), _timed("channel_layer", _channel_layer)]
    checks.append(_timed("sweep", _sweep) if checks[0].ok else Check("sweep", False, "database unreachable", 0.0))
    return checks
