"""Signals through the API at their edges: a schema's answer the database cannot hold, a definition gone while
an instance waits, the states an instance may be in, a business key several instances share. Every answer is a
documented 2xx or an ``application/problem+json`` 4xx, never a 500."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError

from orchestrator import registry
from orchestrator.dsl import Signal, Task, Workflow
from orchestrator.models import InstanceState, StepKind
from orchestrator.services import sweep as engine
from orchestrator.services.instances import instance_start
from tests.api.test_signals import signal_path, what_changes

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
