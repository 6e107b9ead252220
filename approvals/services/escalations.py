"""Escalations answered: an operator's Retry, Skip, Mark resolved or Fail instance, carried out by the engine's
operations (``step_retry``, ``step_skip``, ``compensation_resolve``, ``instance_fail``): the same ones an
operator's instance retry uses, so a step retried either way gets the same attempt budget."""

from __future__ import annotations

from django.contrib.auth.models import User

from approvals.models import HumanTask
from approvals.services.base import (
    FAIL,
    RESOLVED,
    RETRY,
    SKIP,
    TaskConflict,
    TaskInvalid,
    decision_not_taken,
    task_complete,
)
from orchestrator.dsl import DefinitionError
from orchestrator.models import InstanceState, StepKind, StepState
from orchestrator.services.compensation import compensation_resolve, saga_begun
from orchestrator.services.lifecycle import instance_fail, settle
from orchestrator.services.locks import definition_of
from orchestrator.services.steps import step_node, step_retry, step_skip
from orchestrator.services.unit import Unit


def escalation_resolve(unit: Unit, task: HumanTask, user: User, decision: str, comment: str) -> None:
    """An operator's answer (``decision``: RETRY, SKIP, RESOLVED or FAIL, with ``comment`` as the audited reason)
    to escalation ``task`` of a failed step or compensation, inside the caller's transaction (``unit`` holds the
    locked instance): complete the task, then retry the step, skip it, mark the compensation done by hand, or fail
    the instance.

    Raises TaskInvalid for an unknown answer, a missing comment or an answer that does not fit the step (Skip for
    a compensation, Mark resolved for a forward step); TaskConflict when the instance's state forbids it (a
    compensation's escalation while the instance is not compensating, running or skipping a forward step once the
    saga began, Skip or Fail instance while it is paused); whatever entering the next node raises (Skip), for the
    caller to roll back and refuse."""
    if decision not in (RETRY, SKIP, FAIL, RESOLVED):
        message = decision_not_taken(task, decision)
        raise TaskInvalid(message, {"decision": [message]})
    if not comment:
        raise TaskInvalid("Give a reason: it goes into the audit trail.", {"comment": ["Required."]})
    step = task.step
    instance = unit.instance
    workflow = definition_of(instance)
    is_compensation = step.kind == StepKind.COMPENSATION
    if decision == RESOLVED and not is_compensation:
        message = "Mark resolved applies to a failed compensation; use Skip for a failed step."
        raise TaskInvalid(message, {"decision": [message]})
    if decision == SKIP and is_compensation:
        message = "Use Mark resolved once the compensation has been done by hand."
        raise TaskInvalid(message, {"decision": [message]})
    if is_compensation and instance.state != InstanceState.COMPENSATING:
        then = (
            "retry it to go on with its compensation"
            if instance.state == InstanceState.FAILED
            else "nothing to resolve"
        )
        raise TaskConflict(f"The workflow is {instance.get_state_display().lower()}: {then}.")
    if not is_compensation and decision in (RETRY, SKIP) and saga_begun(instance):
        # The saga is undoing this instance's work: running or skipping ahead would redo what was undone.
        raise TaskConflict(
            "This workflow is being compensated: its steps cannot run again. Choose Fail instance to close this."
        )
    if instance.state == InstanceState.PAUSED and decision in (SKIP, FAIL):
        # Held, the instance enters nothing after a skipped step and cannot fail: the answer would be recorded, the
        # task closed, and once resumed the instance would wait on nobody. A retry only schedules the step, which
        # runs on the resume.
        raise TaskConflict(
            "The workflow is paused: resume it before skipping the step or failing the instance "
            "(or cancel it to stop it for good)."
        )
    if decision == RETRY and step.state == StepState.DEAD:
        try:
            step_node(workflow, step)
        except DefinitionError as exc:
            # The same version deployed again without the step's node, or with another kind of node there: the
            # retry could not run it (a wait re-armed at a task failed an assertion).
            raise TaskConflict(
                f"Cannot retry: {exc}. Deploy the version this instance ran (a changed definition needs a new "
                "version), or choose Fail instance."
            ) from None
    task_complete(unit, task, user, decision, comment, {})
    if step.state != StepState.DEAD:
        return
    if decision == RETRY:
        step_retry(unit, workflow, step, comment)
    elif decision == RESOLVED:
        compensation_resolve(unit, workflow, step, comment)
    elif decision == SKIP:
        step_skip(unit, workflow, step, comment)
    elif decision == FAIL:
        instance_fail(
            unit,
            f"failed by operator: {comment}",
            allowed=(InstanceState.RUNNING, InstanceState.WAITING, InstanceState.COMPENSATING),
            audit_reason=comment,
        )
    settle(unit)
