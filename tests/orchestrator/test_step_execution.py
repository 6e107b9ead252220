"""Running steps in-process: the happy path, retries, decisions, fan-out/fan-in, the saga and fencing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import partial

import pytest
from django.db import connection, transaction
from django.utils import timezone

from approvals.models import HumanTask, TaskKind, TaskState
from demo.models import DemoLedger
from demo.workflows.order_fulfilment import FAST_RETRY
from orchestrator.dsl import ESCALATE, Parallel, PermanentError, Retry, Signal, StepContext, Task, Workflow
from orchestrator.models import (
    AuditEvent,
    InstanceState,
    StepKind,
    StepRun,
    StepState,
    WorkflowInstance,
)
from orchestrator.selectors import hide_paths
from orchestrator.services.instances import instance_start
from orchestrator.services.locks import definition_of, lock_instance
from orchestrator.services.steps import Outcome, step_claim, step_execute, step_record
from orchestrator.services.sweep import sweep
from tests.factories import OrderInputFactory

pytestmark = pytest.mark.django_db


def ledger(instance, service: str, operation: str) -> list[DemoLedger]:
    return list(
        DemoLedger.objects.filter(
            service=service, operation=operation, idempotency_key__startswith=f"{instance.pk}:"
        ).order_by("id")
    )


@contextmanager
def instance_locked_elsewhere(instance: WorkflowInstance, change: Callable[[], object]) -> Iterator[None]:
    """While the body runs, another transaction holds the instance's lock, waits half a second (so the body's
    statement queues behind it), makes ``change`` and commits."""
    locked = threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                lock_instance(instance.pk)
                locked.set()
                time.sleep(0.5)
                change()
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(5)
    try:
        yield
    finally:
        holder.join()


def events_of(step: StepRun, action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(subject_type="step", subject_id=step.pk, action=action).order_by("seq"))


def test_order_under_the_limit_runs_to_completion(run_steps):
    """An order of 50 reserves, charges, ships and notifies, then completes; every side effect happens once."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(amount="50"))

    # when
    ran = run_steps(instance)

    # then
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED
    assert [r.name for r in ran] == ["reserve_inventory", "charge_payment", "ship", "notify_customer"]
    assert set(instance.steps.values_list("state", flat=True)) == {StepState.SUCCEEDED}
    charges = ledger(instance, "payments", "charge")
    assert [(c.amount, c.calls) for c in charges] == [(50, 1)]
    assert instance.data["payment_id"] == charges[0].reference
    assert len(ledger(instance, "shipping", "ship")) == 1


def test_failed_attempts_retry_with_exponential_back_off(run_steps):
    """fail_payment=2: attempts 1 and 2 fail, attempt 3 succeeds; the failures carry a growing retry delay."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_payment=2))

    # when
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED
    charge = instance.steps.get(name="charge_payment")
    assert (charge.state, charge.attempt) == (StepState.SUCCEEDED, 3)
    failures = events_of(charge, "step.failed")
    assert [e.payload["attempt"] for e in failures] == [1, 2]
    delays = [e.payload["retry_in_seconds"] for e in failures]
    # FAST_RETRY: 0.5 s then 1 s, each +-20 % jitter: the bands do not overlap, so growth is certain.
    assert 0.5 * (1 - FAST_RETRY.jitter) <= delays[0] <= 0.5 * (1 + FAST_RETRY.jitter)
    assert 1.0 * (1 - FAST_RETRY.jitter) <= delays[1] <= 1.0 * (1 + FAST_RETRY.jitter)
    assert len(ledger(instance, "payments", "charge")) == 1


def test_a_failed_attempt_is_not_retried_before_its_due_time(run_steps):
    """A step failed a moment ago waits for its back-off: a message arriving early finds nothing to do."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_payment=1))
    run_steps(instance)
    charge = instance.steps.get(name="charge_payment")
    assert (charge.state, charge.attempt) == (StepState.FAILED, 1)

    # when
    result = step_execute(charge.pk)

    # then
    charge.refresh_from_db()
    assert result == "not runnable"
    assert (charge.state, charge.attempt) == (StepState.FAILED, 1)


@pytest.mark.parametrize(
    ("amount", "task_opened", "state"),
    [("1500", True, InstanceState.WAITING), ("50", False, InstanceState.COMPLETED)],
)
def test_decision_routes_on_the_amount(users, run_steps, amount, task_opened, state):
    """Above 1000 the order waits for a manager's approval task; below, it skips straight to shipping (``users``:
    a task with no manager to act on it would escalate at once)."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(amount=amount))

    # when
    run_steps(instance)

    # then
    instance.refresh_from_db()
    assert instance.state == state
    decision = instance.steps.get(name="approval_needed")
    assert decision.result == {"next": "manager_approval" if task_opened else "ship"}
    tasks = HumanTask.objects.filter(instance=instance)
    if task_opened:
        task = tasks.get()
        assert (task.kind, task.state, task.step.name) == (TaskKind.APPROVAL, TaskState.OPEN, "manager_approval")
        assert list(task.candidate_groups.values_list("name", flat=True)) == ["managers"]
        assert not instance.steps.filter(name="ship").exists()
    else:
        assert not tasks.exists()


def test_permanent_error_kills_the_step_without_retrying(register_workflow, run_steps):
    """A PermanentError spends no further attempts: the step dies at once and the instance fails."""

    # given
    def declined(ctx: StepContext) -> None:
        raise PermanentError("card declined")

    register_workflow(Workflow("permanent_demo", 1, [Task("charge", declined, retry=Retry(max_attempts=5))]))
    instance = instance_start("permanent_demo", {})

    # when
    ran = run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    assert [(r.name, r.attempt, r.result) for r in ran] == [("charge", 1, "failed")]
    step = instance.steps.get()
    assert (step.state, step.error_type, step.error) == (StepState.DEAD, "PermanentError", "card declined")
    assert instance.state == InstanceState.FAILED
    assert instance.error == "charge failed: card declined"


def test_a_result_named_like_a_wait_fails_the_step_and_joins_no_data(register_workflow, run_steps):
    """A handler returning a key where the engine records what a wait or a human step did is a bug in the
    workflow: it would decide whether the documents came in time, or who approved. The step dies at once
    (returning the same again cannot help) and nothing of its result joins the data; a result under other names
    still does."""

    # given: a task whose result holds the name of the wait that follows it, beside its own data
    def book(ctx: StepContext) -> dict:
        return {"invoice": 7, "docs": {"timed_out": False}} if ctx.data.get("forge") else {"invoice": 7}

    register_workflow(
        Workflow(
            "forging_demo",
            1,
            [Task("book", book, retry=Retry(max_attempts=5)), Signal("docs", event="docs.received")],
        )
    )
    forged = instance_start("forging_demo", {"forge": True})
    honest = instance_start("forging_demo", {})

    # when
    ran = run_steps(forged, advance=True)
    run_steps(honest, advance=True)

    # then
    forged.refresh_from_db()
    step = forged.steps.get(name="book")
    assert [(r.name, r.attempt, r.result) for r in ran] == [("book", 1, "failed")]
    assert (step.state, step.error_type) == (StepState.DEAD, "ValueError")
    assert step.error.startswith("result sets docs, where the workflow records what its step did")
    assert forged.state == InstanceState.FAILED
    assert forged.data == {"forge": True}
    honest.refresh_from_db()
    assert honest.data == {"invoice": 7}
    assert honest.steps.get(name="docs").state == StepState.RUNNING


# --- fan-out / fan-in -----------------------------------------------------------------------------------

calls: list[str] = []


def record(ctx: StepContext) -> dict:
    calls.append(ctx.step)
    return {ctx.step: True}


@pytest.fixture
def fan_out(register_workflow) -> Workflow:
    calls.clear()
    return register_workflow(
        Workflow(
            "fan_out_demo",
            1,
            [
                Task("prepare", record),
                Parallel("both", branches=[[Task("left", record)], [Task("right_1", record), Task("right_2", record)]]),
                Task("final", record),
            ],
        )
    )


def test_parallel_branches_join_before_the_final_step(fan_out, run_steps):
    """Both branches run; the step after the join is scheduled once, only after the last branch finished."""
    # given
    instance = instance_start("fan_out_demo", {})
    step_execute(instance.steps.get(name="prepare").pk)
    left, right_1 = (instance.steps.get(name=name) for name in ("left", "right_1"))

    # when: one branch finishes, then the other
    step_execute(left.pk)
    final_after_one_branch = instance.steps.filter(name="final").exists()
    step_execute(right_1.pk)
    step_execute(instance.steps.get(name="right_2").pk)
    run_steps(instance)

    # then
    instance.refresh_from_db()
    assert final_after_one_branch is False
    assert calls == ["prepare", "left", "right_1", "right_2", "final"]
    assert instance.steps.filter(name="final").count() == 1
    parallel = instance.steps.get(name="both")
    assert (parallel.kind, parallel.state, parallel.result) == (
        StepKind.PARALLEL,
        StepState.SUCCEEDED,
        {"done": [0, 1]},
    )
    assert set(instance.steps.filter(parent=parallel).values_list("branch", flat=True)) == {0, 1}
    assert instance.state == InstanceState.COMPLETED
    assert instance.data["final"] is True


# --- compensation (saga) --------------------------------------------------------------------------------


def test_failure_after_payment_compensates_latest_first(run_steps):
    """Shipping fails for good: the payment is refunded first, then the stock released; the instance is compensated."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_shipping=True))

    # when
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPENSATED
    compensations = list(instance.steps.filter(kind=StepKind.COMPENSATION).order_by("id"))
    assert [(c.name, c.state) for c in compensations] == [
        ("charge_payment", StepState.SUCCEEDED),
        ("reserve_inventory", StepState.SUCCEEDED),
    ]
    assert [c.compensates.name for c in compensations] == ["charge_payment", "reserve_inventory"]
    refund, release = ledger(instance, "payments", "refund"), ledger(instance, "inventory", "release")
    assert len(refund) == len(release) == 1
    assert refund[0].pk < release[0].pk
    originals = instance.steps.filter(kind=StepKind.TASK).order_by("id").values_list("name", "state")
    assert list(originals) == [
        ("reserve_inventory", StepState.COMPENSATED),
        ("charge_payment", StepState.COMPENSATED),
        ("ship", StepState.DEAD),
    ]


def test_failed_compensation_escalates_to_operators(users, run_steps):
    """A refund that fails for good opens an urgent escalation for operators (``users``: with no operator at all it
    would go to managers too); the instance stays compensating."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_shipping=True, fail_refund=True))

    # when
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPENSATING
    refund = instance.steps.get(kind=StepKind.COMPENSATION)
    assert (refund.name, refund.state, refund.attempt) == ("charge_payment", StepState.DEAD, FAST_RETRY.max_attempts)
    escalation = HumanTask.objects.get(instance=instance)
    assert (escalation.kind, escalation.state, escalation.step_id) == (TaskKind.ESCALATION, TaskState.OPEN, refund.pk)
    assert list(escalation.candidate_groups.values_list("name", flat=True)) == ["operators"]
    # a title a manager understands: the order it is about and what to do, not the engine's error text
    assert escalation.title == f"{instance.title}: refund payment failed and must be finished by hand"
    assert instance.title.startswith(f"Order {instance.data['order_id']} for ")
    assert "Compensation of" not in escalation.title
    # the engine text stays, with the server's paths cut to file names: managers see every task
    assert escalation.description == hide_paths(refund.error)
    assert 'File "steps.py"' in escalation.description
    # the stock is not released behind the failed refund's back: compensation goes one step at a time
    assert instance.steps.get(name="reserve_inventory", kind=StepKind.TASK).state == StepState.SUCCEEDED
    assert not ledger(instance, "inventory", "release")


def test_an_escalated_step_is_titled_for_a_manager(users, register_workflow, run_steps):
    """A step that fails into an escalation names the business object and says what is needed, in words; the
    engine's error text stays in the description."""

    # given
    def post_invoice(ctx: StepContext) -> None:
        raise PermanentError("HTTP 502 from ledger-gw: upstream connect error")

    register_workflow(
        Workflow(
            "invoice_demo",
            1,
            [Task("post_invoice", post_invoice, label="Post the invoice", on_failure=ESCALATE)],
            title_template="Invoice {number} for {customer}",
        )
    )
    instance = instance_start("invoice_demo", {"number": "1042", "customer": "ACME"})

    # when
    run_steps(instance, advance=True)

    # then
    escalation = HumanTask.objects.get(instance=instance)
    assert escalation.title == "Invoice 1042 for ACME: post the invoice failed and needs an operator's decision"
    assert "upstream connect error" in escalation.description


# --- fencing --------------------------------------------------------------------------------------------


def test_a_worker_that_lost_its_lease_cannot_record(run_steps):
    """After the sweep expires a lease, the stale attempt's outcome is fenced off and writes nothing."""
    # given: attempt 1 is claimed, then its lease runs out and the sweep schedules a retry
    instance = instance_start("order_fulfilment", OrderInputFactory())
    step = instance.steps.get(name="reserve_inventory")
    stale = step_claim(step.pk)
    assert stale is not None
    assert stale.attempt == 1
    later = timezone.now() + timedelta(seconds=step_lease(instance) + 1)
    report = sweep(now=later)
    step.refresh_from_db()
    assert report.leases_expired == 1
    assert (step.state, step.attempt, step.error_type) == (StepState.FAILED, 1, "LeaseExpired")
    seq_before = instance_audit_seq(instance)

    # when
    fenced = step_record(step.pk, stale.attempt, Outcome(ok=True, result={"reservation_id": "late"}))

    # then
    step.refresh_from_db()
    assert fenced == "fenced"
    assert (step.state, step.result) == (StepState.FAILED, {})
    assert instance_audit_seq(instance) == seq_before
    assert not instance.steps.filter(name="charge_payment").exists()


def test_the_retry_of_a_lost_attempt_records_while_the_stale_one_stays_fenced():
    """Attempt 2 (re-claimed after the lease expired) records; a late result of attempt 1 is dropped."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory())
    step = instance.steps.get(name="reserve_inventory")
    stale = step_claim(step.pk)
    later = timezone.now() + timedelta(seconds=step_lease(instance) + 1)
    sweep(now=later)
    step.refresh_from_db()
    fresh = step_claim(step.pk, now=step.due_at)
    assert fresh is not None
    assert fresh.attempt == 2

    # when
    late = step_record(step.pk, stale.attempt, Outcome(ok=True, result={"reservation_id": "stale"}))
    current = step_record(step.pk, fresh.attempt, Outcome(ok=True, result={"reservation_id": "fresh"}))

    # then
    step.refresh_from_db()
    assert (late, current) == ("fenced", "succeeded")
    assert (step.state, step.attempt, step.result) == (StepState.SUCCEEDED, 2, {"reservation_id": "fresh"})
    assert len(events_of(step, "step.succeeded")) == 1


def step_lease(instance) -> float:
    """Seconds from a claim of reserve_inventory to the end of its lease (past its hard time limit)."""
    from orchestrator.services.unit import step_limits

    return step_limits(definition_of(instance).node("reserve_inventory"))[2]


def instance_audit_seq(instance) -> int:
    return type(instance).objects.values_list("audit_seq", flat=True).get(pk=instance.pk)


# --- cost -----------------------------------------------------------------------------------------------


def test_one_automated_step_costs_a_fixed_number_of_queries(users, django_assert_num_queries):
    """step_execute of bench_approval's first step: claim (read; the step's guarded update, its audit event and the
    instance in one statement) and record (lock and read; the human step with its task and the task's candidates;
    the step's fenced update, the audit events and the instance) in one transaction."""
    # given
    instance = instance_start("bench_approval", {})
    step = instance.steps.get()

    # when / then: 2 statements for the claim (the step and its instance read; the guarded write of the step, its
    # audit event and the instance) and 3 for the record (the instance locked and the step read in one, the next
    # step inserted with its task and candidates, the step's update and the audit events written with the
    # instance update, no busy-steps query in a linear flow) plus 2 SAVEPOINT/RELEASE of the record's atomic
    # block inside the test's transaction
    with django_assert_num_queries(7):
        assert step_execute(step.pk) == "succeeded"
    instance.refresh_from_db()
    assert instance.state == InstanceState.WAITING


@pytest.mark.django_db(transaction=True)
def test_a_record_that_waited_for_the_lock_sees_the_step_moved_and_is_fenced(users):
    """A result arriving while the sweep holds the instance's lock and expires the lease is dropped, not applied.

    The record reads the locked instance and the step in one statement; after waiting, PostgreSQL re-reads the
    instance but not the step, so the record sees a stale "running" step: its fenced write must refuse it.
    """
    # given: attempt 1 is running
    instance = instance_start("bench_approval", {})
    step = instance.steps.get()
    claim = step_claim(step.pk)
    assert claim is not None

    # when: the result arrives while the sweep holds the instance's lock and expires the lease
    expire = partial(StepRun.objects.filter(pk=step.pk).update, state=StepState.FAILED, error_type="LeaseExpired")
    with instance_locked_elsewhere(instance, expire):
        result = step_record(step.pk, claim.attempt, Outcome(ok=True, result={"late": True}))

    # then
    step.refresh_from_db()
    assert result == "fenced"
    assert (step.state, step.result) == (StepState.FAILED, {})
    assert not events_of(step, "step.succeeded")
    assert not HumanTask.objects.filter(instance=instance).exists()


@pytest.mark.django_db(transaction=True)
def test_a_claim_that_waited_for_the_lock_sees_the_step_claimed_and_writes_nothing(users):
    """Two deliveries of one message: the claim that waited for the instance's lock read the step before the
    other claim moved it, and its fenced write (in the statement with its audit event) must refuse it."""
    # given: the step is scheduled
    instance = instance_start("bench_approval", {})
    step = instance.steps.get()

    # when: this delivery's claim waits while the other delivery's claim holds the lock and claims the step
    other_claim = partial(StepRun.objects.filter(pk=step.pk).update, state=StepState.RUNNING, attempt=1)
    with instance_locked_elsewhere(instance, other_claim):
        claim = step_claim(step.pk)

    # then
    step.refresh_from_db()
    assert claim is None
    assert (step.state, step.attempt) == (StepState.RUNNING, 1)
    assert not events_of(step, "step.started")
    assert instance_audit_seq(instance) == AuditEvent.objects.filter(instance=instance).count()


@pytest.mark.django_db(transaction=True)
def test_a_claim_whose_instance_moved_after_its_read_reads_again_and_keeps_the_chain_whole(users):
    """Between the claim's read and its write another writer appends to the instance's audit chain: the claim's
    guarded write changes nothing, the claim reads again, and its event follows the other writer's."""
    from orchestrator.audit import Actor, verify_chain
    from orchestrator.audit_actions import AuditAction
    from orchestrator.services.unit import Unit

    # given
    instance = instance_start("bench_approval", {})
    step = instance.steps.get()

    def note() -> None:
        unit = Unit(lock_instance(instance.pk), Actor.system("test"))
        unit.audit("instance", instance.pk, reason="another writer", action=AuditAction.SWEEP_FAILED)
        unit.finish()

    # when: the claim's write queues behind a transaction that appends to the chain
    with instance_locked_elsewhere(instance, note):
        claim = step_claim(step.pk)

    # then
    step.refresh_from_db()
    events = list(AuditEvent.objects.filter(instance=instance).order_by("seq"))
    assert claim is not None
    assert (step.state, step.attempt) == (StepState.RUNNING, 1)
    assert [e.action for e in events][-2:] == [AuditAction.SWEEP_FAILED, AuditAction.STEP_STARTED]
    assert verify_chain(events) is None
