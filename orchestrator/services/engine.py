"""The durable engine: claim, run and record steps, advance instances, compensate, sweep.

Lock order, everywhere: the instance row first (``SELECT ... FOR UPDATE``), then its steps and tasks. Every
write to a step or a human task happens under its instance's lock, so the instance row is the one mutex of
an instance, and its audit chain head lives on it.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import Q
from django.utils import timezone

from orchestrator import audit, registry, rollups, rows
from orchestrator.audit import Actor
from orchestrator.dsl import (
    COMPENSATE,
    ESCALATE,
    Decision,
    Human,
    Node,
    Parallel,
    PermanentError,
    StepContext,
    Task,
    Timer,
    Workflow,
)
from orchestrator.models import (
    ACTIVE_INSTANCE_STATES,
    BUSY_STEP_STATES,
    DISPATCHABLE_STEP_STATES,
    InstanceState,
    StepKind,
    StepRun,
    StepState,
    WorkflowInstance,
)
from orchestrator.services.results import check_result, clean_text
from orchestrator.services.unit import FENCE, Fenced, Unit, step_limits

logger = logging.getLogger(__name__)

WORKER = Actor.system("worker")
SWEEPER = Actor.system("sweeper")
# States in which a finishing step may still end, fail or compensate the instance (a pause only holds new work).
LIVE_STATES = (*ACTIVE_INSTANCE_STATES, InstanceState.PAUSED)
# A decision loop that never waits would spin forever inside one transaction.
MAX_INLINE_HOPS = 100


class EngineError(Exception):
    """A workflow cannot go on as defined (an unknown node, a decision that loops)."""


def definition_of(instance: WorkflowInstance) -> Workflow:
    """The definition the instance is pinned to; raises ``registry.UnknownWorkflow`` if it is not registered."""
    return registry.get(instance.workflow_name, instance.workflow_version)


def definition_or_none(instance: WorkflowInstance) -> Workflow | None:
    """The definition the instance is pinned to, or None when that version is not registered (its module is gone)."""
    try:
        return definition_of(instance)
    except registry.UnknownWorkflow:
        return None


def definition_unavailable(instance: WorkflowInstance) -> str:
    """The reason recorded, audited and shown for an instance whose definition is not registered."""
    return f"definition {instance.workflow_name} v{instance.workflow_version} is not available"


def lock_instance(instance_id: int) -> WorkflowInstance:
    """Lock and return the instance row (the mutex for everything that instance owns)."""
    instance = rows.get(WorkflowInstance, instance_id, lock=True)
    if instance is None:
        raise WorkflowInstance.DoesNotExist(f"no instance {instance_id}")
    return instance


def lock_step(step_id: int, *, skip_locked: bool = False) -> tuple[WorkflowInstance, StepRun] | None:
    """Lock the instance owning ``step_id`` and read both rows in one statement; None if there is no such step
    (or, with ``skip_locked``, its instance is locked).

    When the statement had to wait for the lock, PostgreSQL re-reads the locked instance row but not the joined
    step row, which may then be stale: the step's next write therefore goes through :func:`step_save`, fenced on
    the state and attempt read here, and a stale read ends in :class:`Fenced`, never in a lost update.
    """
    lock = rows.lock_clause(of="i")
    if lock and skip_locked:
        lock += " SKIP LOCKED"
    return _read_step(step_id, lock)


def read_step(step_id: int) -> tuple[WorkflowInstance, StepRun] | None:
    """The step and its instance as they are now, read in one statement without a lock."""
    return _read_step(step_id, "")


def _read_step(step_id: int, lock: str) -> tuple[WorkflowInstance, StepRun] | None:
    found = rows.select(
        [(WorkflowInstance, "i"), (StepRun, "s")],
        f"FROM {WorkflowInstance._meta.db_table} i JOIN {StepRun._meta.db_table} s ON s.instance_id = i.id"
        f" WHERE s.id = %s{lock}",
        [step_id],
    )
    if not found:
        return None
    instance, step = found[0]
    step._read_as = (step.state, step.attempt)
    return instance, step


def step_save(step: StepRun, fields: list[str]) -> None:
    """Write ``fields`` of a step read by :func:`lock_step`, only if its state and attempt are still as read."""
    if not rows.update(step, fields, where=FENCE, params=step._read_as):
        raise Fenced.of(step)
    step._read_as = (step.state, step.attempt)


# --- executing a step ---------------------------------------------------------------------------------


@dataclass
class Claim:
    step_id: int
    attempt: int
    kind: str
    node: Node
    context: StepContext


@dataclass
class Outcome:
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error_type: str = ""
    error: str = ""
    permanent: bool = False
    # The handler returned (its side effect happened) but its result cannot be recorded: see _record_failure.
    returned: bool = False


def step_execute(step_id: int) -> str:
    """Claim the step, run its handler outside any transaction, record the outcome. Safe to repeat."""
    claim = step_claim(step_id)
    if claim is None:
        return "not runnable"
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
        node = definition_of(instance).node(step.name)
    except Exception:
        return _claim(step_id, now)  # the locked claim records why the step cannot run
    read_seq = instance.audit_seq
    from_state = step.state
    step.start(now, _lease(node, now))
    event = audit.append(
        instance,
        now=now,
        actor=WORKER,
        action="step.started",
        subject_type="step",
        subject_id=step.pk,
        from_state=from_state,
        to_state=step.state,
        payload={"attempt": step.attempt},
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
    return _claimed(instance, step, node)


def _lease(node: Node, now: datetime) -> datetime:
    # Past the hard time limit, so a late worker is fenced, never raced (unit.step_limits).
    return now + timedelta(seconds=step_limits(node)[2])


def _claimed(instance: WorkflowInstance, step: StepRun, node: Node) -> Claim:
    context = StepContext(
        instance_id=instance.pk,
        step=step.name,
        attempt=step.attempt,
        data=dict(instance.data),
        idempotency_key=step.idempotency_key,
        business_key=instance.business_key,
    )
    return Claim(step.pk, step.attempt, step.kind, node, context)


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
            node = workflow.node(step.name)
        except Exception as exc:  # the code of this version is gone or broken: fail loudly, not silently
            unit = Unit(instance, WORKER, now=now)
            from_state = step.state
            step.start(now, None)
            step_save(step, ["state", "attempt", "started_at", "lease_expires_at"])
            unit.audit("step.started", "step", step.pk, from_state, step.state, payload={"attempt": step.attempt})
            if isinstance(exc, registry.UnknownWorkflow):
                error = definition_unavailable(instance)
            else:
                error = f"definition not available: {exc}"
            _record_failure(unit, step, None, type(exc).__name__, error, True)
            settle(unit)
            unit.finish()
            return None
        from_state = step.state
        step.start(now, _lease(node, now))
        unit = Unit(instance, WORKER, now=now, broadcast=False)
        # The step's write rides in the statement that writes the audit event and the instance (one round trip).
        unit.fence(step, ["state", "attempt", "started_at", "lease_expires_at"])
        unit.audit("step.started", "step", step.pk, from_state, step.state, payload={"attempt": step.attempt})
        unit.finish()
        return _claimed(instance, step, node)


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
    from django.db import connections

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


def step_record(step_id: int, attempt: int, outcome: Outcome) -> str:
    """Record a handler's outcome, fenced by the attempt number; a worker whose lease was lost writes nothing.

    Returns "succeeded", "failed", "fenced" or "gone". Whatever raises while the outcome is recorded (merging the
    result, entering the next node, a value the database refuses) rolls that transaction back and is recorded
    instead, in a fresh one, as a failed attempt naming the error (:func:`_record_unrecordable`): the step is
    never left running for its lease to expire and its handler to run again.
    """
    try:
        return _record(step_id, attempt, outcome)
    except Fenced:
        logger.warning("step %s attempt %s lost its lease while recording; its outcome is dropped", step_id, attempt)
        return "fenced"
    except Exception as exc:
        return _record_unrecordable(step_id, attempt, outcome, exc)


def _retry_may_fix(exc: BaseException) -> bool:
    # A lost connection, a deadlock or a serialisation failure can pass; everything else that raises after the
    # handler returned is decided by the result and the definition, which another attempt would meet again.
    return isinstance(exc, OperationalError | InterfaceError)


def _record_unrecordable(step_id: int, attempt: int, outcome: Outcome, exc: Exception) -> str:
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
        _first_line(clean_text(detail)),
    )
    try:
        return _record(step_id, attempt, failure)
    except Fenced:
        return "fenced"
    except Exception as again:
        # Following the step's on_failure raised too: the step dies and the instance fails, nothing more.
        logger.exception("step %s attempt %s: recording its failure raised as well", step_id, attempt)
        return _record_dead(step_id, attempt, failure, again)


def _record_dead(step_id: int, attempt: int, failure: Outcome, exc: Exception) -> str:
    """The last resort: the step dead and the instance failed, reading neither the definition nor on_failure."""
    with transaction.atomic():
        locked = lock_step(step_id)
        if locked is None:
            return "gone"
        instance, step = locked
        if step.state != StepState.RUNNING or step.attempt != attempt:
            return "fenced"
        unit = Unit(instance, WORKER)
        error = clean_text(f"{failure.error}\n\nFollowing on_failure raised {type(exc).__name__}: {exc}")
        _step_die(unit, step, clean_text(failure.error_type, 200), error, permanent=True)
        fail_instance(
            unit, f"{step.name} failed: {_first_line(error)}", allowed=(*LIVE_STATES, InstanceState.COMPENSATING)
        )
        unit.finish()
        return "failed"


def _record(step_id: int, attempt: int, outcome: Outcome) -> str:
    with transaction.atomic():
        locked = lock_step(step_id)
        if locked is None:
            return "gone"
        instance, step = locked
        if step.state != StepState.RUNNING or step.attempt != attempt:
            if outcome.ok and step.state == StepState.SKIPPED and step.attempt == attempt and saga_begun(instance):
                return _late_success(instance, step, outcome)
            logger.warning("step %s attempt %s lost its lease; its outcome is dropped", step_id, attempt)
            return "fenced"
        unit = Unit(instance, WORKER)
        workflow = definition_or_none(instance)
        if workflow is None:
            # The definition went away while the step ran: nothing can follow it.
            _record_failure(unit, step, None, "UnknownWorkflow", definition_unavailable(instance), True)
            unit.finish()
            return "failed"
        node = workflow.node(step.name)
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
                "step.succeeded",
                "step",
                step.pk,
                StepState.RUNNING,
                step.state,
                payload={"attempt": step.attempt, "result": outcome.result},
            )
            if step.kind == StepKind.COMPENSATION:
                _compensation_step_succeeded(unit, workflow, step)
            elif undoing or (instance.state == InstanceState.FAILED and saga_begun(instance)):
                # It was running when the compensation began: its effect is kept to be undone, nothing follows it.
                instance.data.update(outcome.result)
                _compensation_resume(unit, workflow)
            else:
                instance.data.update(outcome.result)
                advance(unit, workflow, step)
        else:
            _record_failure(
                unit, step, node, outcome.error_type, outcome.error, outcome.permanent, returned=outcome.returned
            )
        settle(unit)
        unit.finish()
        return "succeeded" if outcome.ok else "failed"


# In the result of a dead task step: its handler returned, so its side effect happened, but the result could not
# be recorded. Compensation undoes such a step like a succeeded one (docs/architecture.md).
RESULT_LOST = "result_lost"


def _late_success(instance: WorkflowInstance, step: StepRun, outcome: Outcome) -> str:
    """A forward step skipped while its worker ran it, because a compensation began, reports success: its effect
    happened, so it is recorded as succeeded (its result joins the data its compensation reads) and undone like
    the others (docs/architecture.md, "Operator actions and the saga"). A compensating instance undoes it in
    turn (latest finished first); a compensated one compensates again for it; a failed one does when retried; a
    cancelled one only records it. The flow never moves on from it. Called inside ``_record``'s transaction."""
    unit = Unit(instance, WORKER)
    workflow = definition_of(instance)
    step.succeed_late(outcome.result, unit.now)
    step_save(step, ["state", "result", "finished_at", "lease_expires_at", "error", "error_type"])
    unit.audit(
        "step.succeeded",
        "step",
        step.pk,
        StepState.SKIPPED,
        step.state,
        reason="reported after the compensation began: it is undone too",
        payload={"attempt": step.attempt, "result": outcome.result, "late": True},
    )
    instance.data.update(outcome.result)
    node = workflow.node(step.name)
    if instance.state == InstanceState.COMPENSATED and isinstance(node, Task) and node.compensate is not None:
        instance.reopen_compensation()
        unit.audit(
            "instance.compensating",
            "instance",
            instance.pk,
            InstanceState.COMPENSATED,
            instance.state,
            reason=f"{step.name} took effect after the compensation ended",
        )
        _compensation_next(unit, workflow)
    unit.finish()
    return "succeeded late"


def _record_failure(
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
            "step.failed",
            "step",
            step.pk,
            StepState.RUNNING,
            step.state,
            reason=_first_line(error),
            payload={
                "attempt": step.attempt,
                "max_attempts": step.max_attempts,
                "error_type": error_type,
                "retry_in_seconds": round(delay, 3),
            },
        )
        unit.scheduled_work = True
        return
    _step_die(unit, step, error_type, error, permanent=permanent, returned=returned)
    _step_dead(unit, step, node)


def fail_instance(
    unit: Unit, error: str, *, allowed: tuple[str, ...] = LIVE_STATES, audit_reason: str | None = None
) -> bool:
    """Fail the unit's instance with ``error`` (shown on its page) and audit it, if its state is in ``allowed``.

    ``audit_reason`` is the event's reason when it should differ from ``error`` (an operator's own words).
    Returns True if the instance failed. Raises nothing of its own.
    """
    instance = unit.instance
    if instance.state not in allowed:
        return False
    from_state = instance.state
    instance.fail(error)
    unit.audit(
        "instance.failed",
        "instance",
        instance.pk,
        from_state,
        instance.state,
        reason=instance.error if audit_reason is None else audit_reason,
    )
    return True


def _step_die(
    unit: Unit, step: StepRun, error_type: str, error: str, *, permanent: bool, returned: bool = False
) -> None:
    """Mark a running step dead (retries spent, or an error retrying cannot fix) and audit it.

    ``returned``: its handler returned but the result could not be recorded; a task step keeps ``RESULT_LOST`` in
    its result so that a compensation of the instance undoes it too.
    """
    step.die(error_type, error, unit.now)
    fields = ["state", "error", "error_type", "finished_at", "lease_expires_at"]
    if returned and step.kind == StepKind.TASK:
        step.result = {RESULT_LOST: True}
        fields.append("result")
    step_save(step, fields)
    unit.audit(
        "step.dead",
        "step",
        step.pk,
        StepState.RUNNING,
        step.state,
        reason=_first_line(error),
        payload={"attempt": step.attempt, "error_type": error_type, "permanent": permanent}
        | ({"returned": True} if returned else {}),
    )


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:500] if text.strip() else ""


def _step_dead(unit: Unit, step: StepRun, node: Node | None) -> None:
    from approvals.services import escalation_open

    instance = unit.instance
    if step.kind == StepKind.TASK and instance.state == InstanceState.COMPENSATING:
        # It was running when the compensation began, which waited for it (undone only if its handler returned).
        workflow = definition_or_none(instance)
        if workflow is not None:
            _compensation_resume(unit, workflow)
        return
    if step.kind == StepKind.COMPENSATION:
        # A failed compensation is never left silent: a person must finish it.
        escalation_open(unit, step, reason=f"Compensation of {step.name} failed: {_first_line(step.error)}")
        return
    if isinstance(node, Task) and node.on_failure == COMPENSATE and instance.state in LIVE_STATES:
        compensation_start(unit, f"{step.name} failed: {_first_line(step.error)}")
        return
    if isinstance(node, Task) and node.on_failure == ESCALATE and instance.state in LIVE_STATES:
        escalation_open(unit, step, reason=f"{step.name} failed: {_first_line(step.error)}")
        return
    fail_instance(unit, f"{step.name} failed: {_first_line(step.error)}")


# --- advancing an instance ----------------------------------------------------------------------------


def advance(unit: Unit, workflow: Workflow, step: StepRun) -> None:
    """Enter whatever follows ``step`` (its next node, its branch's join, or the end)."""
    enter_node(unit, workflow, workflow.next_after(step.name), step.parent_id, step.branch, hops=0)


def enter_node(
    unit: Unit, workflow: Workflow, name: str | None, parent_id: int | None, branch: int | None, *, hops: int
) -> None:
    if hops > MAX_INLINE_HOPS:
        raise EngineError(f"{workflow.key}: more than {MAX_INLINE_HOPS} decisions without a wait")
    instance = unit.instance
    if name is None:
        if parent_id is not None:
            _branch_finished(unit, workflow, parent_id, branch, hops=hops)
        elif instance.state in LIVE_STATES:
            from_state = instance.state
            instance.complete(str(instance.data.get("outcome", "completed")), unit.now)
            unit.audit("instance.completed", "instance", instance.pk, from_state, instance.state)
        return
    node = workflow.node(name)
    common = {"instance": instance, "name": node.name, "parent_id": parent_id, "branch": branch}
    if isinstance(node, Task):
        step = StepRun(
            **common,
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
        unit.audit("step.scheduled", "step", step.pk, "", step.state, payload={"node": node.name})
        unit.dispatch(step)
    elif isinstance(node, Timer):
        due = unit.now + node.wait if node.wait is not None else node.until(dict(instance.data))  # type: ignore[misc]
        if not isinstance(due, datetime) or timezone.is_naive(due):
            # Compared with an aware clock a naive time raises later, in the sweep; say what is wrong here.
            raise EngineError(f"timer {node.name!r}: until() returned {due!r}; it must return an aware datetime")
        step = StepRun(**common, kind=StepKind.TIMER, state=StepState.SCHEDULED, due_at=due)
        rows.insert(step)
        unit.audit("step.scheduled", "step", step.pk, "", step.state, payload={"due_at": due.isoformat()})
        if due <= unit.now:
            step.dispatched_at = unit.now
            rows.update(step, ["dispatched_at"])
            unit.dispatch(step)
    elif isinstance(node, Human):
        from approvals.services import task_open

        # The step is inserted with its task (one statement on PostgreSQL).
        step = StepRun(**common, kind=StepKind.HUMAN, state=StepState.RUNNING, started_at=unit.now)
        task_open(unit, step, node)
    elif isinstance(node, Decision):
        assert node.choose is not None
        target = node.choose(dict(instance.data))
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
        step = StepRun(
            **common,
            kind=StepKind.DECISION,
            state=StepState.SUCCEEDED,
            started_at=unit.now,
            finished_at=unit.now,
            result={"next": target},
        )
        rows.insert(step)
        unit.audit("step.decided", "step", step.pk, "", step.state, payload={"next": target})
        enter_node(unit, workflow, target, parent_id, branch, hops=hops + 1)
    elif isinstance(node, Parallel):
        step = StepRun(
            **common,
            kind=StepKind.PARALLEL,
            state=StepState.RUNNING,
            started_at=unit.now,
            result={"done": []},
        )
        rows.insert(step)
        unit.audit("step.started", "step", step.pk, "", step.state, payload={"branches": len(node.branches)})
        for index, sub in enumerate(node.branches):
            enter_node(unit, workflow, sub[0].name, step.pk, index, hops=hops + 1)
    else:  # pragma: no cover - the DSL has no other node kinds
        raise EngineError(f"unknown node kind {node!r}")


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
    unit.audit("step.succeeded", "step", parallel.pk, StepState.RUNNING, parallel.state, payload={"joined": done})
    enter_node(unit, workflow, workflow.next_after(parallel.name), parallel.parent_id, parallel.branch, hops=hops + 1)


def settle(unit: Unit) -> None:
    """Running while automated work is pending, waiting while only people and timers are."""
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
        unit.audit("instance." + instance.state, "instance", instance.pk, from_state, instance.state)


def human_step_finish(
    unit: Unit, step: StepRun, result: dict[str, Any], *, rejected: bool, merge: dict[str, Any] | None = None
) -> None:
    """Called by approvals' services, inside their transaction, when a human step is decided.

    ``result`` is kept under the step's name in the instance data; ``merge`` (a form's cleaned data) joins the
    instance data itself, where later decisions and handlers read it.
    """
    workflow = definition_of(unit.instance)
    node = workflow.node(step.name)
    assert isinstance(node, Human)
    step.succeed(result, unit.now)
    rows.update(step, ["state", "result", "finished_at", "lease_expires_at", "error", "error_type"])
    unit.audit("step.succeeded", "step", step.pk, StepState.RUNNING, step.state, payload=result)
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
        unit.audit("instance.completed", "instance", instance.pk, from_state, instance.state, reason="rejected")
    elif node.on_reject == "fail":
        fail_instance(unit, f"{step.name} rejected")
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
    instance = unit.instance
    detail = str(exc).strip() or repr(exc)
    tb = "".join(traceback.format_exception(exc, limit=-6))
    error_type = clean_text(type(exc).__name__, 200)
    error = clean_text(f"{detail}\n\n(raised while entering what follows the decision: the decision is kept)\n\n{tb}")
    step.result = {**result, DECISION_KEPT: True}
    step.die(error_type, error, unit.now)
    rows.update(step, ["state", "result", "error", "error_type", "finished_at", "lease_expires_at"])
    unit.audit(
        "step.dead",
        "step",
        step.pk,
        StepState.RUNNING,
        step.state,
        reason=_first_line(error),
        payload={"error_type": error_type, "permanent": True, "decision": result.get("decision", "")},
    )
    instance.data[step.name] = result
    if merge:
        instance.data.update(merge)
    fail_instance(unit, f"{step.name} failed: {_first_line(error)}")


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
    unit.audit("step.succeeded", "step", step.pk, StepState.DEAD, step.state, payload=result)
    _human_step_follow(unit, workflow, step, node, rejected=result.get("decision") == "reject")


# --- compensation (saga) ------------------------------------------------------------------------------


def compensation_start(unit: Unit, reason: str) -> None:
    """Stop forward work and undo the steps that took effect, latest first."""
    instance = unit.instance
    from_state = instance.state
    instance.start_compensation(reason)
    unit.audit("instance.compensating", "instance", instance.pk, from_state, instance.state, reason=reason)
    # Every open task goes, a failed forward step's escalation too: retrying or skipping that step now would run
    # forward work behind the compensation's back.
    skip_open_steps(unit, reason=f"compensating: {reason}", everything=True, keep_running=True)
    _compensation_next(unit, definition_of(instance))


def saga_begun(instance: WorkflowInstance) -> bool:
    """True once the instance has started compensating (a compensation step exists, or a step was marked
    compensated by hand): from then on no forward step may run again (docs/architecture.md, "Operator actions
    and the saga"). One query; not for the hot path."""
    if instance.state in (InstanceState.COMPENSATING, InstanceState.COMPENSATED):
        return True
    return instance.steps.filter(Q(kind=StepKind.COMPENSATION) | Q(state=StepState.COMPENSATED)).exists()


def compensation_retry(unit: Unit, reason: str) -> None:
    """Go on with a failed instance's compensation: its dead compensation steps get fresh attempts (their open
    escalations are cancelled), or, with none left to redrive, the next step to undo is scheduled (or the
    instance is compensated). Forward steps are never scheduled; any left open are skipped."""
    from approvals.services import tasks_cancel_for_steps

    instance = unit.instance
    workflow = definition_of(instance)
    from_state = instance.state
    instance.retry_compensation()
    unit.audit(
        "instance.retried",
        "instance",
        instance.pk,
        from_state,
        instance.state,
        reason=reason,
        payload={"continues": "compensation"},
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
        assert isinstance(node, Task)
        step.max_attempts = step.attempt + node.retry.max_attempts
        step.schedule(unit.now)
        step.dispatched_at = unit.now
        rows.update(step, ["state", "due_at", "dispatched_at", "max_attempts"])
        unit.audit("compensation.scheduled", "step", step.pk, StepState.DEAD, step.state, reason=reason)
        unit.dispatch(step)
    tasks_cancel_for_steps(unit, [step.pk for step in dead], f"retried: {reason}")
    if not compensations:
        _compensation_next(unit, workflow)


def _compensation_resume(unit: Unit, workflow: Workflow) -> None:
    """A forward step that was running when the compensation began has ended: if the compensation was waiting for
    it (no compensation step under way or awaiting an operator), go on undoing."""
    instance = unit.instance
    if instance.state != InstanceState.COMPENSATING:
        return  # failed mid-compensation: compensation_retry takes the step up with the rest
    if instance.steps.filter(kind=StepKind.COMPENSATION, state__in=[*BUSY_STEP_STATES, StepState.DEAD]).exists():
        return  # the chain is moving (or waits for an operator); its next pick includes this step
    _compensation_next(unit, workflow)


def _compensation_next(unit: Unit, workflow: Workflow) -> None:
    instance = unit.instance
    running = list(
        instance.steps.filter(kind=StepKind.TASK, state=StepState.RUNNING).order_by("id").values_list("pk", flat=True)
    )
    if running:
        # Forward steps still running when the compensation began: their side effects may yet happen. Undo nothing
        # until each has recorded its outcome or lost its lease, so the undoing keeps the saga's order (latest
        # first) and a step whose handler returns meanwhile is undone too. A lease bounds the wait.
        unit.audit("compensation.waiting", "instance", instance.pk, payload={"running": running})
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
                "compensation.scheduled",
                "step",
                step.pk,
                "",
                step.state,
                payload={"compensates": original.pk},
            )
            unit.dispatch(step)
            return
    from_state = instance.state
    instance.finish_compensation(unit.now)
    unit.audit("instance.compensated", "instance", instance.pk, from_state, instance.state)


def _compensation_step_succeeded(unit: Unit, workflow: Workflow, step: StepRun) -> None:
    original = step.compensates
    assert original is not None
    compensation_mark_done(unit, workflow, original)


def compensation_mark_done(unit: Unit, workflow: Workflow, original: StepRun, reason: str = "") -> None:
    """The original step is undone (by its compensation, or by a person); go on to the next one."""
    from_state = original.state
    original.mark_compensated()
    rows.update(original, ["state"])
    unit.audit("step.compensated", "step", original.pk, from_state, original.state, reason=reason)
    _compensation_next(unit, workflow)


def skip_open_steps(unit: Unit, reason: str, *, everything: bool = False, keep_running: bool = False) -> None:
    """Skip the instance's open forward steps and cancel their tasks; ``everything`` (a cancel) also takes
    compensation steps and every open task, escalations included. ``keep_running`` (a compensation's start)
    leaves task steps whose handler is running: their outcome is recorded, and undone if they took effect."""
    from approvals.services import tasks_cancel_for_instance, tasks_cancel_for_steps

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
        unit.audit("step.skipped", "step", step.pk, from_state, step.state, reason=reason)
    if everything:
        tasks_cancel_for_instance(unit, reason)
    else:
        tasks_cancel_for_steps(unit, [s.pk for s in open_steps if s.kind == StepKind.HUMAN], reason)


# --- the sweep ----------------------------------------------------------------------------------------


@dataclass
class SweepReport:
    """What one pass did: steps dispatched, leases expired, pauses ended, the task deadlines' counts
    (``approvals.services.tasks_sweep``), the claims it took back from people no longer able to act
    (``approvals.services.tasks_release_unfit``), and ``errors``: due items whose handling raised (each logged,
    audited on its instance and skipped; the pass went on)."""

    dispatched: int = 0
    leases_expired: int = 0
    resumed: int = 0
    tasks: dict[str, int] = field(default_factory=dict)
    unfit: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    rolled_up: int = 0


def sweep(now: datetime | None = None) -> SweepReport:
    """The one periodic pass: dispatch due steps, recover lost leases, resume paused instances, run deadlines.

    Each due item is handled in its own transaction, and one that raises is logged once, audited on its instance,
    counted in ``errors`` and skipped: one broken instance never holds up the others' work.
    """
    from approvals.services import tasks_sweep

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
    report.tasks = tasks_sweep(now, report=report)
    try:
        report.unfit = _tasks_release_unfit(now)
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
            from orchestrator.services.unit import send_step, step_dispatch_options

            options = step_dispatch_options(due)  # a re-send carries the step's queue and time limits too
            for step_id in due:
                transaction.on_commit(partial(send_step, step_id, options.get(step_id, {})))
        return len(due)


def _pause_end(instance_id: int, now: datetime, registered: bool) -> int:
    from orchestrator.services.instances import instance_resume

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


def fail_for_missing_definition(unit: Unit) -> None:
    """Fail the unit's instance, if it is still open to failing, because its definition is not registered.

    The reason (:func:`definition_unavailable`) is audited and shown on the instance page; ``instance_retry``
    refuses with it until the definition is registered again, then takes the instance up where it stopped.
    """
    fail_instance(unit, definition_unavailable(unit.instance), allowed=(*LIVE_STATES, InstanceState.COMPENSATING))


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
    message = clean_text(_first_line(str(exc)) or repr(exc), 500)
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
    from orchestrator.models import AuditEvent

    with transaction.atomic():
        instance = WorkflowInstance.objects.select_for_update(skip_locked=True).filter(pk=instance_id).first()
        if instance is None:
            return  # gone, or busy: the next pass tries again
        last = AuditEvent.objects.filter(instance_id=instance_id).order_by("-seq").values("action", "payload").first()
        payload = {"work": work, "error_type": error_type, "error": message}
        if last and last["action"] == "sweep.failed" and last["payload"] == payload:
            return  # the same failure as the instance's latest event: once is enough
        unit = Unit(instance, SWEEPER, broadcast=False)
        unit.audit("sweep.failed", subject_type, subject_id, reason=f"{error_type}: {message}", payload=payload)
        unit.finish()


def _tasks_release_unfit(now: datetime) -> dict[str, int]:
    """The safety net for claims of people deactivated or gone from the candidate groups (approvals' rule)."""
    from approvals.services import tasks_release_unfit

    found = tasks_release_unfit(now)
    return {"unfit_released": found["released"], "unfit_escalated": found["escalated"]}


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
            _record_failure(unit, step, None, "UnknownWorkflow", definition_unavailable(instance), True)
        else:
            _record_failure(
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
