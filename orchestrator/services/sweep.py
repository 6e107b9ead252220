"""The one periodic pass: dispatch due steps, recover lost leases, end pauses, fire task deadlines; each due item
in its own transaction, so one broken instance never stops the others (docs/architecture.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from orchestrator import registry, rollups
from orchestrator.audit_actions import AuditAction
from orchestrator.events import sweep_extensions
from orchestrator.models import (
    ACTIVE_INSTANCE_STATES,
    DISPATCHABLE_STEP_STATES,
    AuditEvent,
    InstanceState,
    StepRun,
    StepState,
    WorkflowInstance,
)
from orchestrator.ports import human_tasks_or_none
from orchestrator.services.instances import instance_resume
from orchestrator.services.lifecycle import fail_for_missing_definition, first_line, settle
from orchestrator.services.locks import (
    SWEEPER,
    definition_or_none,
    definition_unavailable,
    lock_instance,
    lock_step,
    step_save,
)
from orchestrator.services.results import clean_text
from orchestrator.services.steps import record_failure
from orchestrator.services.sweep_report import SweepReport as SweepReport  # its home until it moved below the port
from orchestrator.services.unit import Fenced, Unit, send_step, step_dispatch_options

logger = logging.getLogger(__name__)


# The signal waits' pass: ``(now, report, isolated)`` -> its counts, put in ``report.signals``. The signals module
# (orchestrator/services/signals.py) sits above this one and registers it from ``OrchestratorConfig.ready()``
# (``signals.register``), so the sweep never imports it.
SignalsPass = Callable[[datetime, SweepReport, Callable[..., int]], dict[str, int]]
_signals_pass: SignalsPass | None = None


def register_signals_pass(work: SignalsPass) -> None:
    """Make ``work`` the sweep's signal pass (called once at start-up; registering again replaces it). Raises
    nothing."""
    global _signals_pass
    _signals_pass = work


def sweep(now: datetime | None = None) -> SweepReport:
    """The one periodic pass: dispatch due steps, recover lost leases, resume paused instances, run deadlines.

    ``now`` defaults to the clock. Each due item is handled in its own transaction, and one that raises is logged
    once, audited on its instance, counted in ``errors`` and skipped: one broken instance never holds up the
    others' work. The human side's deadlines and claims are swept through the engine's port when an app registered
    one (``orchestrator.ports``). Raises only what the database raises outside a due item (the batch queries).
    """
    now = now or timezone.now()
    report = SweepReport()
    batch = settings.BATON_SWEEP_BATCH
    report.dispatched = isolated(report, "dispatch", "sweep", None, None, partial(_dispatch_due, now, batch))

    expired = list(
        StepRun.objects.filter(state=StepState.RUNNING, lease_expires_at__lt=now)
        .order_by("lease_expires_at")
        .values_list("pk", "instance_id")[:batch]
    )
    for step_id, instance_id in expired:
        report.leases_expired += isolated(
            report, "lease expiry", "step", step_id, instance_id, partial(_lease_expire, step_id, now)
        )

    paused = list(
        WorkflowInstance.objects.filter(state=InstanceState.PAUSED, paused_until__lte=now).values_list(
            "pk", "workflow_name", "workflow_version"
        )[:batch]
    )
    for instance_id, name, version in paused:
        registered = registry.is_registered(name, version)
        report.resumed += isolated(
            report, "pause end", "instance", instance_id, instance_id, partial(_pause_end, instance_id, now, registered)
        )
    if _signals_pass is not None:  # registered by orchestrator/services/signals.py at start-up
        try:
            report.signals = _signals_pass(now, report, isolated)
        except Exception as exc:
            report.errors += 1
            sweep_item_failed("signal check", "sweep", None, None, exc)
    for name, work in sweep_extensions().items():  # scheduled starts, webhook deliveries (orchestrator/events.py)
        try:
            report.extensions[name] = work(now, report)
        except Exception as exc:
            report.errors += 1
            sweep_item_failed(name, "sweep", None, None, exc)
    people = human_tasks_or_none()
    if people is not None:  # else no human side registered: no task deadlines, no claims
        report.tasks = people.tasks_sweep(now, report=report)
        try:
            found = people.tasks_release_unfit(now)
            report.unfit = {"unfit_released": found["released"], "unfit_escalated": found["escalated"]}
        except Exception as exc:
            report.errors += 1
            sweep_item_failed("claim check", "sweep", None, None, exc)
    # The dashboard's and /metrics' counts: the audit events since the last pass, folded (orchestrator/rollups.py).
    try:
        report.rolled_up = rollups.rollup_pass(now)
    except Exception as exc:
        report.errors += 1
        sweep_item_failed("roll-up", "sweep", None, None, exc)
    return report


def _dispatch_due(now: datetime, batch: int) -> int:
    stale = now - timedelta(seconds=settings.BATON_REDISPATCH_AFTER)
    with transaction.atomic():
        due = list(
            StepRun.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(
                state__in=DISPATCHABLE_STEP_STATES,
                due_at__lte=now,
                instance__state__in=[*ACTIVE_INSTANCE_STATES, InstanceState.COMPENSATING],
            )
            .filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=stale))
            .order_by("due_at")
            .values_list("pk", flat=True)[:batch]
        )
        if due:
            StepRun.objects.filter(pk__in=due).update(dispatched_at=now)
            options = step_dispatch_options(due)  # a re-send carries the step's queue and time limits too
            for step_id in due:
                transaction.on_commit(partial(send_step, step_id, options.get(step_id, {})))
        return len(due)


def _pause_end(instance_id: int, now: datetime, registered: bool) -> int:
    if registered:
        return int(instance_resume(instance_id, actor=SWEEPER, reason="pause ended", only_if_due=True, now=now))
    # Resuming needs the definition (its deadlines move on by the pause): the pause's end fails the instance with
    # the reason instead, once, and an operator's retry takes it up when the definition is back.
    with transaction.atomic():
        unit = Unit(lock_instance(instance_id), SWEEPER, now=now)
        instance = unit.instance
        if instance.state == InstanceState.PAUSED and instance.paused_until and instance.paused_until <= now:
            instance.paused_until = None
            fail_for_missing_definition(unit)
        unit.finish()
    return 0


# (work, error type, message) of the sweep failures this process has logged in full: one traceback per kind of
# failure, however many items or passes meet it (a lost database session fails every item the same way).
_logged_failures: dict[tuple[Any, ...], None] = {}
LOGGED_FAILURES_KEPT = 1000


def isolated(
    report: SweepReport | None,
    work: str,
    subject_type: str,
    subject_id: int | None,
    instance_id: int | None,
    handle: Any,
) -> int:
    """Run ``handle()`` (one due item of a sweep, in its own transaction) and return its count; if it raises, the
    failure is logged (in full once per process), audited on ``instance_id`` (once while it repeats) and counted
    in ``report.errors`` (when there is a report), and 0 is returned so the pass goes on.

    ``work`` names the kind of due work ("lease expiry", "pause end", "task deadline"); ``subject_type`` and
    ``subject_id`` the row it was about.
    """
    try:
        return int(handle())
    except Exception as exc:
        if report is not None:
            report.errors += 1
        sweep_item_failed(work, subject_type, subject_id, instance_id, exc)
        return 0


def sweep_item_failed(
    work: str, subject_type: str, subject_id: int | None, instance_id: int | None, exc: Exception
) -> None:
    """Log and audit one sweep item that raised; never raises itself.

    The first failure of its kind (work, error type, message) is logged with its traceback, later ones at DEBUG;
    the audit event goes on ``instance_id``'s chain unless it is already that chain's latest event.
    """
    message = clean_text(first_line(str(exc)) or repr(exc), 500)
    key = (work, type(exc).__name__, message)
    if key not in _logged_failures:
        if len(_logged_failures) >= LOGGED_FAILURES_KEPT:
            _logged_failures.clear()
        _logged_failures[key] = None
        logger.error("sweep: %s of %s %s failed; skipped", work, subject_type, subject_id, exc_info=exc)
    else:
        # Seen before in this process: one line, no traceback, so a failure that repeats every pass cannot flood.
        logger.debug("sweep: %s of %s %s failed again: %s: %s", work, subject_type, subject_id, type(exc), message)
    if instance_id is None:
        return
    try:
        _audit_sweep_failure(work, subject_type, subject_id, instance_id, type(exc).__name__, message)
    except Exception:
        logger.warning("sweep: could not audit the failure on instance %s", instance_id, exc_info=True)


def _audit_sweep_failure(
    work: str, subject_type: str, subject_id: int | None, instance_id: int, error_type: str, message: str
) -> None:
    with transaction.atomic():
        instance = WorkflowInstance.objects.select_for_update(skip_locked=True).filter(pk=instance_id).first()
        if instance is None:
            return  # gone, or busy: the next pass tries again
        last = AuditEvent.objects.filter(instance_id=instance_id).order_by("-seq").values("action", "payload").first()
        payload = {"work": work, "error_type": error_type, "error": message}
        if last and last["action"] == AuditAction.SWEEP_FAILED and last["payload"] == payload:
            return  # the same failure as the instance's latest event: once is enough
        unit = Unit(instance, SWEEPER, broadcast=False)
        unit.audit(
            subject_type,
            subject_id,
            reason=f"{error_type}: {message}",
            payload=payload,
            action=AuditAction.SWEEP_FAILED,
        )
        unit.finish()


def _lease_expire(step_id: int, now: datetime) -> int:
    try:
        return _expire(step_id, now)
    except Fenced:
        return 0  # the worker recorded its outcome while this pass waited


def _expire(step_id: int, now: datetime) -> int:
    with transaction.atomic():
        locked = lock_step(step_id, skip_locked=True)
        if locked is None:
            return 0
        instance, step = locked
        if step.state != StepState.RUNNING or not step.lease_expires_at or step.lease_expires_at >= now:
            return 0
        unit = Unit(instance, SWEEPER, now=now)
        workflow = definition_or_none(instance)
        if workflow is None:
            # No definition, no retry policy and nothing to run a retry with: the step dies, the instance fails.
            record_failure(unit, step, None, "UnknownWorkflow", definition_unavailable(instance), True)
        else:
            record_failure(
                unit,
                step,
                workflow.node(step.name),
                "LeaseExpired",
                f"no result by {step.lease_expires_at.isoformat()}: the worker died or the step timed out",
                False,
            )
        # The retry is due now: dispatch it in this pass rather than waiting for the next one.
        if step.state == StepState.FAILED and step.due_at and step.due_at <= now:
            step.dispatched_at = now
            step_save(step, ["dispatched_at"])
            unit.dispatch(step)
        settle(unit)
        unit.finish()
        return 1
