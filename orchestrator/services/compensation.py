"""Compensation (the saga): undo the steps that took effect, latest first (docs/architecture.md, "Compensation")."""

from __future__ import annotations

from django.db.models import Q

from orchestrator import rows
from orchestrator.audit_actions import AuditAction
from orchestrator.dsl import Task, Workflow
from orchestrator.models import (
    BUSY_STEP_STATES,
    DISPATCHABLE_STEP_STATES,
    InstanceState,
    StepKind,
    StepRun,
    StepState,
    WorkflowInstance,
)
from orchestrator.ports import human_tasks_or_none
from orchestrator.services.lifecycle import drop_kept_signals, retry_attempts, skip_open_steps
from orchestrator.services.locks import definition_of
from orchestrator.services.unit import Unit

# In the result of a dead task step: its handler returned, so its side effect happened, but the result could not
# be recorded. Compensation undoes such a step like a succeeded one (docs/architecture.md).
RESULT_LOST = "result_lost"


def compensation_start(unit: Unit, reason: str) -> None:
    """Stop forward work and undo the steps that took effect, latest first; ``reason`` is audited and shown.
    Raises ``registry.UnknownWorkflow`` when the instance's definition is not registered."""
    instance = unit.instance
    from_state = instance.state
    instance.start_compensation(reason)
    unit.audit(
        "instance", instance.pk, from_state, instance.state, reason=reason, action=AuditAction.INSTANCE_COMPENSATING
    )
    # Every open task goes, a failed forward step's escalation too: retrying or skipping that step now would run
    # forward work behind the compensation's back.
    skip_open_steps(unit, reason=f"compensating: {reason}", everything=True, keep_running=True)
    # A begun saga never waits for a signal again (deliveries are refused from now on), so the kept ones go too;
    # the compensated end that follows has none left to drop.
    workflow = definition_of(instance)
    drop_kept_signals(unit, "compensating", workflow)
    compensation_next(unit, workflow)


def saga_begun(instance: WorkflowInstance) -> bool:
    """True once the instance has started compensating (a compensation step exists, or a step was marked
    compensated by hand): from then on no forward step may run again (docs/architecture.md, "Operator actions
    and the saga"). One query; not for the hot path.

    Raises nothing of its own.
    """
    if instance.state in (InstanceState.COMPENSATING, InstanceState.COMPENSATED):
        return True
    return instance.steps.filter(Q(kind=StepKind.COMPENSATION) | Q(state=StepState.COMPENSATED)).exists()


def compensation_retry(unit: Unit, reason: str) -> None:
    """Go on with a failed instance's compensation: its dead compensation steps get fresh attempts (their open
    escalations are cancelled), or, with none left to redrive, the next step to undo is scheduled (or the
    instance is compensated). Forward steps are never scheduled; any left open are skipped. Each dead compensation
    gets the attempt budget of :func:`~orchestrator.services.lifecycle.retry_attempts`. Raises
    ``django_fsm.TransitionNotAllowed`` unless the instance is failed; ``registry.UnknownWorkflow``."""
    instance = unit.instance
    workflow = definition_of(instance)
    from_state = instance.state
    instance.retry_compensation()
    unit.audit(
        "instance",
        instance.pk,
        from_state,
        instance.state,
        reason=reason,
        payload={"continues": "compensation"},
        action=AuditAction.INSTANCE_RETRIED,
    )
    skip_open_steps(unit, reason=f"compensating: {reason}", keep_running=True)
    compensations = list(
        instance.steps.filter(kind=StepKind.COMPENSATION, state__in=[*BUSY_STEP_STATES, StepState.DEAD])
    )
    dead = [step for step in compensations if step.state == StepState.DEAD]
    # A compensation still scheduled or failed-and-waiting (sent while the instance was failed) is sent again.
    for step in compensations:
        if step.state in DISPATCHABLE_STEP_STATES:
            unit.dispatch(step)
    for step in dead:
        node = workflow.node(step.name)
        step.max_attempts = retry_attempts(step, node)
        step.schedule(unit.now)
        step.dispatched_at = unit.now
        rows.update(step, ["state", "due_at", "dispatched_at", "max_attempts"])
        unit.audit(
            "step", step.pk, StepState.DEAD, step.state, reason=reason, action=AuditAction.COMPENSATION_SCHEDULED
        )
        unit.dispatch(step)
    people = human_tasks_or_none()
    if people is not None:
        people.tasks_cancel_for_steps(unit, [step.pk for step in dead], f"retried: {reason}")
    if not compensations:
        compensation_next(unit, workflow)


def compensation_resume(unit: Unit, workflow: Workflow) -> None:
    """A forward step that was running when the compensation began has ended: if the compensation was waiting for
    it (no compensation step under way or awaiting an operator), go on undoing.

    Raises as :func:`compensation_next`.
    """
    instance = unit.instance
    if instance.state != InstanceState.COMPENSATING:
        return  # failed mid-compensation: compensation_retry takes the step up with the rest
    if instance.steps.filter(kind=StepKind.COMPENSATION, state__in=[*BUSY_STEP_STATES, StepState.DEAD]).exists():
        return  # the chain is moving (or waits for an operator); its next pick includes this step
    compensation_next(unit, workflow)


def compensation_next(unit: Unit, workflow: Workflow) -> None:
    """Schedule the compensation of the latest step that took effect and is not undone yet, once no forward step is
    still running; with none left, the instance is compensated. Raises ``DefinitionError`` for a step the
    definition does not know."""
    instance = unit.instance
    running = list(
        instance.steps.filter(kind=StepKind.TASK, state=StepState.RUNNING).order_by("id").values_list("pk", flat=True)
    )
    if running:
        # Forward steps still running when the compensation began: their side effects may yet happen. Undo nothing
        # until each has recorded its outcome or lost its lease, so the undoing keeps the saga's order (latest
        # first) and a step whose handler returns meanwhile is undone too. A lease bounds the wait.
        unit.audit("instance", instance.pk, payload={"running": running}, action=AuditAction.COMPENSATION_WAITING)
        return
    # A step that died after its handler returned (RESULT_LOST) took effect as surely as a succeeded one.
    done_steps = instance.steps.filter(
        Q(state=StepState.SUCCEEDED) | Q(state=StepState.DEAD, result__has_key=RESULT_LOST), kind=StepKind.TASK
    ).order_by("-finished_at", "-id")
    for original in done_steps:
        node = workflow.node(original.name)
        if isinstance(node, Task) and node.compensate is not None:
            step = StepRun(
                instance=instance,
                name=original.name,
                kind=StepKind.COMPENSATION,
                state=StepState.SCHEDULED,
                max_attempts=node.retry.max_attempts,
                due_at=unit.now,
                dispatched_at=unit.now,
                compensates=original,
            )
            rows.insert(step)
            unit.audit(
                "step",
                step.pk,
                "",
                step.state,
                payload={"compensates": original.pk},
                action=AuditAction.COMPENSATION_SCHEDULED,
            )
            unit.dispatch(step)
            return
    from_state = instance.state
    instance.finish_compensation(unit.now)
    unit.audit("instance", instance.pk, from_state, instance.state, action=AuditAction.INSTANCE_COMPENSATED)


def compensation_step_succeeded(unit: Unit, workflow: Workflow, step: StepRun) -> None:
    """A compensation step succeeded: its original step is undone, go on to the next one.

    Raises as :func:`compensation_mark_done`.
    """
    original = step.compensates
    assert original is not None
    compensation_mark_done(unit, workflow, original)


def compensation_mark_done(unit: Unit, workflow: Workflow | None, original: StepRun, reason: str = "") -> None:
    """The original step is undone (by its compensation, or by a person); go on to the next one (with ``workflow``
    None, a definition that cannot be used, the caller fails the instance and its retry goes on). Raises
    ``django_fsm.TransitionNotAllowed`` when ``original`` is neither succeeded nor dead."""
    from_state = original.state
    original.mark_compensated()
    rows.update(original, ["state"])
    unit.audit("step", original.pk, from_state, original.state, reason=reason, action=AuditAction.STEP_COMPENSATED)
    if workflow is not None:
        compensation_next(unit, workflow)


def compensation_resolve(unit: Unit, workflow: Workflow, step: StepRun, reason: str) -> None:
    """An operator did a dead compensation ``step``'s work by hand: the step is skipped with ``reason`` (audited,
    kept as its error text "resolved by hand: ..."), its original step is marked compensated and the chain goes on
    (the next compensation is scheduled, or the instance is compensated).

    Raises ValueError when ``step`` is not a compensation step; ``django_fsm.TransitionNotAllowed`` when it cannot
    be skipped or its original cannot be marked compensated."""
    original = step.compensates
    if step.kind != StepKind.COMPENSATION or original is None:
        raise ValueError(f"step {step.pk} is not a compensation step")
    from_state = step.state
    step.skip(f"resolved by hand: {reason}", unit.now)
    rows.update(step, ["state", "error", "finished_at", "lease_expires_at"])
    unit.audit("step", step.pk, from_state, step.state, reason=reason, action=AuditAction.STEP_SKIPPED)
    compensation_mark_done(unit, workflow, original, reason=reason)
