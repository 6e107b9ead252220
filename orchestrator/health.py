"""Health for load balancers and orchestrators: liveness (the process answers) and readiness (it can do its work).

Readiness checks what a request or a step needs: the database answers, the broker answers (Redis PING), the
channel layer answers (its Redis PING; the in-memory layer of the demo always does), and the sweep ran within
``BATON_READY_SWEEP_AGE`` seconds (without it due retries, timers, lost leases and deadlines wait). Each check is
bounded by a two-second timeout, so a hung dependency makes the probe fail, not hang.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from django.conf import settings
from django.db import connection

from orchestrator.rollups import sweep_age


@dataclass
class Check:
    """One dependency's answer: ``ok``, a short ``detail`` safe to show anyone, and how long it took (ms)."""

    name: str
    ok: bool
    detail: str
    ms: float


def _timed(name: str, probe: Callable[[], str]) -> Check:
    started = time.perf_counter()
    try:
        detail, ok = probe(), True
    except SweepLate as late:
        detail, ok = f"late: last ran {late}", False
    except Exception as exc:
        # The kind of failure only: the message may hold host names or addresses.
        detail, ok = f"unreachable ({type(exc).__name__})", False
    return Check(name, ok, detail, round((time.perf_counter() - started) * 1000, 1))


def _database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return "answers"


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


def _sweep() -> str:
    age = sweep_age()
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
