"""Instance lifecycle services: start, and the operator's retry, pause, resume and cancel."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import Model

from orchestrator import registry, rows
from orchestrator.audit import Actor
from orchestrator.audit_actions import AuditAction
from orchestrator.dsl import DefinitionError, Task, Workflow
from orchestrator.inputs import (
    IDEMPOTENCY_KEY_MAX,
    REASON_MAX,
    bound_form,
    business_key_form,
    check_text,
    check_when,
    form_json_default,
)
from orchestrator.models import (
    BUSY_STEP_STATES,
    InstanceState,
    StepKind,
    StepRun,
    StepState,
    WorkflowInstance,
)
from orchestrator.records import record_errors, record_keys, records_set
from orchestrator.services.compensation import compensation_retry, saga_begun
from orchestrator.services.flow import DECISION_KEPT, enter_node, human_step_retry
from orchestrator.services.lifecycle import deadlines_shift, drop_kept_signals, settle, skip_open_steps
from orchestrator.services.locks import definition_of, definition_or_none, definition_unavailable, lock_instance
from orchestrator.services.results import check_result, clean_text
from orchestrator.services.steps import NOT_FOLLOWED, step_follow, step_node, step_retry
from orchestrator.services.unit import Unit


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different input."""

    def __init__(self, instance: WorkflowInstance) -> None:
        super().__init__(f"idempotency key already used for instance {instance.pk} with a different input")
        self.instance = instance


class InvalidInput(Exception):
    """The start input does not satisfy the workflow's start form."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


class InputSetsRecords(InvalidInput):
    """The start input holds a key where the engine records what a node did (``orchestrator.records``): a human
    step's decision, a wait's timeout. ``keys`` lists them; ``errors`` names each by its key, as ``InvalidInput``
    names a form's field (the API answers ``input.<key>``, 422 ``sets_records``)."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(record_errors(keys, field="", sender="a start's input"))
        self.keys = keys


def _refuse_records(records: frozenset[str], data: Any) -> None:
    """Raise :class:`InputSetsRecords` when ``data`` (a start's input) sets a key of ``records``."""
    keys = records_set(records, data) if isinstance(data, dict) else []
    if keys:
        raise InputSetsRecords(keys)


class NotAllowed(Exception):
    """The operation does not apply to the instance in its current state."""


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as plain JSON the instance row can hold: Decimals and dates (a start form's cleaned values) become
    strings, a chosen model its key (``inputs.form_json_default``). Raises InvalidInput naming the place of what
    PostgreSQL's jsonb cannot store (a NUL, a lone surrogate, NaN or Infinity, nesting past the parser's stack,
    more than ``BATON_MAX_RESULT_BYTES``): callers other than the API (the ``baton_start`` command, schedules,
    Python code) reach here unchecked."""
    try:
        return check_result(json.loads(json.dumps(data, default=form_json_default)))
    except (TypeError, ValueError, RecursionError) as exc:
        message = "nested too deeply to be stored" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidInput({"input": [message.replace("result", "input", 1)]}) from None


def _input_hash(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def instance_start(
    workflow_name: str,
    data: dict[str, Any],
    *,
    initiator: Any = None,
    idempotency_key: str | None = None,
    business_key: str = "",
    version: int | None = None,
    request_meta: dict[str, Any] | None = None,
    actor: Actor | None = None,
    savepoint: bool = True,
    with_rows: Callable[[WorkflowInstance], list[Model]] | None = None,
) -> WorkflowInstance:
    """Start an instance of the latest (or given) version; the same idempotency key returns the same instance.

    ``actor`` is who the audit names; default the ``initiator``, else ``system:api``. A scheduled start names
    ``system:scheduler`` with its schedule's owner as the ``initiator`` (four-eyes keeps them off its tasks).
    ``with_rows(instance)`` gives rows of a caller above the engine to write in the start's own statement, with its
    audit events (the API's idempotency key: no round trip of its own); an IntegrityError they cause reaches the
    caller.

    Inside a caller's transaction the start takes a savepoint, so a failed start leaves that transaction usable.
    A caller that rolls its whole transaction back on any error anyway (the API's keyed start, which writes its
    key's row beside the start) passes ``savepoint=False`` and saves the SAVEPOINT/RELEASE round trips; a start
    with an ``idempotency_key`` keeps its savepoint regardless (its race is recovered inside it).

    Raises InputSetsRecords (an InvalidInput) when the data sets a key where the engine records what a node did
    (``orchestrator.records``: who approved, whether a wait timed out), as given or as the start form cleaned it;
    InvalidInput when the data fails the start form or cannot be stored as JSON (:func:`_jsonable`), or the key is
    longer than ``IDEMPOTENCY_KEY_MAX`` or holds a NUL; IdempotencyConflict when the key was used with other data;
    UnknownWorkflow.
    """
    if idempotency_key and (len(idempotency_key) > IDEMPOTENCY_KEY_MAX or "\x00" in idempotency_key):
        problem = f"An idempotency key has at most {IDEMPOTENCY_KEY_MAX} characters and no NUL."
        raise InvalidInput({"idempotency_key": [problem]})
    workflow = registry.get(workflow_name, version)
    # As given (a key the form does not ask for is kept in the data) and as the form cleaned it (its clean() may
    # add keys): whoever starts an instance does not decide who approved it
    # (docs/architecture.md, "Records in the data").
    records = record_keys(workflow)
    _refuse_records(records, data)
    if workflow.start_form is not None:
        form = bound_form(workflow.start_form, data)
        if not form.is_valid():
            raise InvalidInput({k: [str(e) for e in v] for k, v in form.errors.items()})
        data = {**data, **form.cleaned_data}
        _refuse_records(records, data)
    data = _jsonable(data)
    input_hash = _input_hash(data)
    if idempotency_key:
        existing = _existing(workflow_name, idempotency_key, input_hash)
        if existing is not None:
            return existing
    actor = actor or (Actor.of(initiator) if initiator is not None else Actor.system("api"))
    try:
        # Without a savepoint (the caller asked, and no key's race must be recovered here: the except below reads
        # after a failed INSERT) a failure marks the caller's transaction for rollback and reaches the caller.
        with transaction.atomic(savepoint=savepoint or bool(idempotency_key)):
            instance = WorkflowInstance(
                workflow_name=workflow.name,
                workflow_version=workflow.version,
                data=data,
                # NFC cut to the column, as a signal by key looks it up (inputs.business_key_form); computed here,
                # the statement is unchanged.
                business_key=business_key_form(business_key or str(data.get("business_key", ""))),
                initiator=initiator if initiator is not None and initiator.is_authenticated else None,
                idempotency_key=idempotency_key or None,
                input_hash=input_hash,
            )
            reserved: int | None = None
            if isinstance(workflow.first, Task) and rows.on_postgresql():
                # The first step's id comes with the instance's: the step is written with the audit events.
                reserved = rows.insert_reserving(instance, StepRun)
            else:
                rows.insert(instance)
            unit = Unit(instance, actor, request_meta=request_meta)
            unit.reserved_step_id = reserved
            if with_rows is not None:
                unit.inserts.extend(with_rows(instance))
            instance.title = _title(workflow.title_template, workflow.display_title, instance, data)
            unit.audit(
                "instance",
                instance.pk,
                "",
                instance.state,
                payload={"workflow": workflow.key, "input": data},
                action=AuditAction.INSTANCE_STARTED,
            )
            enter_node(unit, workflow, workflow.first.name, None, None, hops=0)
            settle(unit)
            unit.finish()
    except IntegrityError:
        # Two starts with the same key raced; the loser returns the winner's instance.
        if idempotency_key:
            existing = _existing(workflow_name, idempotency_key, input_hash)
            if existing is not None:
                return existing
        raise
    return instance


def _existing(workflow_name: str, key: str, input_hash: str) -> WorkflowInstance | None:
    existing = WorkflowInstance.objects.filter(workflow_name=workflow_name, idempotency_key=key).first()
    if existing is not None and existing.input_hash != input_hash:
        raise IdempotencyConflict(existing)
    return existing


def _title(template: str, name: str, instance: WorkflowInstance, data: dict[str, Any]) -> str:
    # ``{name}`` and ``{id}`` are the workflow's and the instance's (the default template uses both): an input
    # field with either name must neither replace them nor collide with them (a TypeError before).
    try:
        return template.format(**{**data, "name": name, "id": instance.pk})[:200]
    except (KeyError, IndexError, ValueError, AttributeError, TypeError):
        return f"{name} #{instance.pk}"


def _reason_required(reason: str) -> str:
    """The reason stripped; ValidationError when it is empty, holds a NUL or exceeds ``inputs.REASON_MAX``."""
    reason = check_text(reason, "Reason", REASON_MAX)
    if not reason:
        raise ValidationError("Give a reason: it goes into the audit trail.")
    return reason


# Called, in the same transaction and under the instance's lock, when a paused instance resumes or a failed one is
# retried, with the unit and the instance's definition: work held while the instance stood still that a module above
# the engine hands on itself (signals: kept signals to the steps waiting for them, oldest first). Filled at start-up
# by modules this one never imports (orchestrator/services/signals.py ``register``), keyed by module so that
# registering again replaces.
RUNNING_AGAIN: dict[str, Callable[[Unit, Workflow], object]] = {}


def running_again(unit: Unit, workflow: Workflow) -> None:
    """Send on what ``unit``'s instance held while it stood paused or failed, now that it runs again: the steps that
    fell due meanwhile are dispatched and kept signals go to the steps waiting for them (:data:`RUNNING_AGAIN`).
    Called under the instance's lock by every operation that runs a held instance again (a resume, a retry, a
    skip of the failed step: ``operations.instance_step_skip``), so none of them leaves it to the sweep. Raises
    what the database raises."""
    _redispatch_due(unit)
    for hand_on in RUNNING_AGAIN.values():
        hand_on(unit, workflow)


def instance_retry(instance_id: int, *, actor: Actor, reason: str, request_meta: dict | None = None) -> None:
    """Operator: put a failed instance's dead steps back in the queue and run it again from there (and hand on
    what was held while it stood failed: :data:`RUNNING_AGAIN`).

    Raises ValidationError for a missing or too long reason; NotAllowed when the instance is not failed, is
    compensating or compensated, has nothing to retry, its definition is not registered or lacks a node the
    retry needs, or what follows a kept decision or a kept signal still raises; ``WorkflowInstance.DoesNotExist``.
    """
    reason = _reason_required(reason)
    with transaction.atomic():
        instance = lock_instance(instance_id)
        if instance.state == InstanceState.COMPENSATING:
            raise NotAllowed(
                "The instance is compensating: its completed steps are being undone and none of them runs again. "
                "If a compensation failed, resolve its escalation in the inbox (retry it, or mark it done by hand)."
            )
        if instance.state == InstanceState.COMPENSATED:
            raise NotAllowed(
                "The instance is compensated: its steps were undone, so none of them runs again. Start a new instance."
            )
        if instance.state != InstanceState.FAILED:
            raise NotAllowed(f"Only failed instances can be retried; this one is {instance.state}.")
        if definition_or_none(instance) is None:
            raise NotAllowed(
                f"Cannot retry: the {definition_unavailable(instance)}. Deploy it again (its module in "
                "BATON_WORKFLOW_MODULES), or cancel the instance."
            )
        if saga_begun(instance):
            # Failed mid-compensation (an operator chose "fail" on its escalation): retrying goes on undoing.
            unit = Unit(instance, actor, request_meta=request_meta)
            compensation_retry(unit, reason)
            unit.finish()
            return
        dead = list(instance.steps.filter(state=StepState.DEAD).exclude(kind=StepKind.COMPENSATION))
        # Succeeded while their definition could not be used: what follows them is entered, they do not run again.
        unfollowed = list(instance.steps.filter(state=StepState.SUCCEEDED, result__has_key=NOT_FOLLOWED))
        _check_steps_defined(instance, [*dead, *unfollowed])
        # An instance the sweep failed for its missing definition stopped at its open work: retry goes on from there.
        if not dead and not unfollowed and definition_unavailable(instance) not in instance.error:
            # An honest retry: with no failed step to run again it would report success and do nothing.
            raise NotAllowed(
                "Nothing to retry: no step of this instance failed (it was failed by a person or a deadline). "
                "Cancel it, or start a new instance."
            )
        unit = Unit(instance, actor, request_meta=request_meta)
        from_state = instance.state
        instance.retry()
        unit.audit(
            "instance", instance.pk, from_state, instance.state, reason=reason, action=AuditAction.INSTANCE_RETRIED
        )
        workflow = definition_of(instance)
        for step in unfollowed:
            _retry_entering(unit, workflow, step, step_follow, "its success")
        for step in dead:
            if step.kind == StepKind.HUMAN and step.result.get(DECISION_KEPT):
                _retry_entering(unit, workflow, step, human_step_retry, "the decision")
                continue
            step_retry(unit, workflow, step, reason)
        running_again(unit, workflow)
        settle(unit)
        unit.finish()


def _check_steps_defined(instance: WorkflowInstance, dead: list[StepRun]) -> None:
    """Refuse a retry (NotAllowed naming them) when the deployed definition has no node for a step the retry would
    run again or dispatch, or one of another kind (a task where the step was a wait): the same name and version
    deployed again with another shape (edited instead of bumped; nothing outside one process can tell) answered the
    retry with a 500 (``Workflow.node`` raising; a wait re-armed at a task failing its assertion), or scheduled a
    task step at a wait, which has no handler to run."""
    workflow = definition_of(instance)
    steps = [*dead, *instance.steps.filter(state__in=BUSY_STEP_STATES).only("name", "kind")]
    missing = sorted({step.name for step in steps} - set(workflow.nodes))
    if missing:
        raise NotAllowed(
            f"Cannot retry: the deployed {workflow.key} has no node "
            + ", ".join(repr(name) for name in missing)
            + ": it was deployed again with another shape under the same version. Deploy the version this "
            "instance ran (a changed definition needs a new version), or cancel the instance."
        )
    for step in steps:
        try:
            step_node(workflow, step)
        except DefinitionError as exc:
            raise NotAllowed(
                f"Cannot retry: {exc}. Deploy the version this instance ran (a changed definition needs a new "
                "version), or cancel the instance."
            ) from None


def _retry_entering(
    unit: Unit, workflow: Any, step: StepRun, follow: Callable[[Unit, Any, StepRun], None], kept: str
) -> None:
    """Enter what follows ``step``'s kept outcome (``kept`` names it in a refusal) through ``follow``: a kept
    decision (``flow.human_step_retry``) or a success recorded while the definition could not be used
    (``steps.step_follow``); refused with the error when the definition still raises there, so the operator's page
    says why instead of answering 500."""
    try:
        with transaction.atomic():
            follow(unit, workflow, step)
    except (OperationalError, InterfaceError):
        raise  # the database, not the definition: the page's own outage handling applies
    except Exception as exc:
        raise NotAllowed(
            f"Cannot retry: entering what follows {step.name} still raises {type(exc).__name__}: "
            f"{clean_text(str(exc) or repr(exc), 300)}. Fix the workflow definition and deploy it, then retry "
            f"({kept} is kept), or cancel the instance."
        ) from exc


def _redispatch_due(unit: Unit) -> None:
    """Dispatch the steps that fell due; automated steps still waiting on back-off, or still running (a pause
    holds new work, not work under way), keep the instance busy."""
    sent = {d[0] for d in unit.dispatches}
    due: list[int] = []
    for step in unit.instance.steps.filter(state__in=BUSY_STEP_STATES):
        if step.kind in (StepKind.TASK, StepKind.COMPENSATION):
            unit.scheduled_work = True
        if step.state == StepState.RUNNING:
            continue
        if step.pk not in sent and step.due_at is not None and step.due_at <= unit.now:
            unit.dispatch(step)
            due.append(step.pk)
    if due:
        # Sent now: the sweep must not send them again before BATON_REDISPATCH_AFTER.
        StepRun.objects.filter(pk__in=due).update(dispatched_at=unit.now)


def instance_pause(
    instance_id: int,
    *,
    actor: Actor,
    reason: str,
    until: datetime | None = None,
    request_meta: dict | None = None,
) -> None:
    """Operator: hold an instance (no new step starts) until resumed, or until ``until``.

    Raises ValidationError for a missing or too long reason, or an ``until`` in the past or outside
    ``inputs.check_when``'s range (a year-10000 end, once stored, could not be read back); NotAllowed when the
    state forbids it.
    """
    reason = _reason_required(reason)
    if until is not None:
        until = check_when(until, "Resume at", future=True)
    with transaction.atomic():
        instance = lock_instance(instance_id)
        if instance.state not in (InstanceState.RUNNING, InstanceState.WAITING):
            raise NotAllowed(f"Only running or waiting instances can be paused; this one is {instance.state}.")
        unit = Unit(instance, actor, request_meta=request_meta)
        from_state = instance.state
        instance.pause(until, unit.now)
        unit.audit(
            "instance",
            instance.pk,
            from_state,
            instance.state,
            reason=reason,
            payload={"until": until.isoformat() if until else None},
            action=AuditAction.INSTANCE_PAUSED,
        )
        unit.finish()


def instance_resume(
    instance_id: int,
    *,
    actor: Actor,
    reason: str,
    only_if_due: bool = False,
    now: datetime | None = None,
    request_meta: dict | None = None,
) -> bool:
    """Resume a paused instance, dispatch the steps that fell due while it was held and hand on what was held for
    it (:data:`RUNNING_AGAIN`: signals kept during the pause go to the steps waiting for them, oldest first); True
    if it resumed.

    Raises ValidationError for a missing or too long reason; NotAllowed when the instance is not paused (unless
    ``only_if_due``: then False) or its definition is not registered; ``WorkflowInstance.DoesNotExist``.
    """
    reason = _reason_required(reason)
    with transaction.atomic():
        instance = lock_instance(instance_id)
        if instance.state != InstanceState.PAUSED:
            if only_if_due:
                return False
            raise NotAllowed(f"Only paused instances can be resumed; this one is {instance.state}.")
        workflow = definition_or_none(instance)
        if workflow is None:
            raise NotAllowed(
                f"Cannot resume: the {definition_unavailable(instance)}. Deploy it again, or cancel the instance."
            )
        unit = Unit(instance, actor, now=now, request_meta=request_meta)
        if only_if_due and (instance.paused_until is None or instance.paused_until > unit.now):
            return False
        paused_at = instance.paused_at
        if paused_at is not None and unit.now < paused_at:
            # A clock read before the pause began (the sweep's, taken at the start of its pass, or another host's
            # that runs behind): the resume is at the pause, never before it, so no deadline moves back.
            unit.now = paused_at
        instance.resume()
        unit.audit(
            "instance",
            instance.pk,
            InstanceState.PAUSED,
            instance.state,
            reason=reason,
            payload={"paused_at": paused_at.isoformat() if paused_at else None},
            action=AuditAction.INSTANCE_RESUMED,
        )
        if paused_at is not None:  # a pause placed before paused_at was recorded: its deadlines fire on resume
            deadlines_shift(unit, paused_at)
        running_again(unit, workflow)
        settle(unit)
        unit.finish()
        return True


def instance_cancel(instance_id: int, *, actor: Actor, reason: str, request_meta: dict | None = None) -> None:
    """Operator: stop an instance for good; open steps are skipped and open tasks cancelled.

    Raises ValidationError for a missing or too long reason; NotAllowed when the instance is already final;
    ``WorkflowInstance.DoesNotExist``.
    """
    reason = _reason_required(reason)
    with transaction.atomic():
        instance = lock_instance(instance_id)
        if instance.is_final:
            raise NotAllowed(f"The instance is already {instance.state}.")
        unit = Unit(instance, actor, request_meta=request_meta)
        skip_open_steps(unit, reason=f"cancelled: {reason}", everything=True)
        from_state = instance.state
        instance.cancel(unit.now)
        unit.audit(
            "instance", instance.pk, from_state, instance.state, reason=reason, action=AuditAction.INSTANCE_CANCELLED
        )
        drop_kept_signals(unit, "cancelled")
        unit.finish()
