"""The console's instance actions on a REAL Celery worker (prefork, beat sweeping every 0.5 s): a retry is a
redrive from the failure, a skip records the given output, a pause holds dispatch and a resume goes on, a cancel
with compensation undoes on the worker."""

from __future__ import annotations

import importlib
import time

import pytest

from demo.models import DemoLedger
from orchestrator import registry
from orchestrator.audit import Actor
from orchestrator.models import InstanceState, StepKind, StepState, WorkflowInstance
from orchestrator.services.instances import (
    instance_cancel,
    instance_pause,
    instance_resume,
    instance_retry,
    instance_start,
)
from orchestrator.services.operations import instance_compensate, instance_step_skip

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

OPERATOR = Actor("user:operator")


@pytest.fixture
def ops_flows():
    """The flows of ``tests/orchestrator/ops_flows.py`` registered in this process too (the worker loads them)."""
    flows = importlib.import_module("tests.orchestrator.ops_flows")
    added = [flows.OPS_REDRIVE, flows.OPS_SLOW, flows.OPS_CANCEL_MIDWAY]
    for flow in added:
        if not registry.is_registered(flow.name, flow.version):
            registry.register(flow)
    yield flows
    for flow in added:
        registry.unregister(flow.name, flow.version)


def state_of(instance: WorkflowInstance) -> str:
    return WorkflowInstance.objects.values_list("state", flat=True).get(pk=instance.pk)


def calls(instance: WorkflowInstance) -> dict[str, int]:
    """How often the worker ran each operation of this instance that took effect (repeats included)."""
    entries = DemoLedger.objects.filter(service="ops", idempotency_key__startswith=f"{instance.pk}:")
    return {e.operation: e.calls for e in entries}


def test_retry_redrives_only_the_failed_step(celery_worker, ops_flows, wait_for):
    """pay fails both its attempts; the retry runs pay again (its third attempt succeeds) and then confirm, and
    book, which had succeeded, is never run again."""
    # given
    instance = instance_start("ops_redrive", {"fail_pay": 2})
    wait_for(lambda: state_of(instance) == InstanceState.FAILED, timeout=30, instance=instance, what="failed")
    assert calls(instance) == {"book": 1}

    # when
    instance_retry(instance.pk, actor=OPERATOR, reason="payments are back")
    wait_for(lambda: state_of(instance) == InstanceState.COMPLETED, timeout=30, instance=instance, what="done")

    # then
    assert calls(instance) == {"book": 1, "pay": 1, "confirm": 1}
    book = instance.steps.get(name="book")
    pay = instance.steps.get(name="pay")
    assert (book.state, book.attempt) == (StepState.SUCCEEDED, 1)
    assert (pay.state, pay.attempt) == (StepState.SUCCEEDED, 3)


def test_skip_records_the_given_output_and_the_worker_goes_on(celery_worker, ops_flows, wait_for):
    # given
    instance = instance_start("ops_redrive", {"fail_pay": True})
    wait_for(lambda: state_of(instance) == InstanceState.FAILED, timeout=30, instance=instance, what="failed")
    pay = instance.steps.get(name="pay")

    # when
    instance_step_skip(instance.pk, pay.pk, {"payment": "WIRE-42"}, actor=OPERATOR, reason="paid by wire")
    wait_for(lambda: state_of(instance) == InstanceState.COMPLETED, timeout=30, instance=instance, what="done")

    # then
    pay.refresh_from_db()
    instance.refresh_from_db()
    assert (pay.state, pay.result) == (StepState.SKIPPED, {"payment": "WIRE-42"})
    assert instance.data["saw_payment"] == "WIRE-42"
    assert calls(instance) == {"book": 1, "confirm": 1}


def test_a_pause_holds_the_next_attempt_and_resume_goes_on(celery_worker, ops_flows, wait_for):
    """pay fails once and waits two seconds for its next attempt; paused meanwhile, it is not tried again however
    long the pause lasts; resumed, it runs and the flow completes."""
    # given
    instance = instance_start("ops_slow", {"fail_pay": 1})
    wait_for(lambda: instance.steps.filter(name="pay", state=StepState.FAILED).exists(), timeout=30, instance=instance)
    instance_pause(instance.pk, actor=OPERATOR, reason="hold payments")

    # when
    time.sleep(4)  # two back-offs and eight sweeps: nothing may start while paused
    held = instance.steps.get(name="pay")
    instance_resume(instance.pk, actor=OPERATOR, reason="go on")
    wait_for(lambda: state_of(instance) == InstanceState.COMPLETED, timeout=30, instance=instance, what="done")

    # then
    assert (held.state, held.attempt) == (StepState.FAILED, 1)
    assert calls(instance) == {"book": 1, "pay": 1, "confirm": 1}


def test_cancel_with_compensation_undoes_on_the_worker(celery_worker, ops_flows, wait_for):
    """While pay keeps failing, the operator cancels with compensation: book is undone, nothing else runs."""
    # given
    instance = instance_start("ops_slow", {"fail_pay": True})
    wait_for(lambda: instance.steps.filter(name="pay", state=StepState.FAILED).exists(), timeout=30, instance=instance)

    # when
    instance_compensate(instance.pk, actor=OPERATOR, reason="order withdrawn", cancel=True)
    wait_for(lambda: state_of(instance) == InstanceState.COMPENSATED, timeout=30, instance=instance, what="undone")

    # then
    assert calls(instance) == {"book": 1, "unbook": 1}
    assert instance.steps.get(kind=StepKind.TASK, name="book").state == StepState.COMPENSATED
    assert instance.steps.get(name="pay").state == StepState.SKIPPED


def test_a_cancel_while_the_worker_pays_keeps_the_payment_on_the_record(celery_worker, ops_flows, wait_for):
    """A cancel skips the running step; the worker's success after it was dropped (the record said skipped while
    the payment was made). It is recorded as succeeded late, and nothing follows it."""
    # given a payment the worker is making
    instance = instance_start("ops_cancel_midway", {})
    wait_for(lambda: instance.steps.filter(name="pay", state=StepState.RUNNING).exists(), instance=instance)

    # when an operator cancels meanwhile
    instance_cancel(instance.pk, actor=OPERATOR, reason="customer left")
    pay = wait_for(
        lambda: instance.steps.filter(name="pay", state=StepState.SUCCEEDED).first(), instance=instance, what="late"
    )

    # then the payment made is on the record, once, and the cancelled instance went no further
    instance.refresh_from_db()
    assert calls(instance) == {"pay": 1}
    assert pay.result == {"payment": instance.data["payment"]}
    assert instance.state == InstanceState.CANCELLED
    assert list(instance.steps.values_list("name", flat=True)) == ["pay"]
