"""Reads over the roll-ups (``orchestrator/rollups.py``) for the dashboard, the catalog and /metrics, and the
comparison of two versions of a workflow. Every function here reads a bounded number of small rows, whatever the
number of instances: the roll-ups are per workflow version and state, and per workflow and hour.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from orchestrator.dsl import Node, Workflow
from orchestrator.models import (
    InstanceState,
    InstanceStateCount,
    WorkflowHourStats,
    WorkflowVersionSeen,
)
from orchestrator.rollups import (
    SPAN_ALL,
    SPAN_HOUR,
    add_histograms,
    empty_histogram,
    quantile,
    window,
    window_rows,
    window_start,
)

# States counted as still going somewhere (the catalog's "running" per version).
LIVE_STATES = (InstanceState.RUNNING, InstanceState.WAITING, InstanceState.PAUSED, InstanceState.COMPENSATING)
WINDOWS = {"24h": 24, "7d": 24 * 7, "30d": 24 * 30}
# The roll-up's counters (WorkflowHourStats' and Health's fields), summed alike wherever hours or workflows add up.
COUNTERS = ("started", "completed", "failed", "compensated", "cancelled", "step_retries", "operator_retries")
# What a roll-up row sums into a Health or a total: the counters, the duration histogram and its sum.
_SUMMED = (*COUNTERS, "durations", "duration_sum")
# Fewer timed runs than this and a quantile is a guess: over two runs the histogram's interpolation answers the
# middle of their bucket, and a p95 needs twenty runs before its rank falls below the slowest one. The pages then
# give the number of runs and no quantile.
MIN_RUNS_FOR_QUANTILES = 20


def state_counts() -> dict[tuple[str, int], dict[str, int]]:
    """(workflow, version) -> state -> instances now (roll-up; one query over a few rows per version)."""
    result: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
    for row in InstanceStateCount.objects.filter(count__gt=0).values_list(
        "workflow_name", "workflow_version", "state", "count"
    ):
        result[(row[0], row[1])][row[2]] = row[3]
    return result


@dataclass
class Health:
    """One workflow's figures over a window: counts, rates and duration quantiles (seconds)."""

    started: int = 0
    completed: int = 0
    failed: int = 0
    compensated: int = 0
    cancelled: int = 0
    step_retries: int = 0
    operator_retries: int = 0
    durations: list[int] = field(default_factory=empty_histogram)
    duration_sum: float = 0.0

    @property
    def taken_back(self) -> int:
        """Failures an operator retried in the window: each took back one ending (``instance.retried`` follows
        only a failed instance), at most the failures counted here (the one retried may have failed before)."""
        return min(self.operator_retries, self.failed)

    @property
    def failures(self) -> int:
        """Endings that were failures or compensations, without the failures an operator retried."""
        return self.failed - self.taken_back + self.compensated

    @property
    def finished(self) -> int:
        """Endings in the window: completions, failures, compensations and cancellations, an instance retried
        after failing counted by how it ended next (failed, retried and completed is one completion)."""
        return self.completed + self.failed - self.taken_back + self.compensated + self.cancelled

    @property
    def failure_rate(self) -> float | None:
        """:attr:`failures` over :attr:`finished` (None when nothing ended)."""
        return self.failures / self.finished if self.finished else None

    @property
    def timed(self) -> int:
        """How many runs completed in the window with a duration (what the quantiles come from)."""
        return sum(self.durations)

    @property
    def too_few_timed(self) -> bool:
        """Some timed runs, but fewer than :data:`MIN_RUNS_FOR_QUANTILES`: the quantiles are withheld."""
        return 0 < self.timed < MIN_RUNS_FOR_QUANTILES

    @property
    def p50(self) -> float | None:
        """Median duration in seconds; None without :data:`MIN_RUNS_FOR_QUANTILES` timed runs."""
        return quantile(self.durations, 0.5) if self.timed >= MIN_RUNS_FOR_QUANTILES else None

    @property
    def p95(self) -> float | None:
        """95th-percentile duration in seconds; None without :data:`MIN_RUNS_FOR_QUANTILES` timed runs."""
        return quantile(self.durations, 0.95) if self.timed >= MIN_RUNS_FOR_QUANTILES else None


def health_by_workflow(hours: int, now: datetime | None = None) -> dict[str, Health]:
    """Workflow name -> :class:`Health` over the last ``hours`` hours (one query over workflows x hours rows)."""
    result: dict[str, Health] = defaultdict(Health)
    rows = WorkflowHourStats.objects.filter(window_rows(hours, now)).values("workflow_name", *_SUMMED)
    for row in rows:
        health = result[row["workflow_name"]]
        for name in COUNTERS:
            setattr(health, name, getattr(health, name) + row[name])
        health.durations = add_histograms(health.durations, row["durations"] or [])
        health.duration_sum += row["duration_sum"]
    return dict(result)


def timeline(hours: int, now: datetime | None = None) -> dict[str, Any]:
    """Starts, completions and failures (every workflow) per hour over the last ``hours`` hours, or per UTC day
    beyond three days, for a chart: ``{"labels": [aware datetimes], "step": timedelta, "started": [...],
    "completed": [...], "failed": [...]}`` (failed counts compensations too); empty slots are zeros. Per day, the
    first slot holds only the hours of its day inside the window, so the slots add up to the window's totals."""
    from django.db.models import Sum

    span, first = window(hours, now)
    step = timedelta(hours=span)
    slots = []
    moment, end = first, window_start(1, now)
    while moment <= end:
        slots.append(moment)
        moment += step
    index = {slot: i for i, slot in enumerate(slots)}
    series = {"started": [0] * len(slots), "completed": [0] * len(slots), "failed": [0] * len(slots)}
    rows = (
        WorkflowHourStats.objects.filter(window_rows(hours, now))
        .values("hour")
        .order_by("hour")
        .annotate(s=Sum("started"), c=Sum("completed"), f=Sum("failed"), x=Sum("compensated"))
    )
    for row in rows:
        # The first day's hour rows fall into that day's slot.
        position = index.get(row["hour"] if span == SPAN_HOUR else row["hour"].replace(hour=0))
        if position is None:
            continue
        series["started"][position] += row["s"] or 0
        series["completed"][position] += row["c"] or 0
        series["failed"][position] += (row["f"] or 0) + (row["x"] or 0)
    return {"labels": slots, "step": step, **series}


def versions_seen() -> dict[tuple[str, int], datetime]:
    """(workflow, version) -> when a Baton process first saw it registered."""
    return {
        (row[0], row[1]): row[2]
        for row in WorkflowVersionSeen.objects.values_list("workflow_name", "workflow_version", "first_seen_at")
    }


def human_tasks_open() -> dict[str, int]:
    """Open human tasks now, and how many of them are overdue (past their SLA, less those held by their instance's
    pause: the rule Incidents lists by): ``{"open": n, "overdue": m}``.

    Asked of the human side through its port (``orchestrator.ports.HumanTasks.tasks_open_counts``): the engine
    knows no task model. Zeros when no human side is registered."""
    from orchestrator.ports import human_tasks_or_none

    side = human_tasks_or_none()
    return side.tasks_open_counts(timezone.now()) if side is not None else {"open": 0, "overdue": 0}


def totals_by_workflow() -> dict[str, dict[str, Any]]:
    """Workflow name -> its all-time row (for /metrics' counters): the counts, the instance duration histogram and
    its sum, and per step name its histogram and sum. One query over one row per workflow."""
    result: dict[str, dict[str, Any]] = {}
    for row in WorkflowHourStats.objects.filter(span=SPAN_ALL).values("workflow_name", *_SUMMED, "step_durations"):
        total = result.setdefault(
            row["workflow_name"],
            {**dict.fromkeys(COUNTERS, 0), "durations": empty_histogram(), "duration_sum": 0.0, "steps": {}},
        )
        for name in COUNTERS:
            total[name] += row[name]
        total["durations"] = add_histograms(total["durations"], row["durations"] or [])
        total["duration_sum"] += row["duration_sum"]
        for step, timing in (row["step_durations"] or {}).items():
            before = total["steps"].get(step, {"buckets": empty_histogram(), "sum": 0.0})
            total["steps"][step] = {
                "buckets": add_histograms(before["buckets"], timing.get("buckets", [])),
                "sum": before["sum"] + float(timing.get("sum", 0.0)),
            }
    return result


# --- comparing two versions -------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    """A short, stable text for one attribute of a node (callables by their qualified name)."""
    if callable(value) and not isinstance(value, type):
        module = getattr(value, "__module__", "")
        return f"{module}.{getattr(value, '__qualname__', repr(value))}"
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, timedelta):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        inner = ", ".join(f"{f.name}={_describe(getattr(value, f.name))}" for f in dataclasses.fields(value))
        return f"{type(value).__name__}({inner})"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_describe(v) for v in value) + "]"
    return repr(value)


def node_signature(workflow: Workflow, node: Node) -> dict[str, str]:
    """What a node is, attribute by attribute, as text: its kind, where it goes next, its branch, and every field
    of its definition (handlers by name; a parallel's branches by the names of their nodes)."""
    from orchestrator.dsl import Parallel

    signature = {
        "kind": node.kind,
        "goes to": workflow.next_after(node.name) or "end",
        "branch": str(workflow.branch_of.get(node.name) or "—"),
    }
    for item in dataclasses.fields(node):
        if item.name in ("name", "next"):
            continue
        value = getattr(node, item.name)
        if isinstance(node, Parallel) and item.name == "branches":
            signature["branches"] = " | ".join(" → ".join(n.name for n in branch) for branch in value)
        else:
            signature[item.name] = _describe(value)
    return signature


@dataclass
class VersionDiff:
    """What changed from ``old`` to ``new``: node names added and removed, and for each changed node the
    attributes that differ as (attribute, before, after)."""

    old: Workflow
    new: Workflow
    added: list[str]
    removed: list[str]
    changed: dict[str, list[tuple[str, str, str]]]

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed)


def version_diff(old: Workflow, new: Workflow) -> VersionDiff:
    """Compare two definitions node by node (by node name). Pure; no database access."""
    added = [name for name in new.nodes if name not in old.nodes]
    removed = [name for name in old.nodes if name not in new.nodes]
    changed: dict[str, list[tuple[str, str, str]]] = {}
    for name in new.nodes:
        if name not in old.nodes:
            continue
        before, after = node_signature(old, old.nodes[name]), node_signature(new, new.nodes[name])
        differences = [
            (key, before.get(key, "—"), after.get(key, "—"))
            for key in dict.fromkeys([*before, *after])
            if before.get(key) != after.get(key)
        ]
        if differences:
            changed[name] = differences
    return VersionDiff(old=old, new=new, added=added, removed=removed, changed=changed)


# --- the catalog and the dashboard --------------------------------------------------------------------------


@dataclass
class VersionRow:
    """One version of a workflow in the catalog: its definition (None when no process here registers it any more),
    when it was first seen, and its instances by state now."""

    name: str
    version: int
    workflow: Workflow | None
    first_seen: datetime | None
    states: dict[str, int]

    @property
    def running(self) -> int:
        return sum(self.states.get(state, 0) for state in LIVE_STATES)

    @property
    def total(self) -> int:
        return sum(self.states.values())


@dataclass(frozen=True)
class RetiredWorkflow:
    """Stands in for the definition of a workflow no process here registers any more, whose instances are still
    counted: the catalog lists it by name (its instances may need an operator) with the fields a page reads."""

    name: str
    title: str = ""
    owner: str = ""
    criticality: str = ""
    description: str = "No process here registers this workflow any more; its instances are still counted."
    start_form: None = None

    @property
    def display_title(self) -> str:
        return self.name


@dataclass
class CatalogEntry:
    """One workflow in the catalog: its latest definition (a :class:`RetiredWorkflow` when no version of it is
    registered any more), every version, and its health over the window."""

    workflow: Workflow | RetiredWorkflow
    versions: list[VersionRow]
    health: Health
    failed_now: int
    # Steps stuck per console.selectors.stuck_steps (the one definition); the console passes them to catalog().
    stuck_steps: int = 0

    @property
    def deployed(self) -> bool:
        """Whether some version of the workflow is registered here."""
        return isinstance(self.workflow, Workflow)

    @property
    def running(self) -> int:
        return sum(v.running for v in self.versions)

    @property
    def stuck(self) -> int:
        """Instances failed and waiting for an operator, plus steps stuck (running past their timeout)."""
        return self.failed_now + self.stuck_steps


def catalog(hours: int = 24, now: datetime | None = None, stuck: dict[str, int] | None = None) -> list[CatalogEntry]:
    """Every registered workflow with its versions (registered, or still holding instances), their first-seen
    times and instances by state, and its health over the last ``hours`` hours; then, by name, every workflow no
    longer registered at all whose instances are still counted (as a :class:`RetiredWorkflow`). Five small queries
    whatever the number of instances; a registered version missing from the first-seen table is recorded on the way.

    ``stuck``: workflow name -> its stuck steps, as the caller defines stuck (the console:
    ``console.selectors.stuck_by_workflow``); the engine does not define it twice."""
    from orchestrator import registry
    from orchestrator.rollups import record_versions

    counts = state_counts()
    seen = versions_seen()
    if any((w.name, w.version) not in seen for w in registry.all_definitions()):
        record_versions(now, again=True)
        seen = versions_seen()
    health = health_by_workflow(hours, now)
    stuck = stuck or {}
    entries = []
    registered = registry.latest_all()
    known = {w.name for w in registered}
    shown: list[Workflow | RetiredWorkflow] = [*registered]
    shown += [RetiredWorkflow(name) for name in sorted({name for (name, _v) in counts} - known)]
    for latest in shown:
        numbers = {w.version for w in registry.all_versions(latest.name)}
        numbers |= {version for (name, version) in counts if name == latest.name}
        versions = []
        for number in sorted(numbers, reverse=True):
            definition = registry.get(latest.name, number) if registry.is_registered(latest.name, number) else None
            versions.append(
                VersionRow(
                    name=latest.name,
                    version=number,
                    workflow=definition,
                    first_seen=seen.get((latest.name, number)),
                    states=counts.get((latest.name, number), {}),
                )
            )
        entries.append(
            CatalogEntry(
                workflow=latest,
                versions=versions,
                health=health.get(latest.name, Health()),
                failed_now=sum(v.states.get(InstanceState.FAILED, 0) for v in versions),
                stuck_steps=stuck.get(latest.name, 0),
            )
        )
    return entries


@dataclass
class Dashboard:
    """What the dashboard shows, for one window: instances by state now, the timeline, per-workflow health, open
    and overdue human tasks, and how fresh the figures are."""

    hours: int
    since: datetime  # the window's first hour (UTC)
    by_state: dict[str, int]
    timeline: dict[str, Any]
    workflows: list[tuple[str, Health]]
    tasks: dict[str, int]
    rolled_at: datetime | None
    swept_at: datetime | None
    backlog: int
    totals: Health = field(default_factory=Health)


def dashboard(hours: int = 24, now: datetime | None = None) -> Dashboard:
    """The dashboard's figures over the last ``hours`` hours (``WINDOWS``): six small queries over the roll-ups and
    the open tasks, whatever the number of instances."""
    from django.db.models import Max

    from orchestrator.models import AuditEvent, RollupCursor
    from orchestrator.rollups import CURSOR

    by_state: dict[str, int] = defaultdict(int)
    for states in state_counts().values():
        for state, count in states.items():
            by_state[state] += count
    health = health_by_workflow(hours, now)
    totals = Health()
    for item in health.values():
        for name in COUNTERS:
            setattr(totals, name, getattr(totals, name) + getattr(item, name))
        totals.durations = add_histograms(totals.durations, item.durations)
    cursor: dict[str, Any] = dict(
        RollupCursor.objects.filter(name=CURSOR).values("position", "rolled_at", "swept_at").first() or {}
    )
    newest = AuditEvent.objects.aggregate(newest=Max("id"))["newest"] or 0
    return Dashboard(
        hours=hours,
        since=window_start(hours, now),
        by_state={state: by_state.get(state, 0) for state in InstanceState.values},
        timeline=timeline(hours, now),
        workflows=sorted(health.items()),
        tasks=human_tasks_open(),
        rolled_at=cursor.get("rolled_at"),
        swept_at=cursor.get("swept_at"),
        backlog=max(0, newest - cursor.get("position", 0)),
        totals=totals,
    )
