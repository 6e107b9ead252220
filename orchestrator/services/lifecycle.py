"""The instance's own transitions the other engine modules share: settle, fail, skip its open steps; a running
step's death; and the one rule for a retried step's attempt budget."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import DateTimeField, F, Value
from django.db.models.functions import Greatest

from orchestrator import rows
from orchestrator.audit_actions import AuditAction
from orchestrator.dsl import Node, Task, Timer, Workflow
from orchestrator.models import (
    ACTIVE_INSTANCE_STATES,
    BUSY_STEP_STATES,
    InstanceState,
    ReceivedSignal,
    StepKind,
    StepRun,
    StepState,
)
from orchestrator.ports import human_tasks_or_none
from orchestrator.services.locks import LIVE_STATES, definition_or_none, definition_unavailable, step_save
from orchestrator.services.unit import Unit


def instance_fail(
    unit: Unit, error: str, *, allowed: tuple[str, ...] = LIVE_STATES, audit_reason: str | None = None
) -> bool:
    """Fail the unit's instance with ``error`` (shown on its page) and audit it, if its state is in ``allowed``.

    ``audit_reason`` is the event's reason when it should differ from ``error`` (an operator's own words).
    Operator actions (an escalation's "Fail instance") and the engine (a dead step, a deadline, a missing
    definition) both fail an instance through here. Returns True if the instance failed. Raises nothing of its
    own.
    """
    instance = unit.instance
    if instance.state not in allowed:
        return False
    from_state, paused_at = instance.state, instance.paused_at
    instance.fail(error)
    unit.audit(
        "instance",
        instance.pk,
        from_state,
        instance.state,
        reason=instance.error if audit_reason is None else audit_reason,
        action=AuditAction.INSTANCE_FAILED,
    )
    if from_state == InstanceState.PAUSED and paused_at is not None:
        # A step that ran across the pause failed: the pause ends here (a retry runs the instance, it does not
        # pause it again), so what it held counts from now on, as a resume would have moved it.
        deadlines_shift(unit, paused_at)
    return True


def deadlines_shift(unit: Unit, paused_at: datetime) -> None:
    """Move the paused instance's duration deadlines on by the time they were held (see docs/architecture.md,
    "Deadlines and pauses"): a timer's wait, a Signal's timeout, a task's SLA and its escalation rungs count
    unpaused time only.

    A deadline whose clock started before the pause moves by ``unit.now - paused_at``; one started during it (a
    timer or task opened by a step that finished while paused, a wait re-armed by an escalation's Retry) by the
    time since it started (``created_at``; a wait's ``started_at``), so its whole span starts at the resume.
    Deadlines already due when the pause began stay due. A timer waiting ``until`` a date and a retry's back-off
    are wall-clock times: they keep their time and, if it fell inside the pause, fire on resume.

    Called when a pause ends: by the resume, and by a failure while paused (:func:`instance_fail`: the pause ends
    there too, and a task left open must not lose the time it was held). With the definition not loadable (the
    failure may be that), timers are left as they are, since a wall-clock one cannot be told from a duration; a
    retry is refused until the definition is back anyway. Raises nothing of its own.
    """
    workflow = definition_or_none(unit.instance)
    timers = StepRun.objects.filter(
        instance=unit.instance, kind=StepKind.TIMER, state=StepState.SCHEDULED, due_at__gt=paused_at
    )
    if workflow is None:
        timers = timers.none()
    else:
        timers = timers.exclude(
            name__in=[node.name for node in workflow.nodes.values() if isinstance(node, Timer) and node.until]
        )
    held = Value(unit.now, output_field=DateTimeField()) - Greatest(
        Value(paused_at, output_field=DateTimeField()), F("created_at")
    )
    timers.update(due_at=F("due_at") + held)
    # A Signal's timeout is a duration too (``Signal(timeout=timedelta)``): the wait is for the outside world, and
    # a wait of 48 h paused for 47 h gave the sender one hour. Its clock starts when the wait began waiting
    # (``started_at``): an escalation's Retry re-arms it for a whole new timeout, during the pause too, and moved by
    # the whole pause (counted from the step's creation, its first entry) it got that much extra time.
    since_wait = Value(unit.now, output_field=DateTimeField()) - Greatest(
        Value(paused_at, output_field=DateTimeField()), F("started_at"), F("created_at")
    )
    StepRun.objects.filter(
        instance=unit.instance, kind=StepKind.SIGNAL, state=StepState.RUNNING, due_at__gt=paused_at
    ).update(due_at=F("due_at") + since_wait)
    people = human_tasks_or_none()
    if people is not None:
        people.tasks_shift_deadlines(unit, paused_at, held)


# What a dead step's row changes (StepRun.die); a death that keeps a result adds "result".
DEAD_FIELDS = ("state", "error", "error_type", "finished_at", "lease_expires_at")


def step_die(
    unit: Unit,
    step: StepRun,
    error_type: str,
    error: str,
    *,
    payload: dict[str, Any],
    reason: str | None = None,
    result: dict[str, Any] | None = None,
    fenced: bool = True,
) -> None:
    """The one way a running ``step`` dies: ``StepRun.die`` (``error_type``, at most 200 characters, and ``error``,
    the whole message, at ``unit.now``), its row written, and a ``step.dead`` event (running -> dead) on the
    unit's chain with ``payload`` (each caller's own keys: the attempt, a timeout, the kept decision) and
    ``reason`` (default: the error's first line, :func:`first_line`). ``result``, when given, is the step's
    result from now on (what its death keeps: a kept decision or signal, ``RESULT_LOST``) and written too.

    ``fenced`` (the default) writes through :func:`~orchestrator.services.locks.step_save`, only if the step is
    still as :func:`~orchestrator.services.locks.lock_step` read it; ``False`` writes by key alone, for a step
    whose in-memory read is stale on purpose (re-read after a rolled-back savepoint, or read by the human side
    without the engine's lock: ``flow.step_stopped``). Sends nothing: what follows a death (fail, compensate,
    escalate) is the caller's. Raises ``Fenced`` (fenced only), and what the database raises."""
    step.die(error_type, error, unit.now)
    fields = list(DEAD_FIELDS)
    if result is not None:
        step.result = result
        fields.append("result")
    if fenced:
        step_save(step, fields)
    else:
        rows.update(step, fields)
    unit.audit(
        "step",
        step.pk,
        StepState.RUNNING,
        step.state,
        reason=first_line(error) if reason is None else reason,
        payload=payload,
        action=AuditAction.STEP_DEAD,
    )


def first_line(text: str) -> str:
    """The first line of ``text``, at most 500 characters (an error's summary for audit reasons). Raises nothing."""
    return text.strip().splitlines()[0][:500] if text.strip() else ""


def settle(unit: Unit) -> None:
    """Running while automated work is pending, waiting while only people and timers are. Raises nothing of its
    own."""
    instance = unit.instance
    if instance.state not in ACTIVE_INSTANCE_STATES:
        return
    busy = unit.scheduled_work
    workflow = definition_or_none(instance) if not busy else None
    if not busy and (workflow is None or workflow.has_parallel):
        # In a linear flow only the step this unit handled could have been busy, and the unit knows whether it
        # scheduled more; with parallel branches (or with no definition to tell) another branch may be working,
        # so ask.
        busy = instance.steps.filter(
            state__in=BUSY_STEP_STATES, kind__in=[StepKind.TASK, StepKind.COMPENSATION]
        ).exists()
    if (instance.state == InstanceState.RUNNING) != busy:
        from_state = instance.state
        instance.settle(busy)
        action = AuditAction.INSTANCE_RUNNING if busy else AuditAction.INSTANCE_WAITING
        unit.audit("instance", instance.pk, from_state, instance.state, action=action)


# Why a kept signal is rejected when its instance stops waiting for good (``drop_kept_signals``), by what happened.
KEPT_SIGNAL_ENDS = {
    "cancelled": "The instance was cancelled: no step will take this signal.",
    "compensating": "The instance began undoing its steps (compensation): no step will take this signal.",
    "completed": "The instance completed without waiting for it again: no step will take this signal.",
}


def drop_kept_signals(unit: Unit, ended: str, workflow: Workflow | None = None) -> None:
    """Reject every signal the unit's instance keeps (delivered, neither consumed nor rejected), because the
    instance has just ended or begun undoing (``ended``: a key of ``KEPT_SIGNAL_ENDS``) and no wait will ever take
    one: kept, the API showed it as waiting for ever. Called by the service that ends or compensates the instance,
    in its transaction (under the instance's lock, which every delivery takes, so none slips in between).

    One UPDATE through the partial index ``signal_kept`` (nothing to do costs one index probe), RETURNING the
    senders' ids for one ``signal.rejected`` audit event on the instance: a signal's other rejection (by the node
    that came to consume it) is audited too. The row's ``rejection`` has the consuming rejection's keys (``node``
    and ``step`` empty, the reason under ``errors``) and ``reason``. A failed instance is not final (a retry goes on
    and hands its kept signals on), so it keeps them; one failed after its compensation began dropped them when the
    compensation began.

    ``workflow`` is the instance's definition when the caller holds it: one without a Signal node never kept a
    signal, so no statement is sent (an approval that completes its instance stays at its pinned statement count).
    Raises nothing of its own.
    """
    if workflow is not None and not workflow.has_signal:
        return
    why = KEPT_SIGNAL_ENDS[ended]
    rejection = {"node": None, "step": None, "errors": {"instance": [why]}, "reason": why}
    table = ReceivedSignal._meta.db_table
    # SQLite (the demo) stores JSON as text and cannot read PostgreSQL's cast.
    as_json = "%s::jsonb" if connection.vendor == "postgresql" else "%s"
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET rejected_at = %s, rejection = {as_json}"
            " WHERE instance_id = %s AND consumed_at IS NULL AND rejected_at IS NULL RETURNING signal_id",
            [unit.now, json.dumps(rejection), unit.instance.pk],
        )
        signal_ids = sorted(row[0] for row in cursor.fetchall())
    if signal_ids:
        unit.audit(
            "instance",
            unit.instance.pk,
            reason=why,
            payload={"signal_ids": signal_ids, "instance_state": unit.instance.state},
            action=AuditAction.SIGNAL_REJECTED,
        )


def skip_open_steps(unit: Unit, reason: str, *, everything: bool = False, keep_running: bool = False) -> None:
    """Skip the instance's open forward steps and cancel their tasks; ``everything`` (a cancel) also takes
    compensation steps and every open task, escalations included. ``keep_running`` (a compensation's start)
    leaves task steps whose handler is running: their outcome is recorded, and undone if they took effect.
    Raises nothing of its own (the human side's cancels write through the unit)."""
    candidates = unit.instance.steps.filter(
        state__in=[StepState.PENDING, StepState.SCHEDULED, StepState.RUNNING, StepState.FAILED]
    )
    if not everything:
        candidates = candidates.exclude(kind=StepKind.COMPENSATION)
    if keep_running:
        candidates = candidates.exclude(kind=StepKind.TASK, state=StepState.RUNNING)
    open_steps = list(candidates)
    for step in open_steps:
        from_state = step.state
        step.skip(reason, unit.now)
        rows.update(step, ["state", "error", "finished_at", "lease_expires_at"])
        unit.audit("step", step.pk, from_state, step.state, reason=reason, action=AuditAction.STEP_SKIPPED)
    people = human_tasks_or_none()
    if people is None:
        return  # no human side registered: no task can exist to cancel
    if everything:
        people.tasks_cancel_for_instance(unit, reason)
    else:
        people.tasks_cancel_for_steps(unit, [s.pk for s in open_steps if s.kind == StepKind.HUMAN], reason)


def fail_for_missing_definition(unit: Unit) -> None:
    """Fail the unit's instance, if it is still open to failing, because its definition is not registered.

    The reason (:func:`definition_unavailable`) is audited and shown on the instance page; ``instance_retry``
    refuses with it until the definition is registered again, then takes the instance up where it stopped.

    Raises nothing of its own.
    """
    instance_fail(unit, definition_unavailable(unit.instance), allowed=(*LIVE_STATES, InstanceState.COMPENSATING))


def retry_attempts(step: StepRun, node: Node | None) -> int:
    """The one rule for extra attempts: a step retried by a person (an operator's instance retry, an escalation's
    Retry, a compensation retried) gets its node's whole retry budget again on top of the attempts it used (one
    attempt for a node without a retry policy: a timer, a definition gone). Returns the new ``max_attempts``.

    Raises nothing.
    """
    return step.attempt + (node.retry.max_attempts if isinstance(node, Task) else 1)
