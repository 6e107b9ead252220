"""Pauses and the saga's operator actions on a REAL Celery worker (prefork, beat sweeping every 0.5 s)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from approvals.models import ACTIONABLE_TASK_STATES, HumanTask, TaskKind, TaskState
from approvals.services.base import FAIL
from approvals.services.tasks import task_decide
from demo.models import DemoLedger
from orchestrator.audit import Actor
from orchestrator.models import AuditEvent, InstanceState, StepKind, WorkflowInstance
from orchestrator.services.instances import instance_pause, instance_retry, instance_start
from tests.factories import OrderInputFactory

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

OPERATOR = Actor("user:operator")


def state_of(instance: WorkflowInstance) -> str:
    return WorkflowInstance.objects.values_list("state", flat=True).get(pk=instance.pk)


def calls(instance: WorkflowInstance, service: str, operation: str) -> int:
    """How many times the simulated service was called for this operation of this instance (repeats included)."""
    entries = DemoLedger.objects.filter(
        service=service, operation=operation, idempotency_key__startswith=f"{instance.pk}:"
    )
    return sum(entries.values_list("calls", flat=True))


def test_a_pause_that_ends_is_lifted_by_the_sweep_and_the_order_goes_on(celery_worker, users, wait_for):
    """An order paused for two seconds right after its start: beat's sweep lifts the pause, the automated steps run
    once each, and the order waits on its manager's approval, whose SLA and ladder count from the resume."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(amount="1500"))
    instance_pause(instance.pk, actor=OPERATOR, reason="month end", until=timezone.now() + timedelta(seconds=2))

    # when
    wait_for(
        lambda: HumanTask.objects.filter(instance=instance, state__in=ACTIONABLE_TASK_STATES).first(),
        timeout=30,
        instance=instance,
        what="the manager's approval",
    )

    # then
    resumed = AuditEvent.objects.get(instance=instance, action="instance.resumed")
    assert (resumed.actor_label, resumed.reason) == ("system:sweeper", "pause ended")
    assert state_of(instance) == InstanceState.WAITING
    assert (calls(instance, "inventory", "reserve"), calls(instance, "payments", "charge")) == (1, 1)
    task = HumanTask.objects.get(instance=instance)
    # Its SLA and first rung count from the resume at the earliest (a microsecond's slack: the opening unit's
    # clock is read a hair before the row's created_at).
    started = resumed.occurred_at - timedelta(seconds=1)
    assert task.due_at >= started + timedelta(hours=4)
    assert task.next_escalation_at >= started + timedelta(hours=2)


def test_retrying_an_order_failed_mid_compensation_finishes_the_refund_not_the_shipment(celery_worker, users, wait_for):
    """Shipping failed, the refund failed four times and an operator failed the order; retrying it refunds and
    releases the stock on the worker, and shipping is not tried again."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_shipping=True, fail_refund=4))
    escalation = wait_for(
        lambda: HumanTask.objects.filter(instance=instance, kind=TaskKind.ESCALATION, state=TaskState.OPEN).first(),
        timeout=60,
        instance=instance,
        what="the refund's escalation",
    )
    task_decide(escalation.pk, users.operator, FAIL, comment="waiting for the PSP")
    ship_attempts = instance.steps.get(kind=StepKind.TASK, name="ship").attempt

    # when
    instance_retry(instance.pk, actor=OPERATOR, reason="the PSP is back")

    # then
    wait_for(lambda: state_of(instance) == InstanceState.COMPENSATED, timeout=60, instance=instance, what="compensated")
    assert instance.steps.get(kind=StepKind.TASK, name="ship").attempt == ship_attempts
    assert (calls(instance, "payments", "refund"), calls(instance, "inventory", "release")) == (1, 1)
    assert calls(instance, "shipping", "ship") == 0
