"""Signals: an instance waits at a ``Signal`` node for an event from outside, delivered by ``signal_deliver``.

The engine never imports this module: :func:`register` (called from ``OrchestratorConfig.ready()``) hooks it in,
so the one place that enters nodes (``flow.enter_node``) calls :func:`signal_wait` through ``flow.ENTER``, the one
periodic pass calls :func:`signals_sweep` (``sweep.register_signals_pass``) and an operator's retry of a
timed-out wait calls :func:`signal_rearm` (``steps.REARM``). Rules (docs/architecture.md, "Signals"):

- a delivery is keyed by the sender's ``signal_id``, unique per instance: a repeat with the same event and payload
  finds its row and changes nothing; the same id with another event or payload is a conflict;
- the payload is validated by the node that consumes it (its form or schema), and merged into the instance data
  as that node cleaned it: at delivery when a step waits for it; a signal kept for later is checked at delivery
  against every node waiting for its event (refused if none accepts it), kept as sent, and checked again by the
  node that comes to consume it: if that node refuses it, it is recorded as rejected (with the errors, audited
  ``signal.rejected``), kept no more, and the wait goes on waiting for a valid one;
- a signal that arrives before the instance reaches a node waiting for its event (or while it is paused or failed)
  is kept, and consumed, oldest first, by the next step that waits for that event; a new delivery never overtakes
  one kept earlier (it first hands the kept ones to the waiting steps, as the sweep would);
- a paused (or failed) instance consumes nothing: a delivery is kept, and a wait entered or re-armed meanwhile
  takes no kept signal; the resume (or retry, or skip of the failed step) hands them on at once, oldest first
  (``instances.running_again``);
- consuming a signal runs the flow on in a savepoint: when the workflow's own code raises there, the signal is
  kept as consumed, the wait dies naming the error and the instance fails (:func:`_consume_stopped`); whatever
  handed the signal on (a delivery, an entry into the wait, a resume or retry, the sweep) is not blamed;
- the sweep hands on only where a hand-off can progress (:func:`_kept_candidates`), so instances it cannot hand on
  to never take the batch from the others;
- every decision to consume or keep, every entry into a Signal node and every hand-off of kept signals happens
  under the instance's row lock (``locks.lock_instance``, the instance row before its steps, as everywhere), so a
  delivery sees either no wait (and is kept, for the next wait's entry to take) or the wait (and is consumed);
- a wait's timeout is a duration that a pause holds (the resume moves it on, ``lifecycle.deadlines_shift``); one
  that passes while the instance is failed acts when it runs again, after the retry handed on a signal kept
  meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from django.db.models import Exists, OuterRef, Q
from django.db.models.fields.json import KT
from django.utils import timezone

from orchestrator import registry, rows
from orchestrator.audit import Actor
from orchestrator.audit_actions import AuditAction
from orchestrator.dsl import COMPENSATE, CONTINUE, ESCALATE, Signal, Workflow
from orchestrator.inputs import (
    IDEMPOTENCY_KEY_MAX,
    bound_form,
    business_key_form,
    business_key_forms,
    form_json_default,
    unstorable,
)
from orchestrator.models import (
    ACTIVE_INSTANCE_STATES,
    InstanceState,
    ReceivedSignal,
    StepKind,
    StepRun,
    StepState,
    WorkflowInstance,
)
from orchestrator.ports import human_tasks
from orchestrator.records import record_errors, record_keys, records_set, records_summary
from orchestrator.services import instances, steps, sweep
from orchestrator.services.compensation import compensation_start, saga_begun
from orchestrator.services.flow import ENTER, Place, advance, step_stopped
from orchestrator.services.lifecycle import fail_for_missing_definition, first_line, instance_fail, settle, step_die
from orchestrator.services.locks import (
    SWEEPER,
    definition_or_none,
    definition_unavailable,
    lock_instance,
    lock_step,
    step_save,
)
from orchestrator.services.results import check_result, clean_text
from orchestrator.services.unit import Fenced, Unit

EVENT_MAX = 100
# Signals one instance keeps for waits it has not reached: an instance on a path without its waits never takes
# them, and a sender that loops (new ids each time) would add rows, audit events and hand-off work without end.
# Far above a real burst (a loop of waits fed ahead of time); a delivery past it is a conflict, nothing written.
KEPT_MAX = 1000
# Open instances a business key names that a refusal lists (a key shared by many is named by the first few).
AMBIGUOUS_SHOWN = 5
TIMED_OUT = "timed_out"
# In a waiting step's result: the event it waits for, so the sweep can match kept signals in SQL.
WAITING_FOR = "waiting_for"


class SignalError(Exception):
    """A delivery refused; ``errors`` names the fields at fault (``{field: [message, ...]}``)."""

    def __init__(self, message: str, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or {}


class SignalNotFound(SignalError):
    """No instance with that id, or no open instance with that business key."""


class SignalConflict(SignalError):
    """The instance has ended, the business key names several open instances, or the signal id was used with
    another event or payload."""


class SignalForbidden(SignalError):
    """The sender is the person who started the instance (whoever starts an instance never steers it), or their
    account is deactivated (read under the instance's lock, when the delivery acts)."""


class SignalInvalid(SignalError):
    """The event, signal id or payload is not acceptable (the workflow does not wait for the event, the payload
    fails the node's form or schema, text holds a NUL...)."""


class SignalSetsRecords(SignalInvalid):
    """The payload sets a key where the engine records what a node did (``orchestrator.records``): ``errors`` names
    each as ``payload.<key>``."""


@dataclass
class Delivery:
    """What a delivery did: ``outcome`` is "consumed" (a waiting step took it), "kept" (no step waits for it yet)
    or "repeat" (this signal id was delivered before; nothing changed)."""

    instance_id: int
    signal: ReceivedSignal
    outcome: str


# --- delivering ------------------------------------------------------------------------------------------


def signal_deliver(
    *,
    event: str,
    signal_id: str,
    payload: Any,
    actor: Actor,
    instance_id: int | None = None,
    business_key: str | None = None,
    workflow: str | None = None,
    request_meta: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Delivery:
    """Deliver the event ``event`` with ``payload`` (a JSON object) to one instance, named by ``instance_id`` or by
    ``business_key`` (an open instance's; ``workflow`` narrows it to one workflow's instances).

    ``signal_id`` (1-200 characters) is the sender's id of this event: delivering it again is harmless. Returns a
    :class:`Delivery`. Raises :class:`SignalNotFound`, :class:`SignalConflict`, :class:`SignalInvalid` or
    :class:`SignalForbidden` (``actor`` is the person who started the instance), each with a message for the
    sender.

    All under the instance's row lock, taken first (the lock order of ``orchestrator/services/locks.py``): the
    consume-or-keep decision is serialised with every entry into a Signal node, which takes kept signals itself.
    Signals kept earlier for ``event`` are handed to the waiting steps before this one is considered, so the
    oldest is consumed first (the module's rules; docs/architecture.md, "Signals").
    """
    event = _checked_text(event, "event", EVENT_MAX)
    signal_id = _checked_text(signal_id, "signal_id", IDEMPOTENCY_KEY_MAX)
    if not isinstance(payload, dict):
        raise SignalInvalid("The payload must be a JSON object.", {"payload": ["Must be a JSON object."]})
    try:
        payload = check_result(dict(payload))
    except (TypeError, ValueError) as exc:
        raise SignalInvalid(f"The payload cannot be stored: {exc}", {"payload": [str(exc)]}) from None
    payload_hash = hashlib.sha256(json.dumps([event, payload], sort_keys=True).encode()).hexdigest()
    target = signal_target(instance_id, business_key, workflow)
    with transaction.atomic():
        instance = lock_instance(target)
        unit = Unit(instance, actor, now=now, request_meta=request_meta)
        existing = ReceivedSignal.objects.filter(instance=instance, signal_id=signal_id).first()
        if existing is not None:
            if existing.payload_hash != payload_hash:
                raise SignalConflict(
                    f"Signal id {signal_id!r} was delivered to instance {instance.pk} before with another event or "
                    "payload; use a new id for a new event.",
                    {"signal_id": ["Already used with another event or payload."]},
                )
            return Delivery(instance.pk, existing, "repeat")
        if actor.user_id is not None and actor.user_id == instance.initiator_id:
            # Four-eyes, as for its tasks: an event such as "payment confirmed" must come from someone else.
            raise SignalForbidden(
                f"You started instance {instance.pk}; a signal to it must come from someone else or a system."
            )
        if actor.user_id is not None and not get_user_model().objects.filter(pk=actor.user_id, is_active=True).exists():
            # Read now, under the lock, as a task's action reads it (docs "Who may act on a task"): the request's
            # user predates a deactivation committed while this delivery waited for the instance.
            raise SignalForbidden("Your account is deactivated; it delivers no signals.")
        if instance.is_final:
            raise SignalConflict(f"Instance {instance.pk} has ended ({instance.state}); it takes no more signals.")
        if instance.state not in ACTIVE_INSTANCE_STATES and _undoing(instance):
            # Kept, it waited for a wait that never comes: a begun saga runs no forward step again (a retry goes on
            # with the compensation), and the sender, told 201 "kept", believed the event would be acted on.
            raise SignalConflict(
                f"Instance {instance.pk} is undoing its steps (compensation began); it never waits for a signal again.",
                {"signal_id": ["The instance is compensating: nothing will take this signal."]},
            )
        workflow_def = definition_or_none(instance)
        if workflow_def is None:
            raise SignalConflict(f"Cannot deliver: the {definition_unavailable(instance)}.")
        nodes = [n for n in workflow_def.nodes.values() if isinstance(n, Signal) and n.event == event]
        if not nodes:
            raise SignalInvalid(
                f"{workflow_def.key} never waits for the event {event!r}.",
                {"event": [f"Not an event of {workflow_def.key}."]},
            )
        names = [n.name for n in nodes]
        # Oldest first: signals kept earlier for this event (during a pause, not yet handed on by the sweep) go to
        # the waiting steps before this one may, or a wait would take this newer signal and strand an older one.
        # Under the instance's lock, like every entry into a Signal node, so no step starts waiting unseen.
        handed = _hand_on(unit, workflow_def, names)
        waiting = _waiting_step(instance, names)
        consume = waiting is not None and instance.state in ACTIVE_INSTANCE_STATES
        if consume:
            assert waiting is not None
            node = workflow_def.node(waiting.name)
            assert isinstance(node, Signal)
            cleaned = _validated(node, payload, record_keys(workflow_def))  # the node that consumes it checks it
        else:
            # Kept as sent, for whichever node comes to consume it to check (forms and schemas may differ between
            # the nodes of one event); refused now if none of them could ever accept it.
            _accepted_by_one(nodes, payload, record_keys(workflow_def))
            if _kept(instance)[:KEPT_MAX].count() >= KEPT_MAX:
                raise SignalConflict(
                    f"Instance {instance.pk} already keeps {KEPT_MAX} signals that no step has taken; it keeps no "
                    "more until its waits take some (a sender that loops, or an instance on a path without them).",
                    {"signal_id": [f"The instance keeps at most {KEPT_MAX} signals not yet taken."]},
                )
            cleaned = payload
        received = ReceivedSignal(
            instance=instance,
            event=event,
            signal_id=signal_id,
            payload=cleaned,
            payload_hash=payload_hash,
            received_at=unit.now,
            sender=actor.label,
        )
        rows.insert(received)
        unit.audit(
            action=AuditAction.SIGNAL_RECEIVED,
            subject_type="signal",
            subject_id=received.pk,
            payload={"event": event, "signal_id": signal_id, "payload": cleaned, "kept": not consume},
        )
        if consume:
            assert waiting is not None
            _consume(unit, workflow_def, waiting, received)
        if consume or handed:
            settle(unit)
        unit.finish()
        return Delivery(instance.pk, received, "consumed" if consume else "kept")


def _undoing(instance: WorkflowInstance) -> bool:
    """True when ``instance`` began its saga: compensating, or failed or paused after its compensation began."""
    return instance.state == InstanceState.COMPENSATING or saga_begun(instance)


def _checked_text(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SignalInvalid(f"Give the {field}.", {field: ["Required: a non-empty string."]})
    value = value.strip()
    if len(value) > limit:
        raise SignalInvalid(f"The {field} has at most {limit} characters.", {field: [f"At most {limit} characters."]})
    # The API's parser refuses these before; the command line (argv bytes that are not UTF-8) and other callers do
    # not, and the driver would raise UnicodeEncodeError at the first query: a crash, not a refusal.
    bad = unstorable(value)
    if bad:
        raise SignalInvalid(f"The {field} holds {bad}, which cannot be stored.", {field: [f"Remove {bad}."]})
    return value


def signal_target(
    instance_id: int | None, business_key: str | None, workflow: str | None = None, *, signal_id: str | None = None
) -> int:
    """The id of the instance a signal is for: ``instance_id`` itself, or by ``business_key`` (of ``workflow`` when
    given) the instance that already received ``signal_id``, open or ended, else the one open instance with the key.
    The earlier receiver first, so that a sender's retry after a lost answer is a repeat there (200, or 409 with
    another body) and never a second delivery to a newer instance with the same key. Raises SignalNotFound,
    SignalConflict (several open instances have the key) or SignalInvalid (neither or both named). For an endpoint
    that must check the caller may see the instance before it delivers."""
    if (instance_id is None) == (business_key is None):
        raise SignalInvalid(
            "Name the instance by its id or by its business key (one of them).",
            {"instance": ["Give an instance id or a business key."]},
        )
    if instance_id is not None:
        if not isinstance(instance_id, int) or isinstance(instance_id, bool) or not 0 < instance_id < 2**63:
            raise SignalNotFound(f"No instance {instance_id!r}.")
        if not WorkflowInstance.objects.filter(pk=instance_id).exists():
            raise SignalNotFound(f"No instance {instance_id}.")
        return instance_id
    # NFC cut to the column, as instance_start stores it: the same key typed in another Unicode form names the same
    # instance (and one the NFC migration left as typed: business_key_forms says when).
    typed = _checked_text(business_key, "business_key", 100)
    key, forms = business_key_form(typed), business_key_forms(typed)
    workflow = _checked_text(workflow, "workflow", 100) if workflow else None
    if signal_id is not None:
        keyed = WorkflowInstance.objects.filter(business_key__in=forms)
        if workflow:
            keyed = keyed.filter(workflow_name=workflow)
        earlier = (
            ReceivedSignal.objects.filter(signal_id=_checked_text(signal_id, "signal_id", 200), instance__in=keyed)
            .order_by("-id")
            .values_list("instance_id", flat=True)
            .first()
        )
        if earlier is not None:
            return earlier
    found = WorkflowInstance.objects.filter(business_key__in=forms).exclude(
        state__in=[InstanceState.COMPLETED, InstanceState.COMPENSATED, InstanceState.CANCELLED]
    )
    if workflow:
        found = found.filter(workflow_name=workflow)
    ids = list(found.order_by("id").values_list("pk", flat=True)[: AMBIGUOUS_SHOWN + 1])
    if not ids:
        raise SignalNotFound(f"No open instance with business key {key!r}.")
    if len(ids) > 1:
        # Their ids, so the sender can name one: only a caller who sees every instance may signal by key (the
        # endpoint's rule), and the command is an operator's.
        shown = ", ".join(str(pk) for pk in ids[:AMBIGUOUS_SHOWN]) + (", ..." if len(ids) > AMBIGUOUS_SHOWN else "")
        raise SignalConflict(
            f"Several open instances have business key {key!r} ({shown}); name the instance by its id (or give the "
            "workflow, when they are of different workflows).",
            {"business_key": [f"Names more than one open instance: {shown}."]},
        )
    return ids[0]


def _accepted_by_one(nodes: list[Signal], payload: dict[str, Any], records: frozenset[str]) -> None:
    """Raise the first node's :class:`SignalInvalid` unless one of ``nodes`` (all of one event) accepts
    ``payload``: a signal kept for later must fit at least one node that may consume it. A payload that sets a
    record as sent is refused by every node alike: :class:`SignalSetsRecords` at once, as at a consumption."""
    _refuse_records(records_set(records, payload))
    first: SignalInvalid | None = None
    for node in nodes:
        try:
            _validated(node, payload, records)
            return
        except SignalInvalid as exc:
            first = first or exc
    assert first is not None
    if len(nodes) > 1:
        raise type(first)(
            f"The payload fits none of the {len(nodes)} nodes that wait for this event: {first}", first.errors
        )
    raise first


def _validated(node: Signal, payload: dict[str, Any], records: frozenset[str]) -> dict[str, Any]:
    """The payload as it joins the instance data: the form's cleaned data, the schema's answer, or as sent.

    Raises :class:`SignalInvalid` naming the fields when the form or schema refuses it, and also when they raise
    anything else on it (a schema that indexes a missing key): that is still this payload refused, and a refusal
    at delivery is a 422 and at consumption a rejection, never a crash. Database errors are not caught.

    Raises :class:`SignalSetsRecords` when the payload holds a key of ``records`` (``records.record_keys``), as
    sent or as its form or schema cleaned it: the sender of an event may say what happened outside, not rewrite
    who approved or whether a wait timed out, which later decisions and steps read from the data. As sent too,
    although a form drops a key it does not ask for: the sender is told, not silently ignored
    (docs/architecture.md, "Records in the data")."""
    _refuse_records(records_set(records, payload))
    try:
        cleaned = _cleaned(node, payload)
    except (SignalInvalid, DatabaseError):
        raise
    except Exception as exc:
        message = clean_text(first_line(str(exc)) or repr(exc), 300)
        raise SignalInvalid(
            f"The signal's {'form' if node.form is not None else 'schema'} of {node.name!r} failed on the payload: "
            f"{type(exc).__name__}: {message}",
            {"payload": [f"{type(exc).__name__}: {message}"]},
        ) from None
    _refuse_records(records_set(records, cleaned))
    return cleaned


def _refuse_records(keys: list[str]) -> None:
    """Raise :class:`SignalSetsRecords` naming ``keys`` (``payload.<key>``) when there are any."""
    if keys:
        errors = record_errors(keys, field="payload", sender="a signal")
        raise SignalSetsRecords(records_summary("payload", keys), errors)


def _cleaned(node: Signal, payload: dict[str, Any]) -> dict[str, Any]:
    if node.form is not None:
        form = bound_form(node.form, payload)
        if not form.is_valid():
            errors = {f"payload.{k}": [str(e) for e in v] for k, v in form.errors.items()}
            raise SignalInvalid("The payload does not fit the signal's form: " + _summary(errors), errors)
        # A field the sender left out comes back as its empty value ("", False, None): merged, it would wipe what
        # the instance holds under that name (the customer's note) though the sender said nothing about it. JSON
        # can say "empty" (send "" or false), so only a value sent, or one the form's own clean() made, is merged.
        cleaned: Any = {
            name: value
            for name, value in form.cleaned_data.items()
            if name in payload or name not in form.fields or not _empty(value)
        }
    elif node.schema is not None:
        try:
            cleaned = node.schema(dict(payload))
        except ValidationError as exc:
            messages = exc.message_dict if hasattr(exc, "error_dict") else {"payload": exc.messages}
            errors = {(k if k.startswith("payload") else f"payload.{k}"): list(v) for k, v in messages.items()}
            raise SignalInvalid("The payload does not fit the signal's schema: " + _summary(errors), errors) from None
        if not isinstance(cleaned, dict):
            raise SignalInvalid(f"The schema of {node.name!r} returned {type(cleaned).__name__}, not a dict.")
    else:
        cleaned = payload
    # Decimals and dates from a form become strings: the instance data is plain JSON. A schema's answer is the
    # workflow's code working on the sender's payload (``float("NaN")``, text decoded to a NUL, a list grown too
    # big): what the database cannot hold is this payload refused, not a DataError at the insert (a 500 at
    # delivery, a crash of the worker's step or the sweep at consumption).
    try:
        return check_result(json.loads(json.dumps(cleaned, default=form_json_default)))
    except (TypeError, ValueError, RecursionError) as exc:
        message = clean_text(str(exc).replace("result", "the cleaned payload", 1), 300)
        raise SignalInvalid(
            f"The {'form' if node.form is not None else 'schema'} of {node.name!r} turned the payload into what "
            f"cannot be stored: {message}",
            {"payload": [message]},
        ) from None


def _empty(value: Any) -> bool:
    """Whether ``value`` is what a form field gives for no input (its empty value; False for a checkbox)."""
    return value is None or value is False or (isinstance(value, str | list | tuple | dict) and not value)


def _summary(errors: dict[str, list[str]]) -> str:
    return "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())


def _waiting_step(instance: WorkflowInstance, names: list[str]) -> StepRun | None:
    return instance.steps.filter(kind=StepKind.SIGNAL, state=StepState.RUNNING, name__in=names).order_by("id").first()


def _hand_on(unit: Unit, workflow: Workflow, names: list[str]) -> int:
    """Hand kept signals to the steps waiting at nodes ``names`` (all of one event), the oldest signal to the
    earliest wait, while the instance runs; each consumption may enter a further wait, which takes the next kept
    signal itself (:func:`signal_wait`). The waits are read afresh each round: a consumption moves the flow on.
    Returns how many were handed on. Called with the instance locked."""
    handed = 0
    while unit.instance.state in ACTIVE_INSTANCE_STATES:
        step = _waiting_step(unit.instance, names)
        if step is None:
            break
        node = workflow.node(step.name)
        assert isinstance(node, Signal)
        if not _consume_kept(unit, workflow, step, node):
            break
        handed += 1
    return handed


# Waits entered while a consumption runs the flow on (a wait right after a wait, a decision looping back to the
# wait), per unit of work: each takes its kept signal after the consumption that entered it, one after another, in
# the order they were entered. Taken inside that consumption, each kept signal cost one more level of Python calls
# and one more nested PostgreSQL savepoint than the one before: a loop holding about a hundred kept signals ran out
# of stack, and the RecursionError failed the instance as if the workflow had raised.
_entered_meanwhile: weakref.WeakKeyDictionary[Unit, list[tuple[StepRun, Signal]]] = weakref.WeakKeyDictionary()


def _consume(unit: Unit, workflow: Workflow, step: StepRun, received: ReceivedSignal) -> None:
    """The waiting ``step`` takes ``received`` (its payload already cleaned by the step's node): it succeeds, the
    payload joins the data, the flow goes on.

    The flow goes on inside a savepoint. When the workflow's own code raises there (a ``Decision`` reading data
    the instance lacks, a ``Timer``'s ``until`` raising, a next task that cannot open, a value the database
    refuses), the savepoint and the unit's collected work go back and the failure is recorded the engine's way
    (:func:`_consume_stopped`: the signal is kept as consumed, the wait dies naming the error, the instance fails),
    as when what follows a step or a human decision raises (docs/architecture.md, "A step whose outcome cannot be
    recorded"). So the operation that handed the signal on (a delivery, the entry into the wait after the
    preceding step, a resume or retry, the sweep) is not blamed and carries on.

    Waits the flow enters meanwhile take their kept signals after this consumption, each in a savepoint of its
    own, while the instance runs (:data:`_entered_meanwhile`): the stack and the savepoints stay one level deep
    however many kept signals a loop of waits holds. Raises ``OperationalError`` and ``InterfaceError`` (the
    database, not the definition: the caller's transaction is what failed)."""
    entered = _entered_meanwhile.get(unit)
    if entered is not None:  # inside another consumption's flow: that one's caller takes the waits in turn
        _consume_one(unit, workflow, step, received, entered)
        return
    entered = _entered_meanwhile[unit] = []
    try:
        _consume_one(unit, workflow, step, received, entered)
        while entered and unit.instance.state in ACTIVE_INSTANCE_STATES:
            wait, node = entered.pop(0)
            _consume_kept(unit, workflow, wait, node)
    finally:
        del _entered_meanwhile[unit]


# Errors that are not the workflow's code failing: the database (unreachable, restarting) and a worker step's soft
# time limit landing while it consumes (steps.py counts that as an interruption and tries again). They reach the
# caller, never fail the instance at the wait.
NOT_THE_WORKFLOWS = (OperationalError, InterfaceError, SoftTimeLimitExceeded)


def _consume_one(
    unit: Unit, workflow: Workflow, step: StepRun, received: ReceivedSignal, entered: list[tuple[StepRun, Signal]]
) -> None:
    mark, waits_before = unit.mark(), len(entered)
    try:
        with transaction.atomic():
            _take(unit, workflow, step, received)
            _check_row_fits(unit.instance)
    except NOT_THE_WORKFLOWS:
        raise
    except Exception as exc:
        unit.rewind(mark)
        del entered[waits_before:]  # their wait steps went back with the savepoint
        _consume_stopped(unit, step, received, exc)


def _check_row_fits(instance: WorkflowInstance) -> None:
    """Raise ValueError naming the instance's text field that no longer fits its column (its ``outcome``, which a
    completion reads from the data, where a payload may have put any text).

    The instance row is written once, when the unit finishes, after the consumption's savepoint: without this
    check a value too long for its column raised there, outside the savepoint, as a DataError of whatever handed
    the signal on (a 500 at delivery; at a worker's entry into the wait, a failure of the step before it). Here it
    is what follows the wait raising, recorded at the wait (:func:`_consume_stopped`)."""
    for field in WorkflowInstance._meta.concrete_fields:
        value = getattr(instance, field.attname)
        limit = getattr(field, "max_length", None)
        if isinstance(value, str) and limit is not None and len(value) > limit:
            raise ValueError(
                f"the instance's {field.name} {clean_text(value, 40)!r}... is {len(value)} characters, more than its "
                f"column holds ({limit}): the data's {field.name!r} is too long"
            )


def _mark_consumed(unit: Unit, step: StepRun, received: ReceivedSignal) -> None:
    """Record ``received`` as consumed by ``step`` now (its row; the caller records the step)."""
    received.step = step
    received.consumed_at = unit.now
    rows.update(received, ["step", "consumed_at", "payload"])


def _signal_result(received: ReceivedSignal) -> dict[str, Any]:
    """What a wait's step records as its result when it consumes ``received``."""
    return {"event": received.event, "signal_id": received.signal_id, "payload": received.payload}


def _take(unit: Unit, workflow: Workflow, step: StepRun, received: ReceivedSignal) -> None:
    _mark_consumed(unit, step, received)
    step.succeed(_signal_result(received), unit.now)
    rows.update(step, ["state", "result", "finished_at", "lease_expires_at", "error", "error_type"])
    unit.audit(
        action=AuditAction.STEP_SUCCEEDED,
        subject_type="step",
        subject_id=step.pk,
        from_state=StepState.RUNNING,
        to_state=step.state,
        payload={"signal": received.pk, "signal_id": received.signal_id},
    )
    unit.instance.data.update(received.payload)
    advance(unit, workflow, step)


# In the result of a dead signal step: it consumed its signal, but what follows the wait could not be entered.
SIGNAL_KEPT = "signal_kept"


def _consume_stopped(unit: Unit, step: StepRun, received: ReceivedSignal, exc: Exception) -> None:
    """``step`` consumed ``received`` but entering what follows the wait raised ``exc`` (rolled back to the
    savepoint before the consumption, in the database and in ``unit``). The signal is kept as consumed by the step
    (the sender's event happened; it is not asked again); the step ends ``dead`` with the signal as its result
    (and ``SIGNAL_KEPT``), naming the real error type and message; the payload joins the instance data as a
    consumption's would; the instance fails (a wait has no ``on_failure``): the rule of a human step whose
    decision cannot go on (``flow.human_step_stopped``). An operator's retry, once the definition or data is
    fixed, enters what follows the wait without waiting again (:func:`signal_rearm`). Raises only what the
    database raises."""
    fresh = StepRun.objects.get(pk=step.pk)  # as the savepoint left it: running, waiting
    step.__dict__.update({f.attname: getattr(fresh, f.attname) for f in StepRun._meta.concrete_fields})
    _mark_consumed(unit, step, received)
    step_stopped(
        unit,
        step,
        exc,
        result={**_signal_result(received), SIGNAL_KEPT: True},
        cause=f"raised while entering what follows the wait: the signal {received.signal_id!r} is kept as consumed",
        audit_payload={"signal": received.pk, "signal_id": received.signal_id},
        data=received.payload,
    )


# --- waiting (the engine enters a Signal node) -----------------------------------------------------------


def register() -> None:
    """Hook signals into the engine, which never imports this module: entering a ``Signal`` node
    (``flow.ENTER``), an operator's retry of a signal step (``steps.REARM``), the sweep's signal pass
    (``sweep.register_signals_pass``) and a resume or retry (``instances.RUNNING_AGAIN``: kept signals handed
    on). Called from ``OrchestratorConfig.ready()``; calling it again changes nothing. Raises nothing."""
    ENTER[Signal] = _enter_signal
    steps.REARM[StepKind.SIGNAL] = signal_rearm
    sweep.register_signals_pass(signals_sweep)
    instances.RUNNING_AGAIN["signals"] = hand_on_kept


def _enter_signal(unit: Unit, at: Place, node: Signal) -> None:
    """``flow.ENTER``'s handler for a ``Signal`` node: wait for the node's event; a kept one is taken at once."""
    common = {"instance": unit.instance, "name": node.name, "parent_id": at.parent_id, "branch": at.branch}
    signal_wait(unit, at.workflow, node, common)


def signal_wait(unit: Unit, workflow: Workflow, node: Signal, common: dict[str, Any]) -> StepRun:
    """Enter ``node``: a running signal step waits (until its timeout, if any); a kept signal for its event is
    consumed at once while the instance runs, or, when a consumption's flow entered ``node``, right after that
    consumption (:func:`_consume`). ``common`` holds the step's instance, name, parent and branch. Returns the
    step.

    On a paused (or failed) instance (a worker's step that was running when the pause came finishes, and the flow
    enters this node) the wait is written but takes nothing: a delivery to a paused instance is kept, so a kept
    signal must not be consumed either until the instance runs again; the resume (or retry) hands it on
    (:func:`hand_on_kept`, docs/architecture.md "Signals")."""
    due = unit.now + node.timeout if node.timeout is not None else None
    step = StepRun(
        **common,
        kind=StepKind.SIGNAL,
        state=StepState.RUNNING,
        attempt=1,
        started_at=unit.now,
        due_at=due,
        result={WAITING_FOR: node.event},
    )
    rows.insert(step)
    unit.audit(
        action=AuditAction.STEP_STARTED,
        subject_type="step",
        subject_id=step.pk,
        from_state="",
        to_state=step.state,
        payload={"node": node.name, "event": node.event, "timeout_at": due.isoformat() if due else None},
    )
    if unit.instance.state in ACTIVE_INSTANCE_STATES:
        entered = _entered_meanwhile.get(unit)
        if entered is not None:
            entered.append((step, node))  # a consumption's flow entered it: it takes its signal after that one
        else:
            _consume_kept(unit, workflow, step, node)
    return step


def _kept(instance: WorkflowInstance) -> Any:
    """The instance's kept signals: neither consumed nor rejected (the partial index ``signal_kept``)."""
    return ReceivedSignal.objects.filter(instance=instance, consumed_at__isnull=True, rejected_at__isnull=True)


def _consume_kept(unit: Unit, workflow: Workflow, step: StepRun, node: Signal) -> bool:
    """The waiting ``step`` (at ``node``) takes the oldest kept signal for its event that ``node`` accepts; each
    older one it refuses is rejected on the way (:func:`_reject`). Returns whether it took one."""
    while True:
        kept = _kept(unit.instance).filter(event=node.event).order_by("received_at", "id").first()
        if kept is None:
            return False
        try:
            kept.payload = _validated(node, kept.payload, record_keys(workflow))
        except SignalInvalid as exc:
            _reject(unit, step, node, kept, exc)
            continue
        _consume(unit, workflow, step, kept)
        return True


def _reject(unit: Unit, step: StepRun, node: Signal, kept: ReceivedSignal, exc: SignalInvalid) -> None:
    """``node`` refuses the kept signal ``kept`` it came to consume: recorded on the row with the errors and
    audited; the signal is kept no more (an older signal never blocks the newer ones) and ``step`` waits on."""
    errors = exc.errors or {"payload": [str(exc)]}
    kept.rejected_at = unit.now
    kept.rejection = {"node": node.name, "step": step.pk, "errors": errors}
    rows.update(kept, ["rejected_at", "rejection"])
    unit.audit(
        action=AuditAction.SIGNAL_REJECTED,
        subject_type="signal",
        subject_id=kept.pk,
        reason=clean_text(str(exc), 500),
        payload={
            "event": kept.event,
            "signal_id": kept.signal_id,
            "node": node.name,
            "step": step.pk,
            "errors": errors,
        },
    )


def signal_rearm(unit: Unit, workflow: Workflow, step: StepRun, reason: str) -> None:
    """An operator's retry of a signal step that timed out: it waits again, for a whole new timeout, and takes a
    signal kept meanwhile at once if the instance runs. Called inside the retry's transaction: an instance retry
    (running by then) or the Retry answer to the wait's escalation, which an operator may give while the instance
    is paused: then the wait takes nothing until the resume hands kept signals on (as :func:`signal_wait`)."""
    node = workflow.node(step.name)
    assert isinstance(node, Signal)
    if step.result.get(SIGNAL_KEPT):
        _retry_after_signal(unit, workflow, step, reason)
        return
    from_state = step.state
    step.max_attempts = step.attempt + 1
    step.schedule(unit.now)  # dead -> scheduled -> running: the step's existing transitions
    step.start(unit.now, None)
    step.due_at = unit.now + node.timeout if node.timeout is not None else None
    step.result = {WAITING_FOR: node.event}
    step.error = step.error_type = ""
    fields = ["state", "attempt", "max_attempts", "started_at", "due_at", "dispatched_at", "result", "error"]
    rows.update(step, [*fields, "error_type", "lease_expires_at"])
    unit.audit(
        action=AuditAction.STEP_STARTED,
        subject_type="step",
        subject_id=step.pk,
        from_state=from_state,
        to_state=step.state,
        reason=reason,
        payload={"attempt": step.attempt, "timeout_at": step.due_at.isoformat() if step.due_at else None},
    )
    if unit.instance.state in ACTIVE_INSTANCE_STATES:
        _consume_kept(unit, workflow, step, node)


def _retry_after_signal(unit: Unit, workflow: Workflow, step: StepRun, reason: str) -> None:
    """An operator's retry of a wait that died after consuming its signal (:func:`_consume_stopped`): the kept
    signal succeeds the step again and what follows the wait is entered now, in the retry's transaction; nothing
    waits again (the signal was consumed). While it still raises, the retry is refused with the error
    (``instances.NotAllowed``, rolled back with the retry), as a retry after a kept human decision is."""
    result = {k: v for k, v in step.result.items() if k != SIGNAL_KEPT}
    step.schedule(unit.now)  # dead -> scheduled -> succeeded: the step's two existing transitions
    step.succeed(result, unit.now)
    rows.update(step, ["state", "result", "error", "error_type", "finished_at", "lease_expires_at", "due_at"])
    unit.audit(
        action=AuditAction.STEP_SUCCEEDED,
        subject_type="step",
        subject_id=step.pk,
        from_state=StepState.DEAD,
        to_state=step.state,
        reason=reason,
        payload={"signal_id": result.get("signal_id"), "retried": True},
    )
    try:
        advance(unit, workflow, step)
        _check_row_fits(unit.instance)
    except NOT_THE_WORKFLOWS:
        raise  # the database or the worker's time limit, not the definition
    except Exception as exc:
        raise instances.NotAllowed(
            f"Cannot retry: entering what follows {step.name} still raises {type(exc).__name__}: "
            f"{clean_text(str(exc) or repr(exc), 300)}. Fix the workflow definition (or the instance data) and "
            "deploy it, then retry (the signal is kept), or cancel the instance."
        ) from exc


# --- the sweep: timeouts, and kept signals for steps that wait ----------------------------------------------


def signals_sweep(now: datetime, report: Any, isolated: Callable[..., int]) -> dict[str, int]:
    """Time out the waits whose timeout passed, and hand kept signals to steps now waiting for them (a safety net:
    deliveries, entries into a wait and resumes hand them on themselves). One instance per transaction, isolated
    like the rest of the sweep; only instances whose hand-off can progress take a slot (:func:`_kept_candidates`).
    ``isolated`` is the sweep's runner of one due item (``sweep.isolated``, passed in by the sweep, which calls
    this through ``sweep.register_signals_pass``). Returns ``{"signals_timed_out": n, "signals_consumed": m}``."""
    batch = settings.BATON_SWEEP_BATCH
    due = list(
        StepRun.objects.filter(
            kind=StepKind.SIGNAL, state=StepState.RUNNING, due_at__lte=now, instance__state__in=ACTIVE_INSTANCE_STATES
        )
        .order_by("due_at")
        .values_list("pk", "instance_id")[:batch]
    )
    timed_out = 0
    for step_id, instance_id in due:
        timed_out += isolated(report, "signal timeout", "step", step_id, instance_id, partial(_time_out, step_id, now))
    consumed = 0
    for instance_id in _kept_candidates(now, batch):
        handed = isolated(
            report, "kept signal", "instance", instance_id, instance_id, partial(_hand_kept, instance_id, now)
        )
        if handed:
            _no_progress.pop(instance_id, None)
        else:
            _remember_no_progress(instance_id, now)
        consumed += handed
    return {"signals_timed_out": timed_out, "signals_consumed": consumed}


# Instances whose hand-off of kept signals moved nothing (it raised: the database; what follows the wait raising
# fails the instance instead, ``_consume_stopped``; or a delivery, resume or entry took the signals first), by id,
# with the time until which the pass skips them: without this, more such instances than a batch would take every
# pass's slots and the rest would never be reached (one bad item never stops the others). Per process and bounded;
# a later delivery or entry into the wait hands kept signals on itself, so a skipped instance loses nothing but the
# sweep's safety net for a while.
_no_progress: dict[int, datetime] = {}
NO_PROGRESS_SKIP = timedelta(minutes=10)
NO_PROGRESS_KEPT = 10_000


def _remember_no_progress(instance_id: int, now: datetime) -> None:
    if len(_no_progress) >= NO_PROGRESS_KEPT:
        _no_progress.clear()  # all of them get one more try: the bound is on memory, not on fairness
    _no_progress[instance_id] = now + NO_PROGRESS_SKIP


def _kept_candidates(now: datetime, batch: int) -> list[int]:
    """Up to ``batch`` instance ids, lowest first, whose hand-off of kept signals can progress: the instance runs,
    its definition is registered, and one of its running Signal steps is a node of that definition waiting for the
    event of one of its kept signals (exactly what :func:`hand_on_kept` matches, so the selection holds nothing it
    would skip; docs/architecture.md, "Signals"). Instances whose hand-off moved nothing in the last
    ``NO_PROGRESS_SKIP`` are left out. Raises nothing of its own."""
    for instance_id, until in list(_no_progress.items()):
        if until <= now:
            del _no_progress[instance_id]
    fit = Q(pk__in=[])
    for workflow in registry.all_definitions():
        for node in workflow.nodes.values():
            if isinstance(node, Signal):
                fit |= Q(
                    instance__workflow_name=workflow.name,
                    instance__workflow_version=workflow.version,
                    name=node.name,
                    waits_for=node.event,
                )
    waiting = (
        StepRun.objects.filter(instance_id=OuterRef("instance_id"), kind=StepKind.SIGNAL, state=StepState.RUNNING)
        .annotate(waits_for=KT(f"result__{WAITING_FOR}"))
        .filter(fit, waits_for=OuterRef("event"))
    )
    return list(
        ReceivedSignal.objects.filter(
            consumed_at__isnull=True, rejected_at__isnull=True, instance__state__in=ACTIVE_INSTANCE_STATES
        )
        .exclude(instance_id__in=list(_no_progress))
        .filter(Exists(waiting))
        .order_by("instance_id")
        .values_list("instance_id", flat=True)
        .distinct()[:batch]
    )


def _time_out(step_id: int, now: datetime) -> int:
    with transaction.atomic():
        locked = lock_step(step_id, skip_locked=True)
        if locked is None:
            return 0
        instance, step = locked
        if step.kind != StepKind.SIGNAL or step.state != StepState.RUNNING or not step.due_at or step.due_at > now:
            return 0
        if instance.state not in ACTIVE_INSTANCE_STATES:
            return 0
        unit = Unit(instance, SWEEPER, now=now)
        workflow = definition_or_none(instance)
        if workflow is None:
            fail_for_missing_definition(unit)
            unit.finish()
            return 1
        node = workflow.nodes.get(step.name)
        if not isinstance(node, Signal):
            # The same version deployed again without this wait: raising here rolled back every pass (an error
            # each time, the instance waiting forever); the wait cannot time out as its node said, so it fails.
            _wait_without_node(unit, workflow, step, now)
            settle(unit)
            unit.finish()
            return 1
        if _consume_kept(unit, workflow, step, node):
            # A signal kept for this wait (its hand-off missed: the sweep's hand-offs come after its timeouts) was
            # received before the timeout acts: it wins, as a delivery that took the instance's lock first would.
            settle(unit)
            unit.finish()
            return 0
        due = timezone.localtime(step.due_at).isoformat(timespec="seconds")
        if node.on_timeout == CONTINUE:
            _continue_after_timeout(unit, workflow, step, node, due)
        else:
            error = f"no signal {node.event!r} by {due}"
            step_die(
                unit,
                step,
                "SignalTimeout",
                error,
                reason=error,
                payload={TIMED_OUT: True, "on_timeout": node.on_timeout},
            )
            reason = f"{step.name} timed out: {error}"
            if node.on_timeout == COMPENSATE:
                compensation_start(unit, reason)
            elif node.on_timeout == ESCALATE:
                human_tasks().escalation_open(unit, step, reason=reason)
            else:
                instance_fail(unit, reason)
        settle(unit)
        unit.finish()
        return 1


def _wait_without_node(unit: Unit, workflow: Workflow, step: StepRun, now: datetime) -> None:
    """The due wait ``step`` is no Signal node of ``workflow`` (its definition was deployed again, under the same
    version, without it): the step dies with a ``DefinitionError`` naming it and the instance fails, for an
    operator to fix the definition (a retry is then refused until a node of that name exists) or cancel."""
    error = f"{workflow.key} has no Signal node {step.name!r} any more, so its wait cannot time out"
    step_die(unit, step, "DefinitionError", error, reason=error, payload={TIMED_OUT: True})
    instance_fail(unit, f"{step.name} failed: {error}")


def _continue_after_timeout(unit: Unit, workflow: Workflow, step: StepRun, node: Signal, due: str) -> None:
    """The wait at ``node`` timed out and goes on: it succeeds with ``{"timed_out": true}`` (also in the data under
    the node's name) and the flow goes on, inside a savepoint.

    When what follows raises (the workflow's own code: a ``Decision`` reading a key only a signal brings), the
    savepoint and the unit's collected work go back and the engine's rule for a step whose next node cannot be
    entered applies (``flow.step_stopped``, as :func:`_consume_stopped`): the wait ends dead naming the real error,
    the timeout stays in the data, and the instance fails for an operator, whose retry waits again. Without it the
    sweep's transaction rolled back every pass, counted an error each time, and the instance waited forever, its
    due wait taking a slot of the sweep's batch. Raises what the database raises, and ``Fenced``."""
    reason = f"no signal {node.event!r} by {due}: continues"
    record = {TIMED_OUT: True}
    mark = unit.mark()
    try:
        with transaction.atomic():
            step.succeed(dict(record), unit.now)
            step_save(step, ["state", "result", "finished_at", "lease_expires_at", "error", "error_type"])
            unit.audit(
                action=AuditAction.STEP_SUCCEEDED,
                subject_type="step",
                subject_id=step.pk,
                from_state=StepState.RUNNING,
                to_state=step.state,
                reason=reason,
                payload=dict(record),
            )
            unit.instance.data[node.name] = dict(record)
            advance(unit, workflow, step)
            _check_row_fits(unit.instance)
    except (*NOT_THE_WORKFLOWS, Fenced):
        raise
    except Exception as exc:
        unit.rewind(mark)
        fresh = StepRun.objects.get(pk=step.pk)  # as the savepoint left it: running, waiting
        step.__dict__.update({f.attname: getattr(fresh, f.attname) for f in StepRun._meta.concrete_fields})
        step_stopped(
            unit,
            step,
            exc,
            result=dict(record),
            cause=f"raised while entering what follows the wait after its timeout ({reason})",
            audit_payload=dict(record),
            data={node.name: dict(record)},
        )


def _hand_kept(instance_id: int, now: datetime) -> int:
    with transaction.atomic():
        instance = rows.get(WorkflowInstance, instance_id, lock=True)
        if instance is None or instance.state not in ACTIVE_INSTANCE_STATES:
            return 0
        workflow = definition_or_none(instance)
        if workflow is None:
            return 0
        unit = Unit(instance, SWEEPER, now=now)
        handed = hand_on_kept(unit, workflow)
        settle(unit)
        unit.finish()
        return handed


def hand_on_kept(unit: Unit, workflow: Workflow) -> int:
    """Hand every kept signal of ``unit``'s instance to the steps waiting for its event, oldest first per event,
    while the instance runs (nothing on a paused or failed one). Called with the instance locked: by the sweep, and
    by a resume, retry or skip (``instances.running_again``) so that signals kept while the instance stood still go
    on at once. Returns how many were handed on, counted from the rows (a handed-on signal's wait may enter the next
    wait, which takes another itself; one whose flow onward raised counts: it failed the instance). Raises only what
    the database raises (``_consume``)."""
    if unit.instance.state not in ACTIVE_INSTANCE_STATES or not any(
        isinstance(n, Signal) for n in workflow.nodes.values()
    ):
        return 0
    consumed = ReceivedSignal.objects.filter(instance=unit.instance, consumed_at__isnull=False)
    before = consumed.count()
    for event in sorted(set(_kept(unit.instance).values_list("event", flat=True))):
        names = [n.name for n in workflow.nodes.values() if isinstance(n, Signal) and n.event == event]
        if names:
            _hand_on(unit, workflow, names)
    return consumed.count() - before


def registered_events(name: str) -> list[str]:
    """The events the latest version of workflow ``name`` waits for (for pages and the API's description)."""
    workflow = registry.get(name)
    return sorted({n.event for n in workflow.nodes.values() if isinstance(n, Signal)})
