"""Executing a step: claim it, run its handler outside any transaction, record the outcome (fenced by the attempt
number); and the operations on one step, retry and skip."""

from __future__ import annotations

import logging
import os
import socket
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import InterfaceError, OperationalError, connections, transaction
from django.utils import timezone

from orchestrator import audit, registry, rows
from orchestrator.audit_actions import AuditAction
from orchestrator.dsl import COMPENSATE, ESCALATE, DefinitionError, Node, PermanentError, StepContext, Task, Workflow
from orchestrator.models import (
    ACTIVE_INSTANCE_STATES,
    DISPATCHABLE_STEP_STATES,
    InstanceState,
    StepKind,
    StepRun,
    StepState,
    WorkflowInstance,
)
from orchestrator.ports import human_tasks
from orchestrator.records import record_keys, records_set, refuse_records
from orchestrator.services.compensation import (
    RESULT_LOST,
    compensation_mark_done,
    compensation_next,
    compensation_resume,
    compensation_start,
    compensation_step_succeeded,
    saga_begun,
)
from orchestrator.services.flow import advance
from orchestrator.services.lifecycle import first_line, instance_fail, retry_attempts, settle, step_die
from orchestrator.services.locks import (
    LIVE_STATES,
    WORKER,
    definition_of,
    definition_or_none,
    definition_unavailable,
    lock_step,
    read_step,
    step_save,
)
from orchestrator.services.results import check_result, clean_text
from orchestrator.services.unit import FENCE, Fenced, Unit, step_limits

logger = logging.getLogger(__name__)


class StepResult(StrEnum):
    """What :func:`step_execute` and :func:`step_record` did with a step (the Celery task returns it)."""

    SUCCEEDED = "succeeded"
    # Recorded as succeeded after a compensation began (it is undone too; docs/architecture.md).
    SUCCEEDED_LATE = "succeeded late"
    FAILED = "failed"
    # The attempt lost its lease (another attempt or an operator moved the step): nothing was written.
    FENCED = "fenced"
    # The step no longer exists.
    GONE = "gone"
    # Not due, not in a runnable state, or its instance does not run now: nothing to do.
    NOT_RUNNABLE = "not runnable"


@dataclass
class Claim:
    step_id: int
    attempt: int
    kind: str
    node: Node
    context: StepContext
    # The definition's record keys (orchestrator.records): a result may not set them.
    records: frozenset[str] = frozenset()


@dataclass
class Outcome:
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error_type: str = ""
    error: str = ""
    permanent: bool = False
    # The handler returned (its side effect happened) but its result cannot be recorded: see record_failure.
    returned: bool = False


def step_execute(step_id: int) -> StepResult:
    """Claim step ``step_id``, run its handler outside any transaction, record the outcome. Safe to repeat.

    Returns a :class:`StepResult`. Raises only what the database raises (``OperationalError`` /
    ``InterfaceError``: the Celery task retries); a handler's exception is recorded as a failed attempt, never
    raised."""
    claim = step_claim(step_id)
    if claim is None:
        return StepResult.NOT_RUNNABLE
    outcome = _run_handler(claim)
    return step_record(claim.step_id, claim.attempt, outcome)


# How often a claim reads again after another writer moved the instance between its read and its write.
CLAIM_READS = 3


def step_claim(step_id: int, *, now: datetime | None = None) -> Claim | None:
    """Move a due step to running with attempt + 1 and a lease; None if it is not runnable now.

    On PostgreSQL the claim reads without a lock and writes in one statement that locks the instance and changes
    nothing unless the instance's chain head and the step's state and attempt are still as read (two round trips
    and no transaction of its own, where locking first took four); when another writer got in between, it reads
    again. Elsewhere, and for a step whose definition cannot be loaded, it locks first.

    Raises only what the database raises (a moved step is None, not an error).
    """
    now = now or timezone.now()
    try:
        if rows.on_postgresql():
            for _ in range(CLAIM_READS):
                claim = _claim_guarded(step_id, now)
                if not isinstance(claim, Moved):
                    return claim
        return _claim(step_id, now)
    except Fenced:
        return None  # another claim or an operator moved the step first


class Moved:
    """Another writer changed the instance or the step between a guarded claim's read and its write."""


def _claimable(instance: WorkflowInstance, step: StepRun, now: datetime) -> bool:
    if step.state not in DISPATCHABLE_STEP_STATES or (step.due_at and step.due_at > now):
        return False  # a redelivered, early or duplicate message: PostgreSQL says there is nothing to do
    allowed = (InstanceState.COMPENSATING,) if step.kind == StepKind.COMPENSATION else ACTIVE_INSTANCE_STATES
    return instance.state in allowed  # paused, failed or cancelled: resume/retry re-dispatches


def _claim_guarded(step_id: int, now: datetime) -> Claim | Moved | None:
    found = read_step(step_id)
    if found is None:
        return None
    instance, step = found
    if not _claimable(instance, step, now):
        return None
    try:
        workflow = definition_of(instance)
        node = step_node(workflow, step)
    except Exception:
        return _claim(step_id, now)  # the locked claim records why the step cannot run
    read_seq = instance.audit_seq
    from_state = step.state
    step.start(now, _lease(node, now))
    event = audit.append(
        instance,
        now=now,
        actor=WORKER,
        action=AuditAction.STEP_STARTED,
        subject_type="step",
        subject_id=step.pk,
        from_state=from_state,
        to_state=step.state,
        payload={"attempt": step.attempt},
        request_meta=worker_meta(),
    )
    # No live event for a claim: the outcome follows within the step's run time and is broadcast then.
    if not rows.guarded_write(
        instance,
        ["audit_seq", "audit_head", "updated_at"],
        guard=("audit_seq = %s", [read_seq]),
        update=(
            step,
            ["state", "attempt", "started_at", "lease_expires_at"],
            FENCE,
            step._read_as,
        ),
        insert=[event],
    ):
        return Moved()
    return _claimed(instance, step, node, workflow)


_HOST = socket.gethostname()


def worker_meta() -> dict[str, str]:
    """Which process claimed a step (``host/pid``), kept in the claim's audit event so the instance page can say
    which worker ran each attempt."""
    return {"worker": f"{_HOST}/{os.getpid()}"}  # the pid is read per call: a prefork child has its own


def _lease(node: Node, now: datetime) -> datetime:
    # Past the hard time limit, so a late worker is fenced, never raced (unit.step_limits).
    return now + timedelta(seconds=step_limits(node)[2])


def _claimed(instance: WorkflowInstance, step: StepRun, node: Node, workflow: Workflow) -> Claim:
    context = StepContext(
        instance_id=instance.pk,
        step=step.name,
        attempt=step.attempt,
        data=dict(instance.data),
        idempotency_key=step.idempotency_key,
        business_key=instance.business_key,
    )
    return Claim(step.pk, step.attempt, step.kind, node, context, record_keys(workflow))


def _claim(step_id: int, now: datetime) -> Claim | None:
    with transaction.atomic():
        locked = lock_step(step_id)
        if locked is None:
            return None
        instance, step = locked
        if not _claimable(instance, step, now):
            return None
        try:
            workflow = definition_of(instance)
            node = step_node(workflow, step)
        except Exception as exc:  # the code of this version is gone or broken: fail loudly, not silently
            unit = Unit(instance, WORKER, now=now)
            from_state = step.state
            step.start(now, None)
            step_save(step, ["state", "attempt", "started_at", "lease_expires_at"])
            unit.audit(
                "step",
                step.pk,
                from_state,
                step.state,
                payload={"attempt": step.attempt},
                action=AuditAction.STEP_STARTED,
            )
            if isinstance(exc, registry.UnknownWorkflow):
                error = definition_unavailable(instance)
            else:
                error = f"definition not available: {exc}"
            record_failure(unit, step, None, type(exc).__name__, error, True)
            settle(unit)
            unit.finish()
            return None
        from_state = step.state
        step.start(now, _lease(node, now))
        unit = Unit(instance, WORKER, now=now, broadcast=False, request_meta=worker_meta())
        # The step's write rides in the statement that writes the audit event and the instance (one round trip).
        unit.fence(step, ["state", "attempt", "started_at", "lease_expires_at"])
        unit.audit(
            "step", step.pk, from_state, step.state, payload={"attempt": step.attempt}, action=AuditAction.STEP_STARTED
        )
        unit.finish()
        return _claimed(instance, step, node, workflow)


def _run_handler(claim: Claim) -> Outcome:
    node = claim.node
    if claim.kind == StepKind.TIMER:
        return Outcome(ok=True, result={"fired": True})
    assert isinstance(node, Task)
    handler = node.compensate if claim.kind == StepKind.COMPENSATION else node.handler
    assert handler is not None
    try:
        result = handler(claim.context)
    except PermanentError as exc:
        _session_after_handler(exc)
        return Outcome(ok=False, error_type=type(exc).__name__, error=str(exc) or repr(exc), permanent=True)
    except Exception as exc:
        _session_after_handler(exc)
        # Any other exception, SoftTimeLimitExceeded included, is worth another attempt.
        detail = str(exc) or repr(exc)
        tb = "".join(traceback.format_exception(exc, limit=-6))
        return Outcome(ok=False, error_type=type(exc).__name__, error=f"{detail}\n\n{tb}")
    _session_after_handler(None)
    if result is not None and not isinstance(result, dict):
        return Outcome(
            ok=False,
            error_type="TypeError",
            error=f"handler returned {type(result).__name__}; return a dict or None",
            permanent=True,
            returned=True,
        )
    try:
        # Checked here, in the worker, so that a result the database would refuse never aborts the record; what
        # comes back is the result as it will be stored (tuples as lists).
        result = check_result(dict(result or {}))
        taken = records_set(claim.records, result)
        if taken:
            # The handler's bug, not the input's: its result would overwrite who decided or a wait's timeout, which
            # later steps read (orchestrator.records). Returning it again cannot help.
            raise ValueError(
                f"result sets {', '.join(taken)}, where the workflow records what its step did (who decided, a"
                " wait's timeout): return the value under another name"
            )
    except Exception as exc:
        # Returning the same value again cannot help: permanent, and the handler is not run again. Not only what
        # JSON refuses: a dict subclass whose items() raises (a lazy mapping whose source went away) fails here
        # too, and escaping step_execute it left the step running for its lease to expire and run again.
        return Outcome(
            ok=False, error_type=type(exc).__name__, error=str(exc) or repr(exc), permanent=True, returned=True
        )
    return Outcome(ok=True, result=result)


def _session_after_handler(exc: BaseException | None) -> None:
    """Close a database session the handler left broken, so that :func:`step_record` opens a fresh one.

    ``exc`` is what the handler raised, or None when it returned. A time limit or a database error raised inside
    the handler may have landed in the middle of a statement (psycopg still waiting for its answer, or the
    session aborted): recording on that session would fail too, and the step would wait for its lease to expire
    (docs/architecture.md, "Recovering from database and broker restarts"). Such a session's statement is
    cancelled and the session closed. After a clean return nothing is asked of the database: only a session that
    Django saw fail (``errors_occurred``, ``needs_rollback``) is checked, so the hot path keeps its round trips.
    """
    interrupted = isinstance(exc, OperationalError | InterfaceError | SoftTimeLimitExceeded)
    for conn in connections.all(initialized_only=True):
        if conn.connection is None or conn.in_atomic_block:
            continue  # nothing open, or a caller's transaction (in-process tests) that is not ours to close
        broken = interrupted or conn.needs_rollback
        if not broken and conn.errors_occurred:
            broken = not conn.is_usable()  # the handler met a database error and went on: one round trip
        if broken:
            logger.warning("step: closing the database session the handler left broken (%s)", type(exc).__name__)
            try:
                conn.connection.cancel()  # the statement the time limit interrupted stops on the server too
            except Exception:
                logger.debug("step: cancelling the interrupted statement failed", exc_info=True)
            conn.close()
        else:
            conn.errors_occurred = False


def step_record(step_id: int, attempt: int, outcome: Outcome) -> StepResult:
    """Record a handler's outcome, fenced by the attempt number; a worker whose lease was lost writes nothing.

    Returns a :class:`StepResult`: succeeded (or succeeded late), failed, fenced or gone. Whatever raises while the
    outcome is recorded (merging the result, entering the next node, a value the database refuses) rolls that
    transaction back and is recorded instead, in a fresh one, as a failed attempt naming the error
    (:func:`_record_unrecordable`): the step is never left running for its lease to expire and its handler to run
    again. Raises only what the database raises while recording that failure.
    """
    try:
        return _record(step_id, attempt, outcome)
    except Fenced:
        logger.warning("step %s attempt %s lost its lease while recording; its outcome is dropped", step_id, attempt)
        return StepResult.FENCED
    except Exception as exc:
        return _record_unrecordable(step_id, attempt, outcome, exc)


def _retry_may_fix(exc: BaseException) -> bool:
    # A lost connection, a deadlock or a serialisation failure can pass; everything else that raises after the
    # handler returned is decided by the result and the definition, which another attempt would meet again.
    return isinstance(exc, OperationalError | InterfaceError)


def _record_unrecordable(step_id: int, attempt: int, outcome: Outcome, exc: Exception) -> StepResult:
    """The outcome of ``attempt`` could not be recorded because of ``exc``: record one failed attempt instead."""
    detail = str(exc).strip() or repr(exc)
    tb = "".join(traceback.format_exception(exc, limit=-6))
    returned = outcome.ok or outcome.returned
    context = (
        "raised while recording the result: the handler returned, so its side effect happened"
        if returned
        else "raised while recording the failed attempt"
    )
    failure = Outcome(
        ok=False,
        error_type=type(exc).__name__,
        error=f"{detail}\n\n({context})\n\n{tb}",
        permanent=not _retry_may_fix(exc),
        returned=returned,
    )
    logger.error(
        "step %s attempt %s: its outcome could not be recorded (%s: %s); recorded as a failed attempt",
        step_id,
        attempt,
        failure.error_type,
        first_line(clean_text(detail)),
    )
    try:
        return _record(step_id, attempt, failure)
    except Fenced:
        return StepResult.FENCED
    except Exception as again:
        # Following the step's on_failure raised too: the step dies and the instance fails, nothing more.
        logger.exception("step %s attempt %s: recording its failure raised as well", step_id, attempt)
        return _record_dead(step_id, attempt, failure, again)


def _record_dead(step_id: int, attempt: int, failure: Outcome, exc: Exception) -> StepResult:
    """The last resort: the step dead and the instance failed, reading neither the definition nor on_failure."""
    with transaction.atomic():
        locked = lock_step(step_id)
        if locked is None:
            return StepResult.GONE
        instance, step = locked
        if step.state != StepState.RUNNING or step.attempt != attempt:
            return StepResult.FENCED
        unit = Unit(instance, WORKER)
        error = clean_text(f"{failure.error}\n\nFollowing on_failure raised {type(exc).__name__}: {exc}")
        _step_die(unit, step, clean_text(failure.error_type, 200), error, permanent=True)
        instance_fail(
            unit, f"{step.name} failed: {first_line(error)}", allowed=(*LIVE_STATES, InstanceState.COMPENSATING)
        )
        unit.finish()
        return StepResult.FAILED


def _record(step_id: int, attempt: int, outcome: Outcome) -> StepResult:
    with transaction.atomic():
        locked = lock_step(step_id)
        if locked is None:
            return StepResult.GONE
        instance, step = locked
        if step.state != StepState.RUNNING or step.attempt != attempt:
            # Skipped while its worker ran it, by a compensation's start, a cancel or a rejection that ends the
            # instance (both skip running steps too): the success reported now happened, so it goes on the record
            # rather than being dropped.
            skipped_running = step.state == StepState.SKIPPED and step.attempt == attempt
            if outcome.ok and skipped_running:
                return _late_success(instance, step, outcome)
            logger.warning("step %s attempt %s lost its lease; its outcome is dropped", step_id, attempt)
            return StepResult.FENCED
        unit = Unit(instance, WORKER)
        usable = _usable_definition(instance, step)
        if isinstance(usable, str):
            return _record_undefined(unit, step, outcome, usable)
        workflow, node = usable
        if outcome.ok:
            step.succeed(outcome.result, unit.now)
            fields = ["state", "result", "finished_at", "lease_expires_at", "error", "error_type"]
            undoing = instance.state == InstanceState.COMPENSATING
            if step.kind == StepKind.TASK and not workflow.has_parallel and not undoing:
                # Entering the next node of a linear flow reads no step row (only a fan-in or the busy-steps
                # check of a parallel flow would, and a compensation's bookkeeping), so the step's fenced write
                # can ride in finish()'s statement: one round trip less per step.
                unit.fence(step, fields)
            else:
                step_save(step, fields)
            unit.audit(
                "step",
                step.pk,
                StepState.RUNNING,
                step.state,
                payload={"attempt": step.attempt, "result": outcome.result},
                action=AuditAction.STEP_SUCCEEDED,
            )
            if step.kind == StepKind.COMPENSATION:
                compensation_step_succeeded(unit, workflow, step)
            elif undoing or (instance.state == InstanceState.FAILED and saga_begun(instance)):
                # It was running when the compensation began: its effect is kept to be undone, nothing follows it.
                instance.data.update(outcome.result)
                compensation_resume(unit, workflow)
            else:
                instance.data.update(outcome.result)
                advance(unit, workflow, step)
        else:
            record_failure(
                unit, step, node, outcome.error_type, outcome.error, outcome.permanent, returned=outcome.returned
            )
        settle(unit)
        unit.finish()
        return StepResult.SUCCEEDED if outcome.ok else StepResult.FAILED


def _usable_definition(instance: WorkflowInstance, step: StepRun) -> tuple[Workflow, Node] | str:
    """The instance's definition and ``step``'s node in it, or why they cannot be used: the definition is not
    registered (:func:`definition_unavailable`), or has no node of the step's name or one of another kind
    (:func:`step_node`). Raises nothing of its own."""
    workflow = definition_or_none(instance)
    if workflow is None:
        return definition_unavailable(instance)
    try:
        return workflow, step_node(workflow, step)
    except DefinitionError as exc:
        return str(exc)


# In the result of a succeeded step: its success was recorded while its definition could not be used, so what
# follows it was not entered; an operator's retry enters it (:func:`step_follow`).
NOT_FOLLOWED = "not_followed"


def _record_undefined(unit: Unit, step: StepRun, outcome: Outcome, problem: str) -> StepResult:
    """Record ``outcome`` of a running ``step`` whose definition cannot be used now (``problem``: it went away, or
    was deployed again with another shape, while the handler ran). What happened goes on the record: a success as a
    success (result kept, audited, joining the data; a compensation marks its original undone), a failure as a
    failure with the handler's own error (dead: its retry policy and on_failure cannot be read). Nothing follows
    it: the instance fails naming the step and ``problem``, and an operator's retry, once the definition is deployed
    again, goes on from there without running a succeeded step again (a forward step keeps ``NOT_FOLLOWED``; a
    compensation goes on undoing). Before, a success was recorded as an UnknownWorkflow failure, or, with the node
    gone, as dead with its result lost, or followed through the other shape. Called inside ``_record``'s
    transaction; raises ``Fenced`` and what the database raises."""
    instance = unit.instance
    if outcome.ok:
        step.succeed(outcome.result, unit.now)
        if step.kind != StepKind.COMPENSATION and not saga_begun(instance):  # else the compensation takes it up
            step.result = {**outcome.result, NOT_FOLLOWED: True}
        step_save(step, ["state", "result", "finished_at", "lease_expires_at", "error", "error_type"])
        unit.audit(
            "step",
            step.pk,
            StepState.RUNNING,
            step.state,
            reason=problem,
            payload={"attempt": step.attempt, "result": outcome.result},
            action=AuditAction.STEP_SUCCEEDED,
        )
        if step.kind == StepKind.COMPENSATION:
            assert step.compensates is not None
            compensation_mark_done(unit, None, step.compensates)
        else:
            instance.data.update(outcome.result)
    else:
        error = f"{outcome.error}\n\n({problem}: its retry policy and on_failure cannot be read)"
        _step_die(
            unit,
            step,
            clean_text(outcome.error_type, 200),
            clean_text(error),
            permanent=True,
            returned=outcome.returned,
        )
    verb = "succeeded" if outcome.ok else "failed"
    instance_fail(unit, f"{step.name} {verb}, but {problem}", allowed=(*LIVE_STATES, InstanceState.COMPENSATING))
    unit.finish()
    return StepResult.SUCCEEDED if outcome.ok else StepResult.FAILED


def _late_success(instance: WorkflowInstance, step: StepRun, outcome: Outcome) -> StepResult:
    """A forward step skipped while its worker ran it, because a compensation began, the instance was cancelled or
    a rejection ended it, reports success: its effect happened, so it is recorded as succeeded (its result joins the
    data its compensation reads) and undone like the others (docs/architecture.md, "Operator actions and the
    saga"). A compensating instance undoes it in turn (latest finished first); a compensated one compensates again
    for it; a failed one does when retried; a cancelled or ended one only records it (a plain cancel undoes
    nothing: before, its success was dropped, and the record said skipped while the effect had happened). The flow
    never moves on from it. Called inside ``_record``'s transaction."""
    unit = Unit(instance, WORKER)
    step.succeed_late(outcome.result, unit.now)
    step_save(step, ["state", "result", "finished_at", "lease_expires_at", "error", "error_type"])
    undone = saga_begun(instance)
    unit.audit(
        "step",
        step.pk,
        StepState.SKIPPED,
        step.state,
        reason="reported after the compensation began: it is undone too"
        if undone
        else f"reported after the instance was {instance.state}: its effect happened, nothing follows it",
        payload={"attempt": step.attempt, "result": outcome.result, "late": True},
        action=AuditAction.STEP_SUCCEEDED,
    )
    instance.data.update(outcome.result)
    # Read only to undo it: a cancelled instance's definition may be gone, and recording the success needs none.
    workflow = definition_of(instance) if instance.state == InstanceState.COMPENSATED else None
    node = workflow.nodes.get(step.name) if workflow is not None else None
    if workflow is not None and isinstance(node, Task) and node.compensate is not None:
        instance.reopen_compensation()
        unit.audit(
            "instance",
            instance.pk,
            InstanceState.COMPENSATED,
            instance.state,
            reason=f"{step.name} took effect after the compensation ended",
            action=AuditAction.INSTANCE_COMPENSATING,
        )
        compensation_next(unit, workflow)
    unit.finish()
    return StepResult.SUCCEEDED_LATE


def record_failure(
    unit: Unit,
    step: StepRun,
    node: Node | None,
    error_type: str,
    error: str,
    permanent: bool,
    *,
    returned: bool = False,
) -> None:
    """A failed attempt: retry at a back-off ``due_at`` while attempts remain, else the step is dead.

    ``returned``: the handler returned (its result could not be recorded). A dead task step remembers it
    (``RESULT_LOST`` in its result), so that a compensation of the instance undoes it too.

    Raises :class:`~orchestrator.services.unit.Fenced` when the step moved on, and what following ``on_failure``
    raises (opening an escalation, starting the compensation).
    """
    error_type, error = clean_text(error_type, 200), clean_text(error)
    retry = node.retry if isinstance(node, Task) else None
    if step.kind == StepKind.TASK and unit.instance.state == InstanceState.COMPENSATING:
        retry = None  # a forward step that was running when the compensation began never runs again
    if not permanent and retry is not None and step.attempt < step.max_attempts:
        delay = retry.delay(step.attempt)
        step.fail_attempt(error_type, error, unit.now + timedelta(seconds=delay))
        step_save(step, ["state", "error", "error_type", "due_at", "dispatched_at", "lease_expires_at"])
        unit.audit(
            "step",
            step.pk,
            StepState.RUNNING,
            step.state,
            reason=first_line(error),
            payload={
                "attempt": step.attempt,
                "max_attempts": step.max_attempts,
                "error_type": error_type,
                "retry_in_seconds": round(delay, 3),
                # The whole message and traceback of this attempt: the step's own error keeps only the latest.
                "error": error,
            },
            action=AuditAction.STEP_FAILED,
        )
        unit.scheduled_work = True
        return
    _step_die(unit, step, error_type, error, permanent=permanent, returned=returned)
    _step_dead(unit, step, node)


def _step_die(
    unit: Unit, step: StepRun, error_type: str, error: str, *, permanent: bool, returned: bool = False
) -> None:
    """Mark a running step dead (retries spent, or an error retrying cannot fix) and audit it.

    ``returned``: its handler returned but the result could not be recorded; a task step keeps ``RESULT_LOST`` in
    its result so that a compensation of the instance undoes it too.
    """
    step_die(
        unit,
        step,
        error_type,
        error,
        payload={"attempt": step.attempt, "error_type": error_type, "permanent": permanent}
        | ({"returned": True} if returned else {}),
        result={RESULT_LOST: True} if returned and step.kind == StepKind.TASK else None,
    )


def _step_dead(unit: Unit, step: StepRun, node: Node | None) -> None:
    instance = unit.instance
    if step.kind == StepKind.TASK and instance.state == InstanceState.COMPENSATING:
        # It was running when the compensation began, which waited for it (undone only if its handler returned).
        workflow = definition_or_none(instance)
        if workflow is not None:
            compensation_resume(unit, workflow)
        return
    if step.kind == StepKind.COMPENSATION:
        # A failed compensation is never left silent: a person must finish it.
        human_tasks().escalation_open(
            unit, step, reason=f"Compensation of {step.name} failed: {first_line(step.error)}"
        )
        return
    if isinstance(node, Task) and node.on_failure == COMPENSATE and instance.state in LIVE_STATES:
        compensation_start(unit, f"{step.name} failed: {first_line(step.error)}")
        return
    if isinstance(node, Task) and node.on_failure == ESCALATE and instance.state in LIVE_STATES:
        human_tasks().escalation_open(unit, step, reason=f"{step.name} failed: {first_line(step.error)}")
        return
    instance_fail(unit, f"{step.name} failed: {first_line(step.error)}")


# --- operations on one step (operators' retry and escalation answers) ----------------------------------------


# A step kind that is not run by a worker is retried by its own module, which registers here at start-up (so this
# module never imports it): ``StepKind.SIGNAL`` by orchestrator/services/signals.py (``register``, called from
# ``OrchestratorConfig.ready()``). The hook runs inside the retry's transaction with ``(unit, workflow, step,
# reason)``.
REARM: dict[str, Callable[[Unit, Workflow, StepRun, str], None]] = {}


def node_kind_of(step: StepRun) -> str:
    """The ``Node.kind`` of the node ``step`` runs: its own kind, but a compensation runs its task's node."""
    return StepKind.TASK if step.kind == StepKind.COMPENSATION else step.kind


def step_node(workflow: Workflow, step: StepRun) -> Node:
    """The node of ``workflow`` that ``step`` runs. Raises ``DefinitionError`` naming it when there is none, or when
    it is another kind of node than the step (the same version deployed again with a task where a wait was): run as
    it stands, the step's own code met a node it cannot run (a wait re-armed at a task: an AssertionError)."""
    node = workflow.node(step.name)
    if node.kind != node_kind_of(step):
        raise DefinitionError(
            f"the deployed {workflow.key}'s node {step.name!r} is a {node.kind}, but this instance's step of that name "
            f"is a {step.kind}: it was deployed again with another shape under the same version"
        )
    return node


def step_retry(unit: Unit, workflow: Workflow, step: StepRun, reason: str) -> None:
    """Put a dead ``step`` back in the queue now with a fresh attempt budget (the one rule,
    :func:`~orchestrator.services.lifecycle.retry_attempts`), audited with ``reason``, and dispatch it after
    commit. An operator's instance retry and an escalation's Retry both come here; a compensation step's retry goes
    through ``compensation_retry`` when its instance failed, or here while the instance is compensating.

    Raises ``django_fsm.TransitionNotAllowed`` when the step is not dead; ``DefinitionError`` when the definition
    has no node of the step's name, or one of another kind (:func:`step_node`)."""
    step_node(workflow, step)
    rearm = REARM.get(step.kind)
    if rearm is not None:
        rearm(unit, workflow, step, reason)  # e.g. a timed-out wait for a signal waits again, nothing runs
        return
    from_state = step.state
    step.max_attempts = retry_attempts(step, workflow.node(step.name))
    step.schedule(unit.now)
    step.dispatched_at = unit.now
    rows.update(step, ["state", "due_at", "dispatched_at", "max_attempts"])
    unit.audit("step", step.pk, from_state, step.state, reason=reason, action=AuditAction.STEP_SCHEDULED)
    unit.dispatch(step)


def step_follow(unit: Unit, workflow: Workflow, step: StepRun) -> None:
    """An operator's retry of an instance whose ``step`` succeeded while its definition could not be used
    (``NOT_FOLLOWED`` in its result, :func:`_record_undefined`): what follows the step is entered now, and the step
    does not run again (its effect happened). Raises ``DefinitionError`` when the definition still has no node of
    the step's kind there (:func:`step_node`), and whatever entering the next node raises (``flow.enter_node``)."""
    step_node(workflow, step)
    step.result = {k: v for k, v in step.result.items() if k != NOT_FOLLOWED}
    rows.update(step, ["result"])
    advance(unit, workflow, step)


def step_skip(
    unit: Unit, workflow: Workflow, step: StepRun, reason: str, *, output: dict[str, Any] | None = None
) -> None:
    """An operator skips a dead forward ``step``: it ends skipped ("skipped by operator: <reason>", audited), and,
    while the instance runs or waits, what follows it is entered now. ``output`` (JSON-able, the result the step
    would have returned) is recorded as the step's result and joins the instance data, where later steps read it;
    None records nothing.

    Raises ``records.RecordsRefused`` (a ValidationError naming ``output.<key>``), before anything changes, when
    ``output`` sets a key where the engine records what a node did (``orchestrator.records``: a human step's
    decision, a wait's timeout): an operator's skip stands for a task's result, not for who approved;
    ``django_fsm.TransitionNotAllowed`` when the step is not dead; whatever entering the next node raises
    (``flow.enter_node``): the caller's transaction is then to be rolled back."""
    if output is not None:
        refuse_records(
            records_set(record_keys(workflow), output), what="output", field="output", sender="a skip's output"
        )
    from_state = step.state
    step.skip(f"skipped by operator: {reason}", unit.now)
    fields = ["state", "error", "finished_at", "lease_expires_at"]
    payload: dict[str, Any] | None = None
    if output is not None:
        output = check_result(dict(output))
        step.result = output
        fields.append("result")
        payload = {"result": output}
        unit.instance.data.update(output)
    rows.update(step, fields)
    unit.audit("step", step.pk, from_state, step.state, reason=reason, payload=payload, action=AuditAction.STEP_SKIPPED)
    if unit.instance.state in ACTIVE_INSTANCE_STATES:
        advance(unit, workflow, step)
