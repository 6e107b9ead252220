"""The operator's console actions beyond retry, pause, resume and cancel (``instances.py``): skip a failed step
giving its output, edit an instance's data, pause until a time within a sane horizon, run the compensation of a
failed instance, and cancel with compensation.

Each one follows the services' pattern: a reason is required, the instance row is locked, the state is checked,
the transition is made and audited with the actor and the reason, and dispatch and broadcast happen after commit
(``Unit.finish``). A refusal raises ``instances.NotAllowed`` (the state does not allow it, with what to do
instead) or ``ValidationError`` (what was typed cannot be used); nothing is written then.

Retry itself is a redrive already (``instances.instance_retry``): only the dead steps are scheduled again, with
their idempotency keys, and succeeded steps never run again.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from orchestrator.audit import Actor
from orchestrator.audit_actions import AuditAction
from orchestrator.dsl import Task, Timer
from orchestrator.inputs import RepeatedKey, unique_keys
from orchestrator.models import InstanceState, StepKind, StepRun, StepState, WorkflowInstance
from orchestrator.records import record_keys, records_rewritten, refuse_records, same_json
from orchestrator.services.compensation import compensation_start, saga_begun
from orchestrator.services.instances import NotAllowed, _reason_required, instance_pause, running_again
from orchestrator.services.lifecycle import settle
from orchestrator.services.locks import definition_or_none, definition_unavailable, lock_instance
from orchestrator.services.results import MAX_DEPTH, stored_and_size
from orchestrator.services.steps import step_skip
from orchestrator.services.unit import Unit

# A person's pause is for a night, a weekend, a month end: beyond this it is a typo (a year instead of a month), and
# an instance held that long should be cancelled instead. ``BATON_PAUSE_MAX_DAYS`` overrides it.
PAUSE_MAX_DAYS = 90
# Django's DATA_UPLOAD_MAX_MEMORY_SIZE when it is None (no limit): its default, 2.5 MiB.
UPLOAD_DEFAULT = 2_621_440
# A key of the instance data: what a handler or a template would address it by.
KEY_MAX = 100


class OwnInstance(NotAllowed):
    """The actor started the instance, and the action would steer it: four-eyes, as for its tasks.

    A skip's output and an edit of the data are what the instance's decisions and people read next (an amount
    under an approval limit routes around the approval), and a skip decides a failed step's outcome, as an
    escalation's Skip does, which its initiator may not answer either. Retry, pause, resume and cancel decide
    nothing of the kind and stay open to them. A NotAllowed, so every caller that shows one shows the reason; the
    API answers it 403."""


def _refuse_initiator(instance: Any, actor: Actor, action: str) -> None:
    if actor.user_id is not None and actor.user_id == instance.initiator_id:
        raise OwnInstance(
            f"Instance {instance.pk}: you started it, so {action} is for another operator (four-eyes: the initiator "
            "steers nothing of their own instance)."
        )


def typed_json_max() -> int:
    """The most characters of typed JSON :func:`parse_json_object` reads: what a form's body may carry at all
    (Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``, 2.5 MiB unless set).

    Decision: the data editor (and a skip's output, a step's result by hand) accepts exactly what the engine stores,
    the value's own limit, checked after parsing as ``results.check_result`` measures it: ``BATON_MAX_RESULT_BYTES``
    bytes of JSON (1 MiB unless set), the bound on an instance's input, on every step's result and on the data an
    edit writes. A bound on the typed text below that (it was 256 KiB) refused the data of an instance that had
    grown past it, as the editor itself shows it (indented, longer still), so the data could not be edited there at
    all. The text is bounded only by the request, which the editor posts as multipart (``_instance_panels``): a
    form-encoded body triples JSON's quotes, braces and colons, so 1 MiB of data could pass 2.5 MiB; as typed,
    it leaves the indentation 1.5 MiB. Django's limit is not raised for the editor: it is read for every request
    before any view runs (the CSRF check reads the form), so one view cannot have another without reading bodies
    ahead of Django; a deployment that raises ``BATON_MAX_RESULT_BYTES`` past about 2 MiB raises
    ``DATA_UPLOAD_MAX_MEMORY_SIZE`` with it (docs/console.md). Returns a number of characters."""
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE or UPLOAD_DEFAULT


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    """``text`` (typed JSON) as a dict that the engine can store, or ValidationError naming ``what`` and the problem.

    Refused: not JSON (with the line and column), JSON that is not an object, more than :func:`typed_json_max`
    characters, nesting deeper than the parser's stack, a key given twice in one object (which value was meant is a
    guess), an empty or over-long key, or anything
    ``results.check_result`` refuses (a NUL, NaN, nesting, more than ``BATON_MAX_RESULT_BYTES`` bytes of JSON)."""
    text_max = typed_json_max()
    if len(text) > text_max:
        raise ValidationError(
            f"{what}: at most {text_max:,} characters of typed JSON (you typed {len(text):,}); the value itself may "
            f"be up to {settings.BATON_MAX_RESULT_BYTES:,} bytes of JSON: type it without indentation."
        )
    try:
        value = json.loads(text, parse_constant=_no_constant, object_pairs_hook=unique_keys)
    except RecursionError:  # deeper than Python's stack: json.loads gives up before check_object could say so
        raise ValidationError(f"{what}: nested deeper than {MAX_DEPTH} levels.") from None
    except RepeatedKey as exc:
        raise ValidationError(f"{what}: {exc}.") from None
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line}, column {exc.colno})" if line is not None and hasattr(exc, "colno") else ""
        raise ValidationError(f"{what}: not valid JSON{where}: {getattr(exc, 'msg', exc)}.") from None
    if not isinstance(value, dict):
        raise ValidationError(f'{what}: give a JSON object, like {{"payout_id": "P-1"}}, not a {_kind(value)}.')
    return check_object(value, what)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "true/false"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def check_object(value: dict[str, Any], what: str) -> dict[str, Any]:
    """``value`` as it will be stored; ValidationError naming the key or place that cannot be."""
    for key in value:
        if not isinstance(key, str) or not key.strip():
            raise ValidationError(f"{what}: every key needs a name.")
        if len(key) > KEY_MAX:
            raise ValidationError(f"{what}: the key {key[:20]!r}… is longer than {KEY_MAX} characters.")
    try:
        stored, size = stored_and_size(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what}: {str(exc).replace('result', 'value', 1)}") from None
    limit = settings.BATON_MAX_RESULT_BYTES
    if size > limit:
        raise ValidationError(
            f"{what}: {size:,} bytes of JSON, more than the {limit:,} the engine stores in one value "
            "(BATON_MAX_RESULT_BYTES; indentation and line breaks are not counted). Shorten or remove values."
        )
    return stored


def data_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The top-level keys added, removed and changed between two data dicts, with their values:
    ``{"added": {k: new}, "removed": {k: old}, "changed": {k: {"from": old, "to": new}}}`` (empty parts left out).
    Changed as JSON (``records.same_json``): true made 1, or 40 made 40.0, is a change (Python's == saw none)."""
    diff: dict[str, Any] = {}
    added = {k: after[k] for k in after if k not in before}
    removed = {k: before[k] for k in before if k not in after}
    changed = {
        k: {"from": before[k], "to": after[k]} for k in after if k in before and not same_json(before[k], after[k])
    }
    for name, part in (("added", added), ("removed", removed), ("changed", changed)):
        if part:
            diff[name] = part
    return diff


# States whose data an operator may edit: no handler holds a copy that is about to be merged back (running), and
# the instance can still use it (not final, not being undone).
EDITABLE_STATES = (InstanceState.FAILED, InstanceState.PAUSED, InstanceState.WAITING)


def _record_keys_of(instance: WorkflowInstance) -> frozenset[str]:
    """The keys of ``instance``'s data that are the engine's records (``records.record_keys`` of its definition).
    When its definition is not deployed, the names of its human and signal steps: the records it can hold. Raises
    what the database raises."""
    workflow = definition_or_none(instance)
    if workflow is not None:
        return record_keys(workflow)
    kinds = (StepKind.HUMAN, StepKind.SIGNAL)
    return frozenset(instance.steps.filter(kind__in=kinds).values_list("name", flat=True))


def instance_data_edit(
    instance_id: int,
    data: dict[str, Any],
    *,
    actor: Actor,
    reason: str,
    expected_seq: int | None = None,
    request_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Operator: replace a failed, paused or waiting instance's business data with ``data``.

    ``expected_seq`` is the instance's ``audit_seq`` when the editor read it: if anything happened to the instance
    since (another operator's edit, a step, a decision), the edit is refused rather than silently overwriting it.
    Returns the diff (:func:`data_diff`), which is audited as ``instance.data_edited`` with the reason.

    Raises ValidationError for a missing reason, data that cannot be stored (:func:`check_object`) or no change;
    ``records.RecordsRefused`` (a ValidationError naming ``data.<key>``) when the edit adds or changes a key where
    the engine records what a node did (a human step's decision, a wait's timeout: :func:`_record_keys_of`);
    removing one is allowed (``records.records_rewritten`` says why); OwnInstance (a NotAllowed) when ``actor``
    started the instance; NotAllowed for a state that does not allow it, a step still running (its result would
    overwrite the edit), or a stale ``expected_seq``; WorkflowInstance.DoesNotExist.
    """
    reason = _reason_required(reason)
    data = check_object(data, "Data")
    with transaction.atomic():
        instance = lock_instance(instance_id)
        _refuse_initiator(instance, actor, "editing its data (what its decisions and approvers read)")
        if instance.state not in EDITABLE_STATES:
            raise NotAllowed(
                f"The data of a {instance.get_state_display().lower()} instance cannot be edited: only failed, "
                "paused or waiting ones (pause a running instance first)."
            )
        # Pausing stops nothing in flight: a task a worker already runs finishes after the pause, and its result
        # joins the data, overwriting an edit made meanwhile (and the task ran on the data before it). A person's
        # step or a wait for a signal is "running" too while the instance waits: editing then is what waiting allows.
        in_flight = instance.steps.filter(state=StepState.RUNNING, kind__in=(StepKind.TASK, StepKind.COMPENSATION))
        running = sorted(set(in_flight.values_list("name", flat=True)))
        if running:
            raise NotAllowed(
                f"A step is still running ({', '.join(running)}): its result joins the data when it finishes and "
                "would overwrite your edit. Wait for it to finish (this page follows it), then edit."
            )
        if expected_seq is not None and instance.audit_seq != expected_seq:
            raise NotAllowed(
                "The instance changed while you were editing (its history has new entries): your edit was not "
                "saved. Look at the data as it is now and edit again."
            )
        diff = data_diff(instance.data, data)
        if not diff:
            raise ValidationError("Data: nothing changed.")
        # An operator corrects business data; who approved and whether a wait timed out are the engine's to say. A
        # stale record may be cleared, not written (docs/architecture.md, "Records in the data").
        refuse_records(
            records_rewritten(_record_keys_of(instance), instance.data, data),
            what="edit",
            field="data",
            sender="an edit may remove it, but",
            verb="add or change",
        )
        unit = Unit(instance, actor, request_meta=request_meta)
        instance.data = data
        unit.audit(
            "instance",
            instance.pk,
            instance.state,
            instance.state,
            reason=reason,
            payload={"diff": diff},
            action=AuditAction.INSTANCE_DATA_EDITED,
        )
        unit.finish()
        return diff


def instance_step_skip(
    instance_id: int,
    step_id: int,
    output: dict[str, Any],
    *,
    actor: Actor,
    reason: str,
    request_meta: dict[str, Any] | None = None,
) -> StepRun:
    """Operator: a failed instance's dead task or timer step is skipped as if it had returned ``output``; the output
    joins the instance data, the instance runs again and goes on from the node after the step; what it held while
    failed goes on at once, as after a retry (``instances.running_again``: steps that fell due, kept signals).

    For an instance with exactly one dead forward step (with two, skipping one would leave the instance running
    behind the other's death: retry, or skip after retrying). The step keeps ``output`` as its result and its
    error text says it was skipped by hand, so the page shows it resolved, not failed. Audited as
    ``step.skipped`` (with the output) and ``instance.retried``. Returns the step.

    Raises ValidationError for a missing reason or an output that cannot be stored; OwnInstance (a NotAllowed) when
    ``actor`` started the instance; NotAllowed when the instance is not failed, its saga began, its definition is
    missing, or the step is not its one dead task or timer step.
    """
    reason = _reason_required(reason)
    output = check_object(output, "Output")
    with transaction.atomic():
        instance = lock_instance(instance_id)
        _refuse_initiator(instance, actor, "skipping its step (deciding its outcome; what follows reads the output)")
        if instance.state != InstanceState.FAILED:
            raise NotAllowed(f"Only a failed instance's step can be skipped here; this one is {instance.state}.")
        if saga_begun(instance):
            raise NotAllowed(
                "The instance's compensation began: its steps never run forward again, so none can be skipped. "
                "Retry it to go on with the compensation, or cancel it."
            )
        workflow = definition_or_none(instance)
        if workflow is None:
            raise NotAllowed(f"Cannot skip: the {definition_unavailable(instance)}. Deploy it again, or cancel.")
        dead = list(instance.steps.filter(state=StepState.DEAD).exclude(kind=StepKind.COMPENSATION))
        step = next((s for s in dead if s.pk == step_id), None)
        if step is None:
            raise NotAllowed("That step has not failed (or is not this instance's): only a dead step can be skipped.")
        if len(dead) > 1:
            others = ", ".join(s.name for s in dead if s.pk != step_id)
            raise NotAllowed(f"Other steps failed too ({others}): retry the instance, or skip after retrying.")
        node = workflow.nodes.get(step.name)
        if not isinstance(node, Task | Timer):
            raise NotAllowed(
                f"{step.name} is a {step.get_kind_display().lower()}: only an automated task or a timer can be "
                "skipped with an output. Retry the instance instead."
            )
        unit = Unit(instance, actor, request_meta=request_meta)
        from_state = instance.state
        instance.retry()
        unit.audit(
            "instance",
            instance.pk,
            from_state,
            instance.state,
            reason=reason,
            payload={"skipped_step": step.pk},
            action=AuditAction.INSTANCE_RETRIED,
        )
        # The engine's one skip: the step ends skipped with ``output`` as its result, joined to the data, audited,
        # and the flow goes on from the node after it.
        step_skip(unit, workflow, step, reason, output=output)
        # Running again, like a retry: what it held while failed goes on now (a back-off that fell due, a signal
        # kept for a wait in another branch), not at the sweep's next pass.
        running_again(unit, workflow)
        settle(unit)
        unit.finish()
        return step


def pause_horizon() -> timedelta:
    """How far ahead a pause may end (``BATON_PAUSE_MAX_DAYS``, default :data:`PAUSE_MAX_DAYS`)."""
    return timedelta(days=int(getattr(settings, "BATON_PAUSE_MAX_DAYS", PAUSE_MAX_DAYS)))


def instance_pause_until(
    instance_id: int,
    *,
    actor: Actor,
    reason: str,
    until: datetime | None,
    now: datetime | None = None,
    request_meta: dict[str, Any] | None = None,
) -> None:
    """Operator: pause (``instances.instance_pause``) with an end no further than :func:`pause_horizon` ahead.

    Raises ValidationError for a time in the past (refused by ``instance_pause``) or beyond the horizon, naming
    the latest allowed date; NotAllowed as ``instance_pause`` does.
    """
    from django.utils import timezone

    now = now or timezone.now()
    if until is not None and until - now > pause_horizon():
        latest = now + pause_horizon()
        raise ValidationError(
            f"Resume at: a pause ends by {latest:%Y-%m-%d} ({pause_horizon().days} days ahead); for longer, "
            "cancel the instance.",
            code="too_far",
        )
    instance_pause(instance_id, actor=actor, reason=reason, until=until, request_meta=request_meta)


# Where "run the compensation" applies (a failed instance) and where "cancel with compensation" does (any open one
# that has not begun undoing).
COMPENSATE_STATES = (InstanceState.FAILED,)
CANCEL_COMPENSATE_STATES = (
    InstanceState.RUNNING,
    InstanceState.WAITING,
    InstanceState.PAUSED,
    InstanceState.FAILED,
)


def instance_compensate(
    instance_id: int,
    *,
    actor: Actor,
    reason: str,
    cancel: bool = False,
    request_meta: dict[str, Any] | None = None,
) -> None:
    """Operator: undo what the instance did (its succeeded steps' compensations, latest first) and end it as
    compensated. ``cancel=False`` is "run compensation" on a failed instance; ``cancel=True`` is "cancel with
    compensation" on any open instance that has not begun undoing (running, waiting, paused or failed): open
    steps are skipped and open tasks cancelled, running handlers are waited for (docs/architecture.md).

    Audited as ``instance.compensation_requested`` (``{"cancel": bool}``) and then as the engine's
    ``instance.compensating``. Raises ValidationError for a missing reason; NotAllowed for a state it does not
    apply to, a saga already begun (retry goes on with it) or a missing definition.
    """
    reason = _reason_required(reason)
    with transaction.atomic():
        instance = lock_instance(instance_id)
        allowed = CANCEL_COMPENSATE_STATES if cancel else COMPENSATE_STATES
        if instance.state not in allowed or saga_begun(instance):
            if instance.state in (InstanceState.COMPENSATING, InstanceState.COMPENSATED) or saga_begun(instance):
                raise NotAllowed(
                    "Its compensation has already begun: retry the instance to go on with it, or answer the "
                    "compensation's escalation."
                )
            what = "open (running, waiting, paused or failed)" if cancel else "failed"
            raise NotAllowed(f"Only {what} instances can be compensated this way; this one is {instance.state}.")
        if definition_or_none(instance) is None:
            raise NotAllowed(
                f"Cannot compensate: the {definition_unavailable(instance)}, and its compensations are in it. "
                "Deploy it again, or cancel without compensation."
            )
        unit = Unit(instance, actor, request_meta=request_meta)
        unit.audit(
            "instance",
            instance.pk,
            instance.state,
            instance.state,
            reason=reason,
            payload={"cancel": cancel},
            action=AuditAction.INSTANCE_COMPENSATION_REQUESTED,
        )
        if instance.state == InstanceState.PAUSED:
            # The undoing is not held by the pause: it ends here (the compensation is what was asked for).
            instance.paused_until = None
            instance.paused_at = None
        compensation_start(unit, f"{'cancelled' if cancel else 'compensated'} by operator: {reason}")
        unit.finish()
