"""The catalog (every workflow, its versions, health, diagrams and what changed between versions) and the
dashboard (operators and admins). Both read the roll-ups through ``orchestrator.stats``: a constant number of
small queries whatever the number of instances.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_safe

from console import selectors
from orchestrator import registry, stats
from orchestrator.bidi import isolate
from orchestrator.diagram import workflow_dot
from orchestrator.dsl import Workflow
from orchestrator.typing import AuthedRequest

# Who sees the dashboard: operators (and admins, who hold every permission).
DASHBOARD_PERMISSION = "orchestrator.operate_workflowinstance"


def _window(request: AuthedRequest) -> str:
    """The ``window`` asked for (24h, 7d, 30d); anything else is named in a message and 24h is used."""
    window = request.GET.get("window", "24h")
    if window not in stats.WINDOWS:
        shown = str(window).replace("\x00", "")[:40]
        said = isolate(shown)
        messages.warning(request, f"“{said}” is not a window; showing the last 24 hours (choose 24h, 7d or 30d).")
        return "24h"
    return window


@login_required
@require_safe
def catalog(request: AuthedRequest) -> HttpResponse:
    """Every workflow: description, owner, criticality, versions with their running instances, and health over the
    window (failure rate, p95 duration, stuck), each figure linking to the instance list filtered to it."""
    window = _window(request)
    entries = stats.catalog(stats.WINDOWS[window], stuck=selectors.stuck_by_workflow())
    context = {
        "entries": entries,
        "window": window,
        "windows": list(stats.WINDOWS),
        "min_runs": stats.MIN_RUNS_FOR_QUANTILES,
        "active_nav": "workflows",
    }
    return render(request, "console/catalog.html", context)


def _version_arg(request: AuthedRequest, key: str, name: str, problems: list[str]) -> Workflow | None:
    raw = request.GET.get(key, "")
    if not raw:
        return None
    try:
        number = int(raw)
        return registry.get(name, number)
    except (ValueError, registry.UnknownWorkflow):
        shown = str(raw).replace("\x00", "")[:20]
        problems.append(f"{key.capitalize()}: “{shown}” is not a version of this workflow that is deployed here.")
        return None


@login_required
@require_safe
def workflow_detail(request: AuthedRequest, name: str) -> HttpResponse:
    """One workflow: every version (first seen, instances by state, its diagram) and, with ``?from=N&to=M``, what
    changed between two versions (nodes added, removed, and changed attribute by attribute). A version that is no
    number or not deployed is named on the page, which answers 400 keeping what was asked."""
    entries = stats.catalog(stats.WINDOWS[_window(request)], stuck=selectors.stuck_by_workflow())
    entry = next((e for e in entries if e.workflow.name == name), None)
    if entry is None:
        raise Http404("No such workflow.")
    problems: list[str] = []
    old = _version_arg(request, "from", name, problems)
    new = _version_arg(request, "to", name, problems)
    deployed = [v.workflow for v in entry.versions if v.workflow is not None]
    if not problems and old is None and new is None and len(deployed) >= 2:
        new, old = deployed[0], deployed[1]  # by default: what the latest version changed
    diff = stats.version_diff(old, new) if old is not None and new is not None else None
    if (old is None) != (new is None) and not problems:
        problems.append("Pick two versions to compare.")
    context = {
        "entry": entry,
        "workflow": entry.workflow,
        "diff": diff,
        "problems": problems,
        "asked": {"from": request.GET.get("from", "")[:20], "to": request.GET.get("to", "")[:20]},
        "dots": {v.version: workflow_dot(v.workflow) for v in entry.versions if v.workflow is not None},
        "window": request.GET.get("window", "24h") if request.GET.get("window") in stats.WINDOWS else "24h",
        "active_nav": "workflows",
    }
    return render(request, "console/workflow_detail.html", context, status=400 if problems else 200)


DAY = 86400


def timeline_labels(slots: list[datetime], step: timedelta, since: datetime | None = None) -> list[str]:
    """The chart's label for each slot (aware datetimes starting a UTC hour or a UTC day, ``step`` apart).

    Hours in the current zone with its abbreviation, so the hour repeated when summer time ends reads
    ``02:00 CEST`` then ``02:00 CET``. Days by their UTC date: the roll-up's day is a UTC day, and its local start
    (19:00 the evening before in New York) would name the wrong date; the page says they are UTC days. A window
    that begins inside its first day (``since``, after that day's midnight) counts only that day's later hours, and
    its label says from when: ``Nov 23 from 16:00 UTC``."""
    if step.total_seconds() >= DAY:
        labels = [moment.astimezone(UTC).strftime("%b %d") for moment in slots]
        if labels and since is not None and since > slots[0]:
            labels[0] += since.astimezone(UTC).strftime(" from %H:%M UTC")
        return labels
    return [timezone.localtime(moment).strftime("%b %d %H:%M %Z") for moment in slots]


@login_required
@require_safe
def dashboard(request: AuthedRequest) -> HttpResponse:
    """Operators and admins: instances by state, starts and completions over time, p50/p95 duration and failure
    rate per workflow, retries, open and overdue human tasks. Others get 404 (the page is not for their role)."""
    if not request.user.has_perm(DASHBOARD_PERMISSION):
        raise Http404("No such page.")
    window = _window(request)
    data = stats.dashboard(stats.WINDOWS[window])
    step = data.timeline["step"]
    chart = {
        "labels": timeline_labels(data.timeline["labels"], step, data.since),
        "started": data.timeline["started"],
        "completed": data.timeline["completed"],
        "failed": data.timeline["failed"],
        "states": {state: count for state, count in data.by_state.items()},
    }
    context: dict[str, Any] = {
        "data": data,
        "window": window,
        "windows": list(stats.WINDOWS),
        "chart": chart,
        "zone": timezone.get_current_timezone_name(),
        "per": "hour" if step.total_seconds() < DAY else "UTC day",
        "since_label": "since " + timezone.localtime(data.since).strftime("%b %d %H:%M %Z"),
        "min_runs": stats.MIN_RUNS_FOR_QUANTILES,
        "active_nav": "dashboard",
    }
    return render(request, "console/dashboard.html", context)
