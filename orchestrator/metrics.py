"""``/metrics`` in the Prometheus text format, read from the database at scrape time.

Why not prometheus-client's multiprocess mode: Baton's work happens in many processes on many hosts (web,
workers, beat), and each process's counters would restart at zero with it and need a shared directory per host.
The truth is already in PostgreSQL: the roll-ups (``orchestrator/rollups.py``) count starts, completions,
failures, retries and durations from the audit trail, so any web process answers the same totals for the whole
deployment, and a restart loses nothing. What is not in the database is read where it lives at scrape time: the
broker's queue lengths and the live sockets' count (Redis). The figures lag the work by about two sweep
intervals (the roll-up's settling); a scrape costs a handful of small queries whatever the number of instances.

The counters are each workflow's all-time roll-up row, so they only grow (Prometheus' ``rate()`` needs that).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator

from django.conf import settings
from django.db.models import Max
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from orchestrator import stats
from orchestrator.models import AuditEvent, RollupCursor
from orchestrator.rollups import CURSOR, DURATION_BUCKETS, sweep_age

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def token_ok(header: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <BATON_METRICS_TOKEN>`` (compared in constant time)."""
    expected = settings.BATON_METRICS_TOKEN
    scheme, _, given = header.partition(" ")
    if not expected or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def _histogram(name: str, documentation: str, labels: list[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, labels=labels)


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Prometheus' cumulative buckets from per-bucket counts (the last count is "longer than every bound")."""
    result: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(DURATION_BUCKETS, counts, strict=False):
        running += count
        result.append((_bound(bound), running))
    running += sum(counts[len(DURATION_BUCKETS) :])
    result.append(("+Inf", running))
    return result


def _bound(value: float) -> str:
    return str(float(value))


def broker_queue_depths() -> dict[str, int]:
    """Messages waiting in each Baton queue of the broker (Redis lists, with kombu's priority lists), or {} for the
    demo's in-memory broker. Raises what Redis raises."""
    import redis

    url = settings.CELERY_BROKER_URL
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return {}
    queues = {settings.CELERY_TASK_DEFAULT_QUEUE}
    from orchestrator import registry

    for workflow in registry.all_definitions():
        for node in workflow.nodes.values():
            queue = getattr(node, "queue", None)
            if queue:
                queues.add(queue)
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        names = sorted(queues)
        pipe = client.pipeline(transaction=False)
        # kombu's Redis transport keeps a queue as one list per priority step: "baton" and "baton\x06\x16<n>".
        for name in names:
            pipe.llen(name)
            for step in (1, 2, 3, 4, 5, 6, 7, 8, 9):
                pipe.llen(f"{name}\x06\x16{step}")
        lengths = pipe.execute()
    finally:
        client.close()
    per = 10
    return {name: sum(lengths[i * per : (i + 1) * per]) for i, name in enumerate(names)}


# The roll-up's counters (stats.COUNTERS) as Prometheus counters, one series per workflow: key -> (name, help).
_COUNTERS = {
    "started": ("baton_instances_started", "Instances started, per workflow."),
    "completed": ("baton_instances_completed", "Instances completed, per workflow."),
    "failed": ("baton_instances_failed", "Instances that failed (each failure counts), per workflow."),
    "compensated": ("baton_instances_compensated", "Instances whose compensation finished, per workflow."),
    "cancelled": ("baton_instances_cancelled", "Instances cancelled, per workflow."),
    "step_retries": (
        "baton_step_retries",
        "Step attempts that failed and were scheduled again by their retry policy, per workflow.",
    ),
    "operator_retries": ("baton_instance_retries", "Failed instances retried by an operator, per workflow."),
}


class BatonCollector:
    """prometheus-client collector: every family read fresh from the database and Redis at each scrape."""

    def collect(self) -> Iterator[Metric]:
        totals = stats.totals_by_workflow()
        families = {
            key: CounterMetricFamily(name, text, labels=["workflow"]) for key, (name, text) in _COUNTERS.items()
        }
        instance_durations = _histogram(
            "baton_instance_duration_seconds", "From start to completion, per workflow.", ["workflow"]
        )
        step_durations = _histogram(
            "baton_step_duration_seconds",
            "Automated step attempts that ended (succeeded or died), from claim to outcome, per workflow and step.",
            ["workflow", "step"],
        )
        for workflow, total in sorted(totals.items()):
            for key, family in families.items():
                family.add_metric([workflow], total[key])
            instance_durations.add_metric([workflow], _buckets(total["durations"]), total["duration_sum"])
            for step, timing in sorted(total["steps"].items()):
                step_durations.add_metric([workflow, step], _buckets(timing["buckets"]), timing["sum"])
        yield from families.values()
        yield instance_durations
        yield step_durations

        by_state = GaugeMetricFamily(
            "baton_instances",
            "Instances now, per workflow, version and state.",
            labels=["workflow", "version", "state"],
        )
        for (workflow, version), states in sorted(stats.state_counts().items()):
            for state, count in sorted(states.items()):
                by_state.add_metric([workflow, str(version), state], count)
        yield by_state

        tasks = stats.human_tasks_open()
        yield GaugeMetricFamily(
            "baton_human_tasks_open", "Human tasks open, claimed or escalated.", value=tasks["open"]
        )
        yield GaugeMetricFamily(
            "baton_human_tasks_overdue",
            "Open human tasks past their due time, less those held by their instance's pause (as Incidents counts).",
            value=tasks["overdue"],
        )

        age = sweep_age()
        yield GaugeMetricFamily(
            "baton_sweep_lag_seconds",
            "Seconds since the sweep last ran (NaN: never).",
            value=float("nan") if age is None else age,
        )
        position = RollupCursor.objects.filter(name=CURSOR).values_list("position", flat=True).first() or 0
        newest = AuditEvent.objects.aggregate(newest=Max("id"))["newest"] or 0
        yield GaugeMetricFamily(
            "baton_rollup_backlog_events",
            "Audit events not yet folded into the roll-ups that the counters above are read from.",
            value=max(0, newest - position),
        )

        yield from self._redis_families()

    def _redis_families(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "baton_broker_queue_depth", "Messages waiting in the broker, per queue.", labels=["queue"]
        )
        try:
            for queue, length in sorted(broker_queue_depths().items()):
                depth.add_metric([queue], length)
        except Exception:
            logger.warning("/metrics: the broker's queue lengths could not be read", exc_info=True)
        yield depth
        from orchestrator import livecount

        try:
            yield GaugeMetricFamily(
                "baton_live_connections", "Live websocket connections open, every web process.", value=livecount.total()
            )
        except Exception:
            logger.warning("/metrics: the live sockets' count could not be read", exc_info=True)


def render() -> bytes:
    """The whole exposition, freshly collected."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BatonCollector())
    return generate_latest(registry)
