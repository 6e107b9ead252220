"""Signals and the operator's actions: what an instance held while it stood failed goes on when an operator's
skip runs it again, as it does after a resume or a retry (docs/architecture.md, "Signals")."""

from __future__ import annotations

import time
from datetime import timedelta
from functools import partial

import pytest
from django.utils import timezone

from approvals.models import HumanTask, TaskKind
from approvals.services.base import TaskConflict
from approvals.services.tasks import task_decide
from orchestrator import registry
from orchestrator.audit import Actor, verify_chain
from orchestrator.dsl import COMPENSATE, CONTINUE, ESCALATE, Parallel, Retry, Signal, StepContext, Task, Workflow
from orchestrator.models import AuditEvent, InstanceState, ReceivedSignal, StepRun, StepState, WorkflowInstance
from orchestrator.services import sweep as engine
from orchestrator.services.instances import (
    NotAllowed,
    instance_cancel,
    instance_pause,
    instance_resume,
    instance_retry,
    instance_start,
)
from orchestrator.services.operations import instance_step_skip
from orchestrator.services.signals import SignalConflict
from orchestrator.services.steps import Outcome, step_claim, step_record
from tests.concurrency import race
from tests.orchestrator.flaky_steps import flaky, outage
from tests.orchestrator.test_signals import deliver, flow, reserve, timed_out_instance, waiting_instance

pytestmark = pytest.mark.django_db

OPERATOR = Actor("user:operator")


def breaks(ctx: StepContext) -> dict:
    raise RuntimeError("the carrier is down")


def ship(ctx: StepContext) -> dict:
    return {"shipped": True}


def fan_flow(name: str, other: Task | Signal) -> Workflow:
    """Two branches: ``other``, and a call to a carrier that fails at once (no retries); then ship."""
    return Workflow(
        name=name,
        version=1,
        steps=[
            Parallel("fan", branches=[[other], [Task("book_carrier", breaks, retry=Retry(max_attempts=1))]]),
            Task("ship", ship),
        ],
    )


def skip_carrier(instance) -> None:
    dead = instance.steps.get(name="book_carrier")
    instance_step_skip(instance.pk, dead.pk, {"carrier": "by hand"}, actor=OPERATOR, reason="booked by phone")


def test_a_skip_hands_on_a_signal_kept_while_the_instance_was_failed(register_workflow, run_steps):
    # given an instance failed by one branch while the other waits for its payment, which came meanwhile (kept)
    register_workflow(fan_flow("signal_skip_fan", Signal("wait_payment", event="payment.confirmed")))
    instance = instance_start("signal_skip_fan", {})
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    assert deliver(instance.pk, payload={"paid": "1"}).outcome == "kept"

    # when an operator skips the failed step, giving its output
    skip_carrier(instance)

    # then the skip handed the kept payment to the waiting branch in its own transaction, as a resume or a retry
    # does (it waited for the sweep's safety net), and the instance goes on to the end
    instance.refresh_from_db()
    assert ReceivedSignal.objects.get(instance=instance).consumed_at is not None
    assert instance.steps.get(name="wait_payment").state == StepState.SUCCEEDED
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED


def test_a_skip_sends_a_retry_that_fell_due_while_the_instance_was_failed(
    register_workflow, run_steps, broker, django_capture_on_commit_callbacks
):
    # given one branch retrying after a failed attempt when the other fails the instance, and its back-off over
    outage["on"] = True
    try:
        retrying = Task("sync", flaky, retry=Retry(max_attempts=3, backoff=0.1))
        register_workflow(fan_flow("skip_redispatch_fan", retrying))
        instance = instance_start("skip_redispatch_fan", {})
        run_steps(instance, limit=2)
        sync = instance.steps.get(name="sync")
        instance.refresh_from_db()
        assert (instance.state, sync.state) == (InstanceState.FAILED, StepState.FAILED)
        assert sync.due_at is not None
        time.sleep(max(0.0, (sync.due_at - timezone.now()).total_seconds()) + 0.05)
        broker.clear()

        # when an operator skips the failed step
        with django_capture_on_commit_callbacks(execute=True):
            skip_carrier(instance)
    finally:
        outage["on"] = False

    # then the retry that fell due while the instance stood failed is sent at once, as a retry or resume sends it
    # (it waited for the sweep's redispatch), and the instance goes on to the end
    assert sync.pk in broker.step_ids()
    run_steps(instance, advance=True)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED
    assert instance.steps.get(name="sync").attempt == 2


# --- a definition deployed again under the same version with another kind of node ---------------------------


def redeploy(register_workflow, name: str, *steps: object) -> None:
    """Deploy ``name`` v1 again with ``steps`` (an operator's slip: a changed definition needs a new version)."""
    registry.unregister(name, 1)
    register_workflow(Workflow(name=name, version=1, title_template="Order {order}", steps=list(steps)))


def test_a_retry_of_a_wait_whose_node_is_now_a_task_is_refused_naming_it(register_workflow, run_steps):
    # given a wait that timed out and failed its instance, and the same version deployed again with a task there
    instance = timed_out_instance(register_workflow, run_steps, "signal_now_task")
    redeploy(
        register_workflow, "signal_now_task", Task("reserve", reserve), Task("wait_payment", ship), Task("ship", ship)
    )

    # when an operator retries the instance
    # then it is refused saying what changed and what to deploy (it was an AssertionError: a 500 on the console)
    with pytest.raises(NotAllowed, match=r"'wait_payment' is a task.*this instance's step of that name is a signal"):
        instance_retry(instance.pk, actor=OPERATOR, reason="again")
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    assert instance.steps.get(name="wait_payment").state == StepState.DEAD


def test_a_retry_of_a_task_whose_node_is_now_a_wait_is_refused_naming_it(register_workflow, run_steps):
    # given a task that died and failed its instance, and the same version deployed again with a wait there
    register_workflow(Workflow("task_now_signal", 1, [Task("confirm", breaks, retry=Retry(max_attempts=1))]))
    instance = instance_start("task_now_signal", {})
    run_steps(instance)
    redeploy(register_workflow, "task_now_signal", Signal("confirm", event="payment.confirmed"))

    # when an operator retries the instance
    # then it is refused, rather than a task step scheduled for a node that has no handler to run
    with pytest.raises(NotAllowed, match=r"'confirm' is a signal.*this instance's step of that name is a task"):
        instance_retry(instance.pk, actor=OPERATOR, reason="again")
    assert instance.steps.get(name="confirm").state == StepState.DEAD


def test_an_escalations_retry_of_a_wait_whose_node_is_now_a_task_says_why_it_cannot(
    register_workflow, run_steps, users
):
    # given a wait that timed out into an operators' escalation, and the same version deployed again with a task there
    instance = timed_out_instance(register_workflow, run_steps, "signal_escalated_now_task", on_timeout=ESCALATE)
    escalation = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)
    redeploy(
        register_workflow,
        "signal_escalated_now_task",
        Task("reserve", reserve),
        Task("wait_payment", ship),
        Task("ship", ship),
    )

    # when the operator answers Retry
    # then the answer is refused naming the changed node (it said "AssertionError: " and nothing more)
    with pytest.raises(TaskConflict, match=r"Cannot retry: .*'wait_payment' is a task"):
        task_decide(escalation.pk, users.operator, "retry", comment="asked the bank")
    assert instance.steps.get(name="wait_payment").state == StepState.DEAD


# --- a wait's timeout while the instance stands failed ------------------------------------------------------


def test_a_timeout_that_passes_while_the_instance_is_failed_acts_on_the_retry_unless_a_signal_was_kept(
    register_workflow, run_steps
):
    """The decision (docs/architecture.md, "Signals"): a pause holds a wait's timeout (a duration), a failure does
    not. An instance stands failed until an operator looks, for no set time, and the wait is for the outside world,
    which went on: a timeout that passed meanwhile acts at the first sweep after the retry, and a signal kept while
    it stood failed is handed on by the retry first, so it wins."""
    # given two instances failed by one branch while the other waits an hour for the payment (failing on timeout)
    register_workflow(
        fan_flow(
            "signal_failed_timeout",
            Signal("wait_payment", event="payment.confirmed", timeout=timedelta(hours=1)),
        )
    )
    quiet, paid = (instance_start("signal_failed_timeout", {}) for _ in range(2))
    run_steps()
    due = quiet.steps.get(name="wait_payment").due_at
    late = max(due, paid.steps.get(name="wait_payment").due_at) + timedelta(seconds=1)
    assert deliver(paid.pk, payload={"paid": "1"}).outcome == "kept"

    # when the hour passes while they stand failed
    while_failed = engine.sweep(now=late)

    # then nothing timed out meanwhile (a failed instance moves nothing)
    assert while_failed.signals["signals_timed_out"] == 0

    # when an operator retries both and the sweep runs
    for instance in (quiet, paid):
        instance_retry(instance.pk, actor=OPERATOR, reason="carrier is back")
    after = engine.sweep(now=late + timedelta(seconds=1))

    # then the deadline was not moved by the failure: the quiet wait times out at once; the kept payment won
    quiet.refresh_from_db()
    assert quiet.steps.get(name="wait_payment").due_at == due
    assert after.signals["signals_timed_out"] == 1
    assert quiet.steps.get(name="wait_payment").state == StepState.DEAD
    assert quiet.state == InstanceState.FAILED
    assert paid.steps.get(name="wait_payment").state == StepState.SUCCEEDED


# --- a wait re-armed while the instance is paused -----------------------------------------------------------


def test_a_wait_an_escalation_re_arms_during_a_pause_gets_its_whole_timeout_after_the_resume(
    register_workflow, run_steps, users
):
    """An escalation's Retry while the instance is paused re-arms the wait for a whole new timeout; its clock starts
    during the pause, so it starts at the resume, like a wait entered during the pause (docs/architecture.md,
    "Deadlines and pauses"). The resume moved it on by the whole pause instead, from when the wait was first
    entered: re-armed five hours into a pause, a five-minute wait got five hours more."""
    # given a five-minute wait entered yesterday that timed out into an escalation, and the instance paused five
    # hours ago (the clock moved back by hand: the services read it)
    instance = timed_out_instance(register_workflow, run_steps, "signal_rearmed_paused", on_timeout=ESCALATE)
    escalation = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)
    instance_pause(instance.pk, actor=OPERATOR, reason="month end")
    now = timezone.now()
    WorkflowInstance.objects.filter(pk=instance.pk).update(paused_at=now - timedelta(hours=5))
    StepRun.objects.filter(instance=instance).update(created_at=now - timedelta(days=1))

    # when an operator answers Retry now, and the instance resumes a minute later
    task_decide(escalation.pk, users.operator, "retry", comment="asked the bank")
    wait = instance.steps.get(name="wait_payment")
    assert wait.state == StepState.RUNNING
    resumed_at = timezone.now() + timedelta(minutes=1)
    instance_resume(instance.pk, actor=OPERATOR, reason="go on", now=resumed_at)

    # then the wait has its whole five minutes after the resume, no more
    wait.refresh_from_db()
    assert wait.due_at == resumed_at + timedelta(minutes=5)


def test_skipping_a_timed_out_wait_leaves_a_late_signal_kept_until_the_instance_ends(
    register_workflow, run_steps, users
):
    """The decision (docs/architecture.md, "Signals"): a signal that comes after its wait timed out is kept for a
    retry; an operator who answers the wait's escalation with Skip instead goes on without it (the skip's output is
    nothing), and the signal stays kept for a later wait of its event, rejected when the instance ends with none."""
    # given a wait that timed out into an escalation, and the payment that came after that
    instance = timed_out_instance(register_workflow, run_steps, "signal_skip_late", on_timeout=ESCALATE)
    assert deliver(instance.pk).outcome == "kept"
    escalation = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)

    # when the operator skips the wait and the instance runs to its end
    task_decide(escalation.pk, users.operator, "skip", comment="shipping on credit")
    run_steps(instance)

    # then the wait was skipped without the payment, which stayed kept and was rejected at the end, saying why
    instance.refresh_from_db()
    late = ReceivedSignal.objects.get(instance=instance)
    assert instance.state == InstanceState.COMPLETED
    assert instance.steps.get(name="wait_payment").state == StepState.SKIPPED
    assert "paid_amount" not in instance.data
    assert (late.consumed_at, late.rejected_at is not None) == (None, True)
    assert "completed" in late.rejection["reason"]


# --- two operators (and a sender) at once -------------------------------------------------------------------


def _skip(instance_id: int) -> object:
    dead = StepRun.objects.get(instance_id=instance_id, name="book_carrier")
    return instance_step_skip(instance_id, dead.pk, {"carrier": "by hand"}, actor=Actor("user:op2"), reason="phoned")


ACTIONS = {
    "retry": lambda pk: instance_retry(pk, actor=OPERATOR, reason="carrier is back"),
    "skip": _skip,
    "cancel": lambda pk: instance_cancel(pk, actor=Actor("user:op3"), reason="customer left"),
    "deliver": lambda pk: deliver(pk, signal_id="sig-2", payload={"paid": "2"}),
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("first", "second"), [("retry", "skip"), ("skip", "cancel"), ("retry", "cancel"), ("skip", "deliver")]
)
def test_two_operators_acting_on_a_failed_instance_at_once_are_serialised(register_workflow, run_steps, first, second):
    # given an instance failed by one branch while the other waits for a payment, one payment kept meanwhile
    register_workflow(fan_flow("signal_two_operators", Signal("wait_payment", event="payment.confirmed")))
    instance = instance_start("signal_two_operators", {})
    run_steps(instance)
    assert deliver(instance.pk, payload={"paid": "1"}).outcome == "kept"

    # when two people act at the same instant
    results = race(partial(ACTIONS[first], instance.pk), partial(ACTIONS[second], instance.pk))

    # then each either acted or was refused with a reason, never an error; the audit chain holds; no signal was
    # taken twice or by a wait that is not running; a cancelled instance keeps none
    refused = (NotAllowed, SignalConflict)
    assert all(not isinstance(r, Exception) or isinstance(r, refused) for r in results), results
    assert not all(isinstance(r, refused) for r in results), results
    instance.refresh_from_db()
    assert verify_chain(list(AuditEvent.objects.filter(instance=instance).order_by("seq"))) is None
    taken = ReceivedSignal.objects.filter(instance=instance, consumed_at__isnull=False)
    assert taken.count() <= instance.steps.filter(name="wait_payment", state=StepState.SUCCEEDED).count() <= 1
    if instance.state == InstanceState.CANCELLED:
        assert not ReceivedSignal.objects.filter(instance=instance, consumed_at=None, rejected_at=None).exists()
    elif instance.state == InstanceState.RUNNING:
        # running again (by the retry or the skip): the kept payment was handed on at once
        assert taken.count() == 1


# --- a timeout and a signal at the same instant, for each timeout action ------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("action", [CONTINUE, COMPENSATE, ESCALATE])
def test_a_timeout_and_a_signal_at_the_same_instant_one_wins_whatever_the_timeout_does(
    register_workflow, run_steps, action
):
    # given waits whose five minutes just passed (committed: each side runs on its own connection)
    register_workflow(flow(f"signal_race_{action}", timeout=timedelta(minutes=5), on_timeout=action))
    for round_ in range(3):
        instance = waiting_instance(run_steps, f"signal_race_{action}", order=f"R-{round_}")
        wait = instance.steps.get(name="wait_payment")

        # when the sweep's timeout and the payment land at the same instant
        report, delivery = race(
            partial(engine.sweep, now=wait.due_at + timedelta(seconds=1)),
            partial(deliver, instance.pk, signal_id=f"pay-{round_}"),
        )

        # then exactly one decided the wait, and its end is audited once: the payment consumed it, or the timeout
        # acted and the payment is kept for what comes next (refused once the saga began: nothing would take it)
        assert not isinstance(report, Exception), report
        wait.refresh_from_db()
        instance.refresh_from_db()
        ends = AuditEvent.objects.filter(
            subject_type="step", subject_id=wait.pk, action__in=["step.succeeded", "step.dead"]
        )
        assert ends.count() == 1
        if isinstance(delivery, Exception) or delivery.outcome != "consumed":
            assert report.signals["signals_timed_out"] == 1
            if action == CONTINUE:
                assert (wait.state, wait.result) == (StepState.SUCCEEDED, {"timed_out": True})
            else:
                assert (wait.state, wait.error_type) == (StepState.DEAD, "SignalTimeout")
            if action == COMPENSATE:
                assert isinstance(delivery, SignalConflict), delivery
                assert instance.state == InstanceState.COMPENSATING
            else:
                assert delivery.outcome == "kept", delivery
        else:
            assert report.signals["signals_timed_out"] == 0
            assert (wait.state, wait.result["signal_id"]) == (StepState.SUCCEEDED, f"pay-{round_}")


# --- a cancel while the worker runs the step ------------------------------------------------------------------


def pay(ctx: StepContext) -> dict:
    return {"payout_id": "P-1"}


@pytest.mark.parametrize("signal_after", [False, True], ids=["task alone", "before a wait"])
def test_a_step_whose_worker_succeeds_after_a_cancel_is_on_the_record(register_workflow, signal_after):
    """Cancelling skips every open step, running ones included; the worker's success that comes after was dropped
    with a log line ("lost its lease"), so the record said skipped while the payout was made. It is recorded as
    succeeded late, as after a cancel mid-compensation (``_late_success``): the result on the step and in the data,
    audited, nothing following it, the instance still cancelled."""
    # given a payout running on a worker (its wait after it, in one case)
    after = [Signal("wait_receipt", event="receipt.sent")] if signal_after else []
    register_workflow(
        Workflow(f"cancel_late_{signal_after}", 1, [Task("pay", pay, retry=Retry(max_attempts=1)), *after])
    )
    instance = instance_start(f"cancel_late_{signal_after}", {})
    step = instance.steps.get()
    claim = step_claim(step.pk)
    assert claim is not None

    # when an operator cancels while it runs, and then the worker reports its success
    instance_cancel(instance.pk, actor=OPERATOR, reason="customer left")
    result = step_record(step.pk, claim.attempt, Outcome(ok=True, result={"payout_id": "P-1"}))

    # then the payout is on the record: the step succeeded (late) with its result, in the data and the trail
    step.refresh_from_db()
    instance.refresh_from_db()
    assert (step.state, step.result) == (StepState.SUCCEEDED, {"payout_id": "P-1"})
    assert instance.data["payout_id"] == "P-1"
    assert AuditEvent.objects.filter(subject_type="step", subject_id=step.pk, payload__late=True).count() == 1
    assert result.name == "SUCCEEDED_LATE"
    # and nothing followed it: the instance stays cancelled, no wait was entered
    assert instance.state == InstanceState.CANCELLED
    assert list(instance.steps.values_list("name", flat=True)) == ["pay"]
    assert verify_chain(list(AuditEvent.objects.filter(instance=instance).order_by("seq"))) is None


def test_a_step_whose_worker_succeeds_after_a_rejection_ended_the_instance_is_on_the_record(register_workflow, users):
    """A rejection whose node says ``end`` skips every open step, running ones in another branch included, and
    completes the instance; the worker's success that comes after was dropped as a lost lease, so the record said
    skipped while the payout was made. It is recorded as succeeded late, as after a cancel; nothing follows it."""
    from approvals.services.base import REJECT
    from orchestrator.dsl import Human

    # given a payout running on a worker while its parallel review waits
    register_workflow(
        Workflow(
            "reject_late",
            1,
            [
                Parallel(
                    "both",
                    branches=[
                        [Human("review", candidate_groups=["approvers"], on_reject="end")],
                        [Task("pay", pay, retry=Retry(max_attempts=1)), Task("after", pay)],
                    ],
                )
            ],
        )
    )
    instance = instance_start("reject_late", {})
    step = instance.steps.get(name="pay")
    claim = step_claim(step.pk)
    assert claim is not None

    # when the review is rejected while pay runs, and then the worker reports its success
    task_decide(HumanTask.objects.get(instance=instance).pk, users.staff, REJECT, comment="not this supplier")
    result = step_record(step.pk, claim.attempt, Outcome(ok=True, result={"payout_id": "P-1"}))

    # then
    step.refresh_from_db()
    instance.refresh_from_db()
    assert result.name == "SUCCEEDED_LATE"
    assert (step.state, step.result) == (StepState.SUCCEEDED, {"payout_id": "P-1"})
    assert instance.data["payout_id"] == "P-1"
    assert instance.state == InstanceState.COMPLETED
    assert not instance.steps.filter(name="after").exists()
    assert verify_chain(list(AuditEvent.objects.filter(instance=instance).order_by("seq"))) is None
