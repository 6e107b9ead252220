"""Objects the API hides as 404 (an instance, a task that is not the caller's to see) are recorded as
``access.refused`` with status 404 for a caller with a token, while the problem answered is the same as for an id
that does not exist (docs/architecture.md, "Refusals hidden as 404"; the pages' side:
tests/audit/test_hidden_refusals.py)."""

from __future__ import annotations

import pytest
from django.test import Client

from api.tokens import token_create
from approvals.models import HumanTask
from orchestrator.audit import ACCESS_CHAIN
from orchestrator.models import AuditEvent, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.api.conftest import ApiClient
from tests.audit.test_hidden_refusals import ADDRESS, AGENT, MISSING, assert_recorded, refusals
from tests.factories import ExpenseInputFactory, OrderInputFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def foreign_order(roles) -> WorkflowInstance:
    """An order staff started, before any task: staff2 (another approver) may not see it."""
    return instance_start("order_fulfilment", OrderInputFactory(amount="900.00"), initiator=roles.staff)


@pytest.fixture
def expense_task(roles) -> HumanTask:
    """The open team-approval task of an expense staff started (candidates: the approvers, not the operator)."""
    return instance_start("expense_approval", ExpenseInputFactory(amount="70.00"), initiator=roles.staff).tasks.get()


def api(user) -> ApiClient:
    client = ApiClient(token_create(user, "tests").secret)
    client.client = Client(REMOTE_ADDR=ADDRESS, HTTP_USER_AGENT=AGENT)  # what assert_recorded checks
    return client


def test_an_api_instance_hidden_as_404_is_recorded_and_looks_like_a_missing_one(roles, foreign_order):
    # given
    client = api(roles.staff2)

    # when
    hidden = client.get(f"/api/instances/{foreign_order.pk}/")
    missing = client.get(f"/api/instances/{MISSING}/")

    # then: the same problem, apart from the path it names
    assert (hidden.status_code, missing.status_code) == (404, 404)
    assert {**hidden.json(), "instance": ""} == {**missing.json(), "instance": ""}
    [event] = refusals()
    assert_recorded(event, roles.staff2, "instance", foreign_order.pk, f"/api/instances/{foreign_order.pk}/", hidden)
    assert event.payload["route"] == "api:instance-detail"


@pytest.mark.parametrize("sub", ["steps", "tasks"])
def test_an_instances_steps_or_tasks_hidden_as_404_are_recorded_as_the_detail_is(roles, foreign_order, sub):
    # given
    client = api(roles.staff2)
    path = f"/api/instances/{foreign_order.pk}/{sub}/"

    # when
    hidden = client.get(path)
    missing = client.get(f"/api/instances/{MISSING}/{sub}/")

    # then: the same problem as for a missing instance, and the refusal of the instance on the trail
    assert (hidden.status_code, missing.status_code) == (404, 404)
    assert {**hidden.json(), "instance": ""} == {**missing.json(), "instance": ""}
    [event] = refusals()
    assert_recorded(event, roles.staff2, "instance", foreign_order.pk, path, hidden)
    assert event.payload["route"] == f"api:instance-{sub}"


def test_api_task_reads_and_actions_hidden_as_404_are_recorded(roles, expense_task):
    # given
    operator = api(roles.operator)
    other_task = instance_start("expense_approval", ExpenseInputFactory(amount="80.00"), initiator=roles.staff)
    other = other_task.tasks.get()

    # when: a read of one task, a claim (refused inside the service) of another
    seen = operator.get(f"/api/tasks/{expense_task.pk}/")
    claim = operator.post(f"/api/tasks/{other.pk}/claim/")
    missing = operator.post(f"/api/tasks/{MISSING}/claim/")

    # then
    assert (seen.status_code, claim.status_code, missing.status_code) == (404, 404, 404)
    assert {**claim.json(), "instance": ""} == {**missing.json(), "instance": ""}
    read, action = refusals()
    assert_recorded(read, roles.operator, "task", expense_task.pk, f"/api/tasks/{expense_task.pk}/", seen)
    assert_recorded(action, roles.operator, "task", other.pk, f"/api/tasks/{other.pk}/claim/", claim, method="POST")
    assert action.payload["route"] == "api:task-claim"


def test_an_anonymous_api_call_writes_no_404_refusal(db, foreign_order):
    response = Client().get(f"/api/instances/{foreign_order.pk}/")
    assert response.status_code == 401
    assert not AuditEvent.objects.filter(chain=ACCESS_CHAIN, payload__status=404).exists()
