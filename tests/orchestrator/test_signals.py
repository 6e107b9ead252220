"""Signals: an instance waits for an event from outside; delivery by id or business key, repeats harmless,
early signals kept and consumed, payload validated, timeouts that fail, compensate, escalate or continue."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial

import pytest
from django import forms
from django.core.exceptions import ValidationError
from django.db import OperationalError
from django.utils import timezone

from approvals.models import HumanTask, TaskKind
from approvals.services.tasks import task_decide
from orchestrator.audit import Actor, verify_chain
from orchestrator.dsl import (
    COMPENSATE,
    CONTINUE,
    ESCALATE,
    Decision,
    DefinitionError,
    Parallel,
    Signal,
    StepContext,
    Task,
    Timer,
    Workflow,
)
from orchestrator.models import (
    AuditEvent,
    InstanceState,
    ReceivedSignal,
    StepKind,
    StepRun,
    StepState,
    WorkflowInstance,
)
from orchestrator.services import instances, signals
from orchestrator.services import sweep as engine
from orchestrator.services.instances import (
    instance_cancel,
    instance_pause,
    instance_resume,
    instance_retry,
    instance_start,
)
from orchestrator.services.signals import (
    Delivery,
    SignalConflict,
    SignalInvalid,
    SignalNotFound,
    signal_deliver,
)
from orchestrator.services.steps import _run_handler, step_claim, step_record
from orchestrator.services.unit import send_step
from tests.concurrency import race
from tests.conftest import describe_instance

pytestmark = pytest.mark.django_db

PAYMENTS = Actor.system("payments")
OPERATOR = Actor("user:operator")


class PaymentForm(forms.Form):
    paid_amount = forms.DecimalField(max_digits=10, decimal_places=2)
    reference = forms.CharField(max_length=40)


def reserve(ctx: StepContext) -> dict:
    return {"reserved": True}


def release(ctx: StepContext) -> dict:
    return {"released": True}


def ship(ctx: StepContext) -> dict:
    return {"shipped_for": ctx.data.get("reference", "")}


def flow(name: str, **signal: object) -> Workflow:
    """reserve -> wait for "payment.confirmed" (with ``signal`` options) -> ship."""
    options = {"event": "payment.confirmed", "form": PaymentForm, **signal}
    return Workflow(
        name=name,
        version=1,
        title_template="Order {order}",
        steps=[
            Task("reserve", reserve, compensate=release),
            Signal("wait_payment", **options),  # type: ignore[arg-type]
            Task("ship", ship),
        ],
    )


@pytest.fixture
def payment_flow(register_workflow):
    return register_workflow(flow("signal_payment"))


def waiting_instance(run_steps, name: str = "signal_payment", **data: object):
    instance = instance_start(name, {"order": "A-1", "business_key": "A-1", **data})
    run_steps(instance)
    instance.refresh_from_db()
    return instance


def deliver(instance_id=None, signal_id="sig-1", payload=None, **kwargs):
    payload = {"paid_amount": "12.50", "reference": "PAY-9"} if payload is None else payload
    return signal_deliver(
        instance_id=instance_id,
        event=kwargs.pop("event", "payment.confirmed"),
        signal_id=signal_id,
        payload=payload,
        actor=PAYMENTS,
        **kwargs,
    )


def test_a_signal_resumes_a_waiting_instance_and_merges_its_payload(payment_flow, run_steps):
    # given an instance waiting at the signal node
    instance = waiting_instance(run_steps)
    wait = instance.steps.get(name="wait_payment")
    assert (instance.state, wait.kind, wait.state) == (InstanceState.WAITING, StepKind.SIGNAL, StepState.RUNNING)

    # when the payment service signals it
    delivery = deliver(instance.pk)
    run_steps(instance)

    # then the wait succeeded with the validated payload, the data holds it, and the flow went on to the end
    instance.refresh_from_db()
    wait.refresh_from_db()
    assert delivery.outcome == "consumed"
    assert wait.state == StepState.SUCCEEDED
    assert wait.result["payload"] == {"paid_amount": "12.50", "reference": "PAY-9"}
    assert instance.data["paid_amount"] == "12.50"
    assert instance.data["shipped_for"] == "PAY-9"
    assert instance.state == InstanceState.COMPLETED
    actions = list(AuditEvent.objects.filter(instance=instance).order_by("seq").values_list("action", flat=True))
    assert "signal.received" in actions


def test_a_repeated_signal_changes_nothing(payment_flow, run_steps):
    # given a delivered signal
    instance = waiting_instance(run_steps)
    first = deliver(instance.pk)
    seq = AuditEvent.objects.filter(instance=instance).count()
    data = dict(type(instance).objects.get(pk=instance.pk).data)

    # when the sender repeats it (a retry after a lost answer)
    again = deliver(instance.pk)

    # then it is the same delivery, nothing new is written, and the data is as it was
    assert again.outcome == "repeat"
    assert again.signal.pk == first.signal.pk
    assert ReceivedSignal.objects.filter(instance=instance).count() == 1
    assert AuditEvent.objects.filter(instance=instance).count() == seq
    assert type(instance).objects.get(pk=instance.pk).data == data


def test_the_same_signal_id_with_another_payload_is_a_conflict(payment_flow, run_steps):
    instance = waiting_instance(run_steps)
    deliver(instance.pk)

    with pytest.raises(SignalConflict) as refused:
        deliver(instance.pk, payload={"paid_amount": "99.00", "reference": "PAY-9"})

    assert "signal_id" in refused.value.errors


def test_an_early_signal_is_kept_and_consumed_when_the_instance_reaches_the_node(payment_flow, run_steps):
    # given an instance still at its first step
    instance = instance_start("signal_payment", {"order": "A-2"})
    assert not instance.steps.filter(kind=StepKind.SIGNAL).exists()

    # when the signal arrives before the node is reached
    early = deliver(instance.pk, signal_id="early")

    # then it is kept, unconsumed
    assert early.outcome == "kept"
    assert ReceivedSignal.objects.get(pk=early.signal.pk).consumed_at is None

    # when the instance reaches the node
    run_steps(instance)

    # then the kept signal is consumed at once and the instance finishes without waiting
    instance.refresh_from_db()
    kept = ReceivedSignal.objects.get(pk=early.signal.pk)
    wait = instance.steps.get(name="wait_payment")
    assert kept.consumed_at is not None
    assert kept.step_id == wait.pk
    assert wait.state == StepState.SUCCEEDED
    assert instance.state == InstanceState.COMPLETED
    assert instance.data["reference"] == "PAY-9"


def test_a_signal_by_business_key_reaches_the_one_open_instance(payment_flow, run_steps):
    instance = waiting_instance(run_steps)

    delivery = deliver(business_key="A-1", workflow="signal_payment")

    assert delivery.instance_id == instance.pk
    assert delivery.outcome == "consumed"


def test_a_business_key_of_two_open_instances_is_refused_naming_the_choice(payment_flow, run_steps):
    waiting_instance(run_steps)
    waiting_instance(run_steps)

    with pytest.raises(SignalConflict, match="Several open instances"):
        deliver(business_key="A-1")
    assert not ReceivedSignal.objects.exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"payload": {"paid_amount": "lots", "reference": "X"}}, SignalInvalid, "payload.paid_amount"),
        ({"payload": ["not", "an", "object"]}, SignalInvalid, "payload"),
        ({"payload": {"paid_amount": "1", "reference": "a\x00b"}}, SignalInvalid, "payload"),
        ({"event": "parcel.lost"}, SignalInvalid, "event"),
        ({"signal_id": ""}, SignalInvalid, "signal_id"),
        ({"signal_id": "x" * 201}, SignalInvalid, "signal_id"),
        ({"event": "payment\x00confirmed"}, SignalInvalid, "event"),
    ],
)
def test_bad_signals_are_refused_naming_the_field_and_change_nothing(payment_flow, run_steps, kwargs, error, field):
    instance = waiting_instance(run_steps)
    seq = AuditEvent.objects.filter(instance=instance).count()

    with pytest.raises(error) as refused:
        deliver(instance.pk, **kwargs)

    assert field in refused.value.errors, refused.value.errors
    assert AuditEvent.objects.filter(instance=instance).count() == seq
    assert instance.steps.get(name="wait_payment").state == StepState.RUNNING


def test_an_unknown_instance_or_business_key_is_not_found(payment_flow):
    with pytest.raises(SignalNotFound):
        deliver(10**12)
    with pytest.raises(SignalNotFound):
        deliver(business_key="nobody")


def test_an_ended_instance_refuses_signals(payment_flow, run_steps):
    instance = waiting_instance(run_steps)
    instance_cancel(instance.pk, actor=OPERATOR, reason="customer withdrew")

    with pytest.raises(SignalConflict, match="has ended"):
        deliver(instance.pk)


def test_a_schema_validates_and_shapes_the_payload(register_workflow, run_steps):
    def schema(payload: dict) -> dict:
        if not isinstance(payload.get("tracking"), str):
            raise ValidationError({"tracking": ["A tracking number is required."]})
        return {"tracking": payload["tracking"].upper()}

    register_workflow(flow("signal_schema", event="parcel.sent", form=None, schema=schema))
    instance = waiting_instance(run_steps, "signal_schema")

    with pytest.raises(SignalInvalid) as refused:
        deliver(instance.pk, event="parcel.sent", payload={"tracking": 7})
    deliver(instance.pk, event="parcel.sent", signal_id="ok", payload={"tracking": "ab12", "ignored": True})

    instance.refresh_from_db()
    assert "payload.tracking" in refused.value.errors
    assert instance.data["tracking"] == "AB12"
    assert "ignored" not in instance.data


def test_a_signal_while_paused_is_kept_and_handed_on_by_the_resume(payment_flow, run_steps):
    # given a waiting instance, paused
    instance = waiting_instance(run_steps)
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")

    # when the signal comes during the pause
    delivery = deliver(instance.pk)

    # then it is kept; the resume hands it to the waiting step, leaving the sweep nothing to do
    assert delivery.outcome == "kept"
    instance_resume(instance.pk, actor=OPERATOR, reason="go on")
    report = engine.sweep()
    run_steps(instance)
    instance.refresh_from_db()
    assert report.signals["signals_consumed"] == 0
    assert instance.state == InstanceState.COMPLETED


def resume_without_hand_on(instance_id: int, monkeypatch) -> None:
    """Resume as a Baton from before resumes handed kept signals on did (rows it left are the sweep's to hand on)."""
    with monkeypatch.context() as patched:
        patched.setattr(instances, "RUNNING_AGAIN", {})
        instance_resume(instance_id, actor=OPERATOR, reason="go on")


# --- timeouts -------------------------------------------------------------------------------------------


def time_out(instance) -> engine.SweepReport:
    """Run the sweep at a time past the wait's timeout."""
    wait = instance.steps.get(kind=StepKind.SIGNAL, state=StepState.RUNNING)
    return engine.sweep(now=wait.due_at + timedelta(seconds=1))


def timed_out_instance(register_workflow, run_steps, name: str, **signal: object):
    """Given an instance of ``flow(name)`` waiting five minutes (with ``signal`` options), when the sweep runs past
    the wait's timeout: the instance, as the timeout left it (not refreshed)."""
    register_workflow(flow(name, timeout=timedelta(minutes=5), **signal))
    instance = waiting_instance(run_steps, name)
    time_out(instance)
    return instance


def test_a_timeout_fails_the_instance_and_a_retry_waits_again(register_workflow, run_steps):
    # given a wait of one hour that fails on timeout
    register_workflow(flow("signal_fail", timeout=timedelta(hours=1)))
    instance = waiting_instance(run_steps, "signal_fail")
    wait = instance.steps.get(name="wait_payment")
    assert timedelta(minutes=59) < wait.due_at - timezone.now() <= timedelta(hours=1)

    # when the hour passes without a signal
    report = time_out(instance)

    # then the step is dead and the instance failed, saying why
    instance.refresh_from_db()
    wait.refresh_from_db()
    assert report.signals["signals_timed_out"] == 1
    assert (wait.state, wait.error_type) == (StepState.DEAD, "SignalTimeout")
    assert instance.state == InstanceState.FAILED
    assert "no signal 'payment.confirmed'" in instance.error

    # when an operator retries, the step waits again for a whole new hour, and a signal then finishes it
    instance_retry(instance.pk, actor=OPERATOR, reason="payment provider was down")
    wait.refresh_from_db()
    assert wait.state == StepState.RUNNING
    assert wait.due_at > timezone.now() + timedelta(minutes=59)
    deliver(instance.pk)
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED


def test_a_timeout_that_continues_records_it_in_the_data(register_workflow, run_steps):
    instance = timed_out_instance(register_workflow, run_steps, "signal_continue", on_timeout=CONTINUE)

    run_steps(instance, advance=True)  # the sweep ran at the timeout, ahead of this clock

    instance.refresh_from_db()
    assert instance.data["wait_payment"] == {"timed_out": True}
    assert instance.state == InstanceState.COMPLETED


def test_a_timeout_that_compensates_undoes_the_earlier_steps(register_workflow, run_steps):
    instance = timed_out_instance(register_workflow, run_steps, "signal_compensate", on_timeout=COMPENSATE)

    run_steps(instance, advance=True)  # the sweep ran at the timeout, ahead of this clock

    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPENSATED
    assert instance.steps.get(name="reserve", kind=StepKind.TASK).state == StepState.COMPENSATED
    assert instance.steps.get(name="reserve", kind=StepKind.COMPENSATION).state == StepState.SUCCEEDED


def test_a_timeout_that_escalates_asks_an_operator_whose_retry_waits_again(register_workflow, run_steps, users):
    instance = timed_out_instance(register_workflow, run_steps, "signal_escalate", on_timeout=ESCALATE)

    escalation = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)
    task_decide(escalation.pk, users.operator, "retry", comment="asked the bank")
    wait = StepRun.objects.get(instance=instance, name="wait_payment")
    assert wait.state == StepState.RUNNING
    deliver(instance.pk)
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED


def test_a_signal_after_the_timeout_cannot_revive_the_failed_wait_but_is_kept_for_a_retry(register_workflow, run_steps):
    instance = timed_out_instance(register_workflow, run_steps, "signal_late")

    late = deliver(instance.pk)
    instance_retry(instance.pk, actor=OPERATOR, reason="the payment came after all")
    run_steps(instance)

    instance.refresh_from_db()
    assert late.outcome == "kept"
    assert instance.state == InstanceState.COMPLETED


def test_a_signal_definition_is_checked_when_built():
    with pytest.raises(DefinitionError, match="on_timeout"):
        Signal("wait", on_timeout="retry")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="positive"):
        Signal("wait", timeout=timedelta(0))
    with pytest.raises(DefinitionError, match="not both"):
        Signal("wait", form=PaymentForm, schema=dict)
    assert Signal("payment_received").event == "payment_received"


@pytest.mark.django_db(transaction=True)
def test_two_deliveries_of_one_signal_at_once_resume_the_instance_once(payment_flow, run_steps):
    # given a waiting instance (committed: each delivery runs on its own connection)
    instance = waiting_instance(run_steps)

    # when the sender's two retries land at the same instant
    results = race(lambda: deliver(instance.pk), lambda: deliver(instance.pk))

    # then one consumed it, the other found it delivered; one signal row, one succeeded wait, one ship step
    assert sorted(r.outcome for r in results) == ["consumed", "repeat"], results
    assert ReceivedSignal.objects.filter(instance=instance).count() == 1
    assert instance.steps.filter(name="wait_payment", state=StepState.SUCCEEDED).count() == 1
    assert instance.steps.filter(name="ship").count() == 1


def test_the_command_delivers_a_signal_and_refuses_junk_clearly(payment_flow, run_steps):
    from io import StringIO

    from django.core.management import CommandError, call_command

    instance = waiting_instance(run_steps)
    out = StringIO()

    call_command(
        "baton_signal",
        "payment.confirmed",
        "--id=cli-1",
        "--business-key=A-1",
        '--payload={"paid_amount": "3.00", "reference": "CLI"}',
        stdout=out,
        stderr=StringIO(),
    )
    with pytest.raises(CommandError, match="not JSON"):
        call_command("baton_signal", "payment.confirmed", "--id=cli-2", f"--instance={instance.pk}", "--payload={")
    with pytest.raises(CommandError, match="never waits for the event"):
        call_command("baton_signal", "parcel.lost", "--id=cli-3", f"--instance={instance.pk}")

    assert out.getvalue().strip() == "consumed"


def test_the_commands_match_a_business_key_typed_in_either_unicode_form(payment_flow, run_steps):
    """baton_start with a key whose é is e + combining accent, baton_signal with é as one code point: one key."""
    from io import StringIO

    from django.core.management import call_command

    # given
    nfd, nfc = "Cafe\u0301-9", "Caf\u00e9-9"
    call_command(
        "baton_start", "signal_payment", f'--data={{"order": "A-9", "business_key": "{nfd}"}}', stdout=StringIO()
    )
    instance = WorkflowInstance.objects.get(workflow_name="signal_payment")
    run_steps(instance)
    out = StringIO()

    # when
    call_command(
        "baton_signal",
        "payment.confirmed",
        "--id=cli-cafe",
        f"--business-key={nfc}",
        '--payload={"paid_amount": "3.00", "reference": "CLI"}',
        stdout=out,
        stderr=StringIO(),
    )

    # then
    instance.refresh_from_db()
    assert (instance.business_key, out.getvalue().strip()) == (nfc, "consumed")


def test_a_key_stored_in_nfd_before_keys_were_normalised_is_still_found_in_either_form(payment_flow, run_steps):
    """A key stored before normalisation that the NFC migration left as stored (it says when) is still found by
    both forms: one stored as e + accent."""
    # given
    instance = waiting_instance(run_steps, business_key="Old-Cafe\u0301")
    WorkflowInstance.objects.filter(pk=instance.pk).update(business_key="Old-Cafe\u0301")  # as stored back then

    # when
    targets = [signals.signal_target(None, key) for key in ("Old-Caf\u00e9", "Old-Cafe\u0301")]

    # then
    assert targets == [instance.pk, instance.pk]


@pytest.mark.parametrize("stored", ["by a start now", "as typed, left so by the NFC migration"])
def test_a_key_whose_nfc_form_is_longer_than_the_column_is_found_by_the_key_it_was_started_with(
    payment_flow, run_steps, stored
):
    """U+0958 (Devanagari qa) is excluded from composition: 60 of them, within the 100 characters a key may have,
    are 120 code points in NFC, which the start cuts to the column's 100 (and the NFC migration leaves as typed,
    not to cut it). A signal, a filter or a search by the same key must look for what was stored, not for all 120
    (which no row can hold)."""
    # given
    key = "\u0958" * 60
    instance = waiting_instance(run_steps, business_key=key)
    if stored != "by a start now":
        WorkflowInstance.objects.filter(pk=instance.pk).update(business_key=key)

    # when
    target = signals.signal_target(None, key)

    # then
    assert target == instance.pk


def test_the_instance_page_shows_the_wait_and_its_deadline(register_workflow, run_steps, client, users):
    register_workflow(flow("signal_page", timeout=timedelta(hours=2)))
    instance = waiting_instance(run_steps, "signal_page")
    client.force_login(users.admin)

    response = client.get(f"/instances/{instance.pk}/")
    page = response.content.decode()

    assert response.status_code == 200
    assert "waiting for a signal until" in page
    assert "Signal" in page


def test_whoever_started_the_instance_may_not_signal_it(payment_flow, run_steps, users):
    from orchestrator.services.signals import SignalForbidden

    instance = instance_start("signal_payment", {"order": "A-3"}, initiator=users.staff)
    run_steps(instance)

    with pytest.raises(SignalForbidden, match="someone else"):
        signal_deliver(
            instance_id=instance.pk,
            event="payment.confirmed",
            signal_id="self",
            payload={"paid_amount": "1.00", "reference": "ME"},
            actor=Actor.of(users.staff),
        )
    delivered = signal_deliver(
        instance_id=instance.pk,
        event="payment.confirmed",
        signal_id="other",
        payload={"paid_amount": "1.00", "reference": "BANK"},
        actor=Actor.of(users.operator),
    )

    assert delivered.outcome == "consumed"


# --- deliveries racing each other and the instance's moves (real threads, each on its own connection) ------------

ROUNDS = 6


def tally(ctx: StepContext) -> dict:
    return {"tally": ctx.data.get("tally", 0) + 1}


def looping_flow(name: str, rounds: int) -> Workflow:
    """reserve -> wait for "payment.confirmed" -> tally -> back to the wait until it has waited ``rounds`` times."""
    return Workflow(
        name=name,
        version=1,
        title_template="Order {order}",
        steps=[
            Task("reserve", reserve),
            Signal("wait_payment", event="payment.confirmed", form=PaymentForm),
            Task("tally", tally),
            Decision("again", lambda data: "wait_payment" if data["tally"] < rounds else None),
        ],
    )


def sequence_flow(name: str) -> Workflow:
    """reserve -> three waits in a row for "payment.confirmed" -> ship."""
    return Workflow(
        name=name,
        version=1,
        title_template="Order {order}",
        steps=[
            Task("reserve", reserve),
            Signal("first_payment", event="payment.confirmed", form=PaymentForm),
            Signal("second_payment", event="payment.confirmed", form=PaymentForm),
            Signal("third_payment", event="payment.confirmed", form=PaymentForm),
            Task("ship", ship),
        ],
    )


def worker_until_ended(run_steps, instance, seconds: float = 25.0) -> Callable[[], list]:
    """A worker on its own thread: runs the instance's automated steps until it ends (or ``seconds`` pass)."""

    def work() -> list:
        ran: list = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ran += run_steps(instance)
            if WorkflowInstance.objects.get(pk=instance.pk).is_final:
                break
            time.sleep(0.005)
        return ran

    return work


def assert_each_wait_took_one_signal_oldest_first(instance, waits: int) -> None:
    """Every signal consumed, by exactly one wait each, in the order they were received; no wait left running."""
    signals = list(ReceivedSignal.objects.filter(instance=instance).order_by("received_at", "id"))
    steps = list(instance.steps.filter(kind=StepKind.SIGNAL).order_by("id"))
    assert [s.consumed_at is not None for s in signals] == [True] * len(signals), describe_instance(instance)
    assert len(steps) == waits, describe_instance(instance)
    assert all(step.state == StepState.SUCCEEDED for step in steps), describe_instance(instance)
    # oldest first: the n-th signal received went to the n-th wait entered
    assert [s.step_id for s in signals] == [step.pk for step in steps], describe_instance(instance)
    assert [step.result["signal_id"] for step in steps] == [s.signal_id for s in signals]


@pytest.mark.django_db(transaction=True)
def test_deliveries_racing_a_loop_of_waits_are_each_consumed_once_oldest_first(register_workflow, run_steps):
    # given an instance waiting at a signal node that it re-enters, through a task run by a worker, ROUNDS times
    register_workflow(looping_flow("signal_loop", ROUNDS))
    instance = waiting_instance(run_steps, "signal_loop")

    # when ROUNDS deliveries with different ids land at once, while a worker moves the instance on
    payload = {"paid_amount": "1.00", "reference": "R"}
    results = race(
        worker_until_ended(run_steps, instance),
        *[partial(deliver, instance.pk, signal_id=f"pay-{n}", payload=payload) for n in range(ROUNDS)],
    )

    # then every delivery was taken (at once or kept and then taken), one per wait, oldest first, none stranded
    deliveries = results[1:]
    assert all(isinstance(d, Delivery) for d in deliveries), results
    assert {d.outcome for d in deliveries} <= {"consumed", "kept"}
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED, describe_instance(instance)
    assert instance.data["tally"] == ROUNDS
    assert_each_wait_took_one_signal_oldest_first(instance, ROUNDS)


@pytest.mark.django_db(transaction=True)
def test_deliveries_racing_waits_in_a_row_fill_them_in_order_and_keep_only_the_surplus(register_workflow, run_steps):
    # given an instance waiting at the first of three signal nodes in a row for the same event
    register_workflow(sequence_flow("signal_row"))
    instance = waiting_instance(run_steps, "signal_row")

    # when five deliveries with different ids land at once
    payload = {"paid_amount": "1.00", "reference": "R"}
    results = race(*[partial(deliver, instance.pk, signal_id=f"pay-{n}", payload=payload) for n in range(5)])

    # then three were consumed, each by one wait, oldest first; the two received last are kept (nothing waits)
    assert sorted(r.outcome for r in results) == ["consumed"] * 3 + ["kept"] * 2, results
    signals = list(ReceivedSignal.objects.filter(instance=instance).order_by("received_at", "id"))
    waits = list(instance.steps.filter(kind=StepKind.SIGNAL).order_by("id"))
    assert [s.step_id for s in signals] == [w.pk for w in waits] + [None, None], describe_instance(instance)
    assert [w.name for w in waits] == ["first_payment", "second_payment", "third_payment"]
    assert all(w.state == StepState.SUCCEEDED for w in waits)
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED, describe_instance(instance)


@pytest.mark.django_db(transaction=True)
def test_a_delivery_while_the_worker_enters_the_wait_is_consumed_by_it(register_workflow, run_steps, monkeypatch):
    # given a worker that has just entered the signal node, its transaction still open
    register_workflow(looping_flow("signal_entry", 2))
    instance = waiting_instance(run_steps, "signal_entry")
    deliver(instance.pk, signal_id="pay-0", payload={"paid_amount": "1.00", "reference": "R"})  # -> tally runs next
    entered, go_on = threading.Event(), threading.Event()
    real_wait = signals.signal_wait

    def slow_wait(*args, **kwargs):
        step = real_wait(*args, **kwargs)
        entered.set()
        go_on.wait(timeout=10)  # hold the worker's transaction open inside the node entry
        return step

    monkeypatch.setattr(signals, "signal_wait", slow_wait)

    def deliver_once_entered():
        assert entered.wait(timeout=10)
        threading.Timer(0.3, go_on.set).start()  # the delivery is under way before the worker commits
        return deliver(instance.pk, signal_id="pay-1", payload={"paid_amount": "2.00", "reference": "S"})

    # when a delivery comes while the worker is entering the wait
    results = race(lambda: run_steps(instance), deliver_once_entered)

    # then the delivery waited for the worker's move and the wait took it: nothing is left kept
    assert isinstance(results[1], Delivery), results
    assert results[1].outcome == "consumed", describe_instance(instance)
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED, describe_instance(instance)
    assert_each_wait_took_one_signal_oldest_first(instance, 2)


@pytest.mark.django_db(transaction=True)
def test_one_signal_id_sent_many_times_at_once_is_one_delivery(register_workflow, run_steps):
    # given an instance waiting at the first of three signal nodes for the same event
    register_workflow(sequence_flow("signal_retries"))
    instance = waiting_instance(run_steps, "signal_retries")

    # when the sender's retries of one signal id land at once
    results = race(*[partial(deliver, instance.pk, signal_id="pay-once") for _ in range(6)])

    # then one delivery consumed it and the rest are repeats of it: one row, one wait succeeded, the next waits
    assert sorted(r.outcome for r in results) == ["consumed"] + ["repeat"] * 5, results
    assert len({r.signal.pk for r in results}) == 1
    assert ReceivedSignal.objects.filter(instance=instance).count() == 1
    states = dict(instance.steps.filter(kind=StepKind.SIGNAL).values_list("name", "state"))
    assert states == {"first_payment": StepState.SUCCEEDED, "second_payment": StepState.RUNNING}


def test_a_delivery_after_a_resume_does_not_overtake_a_signal_kept_during_the_pause(register_workflow, run_steps):
    # given an instance waiting at the first of three waits in a row, paused, with a signal kept during the pause
    register_workflow(sequence_flow("signal_overtake"))
    instance = waiting_instance(run_steps, "signal_overtake")
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")
    early = deliver(instance.pk, signal_id="early", payload={"paid_amount": "1.00", "reference": "EARLY"})
    assert early.outcome == "kept"
    instance_resume(instance.pk, actor=OPERATOR, reason="go on")

    # when a new signal comes after the resume, before any sweep has handed the kept one on
    late = deliver(instance.pk, signal_id="late", payload={"paid_amount": "2.00", "reference": "LATE"})

    # then the kept one went first (to the first wait) and the new one to the next wait: oldest first, none stranded
    assert late.outcome == "consumed"
    assert late.signal.consumed_at is not None
    waits = {w.name: w.result.get("signal_id") for w in instance.steps.filter(kind=StepKind.SIGNAL)}
    assert waits == {"first_payment": "early", "second_payment": "late", "third_payment": None}
    assert instance.steps.get(name="third_payment").state == StepState.RUNNING
    assert not ReceivedSignal.objects.filter(instance=instance, consumed_at__isnull=True).exists()


def test_a_delivery_after_a_resume_takes_the_last_wait_only_if_no_older_signal_is_kept(payment_flow, run_steps):
    # given an instance at its one wait, paused, with a signal kept during the pause, then resumed
    instance = waiting_instance(run_steps)
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")
    deliver(instance.pk, signal_id="early", payload={"paid_amount": "1.00", "reference": "EARLY"})
    instance_resume(instance.pk, actor=OPERATOR, reason="go on")

    # when a second signal comes before the sweep
    late = deliver(instance.pk, signal_id="late", payload={"paid_amount": "2.00", "reference": "LATE"})

    # then the wait took the kept (older) one; the new one is kept, since nothing waits any more
    assert late.outcome == "kept"
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.data["reference"] == "EARLY"
    assert instance.state == InstanceState.COMPLETED
    assert list(
        ReceivedSignal.objects.filter(instance=instance, consumed_at__isnull=True).values_list("signal_id", flat=True)
    ) == ["late"]


@pytest.mark.django_db(transaction=True)
def test_deliveries_racing_the_sweep_after_a_resume_are_consumed_oldest_first(register_workflow, run_steps):
    # given a looping instance, paused at its wait, holding two signals kept during the pause, then resumed
    register_workflow(looping_flow("signal_resume_race", ROUNDS))
    instance = waiting_instance(run_steps, "signal_resume_race")
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")
    payload = {"paid_amount": "1.00", "reference": "R"}
    for n in range(2):
        assert deliver(instance.pk, signal_id=f"kept-{n}", payload=payload).outcome == "kept"
    instance_resume(instance.pk, actor=OPERATOR, reason="go on")

    # when the rest of the deliveries, the sweep's hand-off and a worker all run at once
    results = race(
        worker_until_ended(run_steps, instance),
        engine.sweep,
        *[partial(deliver, instance.pk, signal_id=f"pay-{n}", payload=payload) for n in range(ROUNDS - 2)],
    )

    # then each wait took one signal, oldest first (the kept ones before the new), and the instance completed
    assert all(isinstance(d, Delivery) for d in results[2:]), results
    assert not isinstance(results[1], Exception), results
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED, describe_instance(instance)
    assert_each_wait_took_one_signal_oldest_first(instance, ROUNDS)


def test_the_sweep_hands_every_kept_signal_on_oldest_first_and_counts_them(register_workflow, run_steps, monkeypatch):
    # given an instance paused at the first of three waits in a row, two signals kept during the pause, resumed
    # without handing them on
    register_workflow(sequence_flow("signal_sweep_row"))
    instance = waiting_instance(run_steps, "signal_sweep_row")
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")
    for n in range(2):
        deliver(instance.pk, signal_id=f"kept-{n}", payload={"paid_amount": "1.00", "reference": f"K{n}"})
    resume_without_hand_on(instance.pk, monkeypatch)

    # when the sweep runs
    report = engine.sweep()

    # then both went on, the older to the first wait, and the report counts both; the third wait still waits
    assert report.signals["signals_consumed"] == 2
    waits = {w.name: w.result.get("signal_id") for w in instance.steps.filter(kind=StepKind.SIGNAL)}
    assert waits == {"first_payment": "kept-0", "second_payment": "kept-1", "third_payment": None}


# --- a paused instance consumes nothing; the resume hands kept signals on -----------------------------------


def test_a_wait_entered_while_paused_takes_no_kept_signal_and_the_resume_hands_it_on(payment_flow, run_steps):
    # given a signal kept before the instance reached its wait, and a worker running "reserve" when a pause comes
    instance = instance_start("signal_payment", {"order": "A-1"})
    assert deliver(instance.pk, signal_id="early").outcome == "kept"
    reserve_step = instance.steps.get(name="reserve")
    claim = step_claim(reserve_step.pk)
    assert claim is not None
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")

    # when the worker's step finishes on the paused instance, which enters the wait
    step_record(claim.step_id, claim.attempt, _run_handler(claim))

    # then the wait is entered but takes nothing: a paused instance consumes no signal, kept or delivered
    instance.refresh_from_db()
    wait = instance.steps.get(name="wait_payment")
    assert (instance.state, wait.state) == (InstanceState.PAUSED, StepState.RUNNING), describe_instance(instance)
    assert ReceivedSignal.objects.get(instance=instance, signal_id="early").consumed_at is None

    # when the operator resumes it (no sweep runs)
    instance_resume(instance.pk, actor=OPERATOR, reason="go on")

    # then the resume handed the kept signal to the wait, and the flow goes on
    wait.refresh_from_db()
    assert (wait.state, wait.result["signal_id"]) == (StepState.SUCCEEDED, "early")
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED, describe_instance(instance)
    assert instance.data["reference"] == "PAY-9"


def test_an_escalation_retry_on_a_paused_instance_takes_no_kept_signal_until_the_resume(
    register_workflow, run_steps, users
):
    # given a wait that timed out and escalated, the instance then paused, and a signal kept during the pause
    instance = timed_out_instance(register_workflow, run_steps, "signal_paused_escalation", on_timeout=ESCALATE)
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")
    assert deliver(instance.pk, signal_id="during-pause").outcome == "kept"

    # when an operator answers Retry on the escalation while the instance is paused
    escalation = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)
    task_decide(escalation.pk, users.operator, "retry", comment="asked the bank")

    # then the wait waits again but the kept signal stays kept: as for a delivery, nothing is consumed while paused
    wait = StepRun.objects.get(instance=instance, name="wait_payment")
    assert wait.state == StepState.RUNNING
    assert ReceivedSignal.objects.get(instance=instance, signal_id="during-pause").consumed_at is None

    # when the instance is resumed, the resume hands the kept signal to the wait and the flow goes on
    instance_resume(instance.pk, actor=OPERATOR, reason="go on")
    wait.refresh_from_db()
    assert (wait.state, wait.result["signal_id"]) == (StepState.SUCCEEDED, "during-pause")
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED, describe_instance(instance)


def test_a_resume_hands_signals_kept_during_the_pause_on_oldest_first(register_workflow, run_steps):
    # given an instance paused at the first of three waits in a row, with two signals kept during the pause
    register_workflow(sequence_flow("signal_resume_row"))
    instance = waiting_instance(run_steps, "signal_resume_row")
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")
    for n in range(2):
        assert (
            deliver(instance.pk, signal_id=f"kept-{n}", payload={"paid_amount": "1", "reference": f"K{n}"}).outcome
            == "kept"
        )

    # when it is resumed (no sweep)
    instance_resume(instance.pk, actor=OPERATOR, reason="go on")

    # then the older went to the first wait, the newer to the second; the third waits
    waits = {w.name: w.result.get("signal_id") for w in instance.steps.filter(kind=StepKind.SIGNAL)}
    assert waits == {"first_payment": "kept-0", "second_payment": "kept-1", "third_payment": None}


# --- the sweep's hand-off: instances it cannot hand on to never starve the others ---------------------------


def kept_at_a_wait(run_steps, monkeypatch, name: str, **data: object) -> WorkflowInstance:
    """An instance of ``name`` waiting at its signal node with a signal kept during a pause, resumed without handing
    it on (so only the sweep would)."""
    instance = waiting_instance(run_steps, name, **data)
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")
    assert deliver(instance.pk, signal_id="kept").outcome == "kept"
    resume_without_hand_on(instance.pk, monkeypatch)
    return instance


def routed_flow(name: str) -> Workflow:
    """reserve -> wait for "payment.confirmed" -> a decision that reads data["route"] (KeyError without it)."""
    return Workflow(
        name=name,
        version=1,
        title_template="Order {order}",
        steps=[
            Task("reserve", reserve),
            Signal("wait_payment", event="payment.confirmed", form=PaymentForm),
            Decision("route", lambda data: data["route"] and None),
        ],
    )


def test_instances_the_sweep_cannot_hand_on_to_never_take_the_good_ones_slots(
    payment_flow, run_steps, monkeypatch, settings
):
    # given a batch of 2, and more instances than that whose kept signal the sweep can never hand on: two whose
    # definition is no longer registered, two whose waiting step is no node of their definition (odd data)
    settings.BATON_SWEEP_BATCH = 2
    unfit = [kept_at_a_wait(run_steps, monkeypatch, "signal_payment") for _ in range(4)]
    WorkflowInstance.objects.filter(pk__in=[i.pk for i in unfit[:2]]).update(workflow_version=99)
    StepRun.objects.filter(instance__in=unfit[2:], name="wait_payment").update(name="renamed_since")
    # and, created last, one instance it can hand on to
    good = kept_at_a_wait(run_steps, monkeypatch, "signal_payment")

    # when one pass of the sweep runs
    report = engine.sweep()

    # then the good one was handed its signal in that pass; the unfit ones are untouched, and no error was counted
    assert report.signals["signals_consumed"] == 1, describe_instance(good)
    assert good.steps.get(name="wait_payment").state == StepState.SUCCEEDED
    assert ReceivedSignal.objects.filter(instance__in=unfit, consumed_at__isnull=True).count() == 4
    assert report.errors == 0


def test_instances_whose_hand_off_fails_are_skipped_so_every_pass_advances(
    payment_flow, run_steps, monkeypatch, settings
):
    # given a batch of 2, three instances whose hand-off raises (the database, not the definition: a workflow
    # whose flow raises after the wait fails its instance instead, the tests below) and, created last, one that
    # can go on
    settings.BATON_SWEEP_BATCH = 2
    failing = [kept_at_a_wait(run_steps, monkeypatch, "signal_payment") for _ in range(3)]
    good = kept_at_a_wait(run_steps, monkeypatch, "signal_payment")
    broken = {i.pk for i in failing}
    real_hand_on = signals.hand_on_kept

    def hand_on(unit, workflow):
        if unit.instance.pk in broken:
            raise OperationalError("deadlock detected")
        return real_hand_on(unit, workflow)

    monkeypatch.setattr(signals, "hand_on_kept", hand_on)

    # when the sweep runs twice
    first, second = engine.sweep(), engine.sweep()

    # then each failing one was tried once (not every pass: they do not hold the batch) and the good one went on
    assert (first.errors, second.errors) == (2, 1)
    assert second.signals["signals_consumed"] == 1
    assert good.steps.get(name="wait_payment").state == StepState.SUCCEEDED, describe_instance(good)
    assert ReceivedSignal.objects.filter(instance__in=failing, consumed_at__isnull=True).count() == 3

    # and once the skip has passed, a failing one whose hand-off works again is handed on
    broken.discard(failing[0].pk)
    later = engine.sweep(now=timezone.now() + signals.NO_PROGRESS_SKIP + timedelta(seconds=1))
    assert later.signals["signals_consumed"] == 1
    assert failing[0].steps.get(name="wait_payment").state == StepState.SUCCEEDED


# --- a kept signal is checked by the node that consumes it ---------------------------------------------------


def balance_schema(payload: dict) -> dict:
    """The second node's schema: a balance reference, upper-cased (a KeyError without one: a schema's own bug)."""
    return {"balance_ref": payload["balance_ref"].upper()}


def two_payments_flow(name: str) -> Workflow:
    """reserve -> wait for "payment.confirmed" (PaymentForm) -> ship -> wait for it again (balance_schema)."""
    return Workflow(
        name=name,
        version=1,
        title_template="Order {order}",
        steps=[
            Task("reserve", reserve),
            Signal("deposit", event="payment.confirmed", form=PaymentForm),
            Task("ship", ship),
            Signal("balance", event="payment.confirmed", schema=balance_schema),
        ],
    )


@pytest.fixture
def between_two_waits(register_workflow, run_steps):
    """An instance past its first wait for "payment.confirmed", its "ship" not run yet: the next signal for the
    event is kept, for the second wait, whose schema differs from the first's form."""
    register_workflow(two_payments_flow("signal_two_payments"))
    instance = waiting_instance(run_steps, "signal_two_payments")
    assert deliver(instance.pk, signal_id="deposit").outcome == "consumed"
    return instance


def test_a_kept_signal_that_only_a_later_node_accepts_is_kept_and_consumed_there(between_two_waits, run_steps):
    # given an instance whose next wait for the event is "balance" (a schema), not "deposit" (a form)
    instance = between_two_waits

    # when a signal that fits only "balance" comes before the instance reaches it
    delivery = deliver(instance.pk, signal_id="balance", payload={"balance_ref": "b-7"})

    # then it is kept (one node of the event accepts it), and "balance" consumes it, shaped by its own schema
    assert delivery.outcome == "kept"
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED, describe_instance(instance)
    assert instance.data["balance_ref"] == "B-7"
    assert ReceivedSignal.objects.get(instance=instance, signal_id="balance").payload == {"balance_ref": "B-7"}


def test_a_kept_signal_the_consuming_node_refuses_is_rejected_and_the_wait_waits_for_a_valid_one(
    between_two_waits, run_steps
):
    # given a signal kept for the next wait that fits the first node's form but not the second node's schema
    instance = between_two_waits
    kept = deliver(instance.pk, signal_id="wrong-shape", payload={"paid_amount": "5.00", "reference": "R2"})
    assert kept.outcome == "kept"

    # when the instance reaches "balance", whose schema cannot take it
    run_steps(instance)

    # then the signal is recorded as rejected, with the node and the errors, and audited; "balance" still waits
    instance.refresh_from_db()
    wait = instance.steps.get(name="balance")
    signal = ReceivedSignal.objects.get(pk=kept.signal.pk)
    assert (instance.state, wait.state) == (InstanceState.WAITING, StepState.RUNNING), describe_instance(instance)
    assert (signal.consumed_at, signal.rejected_at is not None) == (None, True)
    assert (signal.rejection["node"], signal.rejection["step"]) == ("balance", wait.pk)
    assert "KeyError" in signal.rejection["errors"]["payload"][0]
    rejected = AuditEvent.objects.get(instance=instance, action="signal.rejected")
    assert rejected.payload["signal_id"] == "wrong-shape"
    assert "balance_ref" not in instance.data
    # and the sweep neither hands it on again nor fails on it
    report = engine.sweep()
    assert (report.signals["signals_consumed"], report.errors) == (0, 0)

    # when a valid signal comes, the wait takes it and the instance completes
    assert deliver(instance.pk, signal_id="right", payload={"balance_ref": "b-8"}).outcome == "consumed"
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED, describe_instance(instance)
    assert instance.data["balance_ref"] == "B-8"


def test_a_kept_signal_no_node_of_its_event_accepts_is_refused_at_delivery(between_two_waits):
    # given an instance between its two waits for the event
    instance = between_two_waits

    # when a signal that fits neither the form nor the schema comes, then it is refused naming the form's field
    with pytest.raises(SignalInvalid) as refused:
        deliver(instance.pk, signal_id="junk", payload={"paid_amount": "lots"})
    assert "fits none of the 2 nodes" in str(refused.value)
    assert "payload.paid_amount" in refused.value.errors
    assert not ReceivedSignal.objects.filter(instance=instance, signal_id="junk").exists()


# --- a kept or delivered signal whose consumption cannot go on ------------------------------------------------
# The engine's rule when the workflow's own code raises as the flow moves on (docs/architecture.md, "A step whose
# outcome cannot be recorded"): the input is kept, the step it reached dies naming the error, the instance fails
# for an operator to retry; the operation that handed the signal on is not blamed.


def assert_stopped_after_the_wait(instance: WorkflowInstance, signal_id: str) -> StepRun:
    """The instance failed at its wait, which consumed ``signal_id`` and died naming the decision's KeyError."""
    instance.refresh_from_db()
    wait = instance.steps.get(name="wait_payment")
    signal = ReceivedSignal.objects.get(instance=instance, signal_id=signal_id)
    assert instance.state == InstanceState.FAILED, describe_instance(instance)
    assert instance.error.startswith("wait_payment failed: 'route'")
    assert (wait.state, wait.error_type) == (StepState.DEAD, "KeyError")
    assert (wait.result["signal_id"], wait.result[signals.SIGNAL_KEPT]) == (signal_id, True)
    assert (signal.step_id, signal.consumed_at is not None, signal.rejected_at) == (wait.pk, True, None)
    assert instance.data["reference"] == "PAY-9"  # the payload joined the data, as a consumption's does
    assert not instance.steps.filter(name="route").exists()  # nothing the savepoint rolled back is left
    assert AuditEvent.objects.filter(instance=instance, action="step.dead", subject_id=wait.pk).exists()
    assert AuditEvent.objects.filter(instance=instance, action="instance.failed").exists()
    # the events the savepoint's work had collected went back with it: no success of the wait, and the chain has
    # no gap and no fork
    assert not AuditEvent.objects.filter(instance=instance, action="step.succeeded", subject_id=wait.pk).exists()
    assert verify_chain(list(AuditEvent.objects.filter(instance=instance).order_by("seq"))) is None
    return wait


def fix_route_and_retry(instance: WorkflowInstance, run_steps) -> None:
    """An operator's retry is refused while the decision still raises (nothing changes); once the data the
    decision reads is fixed, it enters what follows the wait without waiting again and the instance completes."""
    with pytest.raises(instances.NotAllowed, match="still raises KeyError"):
        instance_retry(instance.pk, actor=OPERATOR, reason="try again")
    assert WorkflowInstance.objects.get(pk=instance.pk).state == InstanceState.FAILED
    WorkflowInstance.objects.filter(pk=instance.pk).update(data={**instance.data, "route": "north"})
    instance_retry(instance.pk, actor=OPERATOR, reason="route fixed")
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED, describe_instance(instance)
    assert instance.steps.get(name="wait_payment").state == StepState.SUCCEEDED


def test_a_resume_is_not_blocked_by_a_kept_signal_whose_flow_cannot_go_on(register_workflow, run_steps):
    # given a waiting instance of a flow whose decision after the wait needs data["route"] (it has none), paused,
    # and a signal its node accepts kept during the pause
    register_workflow(routed_flow("signal_routed"))
    instance = waiting_instance(run_steps, "signal_routed")
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")
    assert deliver(instance.pk, signal_id="kept").outcome == "kept"

    # when an operator resumes it
    resumed = instance_resume(instance.pk, actor=OPERATOR, reason="go on")

    # then the resume happens (it used to raise the decision's KeyError: a 500, the instance paused for good, as
    # long as the signal was kept); the signal is consumed by the wait, which died, and the instance failed
    assert resumed is True
    assert_stopped_after_the_wait(instance, "kept")
    assert AuditEvent.objects.filter(instance=instance, action="instance.resumed").exists()
    # and an operator can retry it once the data is fixed
    fix_route_and_retry(instance, run_steps)


def test_a_delivery_whose_flow_cannot_go_on_is_accepted_and_fails_the_instance(register_workflow, run_steps):
    # given a waiting instance of a flow whose decision after the wait needs data["route"] (it has none)
    register_workflow(routed_flow("signal_routed"))
    instance = waiting_instance(run_steps, "signal_routed")

    # when a signal the node accepts is delivered: consuming it enters the decision, which raises
    delivery = deliver(instance.pk, signal_id="late")

    # then the delivery is accepted (the sender's event happened; the fault is the workflow's, not the sender's, so
    # a refusal would only make it send again), the wait consumed it and died, and the instance failed with the
    # error for an operator
    assert delivery.outcome == "consumed"
    assert_stopped_after_the_wait(instance, "late")
    # and a repeat of the delivery is a harmless repeat
    assert deliver(instance.pk, signal_id="late").outcome == "repeat"
    fix_route_and_retry(instance, run_steps)


def test_a_signal_kept_before_the_wait_does_not_fail_the_preceding_step(register_workflow, run_steps):
    # given an instance whose first task has not run yet, and a signal for its wait delivered early (kept)
    register_workflow(routed_flow("signal_routed"))
    instance = instance_start("signal_routed", {"order": "A-1"})
    assert deliver(instance.pk, signal_id="early").outcome == "kept"

    # when the worker runs the first task: recording it enters the wait, which takes the kept signal, and what
    # follows the wait raises
    run_steps(instance)

    # then the task succeeded (it used to be recorded as failed with the decision's KeyError, and its retry failed
    # the same way): the wait is the step that died, and the instance failed there
    reserve_step = instance.steps.get(name="reserve")
    assert (reserve_step.state, reserve_step.attempt) == (StepState.SUCCEEDED, 1), describe_instance(instance)
    assert_stopped_after_the_wait(instance, "early")
    fix_route_and_retry(instance, run_steps)


def test_the_sweep_hands_on_a_kept_signal_whose_flow_cannot_go_on_and_fails_only_that_instance(
    register_workflow, run_steps, monkeypatch
):
    # given two instances waiting with a signal kept during a pause, resumed without handing it on: one whose
    # decision after the wait lacks its data, one whose data has it
    register_workflow(routed_flow("signal_routed"))
    broken = kept_at_a_wait(run_steps, monkeypatch, "signal_routed")
    good = kept_at_a_wait(run_steps, monkeypatch, "signal_routed", route="north")

    # when the sweep runs
    report = engine.sweep()

    # then both signals were handed on, no sweep error was counted: the broken one failed at its wait with the
    # error recorded, the good one went on and completed
    assert (report.signals["signals_consumed"], report.errors) == (2, 0)
    assert_stopped_after_the_wait(broken, "kept")
    good.refresh_from_db()
    assert good.state == InstanceState.COMPLETED, describe_instance(good)
    fix_route_and_retry(broken, run_steps)


def test_what_the_flow_wrote_before_it_raised_goes_back_with_the_savepoint(
    register_workflow, run_steps, django_capture_on_commit_callbacks
):
    # given an instance waiting before a parallel whose first branch schedules a task and whose second branch's
    # timer computes its time from data["route"] (a KeyError: it has none)
    register_workflow(
        Workflow(
            name="signal_fan_out",
            version=1,
            steps=[
                Task("reserve", reserve),
                Signal("wait_payment", event="payment.confirmed", form=PaymentForm),
                Parallel("fan", branches=[[Task("ship", ship)], [Timer("later", until=lambda data: data["route"])]]),
            ],
        )
    )
    instance = waiting_instance(run_steps, "signal_fan_out")

    # when a signal is delivered: the parallel step and "ship" are written and "ship" queued for dispatch before
    # the timer raises
    with django_capture_on_commit_callbacks(execute=False) as after_commit:
        assert deliver(instance.pk, signal_id="late").outcome == "consumed"

    # then none of it is left: no parallel or "ship" step, no dispatch sent after commit; the wait died instead
    assert_stopped_after_the_wait(instance, "late")
    assert not instance.steps.filter(name__in=["fan", "ship"]).exists()
    assert not [c for c in after_commit if getattr(c, "func", None) is send_step]
