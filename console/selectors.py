"""Reads for the operator console: the instance list (filters, keyset pages, capped counts by state), what needs
attention (incidents), an instance's attempts, and a bulk job's progress.

Every read here is built to stay cheap at a million instances (bench/console.py measures it): lists walk an index
in (created_at, id) order from a cursor instead of counting and skipping rows, counts stop at
``COUNT_CAP`` per state, and incident reads touch only the few rows in trouble (failed instances, steps past
their lease, overdue tasks) through partial indexes (``console/migrations``).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Count, Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from approvals import selectors as task_selectors
from approvals.models import ACTIONABLE_TASK_STATES, HumanTask, TaskKind
from console.models import BulkItemState, BulkJob, BulkJobItem
from orchestrator import selectors as engine_selectors
from orchestrator.inputs import SEARCH_MAX, business_key_forms
from orchestrator.models import AuditEvent, InstanceState, StepKind, StepRun, StepState, WorkflowInstance
from orchestrator.selectors import hide_paths
from orchestrator.services.unit import HARD_LIMIT_MARGIN

# Counts by state are exact up to this many, then shown as "1000+": an exact count of a million rows costs a
# scan, and nobody acts on the difference between 412,000 and 413,000 (at 10,000 the eight capped counts
# still read up to 80,000 index entries: 750 ms of SQL at a million on the shared bench machine).
COUNT_CAP = 1_000
PAGE_SIZE = 50
# The largest id PostgreSQL's bigint holds: a cursor naming a larger one is not ours.
ID_MAX = 2**63 - 1
# A JSON path into the business data: dotted keys (``customer``, ``address.city``), each a plain name.
DATA_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}(\.[A-Za-z_][A-Za-z0-9_-]{0,62}){0,4}$")


# --- the instance list --------------------------------------------------------------------------------


@dataclass
class InstanceFilter:
    """What the list is narrowed to; every field optional. ``data_path``/``data_value`` match one field of the
    business data (``address.city`` = ``Lyon``: the value as text, or as the number or true/false it spells)."""

    workflow: str = ""
    version: int | None = None
    state: str = ""
    started_from: datetime | None = None
    started_to: datetime | None = None
    error: str = ""
    business_key: str = ""
    data_path: str = ""
    data_value: str = ""
    # Free text: the title contains it, or it is the business key.
    q: str = ""

    def as_params(self) -> dict[str, str]:
        """The filter as query-string values (empty ones left out), for links and a bulk job's record."""
        values = {
            "workflow": self.workflow,
            "version": str(self.version or ""),
            "state": self.state,
            "started_from": self.started_from.isoformat() if self.started_from else "",
            "started_to": self.started_to.isoformat() if self.started_to else "",
            "error": self.error,
            "business_key": self.business_key,
            "data_path": self.data_path,
            "data_value": self.data_value,
            "q": self.q,
        }
        return {k: v for k, v in values.items() if v}

    @property
    def is_empty(self) -> bool:
        return not self.as_params()


def _data_match(path: str, value: str) -> Q:
    """Containment (``data @> {...}``), which the GIN index on the data answers; the value as text, and also as
    the JSON number or boolean it spells, so ``amount = 40`` finds ``40`` and ``"40"``."""
    import json
    import math

    keys = path.split(".")

    def nest(leaf: Any) -> dict[str, Any]:
        nested: Any = leaf
        for key in reversed(keys):
            nested = {key: nested}
        return nested

    match = Q(data__contains=nest(value))
    try:
        typed = json.loads(value)
    except ValueError:
        typed = None
    # Not an infinity or NaN ("1e400", "NaN" typed as a value): PostgreSQL's JSON has neither, and the page was a 500.
    if isinstance(typed, bool | int | float) and not (isinstance(typed, float) and not math.isfinite(typed)):
        match |= Q(data__contains=nest(typed))
    return match


def filtered(user: User, flt: InstanceFilter) -> QuerySet[WorkflowInstance]:
    """Instances ``user`` may see (``orchestrator.selectors.instances_for_user``) that match ``flt``; unordered."""
    qs = engine_selectors.instances_for_user(user).order_by()
    if flt.workflow:
        qs = qs.filter(workflow_name=flt.workflow)
        if flt.version:
            qs = qs.filter(workflow_version=flt.version)
    if flt.state:
        qs = qs.filter(state=flt.state)
    if flt.started_from:
        qs = qs.filter(created_at__gte=flt.started_from)
    if flt.started_to:
        qs = qs.filter(created_at__lt=flt.started_to)
    if flt.error:
        # "error <> ''" lets PostgreSQL use the partial index of instances with an error: the text search then
        # reads those rows only, not every instance.
        qs = qs.exclude(error="").filter(error__icontains=flt.error)
    if flt.business_key:
        qs = qs.filter(business_key__in=business_key_forms(flt.business_key))
    if flt.data_path and flt.data_value:
        qs = qs.filter(_data_match(flt.data_path, flt.data_value))
    if flt.q:
        qs = qs.filter(Q(title__icontains=flt.q) | Q(business_key__in=business_key_forms(flt.q)))
    return qs


@dataclass
class Page:
    """One page of the list: its rows, and the cursor of the next page ('' on the last)."""

    rows: list[WorkflowInstance]
    next_cursor: str
    first: bool


def encode_cursor(instance: WorkflowInstance) -> str:
    raw = f"{instance.created_at.isoformat()}|{instance.pk}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int] | None:
    """The (created_at, id) a cursor points after, or None for one that is not ours (typed, cut, stale format)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, pk = raw.split("|")
        created = parse_datetime(when)
        if created is None or timezone.is_naive(created):
            return None
        position = int(pk)
        if not 1 <= position <= ID_MAX:
            return None
        # In UTC: an edited offset PostgreSQL refuses (beyond +/-15:59) or one that puts the time past year 9999
        # is a bad link here, not a database error there.
        return created.astimezone(UTC), position
    except (ValueError, UnicodeDecodeError, OverflowError):
        return None


def page_of(qs: QuerySet[WorkflowInstance], cursor: tuple[datetime, int] | None, size: int = PAGE_SIZE) -> Page:
    """Newest first, ``size`` rows after ``cursor`` (keyset: ``(created_at, id) < cursor``, never OFFSET), with the
    initiator joined. One query."""
    if cursor is not None:
        created, pk = cursor
        qs = qs.filter(Q(created_at__lt=created) | Q(created_at=created, id__lt=pk))
    rows = list(
        qs.select_related("initiator")
        .only(
            "id",
            "workflow_name",
            "workflow_version",
            "state",
            "title",
            "business_key",
            "error",
            "created_at",
            "updated_at",
            "finished_at",
            "paused_until",
            "initiator__username",
        )
        .order_by("-created_at", "-id")[: size + 1]
    )
    more = len(rows) > size
    rows = rows[:size]
    return Page(rows, encode_cursor(rows[-1]) if more and rows else "", cursor is None)


def capped_counts(qs: QuerySet[WorkflowInstance], cap: int = COUNT_CAP) -> dict[str, int]:
    """Per instance state, how many of ``qs`` are in it, counting no further than ``cap + 1`` (shown as "cap+").
    One statement: per state, a count over an index walk that stops at the cap."""
    parts: list[str] = []
    params: list[Any] = []
    states = [s.value for s in InstanceState]
    for state in states:
        sql, sub_params = qs.filter(state=state).values("id")[: cap + 1].query.sql_with_params()
        # The subquery is Django's own SQL with its parameters kept apart: nothing typed is pasted in.
        parts.append(f"(SELECT count(*) FROM ({sql}) s{len(parts)})")  # noqa: S608
        params.extend(sub_params)
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(parts), params)
        row = cursor.fetchone()
    return {state: n for state, n in zip(states, row, strict=True) if n}


def match_counts(qs: QuerySet[WorkflowInstance], cap: int = COUNT_CAP) -> tuple[dict[str, int], bool]:
    """Per instance state, how many of the first ``cap + 1`` rows of ``qs`` are in it, and whether ``qs`` has more
    than ``cap`` rows (then each count is a lower bound, shown "n+"). One statement reading at most ``cap + 1``
    rows once, counting every state with ``FILTER``.

    For a filter whose match is a bitmap rebuilt by each of :func:`capped_counts`' eight per-state counts (the
    business-data containment over ``console_instance_data``: 50,000 entries for a value on 1 instance in 20 at a
    million, 5-9 ms per rebuild, bench/README.md "Run 4"). Exact up to ``cap`` matches in all, where
    :func:`capped_counts` is exact up to ``cap`` per state."""
    states = [s.value for s in InstanceState]
    sql, params = qs.values("state")[: cap + 1].query.sql_with_params()
    columns = ", ".join(["count(*)"] + ["count(*) FILTER (WHERE m.state = %s)"] * len(states))
    with connection.cursor() as cursor:
        # Django's own SQL as the subquery, its parameters and the state names kept apart: nothing typed is pasted.
        cursor.execute(f"SELECT {columns} FROM ({sql}) m", [*states, *params])  # noqa: S608
        total, *row = cursor.fetchone()
    return {state: n for state, n in zip(states, row, strict=True) if n}, total > cap


def counts_by_state(qs: QuerySet[WorkflowInstance], flt: InstanceFilter) -> tuple[dict[str, int], bool]:
    """The list's counts by state of ``qs`` (``flt`` with the state left out): state -> count, and whether the
    counts are lower bounds. A business-data filter counts its match once (:func:`match_counts`); every other
    filter walks each state's index to ``COUNT_CAP`` (:func:`capped_counts`, exact below the cap). One statement."""
    if flt.data_path and flt.data_value:
        return match_counts(qs, COUNT_CAP)
    return capped_counts(qs, COUNT_CAP), False


# --- what needs attention -----------------------------------------------------------------------------


def _seconds(name: str, default: float) -> timedelta:
    return timedelta(seconds=float(getattr(settings, name, default)))


def failed_idle_after() -> timedelta:
    """A failed instance nobody acted on for this long is called out (``BATON_INCIDENT_IDLE_SECONDS``, 1 h)."""
    return _seconds("BATON_INCIDENT_IDLE_SECONDS", 3600)


# A retry storm: this many instances retrying the same step at once, or one step at this many attempts.
STORM_INSTANCES = 10
STORM_ATTEMPTS = 5
INCIDENT_ROWS = 50
# What a list of tasks, steps or bulk items leaves unread of their instance: its business data, which the lists never
# show and which runs to megabytes (each step's result may be BATON_MAX_RESULT_BYTES, and the results add up).
UNREAD_INSTANCE = ("instance__data",)
# Failures and retrying steps are grouped from the newest this many of them: grouping every one of them reads each
# row (20,000 failed instances at a million: 10,000 heap pages, 50-110 ms; 10,000 retrying steps and their
# instances: 50,000 buffers, 115-170 ms; bench/README.md "Run 4"), and no index can answer the grouping by itself
# (the reason is an expression of the unbounded error text, which an index cannot carry). Beyond it the page says
# so, and the totals read "1000+" like the list's counts by state.
INCIDENT_SAMPLE = COUNT_CAP


@dataclass
class Incidents:
    """Everything the Incidents page lists, each part capped at ``INCIDENT_ROWS`` rows (its total alongside).

    ``failed_total`` and ``retrying_total`` count no further than ``INCIDENT_SAMPLE + 1`` (shown as "1000+"); when
    they pass it, ``failed_groups`` and ``storms`` are the groups of the newest ``INCIDENT_SAMPLE`` failed
    instances (by start) and retrying steps (by instance), and ``failed_sampled``/``storms_sampled`` say so.
    ``nobody_can_act`` is read from the oldest ``INCIDENT_SAMPLE`` escalated tasks (its ``sampled`` says when there
    were more)."""

    now: datetime
    failed_groups: list[dict[str, Any]] = field(default_factory=list)
    failed_total: int = 0
    escalations: list[HumanTask] = field(default_factory=list)
    escalations_total: int = 0
    past_timeout: list[StepRun] = field(default_factory=list)
    overdue_tasks: list[HumanTask] = field(default_factory=list)
    overdue_total: int = 0
    storms: list[dict[str, Any]] = field(default_factory=list)
    retrying_total: int = 0
    paused_past: list[WorkflowInstance] = field(default_factory=list)
    # Tasks too few people may act on (nobody at all, or fewer than a quorum still needs), at once, SLA or not.
    nobody_can_act: task_selectors.NobodyCanAct = field(default_factory=task_selectors.NobodyCanAct)
    # More than INCIDENT_ROWS stuck steps / pauses past their resume: the lists are the first rows, "n+" in all.
    past_timeout_more: bool = False
    paused_past_more: bool = False
    sweep_lag: dict[str, Any] = field(default_factory=dict)
    sample: int = INCIDENT_SAMPLE

    @property
    def failed_sampled(self) -> bool:
        return self.failed_total > self.sample

    @property
    def storms_sampled(self) -> bool:
        return self.retrying_total > self.sample

    @property
    def count(self) -> int:
        """Things needing attention, a failed total past the sample counted as the sample (see ``count_more``)."""
        return (
            min(self.failed_total, self.sample)
            + self.escalations_total
            + len(self.past_timeout)
            + self.overdue_total
            + len(self.storms)
            + len(self.paused_past)
            # Escalations and tasks past their SLA are counted in their own parts already: each thing once.
            + self.nobody_can_act.total
            - self.nobody_can_act.listed_elsewhere
            + (1 if self.sweep_lag.get("behind") else 0)
        )

    @property
    def count_more(self) -> bool:
        """Whether ``count`` is a lower bound ("n+"): more instances failed than were counted, or more steps are
        stuck or pauses late than are listed, or more tasks escalated than were read for who may act on them."""
        return self.failed_sampled or self.past_timeout_more or self.paused_past_more or self.nobody_can_act.sampled


def _failed_groups(now: datetime) -> tuple[list[dict[str, Any]], int]:
    """The newest ``INCIDENT_SAMPLE`` failed instances (by start), grouped by workflow and the first line of their
    error: count, oldest and newest failure, how many nobody acted on for ``failed_idle_after()``, and up to five
    instance ids; with the number of failed instances, counted up to ``INCIDENT_SAMPLE + 1``.

    One statement, always one row back (groups or not): the sample walks ``console_instance_state_keyset``
    (state, created_at, id) newest first, the total ``console_instance_failed``; both stop at the sample.
    Returns (groups ordered by size then recency, at most ``INCIDENT_ROWS``; the capped total)."""
    table = WorkflowInstance._meta.db_table
    idle_before = now - failed_idle_after()
    if connection.vendor != "postgresql":
        rows = _failed_group_rows_portable(idle_before)
        return _failed_groups_of(rows), int(rows[0][0])
    with connection.cursor() as cursor:
        cursor.execute(  # the table name is the model's; the values are parameters
            f"""
            SELECT (SELECT count(*) FROM (SELECT 1 FROM {table} WHERE state = 'failed' LIMIT %s) t),
                   g.workflow_name, g.reason, g.n, g.oldest, g.newest, g.idle, g.ids
            FROM (SELECT 1) one
            LEFT JOIN LATERAL (
                SELECT workflow_name, left(rtrim(split_part(error, E'\\n', 1), E'\\r'), 200) AS reason, count(*) AS n,
                       min(updated_at) AS oldest, max(updated_at) AS newest,
                       count(*) FILTER (WHERE updated_at < %s) AS idle,
                       (array_agg(id ORDER BY id DESC))[1:5] AS ids
                FROM (
                    SELECT workflow_name, error, updated_at, id FROM {table} WHERE state = 'failed'
                    ORDER BY created_at DESC, id DESC LIMIT %s
                ) recent
                GROUP BY 1, 2
                ORDER BY n DESC, newest DESC
                LIMIT %s
            ) g ON true
            ORDER BY g.n DESC, g.newest DESC
            """,  # noqa: S608
            [INCIDENT_SAMPLE + 1, idle_before, INCIDENT_SAMPLE, INCIDENT_ROWS],
        )
        rows = cursor.fetchall()
    return _failed_groups_of(rows), int(rows[0][0])


def _failed_groups_of(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The groups of :func:`_failed_groups`' rows (capped total, workflow, reason, count, oldest, newest, idle,
    ids), as the page reads them."""
    return [
        {
            "workflow": r[1],
            "reason": r[2] or "(no error recorded)",
            # What the instance list's error filter takes to find the group again: the reason as it is (a prefix of
            # each error's first line, so it matches), cut to the filter's length; nothing for no error.
            "error_filter": (r[2] or "")[:SEARCH_MAX].strip(),
            "count": r[3],
            "oldest": r[4],
            "newest": r[5],
            "idle": r[6],
            "ids": r[7],
        }
        for r in rows
        if r[1] is not None
    ]


def _failed_group_rows_portable(idle_before: datetime) -> list[tuple[Any, ...]]:
    """:func:`_failed_groups`' rows on a database without PostgreSQL's SQL (SQLite, the demo): the same sample and
    groups, grouped here. Two statements, each stopping at the sample, as PostgreSQL's one does."""
    failed = WorkflowInstance.objects.filter(state=InstanceState.FAILED)
    total = failed.order_by()[: INCIDENT_SAMPLE + 1].count()
    recent = failed.order_by("-created_at", "-id").values_list("workflow_name", "error", "updated_at", "id")
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for workflow, error, updated_at, pk in recent[:INCIDENT_SAMPLE]:
        reason = (error or "").split("\n", 1)[0].rstrip("\r")[:200]
        group = groups.setdefault((workflow, reason), {"n": 0, "oldest": updated_at, "newest": updated_at, "idle": 0})
        group["n"] += 1
        group["oldest"], group["newest"] = min(group["oldest"], updated_at), max(group["newest"], updated_at)
        group["idle"] += updated_at < idle_before
        group.setdefault("ids", []).append(pk)
    ordered = sorted(groups.items(), key=lambda item: (-item[1]["n"], -item[1]["newest"].timestamp()))
    rows: list[tuple[Any, ...]] = [
        (total, workflow, reason, g["n"], g["oldest"], g["newest"], g["idle"], sorted(g["ids"], reverse=True)[:5])
        for (workflow, reason), g in ordered[:INCIDENT_ROWS]
    ]
    return rows or [(total, None, None, None, None, None, None, None)]


def _storms() -> tuple[list[dict[str, Any]], int]:
    """Retry storms among the steps waiting to retry (state ``failed``) of the newest ``INCIDENT_SAMPLE``
    instances that have one: per workflow and step, at least ``STORM_INSTANCES`` instances or an attempt at
    ``STORM_ATTEMPTS``, with the instances, the highest attempt and the earliest start; and the number of steps
    waiting to retry, counted up to ``INCIDENT_SAMPLE + 1``.

    One statement, always one row back: both walk ``console_step_retrying_recent`` (the retrying steps only, by
    instance, carrying name, attempt and start: index-only) and stop at the sample; only the sample's instances are
    read, for their workflow. Returns (storms, the biggest first, at most ``INCIDENT_ROWS``; the capped total)."""
    steps = StepRun._meta.db_table
    instances = WorkflowInstance._meta.db_table
    if connection.vendor != "postgresql":
        rows = _storm_rows_portable()
        return _storms_of(rows), int(rows[0][0])
    with connection.cursor() as cursor:
        cursor.execute(  # the table names are the models'; the values are parameters
            f"""
            SELECT (SELECT count(*) FROM (SELECT 1 FROM {steps} WHERE state = 'failed' LIMIT %s) t),
                   g.workflow_name, g.name, g.instances, g.attempts, g.since
            FROM (SELECT 1) one
            LEFT JOIN LATERAL (
                SELECT i.workflow_name, s.name, count(DISTINCT s.instance_id) AS instances,
                       max(s.attempt) AS attempts, min(s.started_at) AS since
                FROM (
                    SELECT instance_id, name, attempt, started_at FROM {steps} WHERE state = 'failed'
                    ORDER BY instance_id DESC LIMIT %s
                ) s
                JOIN {instances} i ON i.id = s.instance_id
                GROUP BY 1, 2
                HAVING count(DISTINCT s.instance_id) >= %s OR max(s.attempt) >= %s
                ORDER BY 3 DESC, 1, 2
                LIMIT %s
            ) g ON true
            ORDER BY g.instances DESC, g.workflow_name, g.name
            """,  # noqa: S608
            [INCIDENT_SAMPLE + 1, INCIDENT_SAMPLE, STORM_INSTANCES, STORM_ATTEMPTS, INCIDENT_ROWS],
        )
        rows = cursor.fetchall()
    return _storms_of(rows), int(rows[0][0])


def _storms_of(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The storms of :func:`_storms`' rows (capped total, workflow, step, instances, attempts, since)."""
    return [
        {"workflow": r[1], "step": r[2], "instances": r[3], "attempts": r[4], "since": r[5]}
        for r in rows
        if r[1] is not None
    ]


def _storm_rows_portable() -> list[tuple[Any, ...]]:
    """:func:`_storms`' rows on a database without PostgreSQL's SQL (SQLite, the demo): the same sample and groups,
    grouped here. Two statements, each stopping at the sample, as PostgreSQL's one does."""
    retrying = StepRun.objects.filter(state=StepState.FAILED)
    total = retrying.order_by()[: INCIDENT_SAMPLE + 1].count()
    sample = retrying.order_by("-instance_id").values_list(
        "instance__workflow_name", "name", "instance_id", "attempt", "started_at"
    )
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for workflow, name, instance_id, attempt, started_at in sample[:INCIDENT_SAMPLE]:
        group = groups.setdefault((workflow, name), {"instances": set(), "attempts": 0, "since": None})
        group["instances"].add(instance_id)
        group["attempts"] = max(group["attempts"], attempt)
        if started_at is not None and (group["since"] is None or started_at < group["since"]):
            group["since"] = started_at
    storms: list[tuple[Any, ...]] = [
        (total, workflow, name, len(g["instances"]), g["attempts"], g["since"])
        for (workflow, name), g in groups.items()
        if len(g["instances"]) >= STORM_INSTANCES or g["attempts"] >= STORM_ATTEMPTS
    ]
    storms.sort(key=lambda row: (-row[3], row[1], row[2]))
    return storms[:INCIDENT_ROWS] or [(total, None, None, None, None, None)]


def stuck_steps(now: datetime | None = None) -> QuerySet[StepRun]:
    """The one definition of **stuck** (Incidents lists these, the catalog counts them per workflow): a step the
    engine runs (not a person's) still running after its timeout. Its worker died or hangs; nothing will move the
    instance until the sweep fails the attempt when the lease ends, ``HARD_LIMIT_MARGIN`` +
    ``BATON_LEASE_GRACE`` seconds after the timeout (``orchestrator.services.unit.lease_for``).

    ``now``: an aware datetime (default: the current time). Returns the steps, unordered and unsliced, read
    through the partial index of running steps with a lease: it costs what is stuck, not what exists. Failed
    instances are not stuck (they failed, and are listed as failures); a task past its SLA is late, not stuck.
    """
    now = now or timezone.now()
    # A lease ending sooner than the margin from now means the timeout, margin before it, has passed.
    past = now + timedelta(seconds=HARD_LIMIT_MARGIN + float(settings.BATON_LEASE_GRACE))
    return StepRun.objects.filter(state=StepState.RUNNING, lease_expires_at__lt=past).exclude(kind=StepKind.HUMAN)


def stuck_by_workflow(now: datetime | None = None) -> dict[str, int]:
    """Workflow name -> its :func:`stuck_steps` at ``now``; workflows with none are absent. One statement."""
    rows = stuck_steps(now).values("instance__workflow_name").order_by().annotate(n=Count("id"))
    return {row["instance__workflow_name"]: row["n"] for row in rows}


def _sweep_lag(now: datetime) -> dict[str, Any]:
    """How far behind the sweep is: the oldest step that fell due and was never sent, and the oldest lease past
    its end by more than two sweeps (the sweep should have taken both up within a pass)."""
    interval = float(settings.BATON_SWEEP_INTERVAL)
    slack = timedelta(seconds=max(4 * interval, 30))
    oldest_due = (
        StepRun.objects.filter(state__in=[StepState.SCHEDULED, StepState.FAILED], due_at__lt=now - slack)
        .filter(dispatched_at__isnull=True, instance__state__in=[InstanceState.RUNNING, InstanceState.WAITING])
        .order_by("due_at")
        .values_list("due_at", flat=True)
        .first()
    )
    oldest_lease = (
        StepRun.objects.filter(state=StepState.RUNNING, lease_expires_at__lt=now - slack)
        .order_by("lease_expires_at")
        .values_list("lease_expires_at", flat=True)
        .first()
    )
    behind = [t for t in (oldest_due, oldest_lease) if t is not None]
    return {"behind": bool(behind), "since": min(behind) if behind else None, "due": oldest_due, "lease": oldest_lease}


def _first_rows(qs: QuerySet[Any]) -> tuple[list[Any], bool]:
    """The first ``INCIDENT_ROWS`` rows of ``qs`` (ordered), and whether it holds more: one statement reading one
    row past them."""
    rows = list(qs[: INCIDENT_ROWS + 1])
    return rows[:INCIDENT_ROWS], len(rows) > INCIDENT_ROWS


def incidents(now: datetime | None = None) -> Incidents:
    """What needs a person now, across workflows (see :class:`Incidents`). A fixed number of statements, each over
    a partial index of the rows in trouble, and none reading more than ``INCIDENT_SAMPLE`` of them: eleven, and two
    more when some task is found that too few people may act on (its rows and their candidates), however many."""
    now = now or timezone.now()
    found = Incidents(now=now, sample=INCIDENT_SAMPLE)
    found.failed_groups, found.failed_total = _failed_groups(now)

    escalations = HumanTask.objects.filter(kind=TaskKind.ESCALATION, state__in=ACTIONABLE_TASK_STATES)
    found.escalations_total = escalations.count()
    found.escalations = list(
        escalations.select_related("instance", "step", "assignee")
        .defer(*UNREAD_INSTANCE, "step__result")
        .order_by("created_at", "id")[:INCIDENT_ROWS]
    )

    # One row past those shown says whether there are more, without a count of its own.
    found.past_timeout, found.past_timeout_more = _first_rows(
        stuck_steps(now).select_related("instance").defer("result", *UNREAD_INSTANCE).order_by("lease_expires_at")
    )

    # Past their SLA, less those held by their instance's pause (their due time moves on at the resume): the one
    # definition the dashboard and /metrics count too.
    overdue = HumanTask.objects.filter(task_selectors.overdue(now))
    found.overdue_total = overdue.count()
    found.overdue_tasks = list(
        overdue.select_related("instance", "assignee").defer(*UNREAD_INSTANCE).order_by("due_at")[:INCIDENT_ROWS]
    )

    found.storms, found.retrying_total = _storms()

    found.paused_past, found.paused_past_more = _first_rows(
        WorkflowInstance.objects.filter(state=InstanceState.PAUSED, paused_until__lt=now - timedelta(minutes=1))
        .only("id", "title", "workflow_name", "workflow_version", "state", "paused_until", "created_at")
        .order_by("paused_until")
    )
    found.sweep_lag = _sweep_lag(now)
    # Work that can never move until someone adds a person: listed at once, not when its SLA passes.
    found.nobody_can_act = task_selectors.tasks_nobody_can_act(now, limit=INCIDENT_ROWS, sample=INCIDENT_SAMPLE)
    return found


# --- one instance ---------------------------------------------------------------------------------------


@dataclass
class Attempt:
    """One attempt of one step, read from the audit trail (the step row keeps only its latest)."""

    number: int
    started_at: datetime | None = None
    ended_at: datetime | None = None
    worker: str = ""
    outcome: str = ""  # succeeded, failed, dead, running, fenced
    error_type: str = ""
    error: str = ""
    actor: str = ""

    @property
    def duration(self) -> timedelta | None:
        if self.started_at and self.ended_at:
            return self.ended_at - self.started_at
        return None


# The step events an attempt is read from (``attempts_by_step``): the others change no attempt.
ATTEMPT_ACTIONS = ("step.started", "step.succeeded", "step.failed", "step.dead", "step.skipped")


def attempt_events(instance: WorkflowInstance, step_ids: list[int]) -> list[AuditEvent]:
    """The audit events ``attempts_by_step`` reads for the steps ``step_ids`` of ``instance``, in chain order: by the
    (subject_type, subject_id) index, so the steps a page shows cost their own few events, not the instance's whole
    history (which has no bound)."""
    if not step_ids:
        return []
    return list(
        AuditEvent.objects.filter(
            instance=instance, subject_type="step", subject_id__in=step_ids, action__in=ATTEMPT_ACTIONS
        ).order_by("seq")
    )


def latest_step_states(instance: WorkflowInstance) -> dict[str, str]:
    """Step name -> the state of its latest run (compensations left out): what the diagram colours, for an instance
    with more runs than the page reads. One query; PostgreSQL's DISTINCT ON keeps a row per name."""
    runs = instance.steps.exclude(kind=StepKind.COMPENSATION).order_by("name", "-id").distinct("name")
    return dict(runs.values_list("name", "state"))


def dead_steps(instance: WorkflowInstance) -> list[StepRun]:
    """Up to two dead steps of ``instance`` (compensations left out): the page offers a skip only when there is
    exactly one, so a second is all it needs to know."""
    return list(instance.steps.filter(state=StepState.DEAD).exclude(kind=StepKind.COMPENSATION).order_by("id")[:2])


def undoable_steps(instance: WorkflowInstance, workflow: Any) -> list[StepRun]:
    """The runs the compensation plan is made of (``ops_views._compensation_plan``): task runs that took effect
    of a node with a compensation, and the compensations. Empty, without a query, when the definition
    (``workflow``, None when not registered) compensates nothing."""
    names = [
        name
        for name, node in (workflow.nodes.items() if workflow is not None else ())
        if getattr(node, "compensate", None)
    ]
    if not names:
        return []
    took_effect = Q(kind=StepKind.TASK, name__in=names, state__in=[StepState.SUCCEEDED, StepState.COMPENSATED])
    return list(instance.steps.filter(took_effect | Q(kind=StepKind.COMPENSATION)).order_by("id"))


def attempts_by_step(steps: list[StepRun], events: list[AuditEvent], *, show_paths: bool) -> dict[int, list[Attempt]]:
    """Per step id, its attempts in order, from the instance's audit ``events`` (``attempt_events``). The last
    attempt's error is the step's own (the audit event keeps the first line of a dead step's error); paths in
    errors are cut to file names unless ``show_paths``."""
    by_step: dict[int, list[Attempt]] = {}
    for event in events:
        if event.subject_type != "step" or event.subject_id is None:
            continue
        attempts = by_step.setdefault(event.subject_id, [])
        payload = event.payload or {}
        if event.action == "step.started":
            attempts.append(
                Attempt(
                    number=int(payload.get("attempt", len(attempts) + 1)),
                    started_at=event.occurred_at,
                    worker=str((event.request_meta or {}).get("worker", "")),
                    outcome="running",
                    actor=event.actor_label,
                )
            )
        elif attempts and attempts[-1].outcome == "running":
            current = attempts[-1]
            if event.action == "step.succeeded":
                current.outcome, current.ended_at = "succeeded", event.occurred_at
            elif event.action == "step.failed":
                current.outcome, current.ended_at = "failed", event.occurred_at
                current.error_type = str(payload.get("error_type", ""))
                current.error = str(payload.get("error") or event.reason)
            elif event.action == "step.dead":
                current.outcome, current.ended_at = "dead", event.occurred_at
                current.error_type = str(payload.get("error_type", ""))
                current.error = event.reason
            elif event.action == "step.skipped":
                current.outcome, current.ended_at = "skipped", event.occurred_at
    for step in steps:
        attempts = by_step.get(step.pk, [])
        if attempts and attempts[-1].outcome == "dead" and step.error:
            attempts[-1].error = step.error  # the whole message and traceback, not the audit's first line
        if not show_paths:
            for attempt in attempts:
                attempt.error = hide_paths(attempt.error)
    return by_step


def waits_held_by_pause(instance: WorkflowInstance, steps: list[StepRun], workflow: Any) -> dict[int, timedelta]:
    """Step id -> what is left of its wait after the resume, for each timer ``wait`` or Signal ``timeout`` its pause
    holds: the instance is paused, and the wait was still running when the pause began (or began during it). Such
    a wait counts unpaused time only and moves on at the resume (docs/architecture.md, "Deadlines and pauses"), so
    its stored due time is not when it fires. Empty when the instance is not paused or its definition
    (``workflow``, None when not registered) is unknown. A timer ``until`` a date keeps its time and is left out.
    Reads nothing from the database."""
    paused_at = instance.paused_at
    if instance.state != InstanceState.PAUSED or paused_at is None or workflow is None:
        return {}
    held = {}
    for step in steps:
        node = workflow.nodes.get(step.name)
        kind = getattr(node, "kind", "")
        is_wait = kind == "timer" and getattr(node, "until", None) is None and step.state == StepState.SCHEDULED
        # A Signal's timeout is a duration too: the resume moves it on the same way.
        is_wait = is_wait or (kind == "signal" and step.state == StepState.RUNNING)
        if is_wait and step.due_at is not None and step.due_at > paused_at:
            # Its clock, as the resume counts it (``instances._shift_deadlines``): from the pause, or from when it
            # began if that was during the pause (a timer made then, a wait entered or re-armed then), whose whole
            # span then starts at the resume.
            began = max(d for d in (paused_at, step.created_at, step.started_at if kind == "signal" else None) if d)
            held[step.pk] = step.due_at - began
    return held


def resolved_by_hand(step: StepRun) -> bool:
    """A step a person resolved (skipped by an operator, or a compensation marked done by hand): the page shows it
    as resolved, not as an error."""
    return step.state == StepState.SKIPPED and (
        step.error.startswith("skipped by") or step.error.startswith("resolved by hand")
    )


# --- bulk jobs ------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """A bulk job's counts: items by state, and for a retry what became of the retried instances since."""

    total: int
    done: int = 0
    skipped: int = 0
    error: int = 0
    pending: int = 0
    # Retried instances by their state now: completed, failed again, still going.
    completed: int = 0
    failed_again: int = 0
    still_going: int = 0
    skipped_why: list[tuple[str, int]] = field(default_factory=list)

    @property
    def acted(self) -> int:
        return self.done + self.skipped + self.error

    @property
    def percent(self) -> int:
        return 100 if not self.total else int(100 * self.acted / self.total)


def bulk_progress(job: BulkJob) -> Progress:
    """The counts of :class:`Progress`, in three grouped statements over the job's items."""
    progress = Progress(total=job.total)
    for state, n in job.items.order_by().values_list("state").annotate(n=Count("id")).values_list("state", "n"):
        setattr(progress, state, n)
    if job.action == "retry" and progress.done:
        now_states = (
            job.items.filter(state=BulkItemState.DONE)
            .order_by()
            .values_list("instance__state")
            .annotate(n=Count("id"))
            .values_list("instance__state", "n")
        )
        for state, n in now_states:
            if state == InstanceState.COMPLETED:
                progress.completed += n
            elif state == InstanceState.FAILED:
                progress.failed_again += n
            else:
                progress.still_going += n
    if progress.skipped:
        progress.skipped_why = list(
            job.items.filter(state=BulkItemState.SKIPPED)
            .order_by()
            .values_list("detail")
            .annotate(n=Count("id"))
            .order_by("-n")
            .values_list("detail", "n")[:10]
        )
    return progress


def bulk_sample(job: BulkJob, size: int = 10) -> list[BulkJobItem]:
    """The first ``size`` instances of the job, in its order, with their instance."""
    return list(job.items.select_related("instance").defer(*UNREAD_INSTANCE).order_by("id")[:size])


def recent_jobs(limit: int = 10) -> list[BulkJob]:
    """The latest confirmed bulk jobs (dry runs left out), newest first."""
    return list(BulkJob.objects.exclude(state="dry_run").select_related("created_by").order_by("-created_at")[:limit])
