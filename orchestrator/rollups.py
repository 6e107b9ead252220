"""Roll-ups: the audit trail folded into small tables by the sweep, for the dashboard, the catalog and /metrics.

Every instance state change (``instance.*`` events with ``from_state`` and ``to_state``) and every step outcome
(``step.succeeded``, ``step.failed``, ``step.dead``) is already an audit event, written in the transaction that made
the change. So the engine's hot path writes nothing more (its pinned statement counts stay as they are): the
sweep reads the events past a high-water mark, in id order along the primary key, and adds them to
:class:`~orchestrator.models.InstanceStateCount` (instances per workflow version and state, now) and
:class:`~orchestrator.models.WorkflowHourStats` (per workflow and hour: starts, completions, failures,
compensations, cancellations, retries and duration histograms). Pages then read a few hundred rows whatever the
number of instances.

**Never stepping over a late commit.** Ids are handed out when an event is inserted, not when its transaction
commits, so event 101 may become visible after event 102 has been folded in. On PostgreSQL a pass therefore only
folds ids up to the highest id that had been handed out when an earlier pass looked (``pending_position``), and
only once every transaction of this database that was running at that look has ended (``pending_xids``, read from
``pg_stat_activity``). Every transaction that appends an audit event already holds a transaction id before it asks
for the event's id (it locked the instance row, inserted the instance, or locked the ``AuditChain`` row first), so
such a transaction is in that list. Events are folded about two sweep intervals after they commit; a transaction
of this database that stays open holds the roll-ups back (never their correctness) until it ends. On SQLite (the
demo) writers take turns, so every committed id is final.

One pass at a time: the pass locks the cursor row with SKIP LOCKED, and a second sweep (a worker's start-up
sweep beside beat's) skips the roll-up. The cursor row also records when the sweep last ran (``swept_at``), which
readiness and ``baton_sweep_lag_seconds`` report.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from orchestrator.models import (
    AuditEvent,
    InstanceStateCount,
    RollupCursor,
    StepKind,
    StepRun,
    WorkflowHourStats,
    WorkflowInstance,
    WorkflowVersionSeen,
)

CURSOR = "audit"

# Upper bounds (seconds) of the duration histogram buckets, from a fast step to a week-long approval; one more
# bucket counts anything longer. The same bounds serve instances and steps, and /metrics exposes them as they are.
DURATION_BUCKETS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    900,
    3600,
    4 * 3600,
    86400,
    7 * 86400,
)

# The rows of WorkflowHourStats: an hour, a day (UTC), and all time (one row per workflow, at ALL_TIME).
SPAN_HOUR, SPAN_DAY, SPAN_ALL = 1, 24, 0
ALL_TIME = datetime(1970, 1, 1, tzinfo=UTC)

# Instance events that count in the hour's totals, by the field they add to.
COUNTED_ACTIONS = {
    "instance.started": "started",
    "instance.completed": "completed",
    "instance.failed": "failed",
    "instance.compensated": "compensated",
    "instance.cancelled": "cancelled",
    "instance.retried": "operator_retries",
}
STEP_ACTIONS = ("step.succeeded", "step.failed", "step.dead")
TIMED_STEP_KINDS = (StepKind.TASK, StepKind.COMPENSATION)


def bucket_index(seconds: float) -> int:
    """The index in a histogram list (``len(DURATION_BUCKETS) + 1`` entries) of the bucket ``seconds`` falls in."""
    return bisect.bisect_left(DURATION_BUCKETS, seconds)


def empty_histogram() -> list[int]:
    return [0] * (len(DURATION_BUCKETS) + 1)


def add_histograms(into: list[int], other: Sequence[int]) -> list[int]:
    """``into`` plus ``other`` element-wise (a stored list shorter than the current bounds is padded)."""
    result = list(into) + [0] * max(0, len(other) - len(into))
    for index, value in enumerate(other):
        result[index] += int(value)
    return result


def quantile(histogram: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a bucketed histogram, interpolated linearly inside its bucket as Prometheus'
    ``histogram_quantile`` does; None without observations. Past the last bound it answers that bound."""
    total = sum(histogram)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            if index >= len(DURATION_BUCKETS):
                return float(DURATION_BUCKETS[-1])
            lower = 0.0 if index == 0 else float(DURATION_BUCKETS[index - 1])
            upper = float(DURATION_BUCKETS[index])
            return lower + (upper - lower) * ((rank - seen) / count)
        seen += count
    return float(DURATION_BUCKETS[-1])


def hour_of(moment: datetime) -> datetime:
    """The UTC hour ``moment`` falls in."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass
class Fold:
    """What one batch of events adds: state deltas and hour rows (in memory until written)."""

    states: dict[tuple[str, int, str], int] = field(default_factory=lambda: defaultdict(int))
    hours: dict[tuple[str, datetime], dict[str, Any]] = field(default_factory=dict)

    def hour(self, workflow: str, moment: datetime) -> dict[str, Any]:
        key = (workflow, hour_of(moment))
        row = self.hours.get(key)
        if row is None:
            row = self.hours[key] = {
                **dict.fromkeys(COUNTED_ACTIONS.values(), 0),
                "step_retries": 0,
                "durations": empty_histogram(),
                "duration_sum": 0.0,
                "step_durations": {},
            }
        return row


def fold(events: Iterable[dict[str, Any]], steps: dict[int, dict[str, Any]]) -> Fold:
    """Add up ``events`` (AuditEvent values with the instance's ``workflow_name``, ``workflow_version`` and
    ``created_at``) into a :class:`Fold`. ``steps``: step id -> its ``name``, ``kind`` and ``started_at``, for the
    step events. Pure: no database access."""
    result = Fold()
    for event in events:
        workflow = event["instance__workflow_name"]
        if workflow is None:
            continue  # an event of no instance (accounts, audit chains)
        action = event["action"]
        if event["subject_type"] == "instance" and event["to_state"] and event["to_state"] != event["from_state"]:
            version = event["instance__workflow_version"]
            if event["from_state"]:
                result.states[(workflow, version, event["from_state"])] -= 1
            result.states[(workflow, version, event["to_state"])] += 1
        counted = COUNTED_ACTIONS.get(action)
        if counted is not None:
            row = result.hour(workflow, event["occurred_at"])
            row[counted] += 1
            if action == "instance.completed":
                seconds = max(0.0, (event["occurred_at"] - event["instance__created_at"]).total_seconds())
                row["durations"][bucket_index(seconds)] += 1
                row["duration_sum"] += seconds
        elif action in STEP_ACTIONS and event["subject_id"] is not None:
            row = result.hour(workflow, event["occurred_at"])
            if action == "step.failed":
                row["step_retries"] += 1
            step = steps.get(event["subject_id"])
            # Only a running attempt's end is timed (a step reported after the compensation began, or skipped
            # from dead, has no attempt of its own to time); a later attempt has moved started_at past the event.
            if (
                action != "step.failed"
                and step is not None
                and step["kind"] in TIMED_STEP_KINDS
                and event["from_state"] == "running"
                and step["started_at"] is not None
                and step["started_at"] <= event["occurred_at"]
            ):
                seconds = (event["occurred_at"] - step["started_at"]).total_seconds()
                timing = row["step_durations"].setdefault(step["name"], {"buckets": empty_histogram(), "sum": 0.0})
                timing["buckets"][bucket_index(seconds)] += 1
                timing["sum"] += seconds
    return result


def _safe_limit(cursor: RollupCursor) -> tuple[int, bool]:
    """The highest event id this pass may fold, and whether the pass should look again afterwards."""
    if connection.vendor != "postgresql":
        last = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
        return last, False
    if cursor.pending_position > cursor.position:
        if cursor.pending_xids and _still_running(cursor.pending_xids):
            return cursor.position, False
        return cursor.pending_position, True
    return cursor.position, True


def _still_running(xids: list[str]) -> bool:
    with connection.cursor() as db:
        db.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_xid::text = ANY(%s))",
            [xids],
        )
        return bool(db.fetchone()[0])


def _look(cursor: RollupCursor) -> None:
    """Remember the highest event id handed out so far, then the transactions of this database running now (in
    that order: a transaction that took an id before the first read already had its transaction id, so it is in
    the list if it has not ended). Its own transaction is left out."""
    with connection.cursor() as db:
        db.execute(
            "SELECT pg_sequence_last_value(pg_get_serial_sequence(%s, 'id')::regclass)",
            [AuditEvent._meta.db_table],
        )
        last = db.fetchone()[0] or 0
    with connection.cursor() as db:
        # pg_stat_activity is read once per transaction (a snapshot of the statistics): this is that read.
        db.execute(
            "SELECT backend_xid::text FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()"
        )
        xids = [row[0] for row in db.fetchall()]
    cursor.pending_position, cursor.pending_xids = last, xids


def _lock_cursor() -> RollupCursor | None:
    cursor = RollupCursor.objects.select_for_update(skip_locked=True).filter(name=CURSOR).first()
    if cursor is None and not RollupCursor.objects.filter(name=CURSOR).exists():
        RollupCursor.objects.bulk_create([RollupCursor(name=CURSOR)], ignore_conflicts=True)
        cursor = RollupCursor.objects.select_for_update(skip_locked=True).filter(name=CURSOR).first()
    return cursor


def rollup_pass(now: datetime | None = None, batch: int | None = None) -> int:
    """Fold the audit events past the cursor into the roll-up tables and note that the sweep ran.

    ``batch``: most events one pass folds (``BATON_ROLLUP_BATCH``); a backlog is caught up over the next passes.
    Returns the number of events read, 0 when another pass holds the cursor. Raises what the database raises
    (the sweep counts it as one failed item and goes on).
    """
    now = now or timezone.now()
    batch = batch or settings.BATON_ROLLUP_BATCH
    record_versions(now)
    with transaction.atomic():
        cursor = _lock_cursor()
        if cursor is None:
            return 0
        limit, look = _safe_limit(cursor)
        events: list[Any] = []
        if limit > cursor.position:
            events, steps = _read_events(cursor.position, limit, batch)
        if events:
            _write(fold(events, steps))
            cursor.position = events[-1]["id"] if len(events) == batch else limit
            cursor.rolled_at = now
        else:
            cursor.position = max(cursor.position, limit)
        if connection.vendor == "postgresql" and look and cursor.position >= cursor.pending_position:
            _look(cursor)
        cursor.swept_at = now
        cursor.save()
        return len(events)


# Only the events the fold counts, with what it needs of their instance and, for a step's end, of the step: one
# statement along the primary key, no list of ids sent back (a pass of 5000 events sent 5000 step ids before).
_EVENTS_SQL = """
SELECT e.id, e.action, e.subject_type, e.subject_id, e.from_state, e.to_state, e.occurred_at,
       i.workflow_name, i.workflow_version, i.created_at, s.name, s.kind, s.started_at
FROM {event} e
JOIN {instance} i ON i.id = e.instance_id
LEFT JOIN {step} s ON e.subject_type = 'step' AND e.action IN ('step.succeeded', 'step.dead') AND s.id = e.subject_id
WHERE e.id > %s AND e.id <= %s
  AND (e.subject_type = 'instance' OR e.action IN ('step.succeeded', 'step.failed', 'step.dead'))
ORDER BY e.id
LIMIT %s
"""


def _read_events(after: int, limit: int, batch: int) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """The counted events with ids in (``after``, ``limit``], at most ``batch``, as :func:`fold` takes them."""
    sql = _EVENTS_SQL.format(
        event=AuditEvent._meta.db_table, instance=WorkflowInstance._meta.db_table, step=StepRun._meta.db_table
    )
    with connection.cursor() as db:
        db.execute(sql, [after, limit, batch])
        rows = db.fetchall()
    events, steps = [], {}
    for row in rows:
        events.append(
            {
                "id": row[0],
                "action": row[1],
                "subject_type": row[2],
                "subject_id": row[3],
                "from_state": row[4],
                "to_state": row[5],
                "occurred_at": _aware(row[6]),
                "instance__workflow_name": row[7],
                "instance__workflow_version": row[8],
                "instance__created_at": _aware(row[9]),
            }
        )
        if row[10] is not None:
            steps[row[3]] = {"id": row[3], "name": row[10], "kind": row[11], "started_at": _aware(row[12])}
    return events, steps


def _aware(value: Any) -> Any:
    """A raw cursor's timestamp as an aware datetime (SQLite returns text; PostgreSQL an aware datetime)."""
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)
    from django.utils.dateparse import parse_datetime

    parsed = parse_datetime(str(value))
    return parsed if parsed is None or parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _write(result: Fold) -> None:
    """Add a fold to the stored rows (read, add, upsert; the cursor lock keeps other passes out)."""
    if result.states:
        names = {name for name, _v, _s in result.states}
        stored = {
            (row.workflow_name, row.workflow_version, row.state): row
            for row in InstanceStateCount.objects.filter(workflow_name__in=names)
        }
        rows = []
        for key, delta in result.states.items():
            row = stored.get(key) or InstanceStateCount(workflow_name=key[0], workflow_version=key[1], state=key[2])
            row.count += delta
            rows.append(row)
        InstanceStateCount.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["workflow_name", "workflow_version", "state"],
            update_fields=["count"],
        )
    if result.hours:
        spans = _by_span(result.hours)
        # A range, not a list of hours: a pass catching up with a backlog touches thousands of hours.
        timed = [k[2] for k in spans if k[1] != SPAN_ALL]
        stored_rows = {
            (row.workflow_name, row.span, row.hour): row
            for row in WorkflowHourStats.objects.filter(workflow_name__in={k[0] for k in spans}).filter(
                Q(span=SPAN_ALL) | Q(span__in=[SPAN_HOUR, SPAN_DAY], hour__gte=min(timed), hour__lte=max(timed))
            )
            if (row.workflow_name, row.span, row.hour) in spans
        }
        rows_out = []
        for span_key, added in spans.items():
            stat = stored_rows.get(span_key) or WorkflowHourStats(
                workflow_name=span_key[0], span=span_key[1], hour=span_key[2]
            )
            for name in (*COUNTED_ACTIONS.values(), "step_retries"):
                setattr(stat, name, getattr(stat, name) + added[name])
            stat.durations = add_histograms(stat.durations or empty_histogram(), added["durations"])
            stat.duration_sum += added["duration_sum"]
            stat.step_durations = _merge_steps(stat.step_durations or {}, added["step_durations"])
            rows_out.append(stat)
        WorkflowHourStats.objects.bulk_create(
            rows_out,
            update_conflicts=True,
            unique_fields=["workflow_name", "span", "hour"],
            update_fields=[
                *COUNTED_ACTIONS.values(),
                "step_retries",
                "durations",
                "duration_sum",
                "step_durations",
            ],
        )


def _merge_steps(into: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    merged = dict(into)
    for step, timing in added.items():
        before = merged.get(step, {"buckets": empty_histogram(), "sum": 0.0})
        merged[step] = {
            "buckets": add_histograms(before["buckets"], timing["buckets"]),
            "sum": before["sum"] + timing["sum"],
        }
    return merged


def _by_span(hours: dict[tuple[str, datetime], dict[str, Any]]) -> dict[tuple[str, int, datetime], dict[str, Any]]:
    """Each hour's additions also added to its day's row and to the workflow's all-time row (``SPAN_*``), so a
    month is 30 rows to read and /metrics' totals one row per workflow."""
    result: dict[tuple[str, int, datetime], dict[str, Any]] = {}
    for (workflow, hour), added in hours.items():
        day = hour.replace(hour=0)
        for key in ((workflow, SPAN_HOUR, hour), (workflow, SPAN_DAY, day), (workflow, SPAN_ALL, ALL_TIME)):
            row = result.get(key)
            if row is None:
                result[key] = {
                    **added,
                    "durations": list(added["durations"]),
                    "step_durations": _merge_steps({}, added["step_durations"]),
                }
                continue
            for name in (*COUNTED_ACTIONS.values(), "step_retries"):
                row[name] += added[name]
            row["durations"] = add_histograms(row["durations"], added["durations"])
            row["duration_sum"] += added["duration_sum"]
            row["step_durations"] = _merge_steps(row["step_durations"], added["step_durations"])
    return result


# Versions this process has already recorded: the sweep runs every second, the table changes at deployments.
_recorded: set[tuple[str, int]] = set()


def record_versions(now: datetime | None = None, *, again: bool = False) -> int:
    """Record every registered workflow version not yet in :class:`WorkflowVersionSeen`, with ``now`` as when it
    was first seen (and its definition's fingerprint). Returns how many rows were added. Cheap after the first call
    in a process: versions already recorded by it are not asked about again (``again``: ask anyway, for a reader
    that found one missing)."""
    from orchestrator import registry

    registered = {(w.name, w.version): w for w in registry.all_definitions()}
    missing = set(registered) - (set() if again else _recorded)
    if not missing:
        return 0
    known = set(
        WorkflowVersionSeen.objects.filter(workflow_name__in={n for n, _v in missing}).values_list(
            "workflow_name", "workflow_version"
        )
    )
    new = [
        WorkflowVersionSeen(
            workflow_name=name,
            workflow_version=version,
            first_seen_at=now or timezone.now(),
            fingerprint=registered[(name, version)].fingerprint(),
        )
        for name, version in sorted(missing - known)
    ]
    if new:
        WorkflowVersionSeen.objects.bulk_create(new, ignore_conflicts=True)
    _recorded.update(missing)
    return len(new)


def last_swept() -> datetime | None:
    """When the sweep last ran (None: it never has), read through the ORM."""
    return RollupCursor.objects.filter(name=CURSOR).values_list("swept_at", flat=True).first()


def sweep_age(now: datetime | None = None) -> float | None:
    """Seconds since the sweep last ran (None: it never has)."""
    return age_since(last_swept(), now)


def age_since(swept_at: datetime | None, now: datetime | None = None) -> float | None:
    """Seconds from ``swept_at`` (when the sweep last ran, read by the caller: /health/ready reads it on a bounded
    session of its own) to ``now`` (None when it never ran)."""
    if swept_at is None:
        return None
    return max(0.0, ((now or timezone.now()) - swept_at).total_seconds())


def window_start(hours: int, now: datetime | None = None) -> datetime:
    """The first hour of a window of ``hours`` hours ending with the current one."""
    return hour_of(now or timezone.now()) - timedelta(hours=hours - 1)


def window(hours: int, now: datetime | None = None) -> tuple[int, datetime]:
    """The span of the chart's slots for a window of ``hours`` hours and the first slot's start: hours up to three
    days, else whole UTC days (the first slot then starts at the midnight of the window's first hour, and holds only
    that day's hours inside the window: :func:`window_rows`)."""
    if hours <= 72:
        return SPAN_HOUR, window_start(hours, now)
    return SPAN_DAY, window_start(hours, now).replace(hour=0)


def window_rows(hours: int, now: datetime | None = None) -> Q:
    """The roll-up rows that add up to exactly the last ``hours`` hours ending with the current one (a filter on
    ``WorkflowHourStats``).

    Up to three days, hour rows. Beyond, day rows for the whole UTC days inside the window, and hour rows for the part
    of the first day it covers: "last 7 days" read at 15:00 is 168 hours from 16:00 seven days before, not the six
    days and fifteen hours since the first whole day's midnight. Hour rows are kept for as long as day rows."""
    first = window_start(hours, now)
    if hours <= 72:
        return Q(span=SPAN_HOUR, hour__gte=first)
    first_midnight = first.replace(hour=0)
    whole_days = first_midnight if first == first_midnight else first_midnight + timedelta(days=1)
    return Q(span=SPAN_HOUR, hour__gte=first, hour__lt=whole_days) | Q(span=SPAN_DAY, hour__gte=whole_days)
