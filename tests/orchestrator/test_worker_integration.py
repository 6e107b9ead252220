"""The engine end to end on a REAL Celery worker (prefork, beat sweeping every 0.5 s), Redis and PostgreSQL."""

from __future__ import annotations

import importlib
import threading

import pytest
from django.db import connection

from approvals.models import HumanTask, TaskKind, TaskState
from approvals.services.base import APPROVE, RESOLVED
from approvals.services.tasks import task_decide
from demo.models import DemoLedger
from orchestrator import registry
from orchestrator.audit import Actor
from orchestrator.models import AuditEvent, InstanceState, StepKind, StepRun, StepState, WorkflowInstance
from orchestrator.services.instances import instance_retry, instance_start
from tests.factories import OrderInputFactory

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def state_of(instance: WorkflowInstance) -> str:
    return WorkflowInstance.objects.values_list("state", flat=True).get(pk=instance.pk)


def ledger(instance: WorkflowInstance, service: str, operation: str) -> list[DemoLedger]:
    return list(
        DemoLedger.objects.filter(
            service=service, operation=operation, idempotency_key__startswith=f"{instance.pk}:"
        ).order_by("id")
    )


def step_events(step: StepRun, action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(subject_type="step", subject_id=step.pk, action=action).order_by("seq"))


def open_task(instance: WorkflowInstance, kind: str) -> HumanTask | None:
    return HumanTask.objects.filter(instance=instance, kind=kind, state=TaskState.OPEN).first()


def test_order_above_the_limit_waits_for_the_manager_and_completes(celery_worker, users, wait_for):
    """An order of 1500 runs to the manager's approval, waits there, and completes once the manager approves."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(amount="1500"), initiator=users.staff)
    task = wait_for(lambda: open_task(instance, TaskKind.APPROVAL), instance=instance, what="the approval task")
    assert state_of(instance) == InstanceState.WAITING

    # when
    task_decide(task.pk, users.manager, APPROVE, comment="fine")

    # then
    wait_for(lambda: state_of(instance) == InstanceState.COMPLETED, instance=instance, what="completion")
    steps = list(instance.steps.order_by("id").values_list("name", "state"))
    assert steps == [
        ("reserve_inventory", StepState.SUCCEEDED),
        ("charge_payment", StepState.SUCCEEDED),
        ("approval_needed", StepState.SUCCEEDED),
        ("manager_approval", StepState.SUCCEEDED),
        ("ship", StepState.SUCCEEDED),
        ("notify_customer", StepState.SUCCEEDED),
    ]
    assert len(ledger(instance, "payments", "charge")) == 1
    assert len(ledger(instance, "shipping", "ship")) == 1


def test_retry_with_back_off_through_the_worker(celery_worker, wait_for):
    """A payment that fails twice succeeds on attempt 3; the audit shows each attempt and a growing back-off."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_payment=2))

    # when
    wait_for(lambda: state_of(instance) == InstanceState.COMPLETED, instance=instance, what="completion")

    # then
    charge = instance.steps.get(name="charge_payment")
    assert charge.attempt == 3
    assert [e.payload["attempt"] for e in step_events(charge, "step.started")] == [1, 2, 3]
    delays = [e.payload["retry_in_seconds"] for e in step_events(charge, "step.failed")]
    assert len(delays) == 2
    assert delays[0] < delays[1]
    assert len(ledger(instance, "payments", "charge")) == 1


def test_compensation_runs_in_reverse_order_through_the_worker(celery_worker, wait_for):
    """Shipping fails for good: the payment is refunded, then the stock released, and the instance is compensated."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_shipping=True))

    # when
    wait_for(lambda: state_of(instance) == InstanceState.COMPENSATED, instance=instance, what="compensation")

    # then
    compensations = instance.steps.filter(kind=StepKind.COMPENSATION).order_by("id")
    assert list(compensations.values_list("name", "state")) == [
        ("charge_payment", StepState.SUCCEEDED),
        ("reserve_inventory", StepState.SUCCEEDED),
    ]
    refund, release = ledger(instance, "payments", "refund"), ledger(instance, "inventory", "release")
    assert len(refund) == len(release) == 1
    assert refund[0].pk < release[0].pk
    assert instance.steps.get(name="ship").state == StepState.DEAD


def test_failed_compensation_opens_an_escalation_that_an_operator_resolves(celery_worker, users, wait_for):
    """A refund that keeps failing escalates to operators; marking it resolved lets the saga finish."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_shipping=True, fail_refund=True))
    escalation = wait_for(
        lambda: open_task(instance, TaskKind.ESCALATION), timeout=30, instance=instance, what="the escalation"
    )
    assert state_of(instance) == InstanceState.COMPENSATING
    assert list(escalation.candidate_groups.values_list("name", flat=True)) == ["operators"]
    assert not ledger(instance, "inventory", "release")

    # when
    task_decide(escalation.pk, users.operator, RESOLVED, comment="refunded by hand in the PSP console")

    # then
    wait_for(lambda: state_of(instance) == InstanceState.COMPENSATED, instance=instance, what="compensation")
    assert len(ledger(instance, "inventory", "release")) == 1
    assert not ledger(instance, "payments", "refund")


def test_concurrent_idempotent_starts_run_one_instance(celery_worker, wait_for):
    """Two racing starts with the same key get the same instance, which runs once and charges once."""
    # given
    order = OrderInputFactory()
    barrier = threading.Barrier(2)
    results: list[int | BaseException] = []

    def start() -> None:
        try:
            barrier.wait(timeout=5)
            results.append(instance_start("order_fulfilment", dict(order), idempotency_key="order-W-1").pk)
        except BaseException as exc:
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=start) for _ in range(2)]

    # when
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # then
    assert len(results) == 2
    assert results[0] == results[1], results
    instance = WorkflowInstance.objects.get(pk=results[0])
    wait_for(lambda: state_of(instance) == InstanceState.COMPLETED, instance=instance, what="completion")
    assert WorkflowInstance.objects.filter(idempotency_key="order-W-1").count() == 1
    assert instance.steps.filter(name="reserve_inventory").count() == 1
    assert len(ledger(instance, "payments", "charge")) == 1
    assert instance_start("order_fulfilment", dict(order), idempotency_key="order-W-1").pk == instance.pk


def test_killed_worker_mid_step_is_recovered_by_the_sweep(celery_worker, wait_for):
    """SIGKILL during a step: once its lease runs out the sweep retries it; the side effect is applied once."""
    # given: the reservation has recorded its side effect and is sleeping on attempt 1
    instance = instance_start("order_fulfilment", OrderInputFactory(slow_reserve=6))
    reserve = instance.steps.get(name="reserve_inventory")
    wait_for(
        lambda: (
            StepRun.objects.filter(pk=reserve.pk, state=StepState.RUNNING, attempt=1).exists()
            and ledger(instance, "inventory", "reserve")
        ),
        instance=instance,
        what="reserve_inventory running on attempt 1",
    )

    # when
    celery_worker.kill()
    celery_worker.start(flush_broker=False)

    # then
    wait_for(
        lambda: state_of(instance) == InstanceState.COMPLETED,
        timeout=40,
        instance=instance,
        what="recovery and completion",
    )
    reserve.refresh_from_db()
    assert reserve.attempt == 2
    lost = step_events(reserve, "step.failed")
    assert [(e.actor_label, e.payload["error_type"]) for e in lost] == [("system:sweeper", "LeaseExpired")]
    reservations = DemoLedger.objects.filter(
        service="inventory", operation="reserve", idempotency_key=reserve.idempotency_key
    )
    assert [r.calls for r in reservations] == [2]


@pytest.fixture
def versioned_demo():
    """versioned_demo with only v1 registered in this process (the worker loads both); gone again afterwards.

    Imported here rather than at module level so that collecting this file does not leave two extra workflows
    in the registry of every other test.
    """
    flows = importlib.import_module("tests.orchestrator.versioned_flows")
    registry.register(flows.V1)
    registry.unregister(flows.NAME, 2)
    yield flows
    registry.unregister(flows.NAME, 1)
    registry.unregister(flows.NAME, 2)


def test_instances_finish_on_the_version_they_started_on(celery_worker, users, wait_for, versioned_demo):
    """An instance started on v1 runs v1's steps after v2 is registered, while a new start runs v2."""
    # given: a v1 instance waiting at its review
    old = instance_start(versioned_demo.NAME, {"case": "old"})
    old_review = wait_for(lambda: open_task(old, TaskKind.APPROVAL), instance=old, what="the v1 review")

    # when: v2 is deployed, a new instance starts, and both reviews are approved
    registry.register(versioned_demo.V2)
    new = instance_start(versioned_demo.NAME, {"case": "new"})
    new_review = wait_for(lambda: open_task(new, TaskKind.APPROVAL), instance=new, what="the v2 review")
    task_decide(old_review.pk, users.staff, APPROVE)
    task_decide(new_review.pk, users.staff2, APPROVE)

    # then
    for instance in (old, new):
        wait_for(lambda instance=instance: state_of(instance) == InstanceState.COMPLETED, instance=instance)
        instance.refresh_from_db()
    assert (old.workflow_version, new.workflow_version) == (1, 2)
    assert list(old.steps.order_by("id").values_list("name", flat=True)) == ["prepare", "review", "finish"]
    assert list(new.steps.order_by("id").values_list("name", flat=True)) == [
        "prepare",
        "review",
        "double_check",
        "finish",
    ]
    assert (old.data["finished_by"], new.data["finished_by"]) == ("v1", "v2")


@pytest.fixture
def fault_flows():
    """The fault workflows registered in this process too (the worker loads them itself); gone afterwards."""
    flows = importlib.import_module("tests.orchestrator.fault_flows")
    for flow in flows.FLOWS:
        registry.register(flow)
    yield flows
    for flow in flows.FLOWS:
        registry.unregister(flow.name, flow.version)


@pytest.mark.parametrize(
    ("workflow", "error_type", "message"),
    [
        ("fault_unrecordable", "TypeError", "result['at'] is a datetime"),
        ("fault_unroutable", "KeyError", "'region'"),
    ],
)
def test_an_outcome_that_cannot_be_recorded_fails_once_on_the_worker(
    celery_worker, wait_for, fault_flows, workflow, error_type, message
):
    """A result JSON cannot hold, or a decision after the step that raises: the worker runs the handler once and
    records one failed attempt naming the real error; no lease is left to expire, so nothing runs it again."""
    # given
    instance = instance_start(workflow, {})
    act = instance.steps.get(name="act")

    # when
    wait_for(lambda: state_of(instance) == InstanceState.FAILED, instance=instance, what="the recorded failure")

    # then
    act.refresh_from_db()
    assert (act.state, act.attempt, act.error_type, act.lease_expires_at) == (StepState.DEAD, 1, error_type, None)
    assert message in act.error.splitlines()[0]
    assert [e.payload["attempt"] for e in step_events(act, "step.started")] == [1]
    calls = DemoLedger.objects.filter(service="faults", idempotency_key=act.idempotency_key)
    assert [c.calls for c in calls] == [1]
    instance.refresh_from_db()
    assert instance.error == f"act failed: {act.error.splitlines()[0]}"
    assert list(instance.steps.values_list("name", flat=True)) == ["act"]


@pytest.mark.parametrize(
    ("workflow", "error_type"),
    [("fault_sleeps_in_a_query", "SoftTimeLimitExceeded"), ("fault_loses_its_session", "OperationalError")],
)
def test_a_session_broken_inside_the_handler_is_replaced_and_the_failure_recorded_at_once(
    celery_worker, wait_for, fault_flows, workflow, error_type
):
    """The soft time limit fires while the handler waits on ``pg_sleep``, or PostgreSQL ends the session under the
    handler: the worker's session is closed and the failure is recorded on a fresh one at once, not by the sweep
    when the lease expires (lease = 1 s soft + 5 s to the hard limit + 1 s grace here)."""
    # given
    instance = instance_start(workflow, {})
    act = instance.steps.get(name="act")

    # when
    wait_for(lambda: state_of(instance) == InstanceState.FAILED, instance=instance, what="the recorded failure")

    # then
    act.refresh_from_db()
    assert (act.state, act.attempt, act.error_type) == (StepState.DEAD, 1, error_type)
    [started] = step_events(act, "step.started")
    [dead] = step_events(act, "step.dead")
    took = (dead.occurred_at - started.occurred_at).total_seconds()
    assert took < 5, f"recorded {took:.1f} s after the claim: the lease expired first"


def test_a_success_recorded_after_the_definition_left_the_worker_is_kept_and_a_retry_goes_on(
    celery_worker, wait_for, fault_flows
):
    """pay's handler runs on the worker while its definition leaves that worker's deployment (back half a second
    later): the payment is on the record as succeeded with its result, the instance fails naming the definition,
    and nothing runs pay again; an operator's retry then runs ship on the worker, never pay."""
    # given
    instance = instance_start("fault_undeployed_midway", {})
    pay = instance.steps.get(name="pay")

    # when
    wait_for(lambda: state_of(instance) == InstanceState.FAILED, instance=instance, what="the recorded success")
    wait_for(
        lambda: DemoLedger.objects.filter(operation="deployed again", idempotency_key=str(instance.pk)).exists(),
        instance=instance,
        what="the definition back on the worker",
    )

    # then
    pay.refresh_from_db()
    instance.refresh_from_db()
    assert (pay.state, pay.attempt, pay.lease_expires_at) == (StepState.SUCCEEDED, 1, None)
    assert instance.data["paid"] == 120
    assert "fault_undeployed_midway v1 is not available" in instance.error
    assert [e.payload["attempt"] for e in step_events(pay, "step.succeeded")] == [1]

    # when: an operator retries
    instance_retry(instance.pk, actor=Actor("user:operator"), reason="deployed again")
    wait_for(lambda: state_of(instance) == InstanceState.COMPLETED, instance=instance, what="the retried instance")

    # then
    instance.refresh_from_db()
    ledger = DemoLedger.objects.filter(service="faults", idempotency_key__startswith=f"{instance.pk}:")
    assert sorted((e.operation, e.calls) for e in ledger) == [("pay", 1), ("ship", 1)]
    assert [e.payload["attempt"] for e in step_events(pay, "step.started")] == [1]
    assert instance.data["shipped"] == 120
