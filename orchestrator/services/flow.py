"""Advancing an instance: enter the node that follows, one handler per node kind (:data:`ENTER`)."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from orchestrator import rows
from orchestrator.audit_actions import AuditAction
from orchestrator.dsl import COMPENSATE, Decision, Human, Node, Parallel, Task, Timer, Workflow, as_timedelta
from orchestrator.models import ACTIVE_INSTANCE_STATES, StepKind, StepRun, StepState
from orchestrator.ports import human_tasks
from orchestrator.services.compensation import compensation_start
from orchestrator.services.lifecycle import (
    drop_kept_signals,
    first_line,
    instance_fail,
    settle,
    skip_open_steps,
    step_die,
)
from orchestrator.services.locks import LIVE_STATES, EngineError, definition_of
from orchestrator.services.results import clean_text
from orchestrator.services.unit import Unit

# A decision loop that never waits would spin forever inside one transaction.
MAX_INLINE_HOPS = 100


def advance(unit: Unit, workflow: Workflow, step: StepRun) -> None:
    """Enter whatever follows ``step`` (its next node, its branch's join, or the end).

    Raises as :func:`enter_node`.
    """
    enter_node(unit, workflow, workflow.next_after(step.name), step.parent_id, step.branch, hops=0)


def enter_node(
    unit: Unit, workflow: Workflow, name: str | None, parent_id: int | None, branch: int | None, *, hops: int
) -> None:
    """Enter node ``name`` of ``workflow`` (None: the end of its sequence: the branch's join, or the instance
    completes) inside parallel step ``parent_id``'s ``branch`` (None outside a parallel), through the node kind's
    handler in :data:`ENTER`. ``hops`` counts the nodes entered without a wait.

    Raises :class:`EngineError` for a decision loop without a wait, a decision choosing what is not a node outside
    a parallel branch, a timer's ``until`` returning no aware datetime, an unknown node kind; ``DefinitionError``
    for a name the definition does not know; ``ports.HumanTasksMissing`` when a human step is entered and no app
    registered the human side; and whatever a decision's ``choose`` or a timer's ``until`` raises.
    """
    if hops > MAX_INLINE_HOPS:
        raise EngineError(f"{workflow.key}: more than {MAX_INLINE_HOPS} decisions without a wait")
    instance = unit.instance
    if name is None:
        if parent_id is not None:
            _branch_finished(unit, workflow, parent_id, branch, hops=hops)
        elif instance.state in LIVE_STATES:
            from_state = instance.state
            instance.complete(str(instance.data.get("outcome", "completed")), unit.now)
            unit.audit("instance", instance.pk, from_state, instance.state, action=AuditAction.INSTANCE_COMPLETED)
            drop_kept_signals(unit, "completed", workflow)
        return
    node = workflow.node(name)
    at = Place(workflow, parent_id, branch, hops)
    for kind in type(node).__mro__:
        handler = ENTER.get(kind)
        if handler is not None:
            handler(unit, at, node)
            return
    raise EngineError(f"unknown node kind {node!r}")


@dataclass(frozen=True)
class Place:
    """Where a node is entered: its workflow, the parallel step and branch it runs in, the hops so far."""

    workflow: Workflow
    parent_id: int | None
    branch: int | None
    hops: int

    def new_step(self, unit: Unit, node: Node, **fields: Any) -> StepRun:
        """An unsaved step run of ``node`` at this place. Raises nothing."""
        return StepRun(instance=unit.instance, name=node.name, parent_id=self.parent_id, branch=self.branch, **fields)


def _enter_task(unit: Unit, at: Place, node: Task) -> None:
    step = at.new_step(
        unit,
        node,
        kind=StepKind.TASK,
        state=StepState.SCHEDULED,
        max_attempts=node.retry.max_attempts,
        due_at=unit.now,
        dispatched_at=unit.now,
    )
    if unit.reserved_step_id is not None:
        # Its id was taken ahead: the row is written with the unit's audit events, one round trip less.
        step.pk, unit.reserved_step_id = unit.reserved_step_id, None
        unit.inserts.append(step)
    else:
        rows.insert(step)
    unit.audit("step", step.pk, "", step.state, payload={"node": node.name}, action=AuditAction.STEP_SCHEDULED)
    unit.dispatch(step)


def _enter_timer(unit: Unit, at: Place, node: Timer) -> None:
    due = unit.now + as_timedelta(node.wait) if node.wait is not None else node.until(dict(unit.instance.data))  # type: ignore[misc]
    if not isinstance(due, datetime) or timezone.is_naive(due):
        # Compared with an aware clock a naive time raises later, in the sweep; say what is wrong here.
        raise EngineError(f"timer {node.name!r}: until() returned {due!r}; it must return an aware datetime")
    step = at.new_step(unit, node, kind=StepKind.TIMER, state=StepState.SCHEDULED, due_at=due)
    rows.insert(step)
    unit.audit("step", step.pk, "", step.state, payload={"due_at": due.isoformat()}, action=AuditAction.STEP_SCHEDULED)
    if due <= unit.now:
        step.dispatched_at = unit.now
        rows.update(step, ["dispatched_at"])
        unit.dispatch(step)


def _enter_human(unit: Unit, at: Place, node: Human) -> None:
    # The step is inserted with its task (one statement on PostgreSQL).
    step = at.new_step(unit, node, kind=StepKind.HUMAN, state=StepState.RUNNING, started_at=unit.now)
    human_tasks().task_open(unit, step, node)


def _enter_decision(unit: Unit, at: Place, node: Decision) -> None:
    workflow = at.workflow
    assert node.choose is not None
    target = node.choose(dict(unit.instance.data))
    # Checked before anything is written: a value that is not a node name (a number, a list, a datetime, text
    # PostgreSQL cannot hold) failed later with an error that did not name the decision, and a step inside a
    # parallel branch (which the definition refuses as a static target) was entered outside its parallel.
    if target is not None and (not isinstance(target, str) or target not in workflow.nodes):
        raise EngineError(
            f"{workflow.key}: decision {node.name!r} chose {target!r}, which is not a node of the workflow;"
            " choose() must return a node name or None"
        )
    if target in workflow.branch_of:
        raise EngineError(
            f"{workflow.key}: decision {node.name!r} chose {target!r}, a step inside parallel"
            f" {workflow.branch_of[target][0]!r}; a decision can only go to a node outside parallel branches"
        )
    step = at.new_step(
        unit,
        node,
        kind=StepKind.DECISION,
        state=StepState.SUCCEEDED,
        started_at=unit.now,
        finished_at=unit.now,
        result={"next": target},
    )
    rows.insert(step)
    unit.audit("step", step.pk, "", step.state, payload={"next": target}, action=AuditAction.STEP_DECIDED)
    enter_node(unit, workflow, target, at.parent_id, at.branch, hops=at.hops + 1)


def _enter_parallel(unit: Unit, at: Place, node: Parallel) -> None:
    step = at.new_step(
        unit, node, kind=StepKind.PARALLEL, state=StepState.RUNNING, started_at=unit.now, result={"done": []}
    )
    rows.insert(step)
    unit.audit(
        "step", step.pk, "", step.state, payload={"branches": len(node.branches)}, action=AuditAction.STEP_STARTED
    )
    for index, sub in enumerate(node.branches):
        enter_node(unit, at.workflow, sub[0].name, step.pk, index, hops=at.hops + 1)


# One handler per node kind (looked up along the node class's MRO, so a subclass of a kind is entered as it). The
# modules above this one add theirs at start-up instead of being imported from here: signals
# (orchestrator/services/signals.py, ``register``) adds ``Signal``'s, from ``OrchestratorConfig.ready()``.
ENTER: dict[type[Node], Callable[[Unit, Place, Any], None]] = {
    Task: _enter_task,
    Timer: _enter_timer,
    Human: _enter_human,
    Decision: _enter_decision,
    Parallel: _enter_parallel,
}


def _branch_finished(unit: Unit, workflow: Workflow, parent_id: int, branch: int | None, *, hops: int) -> None:
    """Fan-in: record the branch; when every branch is done, the parallel step succeeds and the flow goes on."""
    parallel = StepRun.objects.get(pk=parent_id)
    node = workflow.node(parallel.name)
    assert isinstance(node, Parallel)
    done = sorted(set(parallel.result.get("done", [])) | {branch or 0})
    if parallel.state != StepState.RUNNING:
        return
    if len(done) < len(node.branches):
        parallel.result = {"done": done}
        rows.update(parallel, ["result"])
        return
    parallel.succeed({"done": done}, unit.now)
    rows.update(parallel, ["state", "result", "finished_at", "lease_expires_at", "error", "error_type"])
    unit.audit(
        "step",
        parallel.pk,
        StepState.RUNNING,
        parallel.state,
        payload={"joined": done},
        action=AuditAction.STEP_SUCCEEDED,
    )
    enter_node(unit, workflow, workflow.next_after(parallel.name), parallel.parent_id, parallel.branch, hops=hops + 1)


def human_step_finish(
    unit: Unit, step: StepRun, result: dict[str, Any], *, rejected: bool, merge: dict[str, Any] | None = None
) -> None:
    """Called by approvals' services, inside their transaction, when a human step is decided.

    ``result`` is kept under the step's name in the instance data; ``merge`` (a form's cleaned data) joins the
    instance data itself, where later decisions and handlers read it.

    Raises ``registry.UnknownWorkflow`` when the definition is gone, and what entering the next node raises
    (:func:`enter_node`): the caller rolls back and keeps the decision (:func:`human_step_stopped`).
    """
    workflow = definition_of(unit.instance)
    node = workflow.node(step.name)
    assert isinstance(node, Human)
    step.succeed(result, unit.now)
    rows.update(step, ["state", "result", "finished_at", "lease_expires_at", "error", "error_type"])
    unit.audit("step", step.pk, StepState.RUNNING, step.state, payload=result, action=AuditAction.STEP_SUCCEEDED)
    instance = unit.instance
    instance.data[step.name] = result
    if merge:
        instance.data.update(merge)
    if instance.state not in ACTIVE_INSTANCE_STATES:
        return
    _human_step_follow(unit, workflow, step, node, rejected=rejected)


def _human_step_follow(unit: Unit, workflow: Workflow, step: StepRun, node: Human, *, rejected: bool) -> None:
    instance = unit.instance
    if not rejected:
        advance(unit, workflow, step)
    elif node.on_reject == "end":
        skip_open_steps(unit, reason=f"{step.name} rejected")
        from_state = instance.state
        instance.complete("rejected", unit.now)
        unit.audit(
            "instance",
            instance.pk,
            from_state,
            instance.state,
            reason="rejected",
            action=AuditAction.INSTANCE_COMPLETED,
        )
        drop_kept_signals(unit, "completed", workflow)
    elif node.on_reject == "fail":
        instance_fail(unit, f"{step.name} rejected")
    elif node.on_reject == COMPENSATE:
        compensation_start(unit, f"{step.name} rejected")
    else:
        enter_node(unit, workflow, node.on_reject, step.parent_id, step.branch, hops=0)
    settle(unit)


# In the result of a dead human step: the person's decision was recorded, but what follows it could not be entered.
DECISION_KEPT = "decision_kept"


def human_step_stopped(
    unit: Unit, step: StepRun, result: dict[str, Any], exc: Exception, *, merge: dict[str, Any] | None = None
) -> None:
    """A human step was decided but entering what follows the decision raised ``exc`` (a Decision or a Timer's
    ``until`` raising, a next task that cannot open, a value too large): called by approvals' services in a
    fresh transaction, after the one that raised was rolled back.

    The decision is kept: the step ends ``dead`` with ``result`` (and ``DECISION_KEPT``) as its result, naming the
    real error type and message; ``result`` and ``merge`` join the instance data as a decision's would; the
    instance fails (a human step has no ``on_failure``: the rule of an automated step whose next node cannot be
    entered, docs/architecture.md "A step whose outcome cannot be recorded"). An operator's retry, once the
    definition is fixed, enters what follows the decision without asking the person again
    (:func:`human_step_retry`). Returns nothing; raises only what the database raises.
    """
    step_stopped(
        unit,
        step,
        exc,
        result={**result, DECISION_KEPT: True},
        cause="raised while entering what follows the decision: the decision is kept",
        audit_payload={"decision": result.get("decision", "")},
        data={step.name: result, **(merge or {})},
    )


def step_stopped(
    unit: Unit,
    step: StepRun,
    exc: Exception,
    *,
    result: dict[str, Any],
    cause: str,
    audit_payload: dict[str, Any],
    data: dict[str, Any],
) -> None:
    """The one rule for a step whose outcome is kept but whose next node could not be entered (``exc`` raised
    there, its transaction or savepoint already rolled back): the step ends ``dead`` with ``result``, its error
    naming the real type, message, ``cause`` (one line saying what is kept) and the traceback's end; the audit
    event carries ``audit_payload`` besides the error type; ``data`` joins the instance data; the instance fails
    (docs/architecture.md, "A step whose outcome cannot be recorded"). Used by human steps
    (:func:`human_step_stopped`) and signal waits (signals.py). Raises only what the database raises."""
    detail = str(exc).strip() or repr(exc)
    tb = "".join(traceback.format_exception(exc, limit=-6))
    error_type = clean_text(type(exc).__name__, 200)
    error = clean_text(f"{detail}\n\n({cause})\n\n{tb}")
    # Unfenced: a signal wait's step is re-read after its savepoint rolled back (its fence is the succeeded one
    # it wrote there), and a human step is read by the human side, not through lock_step.
    step_die(
        unit,
        step,
        error_type,
        error,
        payload={"error_type": error_type, "permanent": True, **audit_payload},
        result=result,
        fenced=False,
    )
    unit.instance.data.update(data)
    instance_fail(unit, f"{step.name} failed: {first_line(error)}")


def human_step_retry(unit: Unit, workflow: Workflow, step: StepRun) -> None:
    """An operator's retry of a human step that died after its decision (:func:`human_step_stopped`): the kept
    decision succeeds the step again and what follows it is entered now, in the retry's transaction; the person
    is not asked again. Raises whatever entering it raises (the definition is not fixed yet)."""
    node = workflow.node(step.name)
    assert isinstance(node, Human)
    result = {k: v for k, v in step.result.items() if k != DECISION_KEPT}
    step.schedule(unit.now)  # dead -> scheduled -> succeeded: the step's two existing transitions
    step.succeed(result, unit.now)
    rows.update(step, ["state", "result", "error", "error_type", "finished_at", "lease_expires_at", "due_at"])
    unit.audit("step", step.pk, StepState.DEAD, step.state, payload=result, action=AuditAction.STEP_SUCCEEDED)
    _human_step_follow(unit, workflow, step, node, rejected=result.get("decision") == "reject")
