"""Signals at their edges: what a sender, a schema or the command line can put in a delivery, and what it may
overwrite in the instance data. Each refusal is a ``SignalError`` (a 4xx in the API, a ``CommandError`` on the
command line), never a database error."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from functools import partial

import pytest
from django import forms
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import transaction

from api.serializers import ReceivedSignalSerializer
from approvals.models import HumanTask
from approvals.services.tasks import task_claim, task_decide
from orchestrator import registry
from orchestrator.audit import Actor
from orchestrator.dsl import CONTINUE, Decision, DefinitionError, Human, Signal, Task, Workflow
from orchestrator.models import AuditEvent, InstanceState, ReceivedSignal, StepState
from orchestrator.services import instances, signals
from orchestrator.services import sweep as engine
from orchestrator.services.instances import NotAllowed, instance_pause, instance_resume, instance_retry, instance_start
from orchestrator.services.locks import lock_instance
from orchestrator.services.operations import instance_compensate
from orchestrator.services.signals import (
    SignalConflict,
    SignalForbidden,
    SignalInvalid,
    SignalSetsRecords,
    signal_deliver,
)
from tests.concurrency import race
from tests.orchestrator.test_signals import OPERATOR, deliver, flow, waiting_instance

pytestmark = pytest.mark.django_db


@pytest.fixture
def payment_flow(register_workflow):
    return register_workflow(flow("signal_payment"))


def float_schema(payload: dict) -> dict:
    """A schema as a workflow author writes one: the amount as a float (``float("NaN")`` is a float too)."""
    try:
        return {"amount": float(payload["amount"])}
    except (KeyError, TypeError, ValueError):
        raise ValidationError({"amount": ["A number."]}) from None


# --- text the database cannot hold ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"signal_id": "sig-\ud800"},
        {"event": "payment.\udcff"},
        {"instance_id": None, "business_key": "A-\ud800"},
        {"instance_id": None, "business_key": "A-1", "workflow": "signal_\udcff"},
    ],
    ids=["signal id", "event", "business key", "workflow"],
)
def test_a_lone_surrogate_in_the_delivery_is_refused_naming_the_field(payment_flow, run_steps, kwargs):
    # given a waiting instance
    instance = waiting_instance(run_steps)
    events = AuditEvent.objects.count()

    # when a caller (not the API, whose parser refuses it first) names it with half a UTF-16 pair
    with pytest.raises(SignalInvalid) as refused:
        deliver(**{"instance_id": instance.pk, **kwargs})

    # then it is refused naming that field (it was a UnicodeEncodeError from the driver), and nothing is written
    field = next(key for key, value in kwargs.items() if isinstance(value, str) and not value.isascii())
    assert field in refused.value.errors
    assert not ReceivedSignal.objects.exists()
    assert AuditEvent.objects.count() == events


def test_the_command_refuses_a_signal_id_whose_bytes_are_not_utf8(payment_flow, run_steps):
    # given a waiting instance
    instance = waiting_instance(run_steps)

    # when the command line passes an id holding a byte that is not UTF-8 (Python reads it as a lone surrogate)
    # then the command says what is wrong (exit 1) rather than dying with a traceback
    with pytest.raises(CommandError, match="signal_id"):
        call_command(
            "baton_signal",
            "payment.confirmed",
            "--id",
            b"sig-\xff".decode("utf-8", "surrogateescape"),
            "--instance",
            str(instance.pk),
            "--payload",
            '{"paid_amount": "1", "reference": "r"}',
        )
    assert not ReceivedSignal.objects.exists()


# --- what a schema makes of the payload ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["NaN", "inf", "-Infinity"])
def test_a_schema_answer_the_database_cannot_hold_is_a_refusal_at_delivery(register_workflow, run_steps, bad):
    # given a wait whose schema turns the amount into a float
    register_workflow(flow("signal_float", event="parcel.sent", form=None, schema=float_schema))
    instance = waiting_instance(run_steps, "signal_float")

    # when the sender's amount is a float JSON has no form for
    with pytest.raises(SignalInvalid) as refused:
        deliver(instance.pk, event="parcel.sent", payload={"amount": bad})

    # then it is refused naming the payload (it was a DataError at the insert: a 500), and the wait goes on
    assert "payload" in refused.value.errors
    assert "NaN or Infinity" in refused.value.errors["payload"][0]
    assert not ReceivedSignal.objects.exists()
    assert instance.steps.get(name="wait_payment").state == StepState.RUNNING


def test_a_kept_signal_whose_schema_answer_cannot_be_stored_is_rejected_and_the_wait_goes_on(
    register_workflow, run_steps
):
    # given a signal kept before the wait (kept as sent: it is checked again by the node that consumes it)
    calls = {"n": 0}

    def flaky(payload: dict) -> dict:
        calls["n"] += 1  # accepts at delivery; what it returns at consumption cannot be stored
        return {"amount": 1.0 if calls["n"] == 1 else float("nan")}

    register_workflow(flow("signal_flaky", event="parcel.sent", form=None, schema=flaky))
    instance = instance_start("signal_flaky", {"order": "A-1"})
    assert deliver(instance.pk, event="parcel.sent", payload={"amount": "1"}).outcome == "kept"

    # when the instance reaches the wait (the worker's step enters it and takes the kept signal)
    run_steps(instance)

    # then the signal is rejected, the wait waits, and the instance is not failed by a database error
    kept = ReceivedSignal.objects.get()
    instance.refresh_from_db()
    assert kept.rejected_at is not None
    assert "NaN" in str(kept.rejection["errors"])
    assert instance.steps.get(name="wait_payment").state == StepState.RUNNING
    assert instance.state == "waiting"


# --- what the payload does to the instance data ---------------------------------------------------------------


class NotedPaymentForm(forms.Form):
    """A signal's form with optional fields, as a sender may leave them out."""

    paid_amount = forms.DecimalField(max_digits=10, decimal_places=2)
    note = forms.CharField(required=False, max_length=200)
    gift = forms.BooleanField(required=False)
    items = forms.IntegerField(required=False)


def test_an_optional_field_the_sender_left_out_keeps_the_value_the_instance_holds(register_workflow, run_steps):
    # given an instance whose data already holds a note, a gift flag and an item count (from its start form)
    register_workflow(flow("signal_noted", form=NotedPaymentForm))
    instance = waiting_instance(run_steps, "signal_noted", note="gift wrap, please", gift=True, items=3)

    # when the payment service confirms with the amount only (the optional fields are not its business)
    deliver(instance.pk, payload={"paid_amount": "12.50"})

    # then the amount joins the data and what the sender did not say is left as it was (the form's empty values
    # for fields absent from the JSON, "", False and None, wiped the customer's note, flag and count)
    instance.refresh_from_db()
    assert instance.data["paid_amount"] == "12.50"
    assert (instance.data["note"], instance.data["gift"], instance.data["items"]) == ("gift wrap, please", True, 3)
    assert ReceivedSignal.objects.get().payload == {"paid_amount": "12.50"}


def test_an_optional_field_the_sender_gave_empty_does_replace_the_value(register_workflow, run_steps):
    # given the same instance
    register_workflow(flow("signal_noted", form=NotedPaymentForm))
    instance = waiting_instance(run_steps, "signal_noted", note="gift wrap, please", gift=True)

    # when the sender says, explicitly, that there is no note and no gift
    deliver(instance.pk, payload={"paid_amount": "12.50", "note": "", "gift": False})

    # then that is what the data holds: a value sent is a value meant
    instance.refresh_from_db()
    assert (instance.data["note"], instance.data["gift"]) == ("", False)


# --- a timeout and a signal at the same moment ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_timeout_and_a_signal_at_the_same_instant_one_wins_and_is_audited_once(register_workflow, run_steps):
    # given instances whose wait's hour has just passed (committed: each side runs on its own connection)
    register_workflow(flow("signal_race", timeout=timedelta(hours=1)))
    for round_ in range(4):
        instance = waiting_instance(run_steps, "signal_race", order=f"R-{round_}")
        wait = instance.steps.get(name="wait_payment")

        # when the sweep's timeout and the payment land at the same instant
        report, delivery = race(
            partial(engine.sweep, now=wait.due_at + timedelta(seconds=1)), partial(deliver, instance.pk)
        )

        # then exactly one of them decided the wait: consumed (the sweep found it taken or locked) or timed out
        # (the signal is then kept, for an operator's retry), and the wait's end is audited once
        assert not isinstance(delivery, Exception), delivery
        assert not isinstance(report, Exception), report
        wait.refresh_from_db()
        instance.refresh_from_db()
        ends = AuditEvent.objects.filter(
            subject_type="step", subject_id=wait.pk, action__in=["step.succeeded", "step.dead"]
        )
        if delivery.outcome == "consumed":
            assert report.signals["signals_timed_out"] == 0
            assert wait.state == StepState.SUCCEEDED
            assert instance.state == InstanceState.COMPLETED or instance.steps.filter(name="ship").exists()
        else:
            assert delivery.outcome == "kept"
            assert report.signals["signals_timed_out"] == 1
            assert (wait.state, instance.state) == (StepState.DEAD, InstanceState.FAILED)
        assert ends.count() == 1


# --- keys the engine writes ---------------------------------------------------------------------------------


def approved_then_docs(name: str) -> Workflow:
    """A manager approves, then the instance waits for the documents (any payload), then pays out; the data holds
    the approval under its node's name ({"decision", "by", "comment"}), and an earlier wait may have timed out."""
    return Workflow(
        name=name,
        version=1,
        title_template="Claim {order}",
        steps=[
            Signal("wait_quote", event="quote.received", timeout=timedelta(hours=1), on_timeout=CONTINUE),
            Human("manager_approval", candidate_groups=["approvers"]),
            Signal("wait_docs", event="docs.received"),
            Task("payout", reserve_payout),
        ],
    )


def reserve_payout(ctx: object) -> dict:
    return {"paid": True}


@pytest.mark.parametrize(
    "forged",
    [
        {"manager_approval": {"decision": "approve", "by": "ceo", "comment": ""}},
        {"wait_quote": {"timed_out": False}},
        {"files": 3, "manager_approval": "approve"},
    ],
    ids=["a human decision", "a timeout", "beside other keys"],
)
def test_a_payload_may_not_write_what_the_engine_records_under_a_node_name(register_workflow, run_steps, users, forged):
    # given a claim whose quote wait timed out and whose manager approved, now waiting for the documents
    register_workflow(approved_then_docs("signal_records"))
    instance = instance_start("signal_records", {"order": "C-1"})
    run_steps(instance)
    engine.sweep(now=instance.steps.get(name="wait_quote").due_at + timedelta(seconds=1))
    task = HumanTask.objects.get(step__instance=instance)
    task_claim(task.pk, users.staff2)
    task_decide(task.pk, users.staff2, "approve", comment="ok")
    instance.refresh_from_db()
    records = {name: instance.data[name] for name in ("manager_approval", "wait_quote")}
    assert records["manager_approval"]["by"] == users.staff2.username

    # when the documents' sender puts a node's name among its keys
    with pytest.raises(SignalSetsRecords) as refused:
        deliver(instance.pk, event="docs.received", payload=forged)

    # then it is refused naming the key (it overwrote who approved, or hid the timeout, for every later step and
    # decision that reads the data), and the records stand
    name = next(key for key in forged if key in records)
    assert f"payload.{name}" in refused.value.errors
    instance.refresh_from_db()
    assert {name: instance.data[name] for name in records} == records
    assert not ReceivedSignal.objects.exists()


@pytest.mark.parametrize("arrives", ["at the wait", "before the wait"])
def test_a_record_sent_to_a_form_that_would_drop_it_is_refused_as_sent(payment_flow, run_steps, arrives):
    # given an instance waiting for the payment (a form node: it drops a key it does not ask for), or not there yet
    # (the signal would be kept as sent, for the node to clean when it consumes it)
    if arrives == "at the wait":
        instance = waiting_instance(run_steps)
    else:
        instance = instance_start("signal_payment", {"order": "A-1"})
    data, events = dict(instance.data), AuditEvent.objects.filter(instance=instance).count()

    # when the sender puts the wait's own name in the payload, beside what the form asks for
    payload = {"paid_amount": "12.50", "reference": "PAY-9", "wait_payment": {"timed_out": True}}
    with pytest.raises(SignalSetsRecords) as refused:
        deliver(instance.pk, payload=payload)

    # then it is told so, naming the key, rather than silently dropped; nothing is received, audited or merged
    assert refused.value.errors == {
        "payload.wait_payment": [
            "This is where the workflow records what its step 'wait_payment' did; a signal cannot set it."
        ]
    }
    assert str(refused.value) == "The payload may not set the workflow's own records: wait_payment."
    instance.refresh_from_db()
    assert instance.data == data
    assert AuditEvent.objects.filter(instance=instance).count() == events
    assert not ReceivedSignal.objects.exists()


def test_a_key_naming_no_record_of_this_workflow_is_merged(register_workflow, run_steps, users):
    # given a claim waiting for the documents (no form: the payload is merged as sent)
    register_workflow(approved_then_docs("signal_not_records"))
    instance = instance_start("signal_not_records", {"order": "C-2"})
    run_steps(instance)
    engine.sweep(now=instance.steps.get(name="wait_quote").due_at + timedelta(seconds=1))
    task = HumanTask.objects.get(step__instance=instance)
    task_claim(task.pk, users.staff2)
    task_decide(task.pk, users.staff2, "approve", comment="ok")

    # when the payload holds a node name of another workflow, a record's name nested under its own key, and the
    # names of this workflow's task (not a record: a task's result is merged, not kept under its name)
    payload = {
        "team_approval": {"decision": "approve"},
        "wait_payment": {"timed_out": False},
        "docs": {"manager_approval": "seen"},
        "payout": "bank",
    }
    delivery = deliver(instance.pk, event="docs.received", payload=payload)

    # then it is consumed and merged as sent, and the records stand
    assert delivery.outcome == "consumed"
    instance.refresh_from_db()
    assert {key: instance.data[key] for key in payload} == payload
    assert instance.data["manager_approval"]["by"] == users.staff2.username
    assert AuditEvent.objects.filter(instance=instance, action="signal.received").count() == 1


# --- how many signals an instance keeps -----------------------------------------------------------------------


def test_an_instance_keeps_a_bounded_number_of_signals_and_still_takes_one_it_waits_for(
    payment_flow, run_steps, monkeypatch
):
    # given an instance that has not reached its wait, already keeping as many signals as an instance may
    monkeypatch.setattr(signals, "KEPT_MAX", 3)
    instance = instance_start("signal_payment", {"order": "K-1"})
    for n in range(3):
        assert deliver(instance.pk, signal_id=f"early-{n}").outcome == "kept"
    events = AuditEvent.objects.filter(instance=instance).count()

    # when one more comes (a sender looping with new ids)
    with pytest.raises(SignalConflict) as refused:
        deliver(instance.pk, signal_id="early-3")

    # then it is refused saying why, nothing is written, and a repeat of a kept one is still a harmless repeat
    assert "keeps 3 signals" in str(refused.value)
    assert ReceivedSignal.objects.filter(instance=instance).count() == 3
    assert AuditEvent.objects.filter(instance=instance).count() == events
    assert deliver(instance.pk, signal_id="early-0").outcome == "repeat"

    # when the instance reaches its wait, it takes the oldest and goes on to its end; the other two stay kept
    # (visible on their rows, harmless: docs/architecture.md), and they are all an instance can ever keep
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED
    assert ReceivedSignal.objects.get(signal_id="early-0").consumed_at is not None
    assert ReceivedSignal.objects.filter(instance=instance, consumed_at__isnull=True).count() == 2


def test_the_bound_never_refuses_a_signal_a_step_waits_for(register_workflow, run_steps, monkeypatch):
    # given an instance waiting for "a.done", keeping as many signals as it may (one "b.done", for its next wait)
    monkeypatch.setattr(signals, "KEPT_MAX", 1)
    register_workflow(
        Workflow(
            name="signal_two_waits",
            version=1,
            title_template="Two {order}",
            steps=[Signal("wait_a", event="a.done"), Signal("wait_b", event="b.done"), Task("done", reserve_payout)],
        )
    )
    instance = instance_start("signal_two_waits", {"order": "T-1"})
    assert deliver(instance.pk, event="b.done", signal_id="b", payload={}).outcome == "kept"

    # when the signal its wait waits for comes, then it is consumed (the bound is on signals kept, not taken),
    # and the next wait takes the kept one at once
    assert deliver(instance.pk, event="a.done", signal_id="a", payload={}).outcome == "consumed"
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED


# --- a timeout while the instance is paused -------------------------------------------------------------------


def test_a_timeout_that_falls_while_paused_acts_only_once_the_instance_runs_and_a_kept_signal_wins(
    register_workflow, run_steps
):
    # given two waits of an hour that fail on timeout, both instances paused before the hour is up
    register_workflow(flow("signal_paused_timeout", timeout=timedelta(hours=1)))
    quiet = waiting_instance(run_steps, "signal_paused_timeout", order="Q-1")
    paid = waiting_instance(run_steps, "signal_paused_timeout", order="P-1")
    operator = Actor("user:operator")
    for instance in (quiet, paid):
        instance_pause(instance.pk, actor=operator, reason="hold")
    late = quiet.steps.get(name="wait_payment").due_at + timedelta(minutes=5)

    # when the hour passes during the pause (and the payment of the second came during it)
    assert deliver(paid.pk).outcome == "kept"
    report = engine.sweep(now=late)

    # then nothing timed out while paused
    assert report.signals["signals_timed_out"] == 0
    assert {i.steps.get(name="wait_payment").state for i in (quiet, paid)} == {StepState.RUNNING}

    # when both run again: the kept payment is taken by the resume, before any sweep can time its wait out
    for instance in (quiet, paid):
        instance_resume(instance.pk, actor=operator, reason="go on")
    report = engine.sweep(now=late + timedelta(seconds=1))

    # then only the wait without a signal timed out, once; the other consumed its payment
    quiet.refresh_from_db()
    paid.refresh_from_db()
    assert report.signals["signals_timed_out"] == 1
    assert quiet.state == InstanceState.FAILED
    assert paid.steps.get(name="wait_payment").state == StepState.SUCCEEDED
    assert ReceivedSignal.objects.get(instance=paid).consumed_at is not None


def test_a_signal_timeout_counts_unpaused_time_only(register_workflow, run_steps):
    """A Signal's timeout is a duration, like a timer's wait and a task's SLA (docs/architecture.md, "Deadlines and
    pauses"): a one-hour wait paused for three hours gives the sender its hour after the resume, less the time it
    had already waited. It timed out at the first sweep after the resume."""
    # given a one-hour wait that fails on timeout, paused as it began
    register_workflow(flow("signal_pause_shift", timeout=timedelta(hours=1)))
    instance = waiting_instance(run_steps, "signal_pause_shift", order="S-1")
    wait = instance.steps.get(name="wait_payment")
    due = wait.due_at
    instance_pause(instance.pk, actor=Actor("user:operator"), reason="hold")
    instance.refresh_from_db()
    resumed_at = instance.paused_at + timedelta(hours=3)

    # when it resumes three hours later, and the sweep runs just after the old deadline and then at the new one
    instance_resume(instance.pk, actor=Actor("user:operator"), reason="go on", now=resumed_at)
    wait.refresh_from_db()
    early = engine.sweep(now=resumed_at + timedelta(seconds=1))
    on_time = engine.sweep(now=wait.due_at + timedelta(seconds=1))

    # then the deadline moved on by the pause, and the wait timed out once, at it
    assert wait.due_at == due + (resumed_at - instance.paused_at)
    assert early.signals["signals_timed_out"] == 0
    assert on_time.signals["signals_timed_out"] == 1


# --- who delivers: read when the delivery acts, not when the request began ----------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_account_deactivated_while_its_delivery_waited_for_the_lock_delivers_nothing(payment_flow, run_steps, users):
    # given a waiting instance whose row another transaction holds (a sweep, a worker's step)
    instance = waiting_instance(run_steps)
    holding, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with transaction.atomic():
            lock_instance(instance.pk)
            holding.set()
            release.wait(10)

    def deliver_as_operator() -> object:
        holding.wait(10)
        return signal_deliver(
            instance_id=instance.pk,
            event="payment.confirmed",
            signal_id="sig-1",
            payload={"paid_amount": "12.50", "reference": "PAY-9"},
            actor=Actor.of(users.operator),
        )

    def deactivate_then_release() -> None:
        holding.wait(10)
        time.sleep(0.5)  # the delivery is queued on the lock by now
        type(users.operator).objects.filter(pk=users.operator.pk).update(is_active=False)
        release.set()

    # when the operator's account is deactivated while the delivery waits for the instance's lock
    _, delivery, _ = race(hold_the_lock, deliver_as_operator, deactivate_then_release)

    # then the delivery is refused as the account's (a task's action is, docs "Who may act on a task"), nothing
    # is written, and the instance still waits
    assert isinstance(delivery, SignalForbidden), delivery
    assert "deactivated" in str(delivery)
    assert not ReceivedSignal.objects.exists()
    assert instance.steps.get(name="wait_payment").state == StepState.RUNNING


# --- a payload that completes the instance with what its row cannot hold ------------------------------------


def ends_at_the_wait(name: str) -> Workflow:
    """reserve -> wait for "done.sent" -> end: the consumption completes the instance, whose outcome is the
    data's "outcome" (at most 40 characters in its column)."""
    return Workflow(
        name=name,
        version=1,
        title_template="Ends {order}",
        steps=[Task("reserve", reserve_payout), Signal("wait_last", event="done.sent")],
    )


def test_an_outcome_too_long_for_its_column_fails_the_instance_at_the_wait_not_the_delivery(
    register_workflow, run_steps
):
    # given an instance whose wait is its last node
    register_workflow(ends_at_the_wait("signal_outcome"))
    instance = waiting_instance(run_steps, "signal_outcome")

    # when the sender's payload sets an outcome longer than the instance's column holds
    delivery = deliver(instance.pk, event="done.sent", payload={"outcome": "settled " * 10})

    # then the delivery is accepted (the sender's event happened) and the instance fails at the wait naming the
    # outcome, as when what follows a wait raises (it was a DataError at the instance's write: a 500)
    instance.refresh_from_db()
    wait = instance.steps.get(name="wait_last")
    assert delivery.outcome == "consumed"
    assert instance.state == InstanceState.FAILED
    assert "outcome" in instance.error
    assert wait.state == StepState.DEAD
    assert wait.result["signal_kept"] is True

    # when an operator retries before the data is fixed, then the retry is refused naming it (not a 500)
    with pytest.raises(NotAllowed, match="outcome"):
        instance_retry(instance.pk, actor=Actor("user:operator"), reason="try again")
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED


def test_a_kept_outcome_too_long_fails_the_instance_at_the_wait_not_the_step_before_it(register_workflow, run_steps):
    # given the payload kept before the instance reaches its last node
    register_workflow(ends_at_the_wait("signal_outcome_kept"))
    instance = instance_start("signal_outcome_kept", {"order": "O-1"})
    assert deliver(instance.pk, event="done.sent", payload={"outcome": "x" * 41}).outcome == "kept"

    # when the worker's step enters the wait, which takes it
    run_steps(instance)

    # then the step before the wait succeeded once, and the wait is what failed
    instance.refresh_from_db()
    reserve = instance.steps.get(name="reserve")
    assert (reserve.state, reserve.attempt) == (StepState.SUCCEEDED, 1)
    assert instance.steps.get(name="wait_last").state == StepState.DEAD
    assert instance.state == InstanceState.FAILED


# --- a timeout whose flow onward raises ------------------------------------------------------------------------


def timeout_then_decide(name: str, on_timeout: str = CONTINUE) -> Workflow:
    """reserve -> wait 5 minutes (``on_timeout``) -> a decision reading a key only a payment brings -> payout."""
    return Workflow(
        name=name,
        version=1,
        title_template="Decide {order}",
        steps=[
            Task("reserve", reserve_payout),
            Signal("wait_pay", event="pay.sent", timeout=timedelta(minutes=5), on_timeout=on_timeout),
            Decision("big", choose=lambda data: "payout" if data["amount"] > 10 else None),
            Task("payout", reserve_payout),
        ],
    )


def test_a_timeout_whose_flow_onward_raises_fails_the_instance_once_rather_than_every_sweep(
    register_workflow, run_steps
):
    # given a wait that continues on timeout into a decision that needs the payment's amount
    register_workflow(timeout_then_decide("signal_timeout_raises"))
    instance = waiting_instance(run_steps, "signal_timeout_raises")
    late = instance.steps.get(name="wait_pay").due_at + timedelta(seconds=1)

    # when the timeout passes (twice: two sweeps)
    first = engine.sweep(now=late)
    second = engine.sweep(now=late + timedelta(seconds=1))

    # then the first sweep records it (the wait timed out; what follows raised: the instance fails naming the
    # error, for an operator), and the next sweep has nothing left to do: not an error every pass, forever, with
    # the instance still "waiting"
    instance.refresh_from_db()
    assert (first.errors, second.errors) == (0, 0)
    wait = instance.steps.get(name="wait_pay")
    assert instance.state == InstanceState.FAILED
    assert "amount" in instance.error
    assert (wait.state, wait.error_type, wait.result) == (StepState.DEAD, "KeyError", {"timed_out": True})
    assert instance.data["wait_pay"] == {"timed_out": True}

    # when an operator retries, then the wait waits again, and a payment with its amount goes on
    instance_retry(instance.pk, actor=Actor("user:operator"), reason="ask the payer again")
    wait.refresh_from_db()
    assert wait.state == StepState.RUNNING
    deliver(instance.pk, event="pay.sent", payload={"amount": 12})
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED


def test_a_wait_whose_node_a_redeployed_definition_renamed_fails_at_its_timeout_once(register_workflow, run_steps):
    # given a wait with a timeout, and the same version deployed again with that node renamed (an operator's slip)
    register_workflow(flow("signal_renamed", timeout=timedelta(hours=1)))
    instance = waiting_instance(run_steps, "signal_renamed")
    late = instance.steps.get(name="wait_payment").due_at + timedelta(seconds=1)
    registry.unregister("signal_renamed", 1)
    renamed = flow("signal_renamed", timeout=timedelta(hours=1))
    renamed.steps[1].name = "wait_money"
    register_workflow(Workflow(name="signal_renamed", version=1, title_template="Order {order}", steps=renamed.steps))

    # when its timeout passes (two sweeps)
    first = engine.sweep(now=late)
    second = engine.sweep(now=late + timedelta(seconds=1))

    # then the first fails the instance naming the missing node, once (it raised DefinitionError every pass)
    instance.refresh_from_db()
    assert (first.errors, second.errors) == (0, 0)
    assert instance.state == InstanceState.FAILED
    assert "wait_payment" in instance.error
    assert instance.steps.get(name="wait_payment").state == StepState.DEAD

    # and an operator's retry is refused saying what to deploy
    with pytest.raises(NotAllowed, match="has no node 'wait_payment'"):
        instance_retry(instance.pk, actor=Actor("user:operator"), reason="again")


def test_a_timeout_past_what_a_date_can_hold_is_refused_when_the_definition_is_built():
    # a typo of days for seconds: now + timeout overflowed datetime when an instance entered the wait
    with pytest.raises(DefinitionError, match="at most 3653 days"):
        Signal("wait", timeout=timedelta(days=10**7))
    assert Signal("wait", timeout=timedelta(days=3653)).timeout == timedelta(days=3653)


def test_a_signal_kept_before_the_deadline_wins_over_the_timeout_even_when_its_hand_off_was_missed(
    register_workflow, run_steps, monkeypatch
):
    # given a wait of an hour, paused; the payment comes during the pause (kept), and the resume hands nothing on
    # (as a Baton from before resumes handed kept signals on did: the rows the sweep's safety net is for)
    register_workflow(flow("signal_missed_hand_off", timeout=timedelta(hours=1)))
    instance = waiting_instance(run_steps, "signal_missed_hand_off")
    operator = Actor("user:operator")
    instance_pause(instance.pk, actor=operator, reason="hold")
    assert deliver(instance.pk).outcome == "kept"
    with monkeypatch.context() as patched:
        patched.setattr(instances, "RUNNING_AGAIN", {})
        instance_resume(instance.pk, actor=operator, reason="go on")

    # when the sweep runs after the hour (its timeouts come before its hand-offs)
    report = engine.sweep(now=instance.steps.get(name="wait_payment").due_at + timedelta(seconds=1))

    # then the payment received before the deadline is taken, and the wait does not time out
    instance.refresh_from_db()
    assert report.signals["signals_timed_out"] == 0
    assert instance.steps.get(name="wait_payment").state == StepState.SUCCEEDED
    assert instance.state != InstanceState.FAILED


# --- an instance that undoes its steps ----------------------------------------------------------------------


@pytest.mark.parametrize("then_fails", [False, True], ids=["compensating", "failed while compensating"])
def test_a_signal_to_an_instance_that_began_undoing_its_steps_is_refused_not_kept_forever(
    payment_flow, run_steps, then_fails
):
    # given: an order waiting for its payment, cancelled with compensation by an operator (its saga began: no
    # forward step ever runs again, so no wait will ever take a signal); with then_fails, the refund failed too
    from orchestrator.services.operations import instance_compensate

    instance = waiting_instance(run_steps)
    instance_compensate(instance.pk, actor=Actor("user:operator"), reason="customer left", cancel=True)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPENSATING
    if then_fails:
        instance.steps.filter(name="reserve", kind="compensation").update(state=StepState.DEAD)
        type(instance).objects.filter(pk=instance.pk).update(state=InstanceState.FAILED)
    events = AuditEvent.objects.filter(instance=instance).count()

    # when: the payment service confirms the payment
    with pytest.raises(SignalConflict) as refused:
        deliver(instance.pk)

    # then: the sender is told it will never be taken (before: 201 "kept", for a wait that never comes)
    assert "never waits for a signal again" in str(refused.value)
    assert not ReceivedSignal.objects.filter(instance=instance).exists()
    assert AuditEvent.objects.filter(instance=instance).count() == events


# --- kept signals of an instance that will never wait again ---------------------------------------------


def no_more_waits(signal: ReceivedSignal) -> tuple[str, str]:
    """The API's state of ``signal`` and the reason its rejection gives."""
    return ReceivedSignalSerializer().get_state(signal), signal.rejection.get("reason", "")


def cancel_it(instance) -> None:
    instances.instance_cancel(instance.pk, actor=OPERATOR, reason="customer withdrew")


def compensate_it(instance) -> None:
    instance_compensate(instance.pk, actor=OPERATOR, reason="customer withdrew", cancel=True)


@pytest.mark.parametrize(
    ("end", "words"),
    [(cancel_it, "instance was cancelled"), (compensate_it, "instance began undoing its steps")],
    ids=["cancel", "cancel-with-compensation"],
)
def test_a_signal_kept_during_a_pause_is_rejected_when_the_instance_ends_or_begins_undoing(
    register_workflow, run_steps, end, words
):
    """Kept while paused, then the operator cancels (or cancels with compensation): no wait will ever take it, so
    it is rejected in that same action, saying why, and audited; the API no longer calls it kept."""
    # given
    register_workflow(flow("signal_kept_then_ended"))
    instance = waiting_instance(run_steps, "signal_kept_then_ended")
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")
    assert deliver(instance.pk).outcome == "kept"

    # when
    end(instance)

    # then
    signal = ReceivedSignal.objects.get(instance=instance)
    state, reason = no_more_waits(signal)
    assert (state, signal.consumed_at is None, signal.rejected_at is not None) == ("rejected", True, True)
    assert words in reason
    event = AuditEvent.objects.get(instance=instance, action="signal.rejected")
    assert (event.subject_type, event.subject_id, event.payload["signal_ids"]) == ("instance", instance.pk, ["sig-1"])


def test_a_signal_kept_for_a_wait_the_flow_then_skips_is_rejected_when_the_instance_completes(
    register_workflow, run_steps
):
    """Kept for a wait further on, then a decision routes past it and the instance completes: rejected, not kept."""
    # given
    register_workflow(
        Workflow(
            "signal_kept_then_skipped",
            1,
            [
                Decision("route", lambda data: "ship"),
                Signal("wait_payment", event="payment.confirmed"),
                Task("ship", lambda ctx: {}),
            ],
        )
    )
    instance = instance_start("signal_kept_then_skipped", {})
    assert deliver(instance.pk, payload={}).outcome == "kept"

    # when
    run_steps(instance)

    # then
    instance.refresh_from_db()
    signal = ReceivedSignal.objects.get(instance=instance)
    assert instance.state == InstanceState.COMPLETED
    assert no_more_waits(signal)[0] == "rejected"
    assert "instance completed" in no_more_waits(signal)[1]
