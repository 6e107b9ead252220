"""A request's text fields take JSON strings only: DRF's CharField read a number as its text (``{"reason": 12}``
was the reason "12", ``{"to_user": 12}`` handed the task to the user named "12"). Anything but a string is a 400
naming the field with "Give a string." and writes nothing; the same value sent as a string goes through."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import pytest
from rest_framework import serializers

from api import serializers as s
from approvals.models import HumanTask, TaskDecision
from orchestrator import registry
from orchestrator.models import AuditEvent, ReceivedSignal, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory, UserFactory

pytestmark = pytest.mark.django_db

NOT_STRINGS = [12, 0, -1, 1.5, True, False, [], ["12"], {}, {"text": "12"}]
PAID = {"paid_amount": "12.50", "reference": "PAY-9"}


@dataclass
class World:
    """An expense by staff (its team approval open, claimed by staff2), an order waiting for its payment (business
    key B-1), and an approver whose username is "12"."""

    expense: WorkflowInstance
    task: HumanTask
    order: WorkflowInstance
    digest: str


@pytest.fixture
def world(api_as, roles, run_steps) -> World:
    flows = importlib.import_module("tests.api.signal_flows")
    if not registry.is_registered(flows.API_PAYMENT.name, flows.API_PAYMENT.version):
        registry.register(flows.API_PAYMENT)
    UserFactory(username="12").groups.add(roles.approvers)
    expense = instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)
    task = expense.tasks.get()
    assert api_as(roles.staff2).post(f"/api/tasks/{task.pk}/claim/").status_code == 200
    order = instance_start("api_payment", {"order": "B-1"}, initiator=roles.staff, business_key="B-1")
    run_steps(order)
    digest = api_as(roles.staff2).get(f"/api/instances/{expense.pk}/").json()["data_digest"]
    yield World(expense, task, order, digest)
    registry.unregister(flows.API_PAYMENT.name, flows.API_PAYMENT.version)


# Each request with a text field: who sends it, where, a body that goes through, and its text fields.
CASES: dict[str, tuple[str, str, Any, list[str]]] = {
    "start": (
        "staff",
        "/api/instances/",
        lambda w: {"workflow": "expense_approval", "input": ExpenseInputFactory(), "business_key": "12"},
        ["workflow", "business_key"],
    ),
    "cancel": ("operator", "/api/instances/{expense}/cancel/", lambda w: {"reason": "12"}, ["reason"]),
    "decide": (
        "staff2",
        "/api/tasks/{task}/decide/",
        lambda w: {"decision": "reject", "comment": "12", "seen": w.digest},
        ["comment", "seen"],
    ),
    "delegate": (
        "staff2",
        "/api/tasks/{task}/delegate/",
        lambda w: {"to_user": "12", "note": "12", "expected_holder": "staff2"},
        ["to_user", "note", "expected_holder"],
    ),
    "signal": (
        "operator",
        "/api/instances/{order}/signals/",
        lambda w: {"event": "payment.confirmed", "signal_id": "12", "payload": PAID},
        ["event", "signal_id"],
    ),
    "signal by key": (
        "operator",
        "/api/signals/",
        lambda w: {
            "event": "payment.confirmed",
            "signal_id": "12",
            "payload": PAID,
            "business_key": "B-1",
            "workflow": "api_payment",
        },
        ["business_key", "workflow"],
    ),
}
FIELDS = [(case, field) for case, (_who, _path, _body, fields) in CASES.items() for field in fields]


def _request(world: World, case: str) -> tuple[str, str, dict]:
    who, path, body, _fields = CASES[case]
    return who, path.format(expense=world.expense.pk, task=world.task.pk, order=world.order.pk), body(world)


def what_is_written() -> tuple:
    """Everything these requests may write: instances and their states, tasks and who holds them, decisions,
    signals and the audit trail."""
    return (
        tuple(WorkflowInstance.objects.order_by("pk").values_list("pk", "state", "data")),
        tuple(HumanTask.objects.order_by("pk").values_list("pk", "state", "assignee_id")),
        TaskDecision.objects.count(),
        ReceivedSignal.objects.count(),
        AuditEvent.objects.count(),
    )


@pytest.mark.parametrize("sent", NOT_STRINGS, ids=repr)
@pytest.mark.parametrize(("case", "field"), FIELDS)
def test_a_text_field_given_anything_but_a_string_is_a_400_naming_it_and_writes_nothing(
    api_as, roles, world, case, field, sent
):
    # given
    who, path, body = _request(world, case)
    client = api_as(getattr(roles, who))
    before = what_is_written()

    # when
    response = client.post(path, {**body, field: sent})

    # then
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["errors"] == {field: [s.NOT_A_STRING]}, response.json()
    assert what_is_written() == before


@pytest.mark.parametrize("sent", [None, "12\x00"], ids=["null", "NUL"])
@pytest.mark.parametrize(("case", "field"), FIELDS)
def test_a_text_field_given_null_or_a_nul_is_a_400_naming_it_and_writes_nothing(
    api_as, roles, world, case, field, sent
):
    # given
    who, path, body = _request(world, case)
    client = api_as(getattr(roles, who))
    before = what_is_written()

    # when
    response = client.post(path, {**body, field: sent})

    # then (null: DRF's "may not be null"; a NUL: the parser's refusal, naming where it is)
    assert response.status_code == 400, response.content
    assert [key for key in response.json()["errors"] if key.endswith(field)], response.json()
    assert what_is_written() == before


@pytest.mark.parametrize("case", list(CASES))
def test_the_same_request_with_strings_goes_through(api_as, roles, world, case):
    # given
    who, path, body = _request(world, case)

    # when
    response = api_as(getattr(roles, who)).post(path, body)

    # then
    assert response.status_code in (200, 201), response.content
    if case == "delegate":
        assert response.json()["assignee"] == "12"
    if case == "decide":
        assert response.json()["comment"] == "12"
    if case.startswith("signal"):
        assert response.json()["signal_id"] == "12"


def test_every_request_serializer_takes_text_as_strings_only():
    """Every serializer the views read a request with (a body or a query string) has no plain CharField left: a
    new request field is strict too, or this names it."""
    import re
    from pathlib import Path

    views = Path(s.__file__).with_name("views.py").read_text()
    names = set(re.findall(r"(?:_valid\(|request=|parameters=\[)s\.(\w+)", views))
    assert {"StartSerializer", "DecideSerializer", "SignalByKeySerializer", "AuditPageQuerySerializer"} <= names
    lenient = [
        f"{name}.{field_name}"
        for name in sorted(names)
        for field_name, field in getattr(s, name)().fields.items()
        if isinstance(field, serializers.CharField) and not isinstance(field, s.StrictCharField | s.StrictRegexField)
    ]
    assert lenient == []
