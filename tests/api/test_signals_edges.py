"""Signals through the API at their edges: a schema's answer the database cannot hold, a definition gone while
an instance waits, the states an instance may be in, a business key several instances share. Every answer is a
documented 2xx or an ``application/problem+json`` 4xx, never a 500."""

from __future__ import annotations

import importlib
import time
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from approvals.models import HumanTask, TaskKind
from approvals.services.tasks import task_decide
from orchestrator import registry
from orchestrator.audit import Actor
from orchestrator.dsl import COMPENSATE, ESCALATE, FAIL, Signal, Task, Workflow
from orchestrator.models import AuditEvent, InstanceState, ReceivedSignal, StepKind, StepRun, StepState
from orchestrator.services import sweep as engine
from orchestrator.services.instances import instance_retry, instance_start
from orchestrator.services.signals import signal_deliver
from tests.api.test_signals import signal_path, state_of, what_changes

pytestmark = pytest.mark.django_db


def reserve(ctx: object) -> dict:
    return {"reserved": True}


def amount_schema(payload: dict) -> dict:
    """The amount as a float: ``float("NaN")`` is one too."""
    try:
        return {"amount": float(payload["amount"])}
    except (KeyError, TypeError, ValueError):
        raise ValidationError({"amount": ["A number."]}) from None


def parcel_flow(name: str, **options: object) -> Workflow:
    return Workflow(
        name=name,
        version=1,
        title_template="Parcel {order}",
        steps=[Task("reserve", reserve), Signal("wait_parcel", event="parcel.sent", **options)],  # type: ignore[arg-type]
    )


def parcel(signal_id: str = "p-1", **payload: object) -> dict:
    return {"event": "parcel.sent", "signal_id": signal_id, "payload": payload}


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "-inf"])
def test_a_schema_answer_the_database_cannot_hold_is_422_not_500(register_workflow, run_steps, api_as, roles, amount):
    # given an instance waiting at a node whose schema turns the amount into a float
    register_workflow(parcel_flow("api_parcel_float", schema=amount_schema))
    instance = instance_start("api_parcel_float", {"order": "F-1"}, initiator=roles.staff)
    run_steps(instance)
    before = what_changes(instance)

    # when a sender's amount is text that float() reads as no finite number
    response = api_as(roles.operator).post(signal_path(instance), parcel(amount=amount))

    # then a 422 names the payload (it was a DataError from jsonb: a 500) and nothing changed
    assert response.status_code == 422, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert "payload" in response.json()["errors"]
    assert what_changes(instance) == before


def test_a_definition_gone_while_the_instance_waits_is_409_and_its_timeout_fails_it(
    register_workflow, run_steps, api_as, roles
):
    # given an instance waiting with a timeout, whose definition is then no longer deployed
    register_workflow(parcel_flow("api_parcel_gone", timeout=timedelta(hours=1)))
    instance = instance_start("api_parcel_gone", {"order": "G-1"}, initiator=roles.staff)
    run_steps(instance)
    registry.unregister("api_parcel_gone", 1)
    before = what_changes(instance)

    # when a signal comes for it
    response = api_as(roles.operator).post(signal_path(instance), parcel(x=1))

    # then a 409 says the definition is missing, and nothing changed
    assert response.status_code == 409, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert "api_parcel_gone" in response.json()["detail"]
    assert what_changes(instance) == before

    # when its timeout passes, the sweep fails it saying why (no crash of the sweep)
    wait = instance.steps.get(kind=StepKind.SIGNAL)
    report = engine.sweep(now=wait.due_at + timedelta(seconds=1))
    instance.refresh_from_db()
    assert report.signals["signals_timed_out"] == 1
    assert instance.state == InstanceState.FAILED
    assert "api_parcel_gone" in instance.error


@pytest.fixture
def edge_flows():
    """``tests/api/signal_edge_flows.py``'s workflows, registered in this process too (the worker loads the
    module, whose import registers them), and unregistered after, so no other test sees them."""
    flows = importlib.import_module("tests.api.signal_edge_flows")
    for workflow in flows.EDGE_FLOWS:
        if not registry.is_registered(workflow.name, workflow.version):
            registry.register(workflow)
    yield flows
    for workflow in flows.EDGE_FLOWS:
        registry.unregister(workflow.name, workflow.version)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_kept_signal_whose_schema_answer_cannot_be_stored_is_rejected_on_the_worker(
    celery_worker, edge_flows, api_as, roles, wait_for
):
    # given an instance that has not reached its waits, and an amount kept for them ("NaN" passes the second
    # wait, which takes any payload; the first turns it into float("NaN"))
    operator = api_as(roles.operator)
    with transaction.atomic():  # the worker gets the first step only once the signal is kept
        instance = instance_start("api_amounts", {"order": "N-1"}, initiator=roles.staff)
        kept = operator.post(
            signal_path(instance), {"event": "amount.sent", "signal_id": "nan", "payload": {"amount": "NaN"}}
        )
    assert (kept.status_code, kept.json()["state"]) == (201, "kept"), kept.content

    # when the worker runs the first step and enters the first wait, which takes the kept signal
    wait_for(
        lambda: (
            ReceivedSignal.objects.filter(instance=instance, rejected_at__isnull=False).exists()
            or StepRun.objects.filter(instance=instance, name="reserve", attempt__gt=1).exists()
        ),
        instance=instance,
        what="the kept signal checked by the first wait",
    )

    # then the signal is rejected naming why, the step that entered the wait succeeded once (it was a DataError
    # recorded as a failed attempt of ``reserve``, again and again), and the wait waits for a valid amount
    signal_row = ReceivedSignal.objects.get(instance=instance)
    assert signal_row.rejected_at is not None
    assert "NaN" in str(signal_row.rejection["errors"])
    reserve = StepRun.objects.get(instance=instance, name="reserve")
    assert (reserve.state, reserve.attempt) == (StepState.SUCCEEDED, 1)
    assert StepRun.objects.get(instance=instance, name="wait_amount").state == StepState.RUNNING
    assert state_of(instance) == InstanceState.WAITING

    # when a valid amount comes, then the first wait takes it and the second waits
    good = operator.post(
        signal_path(instance), {"event": "amount.sent", "signal_id": "ok", "payload": {"amount": "2.5"}}
    )
    assert (good.status_code, good.json()["state"]) == (201, "consumed"), good.content
    instance.refresh_from_db()
    assert instance.data["amount"] == 2.5
    assert StepRun.objects.get(instance=instance, name="wait_any_amount").state == StepState.RUNNING


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_timeout_that_falls_while_the_worker_and_beat_are_down_acts_once_they_are_back(
    celery_worker, edge_flows, roles, wait_for
):
    # given an instance waiting two seconds for a signal that will not come
    instance = instance_start("api_brief", {"order": "W-1"}, initiator=roles.staff)
    wait_for(lambda: state_of(instance) == InstanceState.WAITING, instance=instance, what="waiting")

    # when the worker and its beat die (no shutdown) and the timeout passes while they are down
    celery_worker.kill()
    wait = StepRun.objects.get(instance=instance, name="wait_brief")
    time.sleep(max(0.0, (wait.due_at - timezone.now()).total_seconds()) + 0.5)
    assert StepRun.objects.get(pk=wait.pk).state == StepState.RUNNING  # nobody acted on it meanwhile
    celery_worker.start()

    # then the beat's sweep times the wait out once it is back, and the instance goes on to its end
    wait_for(lambda: state_of(instance) == InstanceState.COMPLETED, instance=instance, what="completed")
    instance.refresh_from_db()
    assert instance.data["wait_brief"] == {"timed_out": True}
    ends = AuditEvent.objects.filter(subject_type="step", subject_id=wait.pk, action="step.succeeded")
    assert [e.payload for e in ends] == [{"timed_out": True}]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("action", [FAIL, COMPENSATE, ESCALATE])
def test_each_timeout_action_acts_once_after_the_worker_and_beat_come_back(
    celery_worker, edge_flows, roles, wait_for, action
):
    # given an instance waiting two seconds for a signal that will not come in time
    instance = instance_start(f"api_brief_{action}", {"order": "W-2"}, initiator=roles.staff)
    wait_for(lambda: state_of(instance) == InstanceState.WAITING, instance=instance, what="waiting")

    # when the worker and its beat die (no shutdown) and the timeout passes while they are down
    celery_worker.kill()
    wait = StepRun.objects.get(instance=instance, name="wait_brief")
    time.sleep(max(0.0, (wait.due_at - timezone.now()).total_seconds()) + 0.5)
    assert StepRun.objects.get(pk=wait.pk).state == StepState.RUNNING  # nobody acted on it meanwhile
    celery_worker.start()

    # then the beat's sweep times the wait out once it is back and does what the node says, on the worker
    if action == COMPENSATE:
        wait_for(lambda: state_of(instance) == InstanceState.COMPENSATED, instance=instance, what="compensated")
        undone = StepRun.objects.filter(instance=instance, kind=StepKind.COMPENSATION)
        assert list(undone.values_list("name", "state")) == [("reserve", StepState.SUCCEEDED)]
    else:
        if action == FAIL:
            wait_for(lambda: state_of(instance) == InstanceState.FAILED, instance=instance, what="failed")
            instance_retry(instance.pk, actor=Actor.of(roles.operator), reason="the sender is back")
        else:
            escalation = wait_for(
                lambda: HumanTask.objects.filter(instance=instance, kind=TaskKind.ESCALATION).first(),
                instance=instance,
                what="escalated",
            )
            task_decide(escalation.pk, roles.operator, "retry", comment="the sender is back")
        # and an operator's retry waits again, on the worker's instance, for the signal that now comes
        signal_deliver(
            instance_id=instance.pk, event="brief.sent", signal_id="late-1", payload={}, actor=Actor.of(roles.operator)
        )
        wait_for(lambda: state_of(instance) == InstanceState.COMPLETED, instance=instance, what="completed")
    timed_out = AuditEvent.objects.filter(
        subject_type="step", subject_id=wait.pk, to_state=StepState.DEAD, payload__timed_out=True
    )
    assert timed_out.count() == 1


def test_a_business_key_of_several_open_instances_is_a_409_naming_them(register_workflow, run_steps, api_as, roles):
    # given two open instances with one business key (keys are not unique)
    register_workflow(parcel_flow("api_parcel_shared"))
    twins = [
        instance_start("api_parcel_shared", {"order": f"S-{n}"}, initiator=roles.staff, business_key="SHARED-1")
        for n in (1, 2)
    ]
    for twin in twins:
        run_steps(twin)

    # when a signal names the key
    response = api_as(roles.operator).post("/api/signals/", {**parcel(x=1), "business_key": "SHARED-1"})

    # then a 409 problem says the key is ambiguous and names the instances, so the sender can pick one by its id
    assert response.status_code == 409, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "conflict"
    for twin in twins:
        assert str(twin.pk) in body["detail"]
        assert str(twin.pk) in body["errors"]["business_key"][0]
