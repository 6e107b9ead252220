"""Refusals answered 404 to hide an object (an instance, a task, a bulk job, an API token that is not the person's
to see) are recorded as ``access.refused`` with status 404, once per person and object per window, while the
caller gets the same 404 as for an id that does not exist (docs/architecture.md, "Refusals hidden as 404")."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse

from api.tokens import token_create
from approvals.models import HumanTask
from console.models import BulkJob
from orchestrator import accounts
from orchestrator.audit import ACCESS_CHAIN
from orchestrator.models import AuditEvent, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory, OrderInputFactory

pytestmark = pytest.mark.django_db

AGENT = "HiddenTest/3.0"
ADDRESS = "198.51.100.7"
MISSING = 2**62


def browser(user) -> Client:
    client = Client(REMOTE_ADDR=ADDRESS, HTTP_USER_AGENT=AGENT)
    client.force_login(user)
    return client


def page_text(response, path: str) -> str:
    """The page without what differs on every request (the masked CSRF token) and without the path asked for."""
    text = re.sub(r"[A-Za-z0-9]{64}", "TOKEN", response.content.decode())
    return text.replace(path, "PATH")


def refusals() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(chain=ACCESS_CHAIN, action="access.refused").order_by("id"))


def assert_recorded(event: AuditEvent, user, kind: str, object_id: int, path: str, response, method="GET") -> None:
    assert (event.actor_label, event.actor_id) == (f"user:{user.username}", user.pk)
    assert (event.subject_type, event.subject_id) == (kind, object_id)
    assert event.request_meta["ip"] == ADDRESS
    assert event.request_meta["user_agent"] == AGENT
    assert event.request_meta["path"] == path
    assert event.request_id == response["X-Request-ID"]
    assert event.payload["status"] == 404
    assert event.payload["hidden"] is True
    assert event.payload["method"] == method


@pytest.fixture
def foreign_order(users) -> WorkflowInstance:
    """An order staff started, before any task: staff2 (another approver) may not see it."""
    return instance_start("order_fulfilment", OrderInputFactory(amount="900.00"), initiator=users.staff)


@pytest.fixture
def expense_task(users) -> HumanTask:
    """The open team-approval task of an expense staff started (candidates: the approvers, not the operator)."""
    return instance_start("expense_approval", ExpenseInputFactory(amount="70.00"), initiator=users.staff).tasks.get()


def test_an_instance_page_hidden_as_404_is_recorded_and_looks_like_a_missing_one(users, foreign_order):
    # given
    client = browser(users.staff2)
    hidden_path = reverse("console:instance_detail", args=[foreign_order.pk])
    missing_path = reverse("console:instance_detail", args=[MISSING])

    # when
    hidden = client.get(hidden_path)
    missing = client.get(missing_path)

    # then: the same answer, one event, for the hidden one only
    assert (hidden.status_code, missing.status_code) == (404, 404)
    assert page_text(hidden, hidden_path) == page_text(missing, missing_path)
    [event] = refusals()
    assert_recorded(event, users.staff2, "instance", foreign_order.pk, hidden_path, hidden)
    assert event.payload["route"] == "console:instance_detail"


def test_a_flood_of_the_same_hidden_404_is_recorded_once_per_window(users, foreign_order, monkeypatch):
    # given
    client = browser(users.staff2)
    path = reverse("console:instance_detail", args=[foreign_order.pk])

    # when
    statuses = {client.get(path).status_code for _ in range(5)}

    # then
    assert statuses == {404}
    assert len(refusals()) == 1

    # when: the window has passed (a zero window: the first event is older than "now")
    monkeypatch.setattr(accounts, "HIDDEN_REFUSAL_WINDOW", timedelta(0))
    client.get(path)

    # then
    assert len(refusals()) == 2


def test_the_person_who_may_see_it_writes_nothing(users, foreign_order):
    response = browser(users.staff).get(reverse("console:instance_detail", args=[foreign_order.pk]))
    assert response.status_code == 200
    assert refusals() == []


def test_a_task_page_hidden_as_404_is_recorded(users, expense_task):
    # given
    path = reverse("approvals:task_detail", args=[expense_task.pk])

    # when
    response = browser(users.operator).get(path)

    # then
    assert response.status_code == 404
    [event] = refusals()
    assert_recorded(event, users.operator, "task", expense_task.pk, path, response)


def test_a_task_action_refused_as_not_found_by_the_service_is_recorded(users, expense_task):
    # given
    path = reverse("approvals:task_claim", args=[expense_task.pk])

    # when
    response = browser(users.operator).post(path)

    # then
    assert response.status_code == 404
    [event] = refusals()
    assert_recorded(event, users.operator, "task", expense_task.pk, path, response, method="POST")


def test_another_operators_dry_run_is_recorded(users):
    # given
    job = BulkJob.objects.create(action="cancel", created_by=users.operator)  # a dry run: its author's draft
    path = reverse("console:bulk_detail", args=[job.pk])

    # when
    response = browser(users.admin).get(path)

    # then
    assert response.status_code == 404
    [event] = refusals()
    assert_recorded(event, users.admin, "bulk_job", job.pk, path, response)


def test_revoking_someone_elses_token_is_recorded_and_leaves_it_alone(users):
    # given
    token = token_create(users.staff, "staff's").token
    path = reverse("api:token_revoke", args=[token.pk])

    # when
    response = browser(users.staff2).post(path)

    # then
    assert response.status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None
    [event] = refusals()
    assert_recorded(event, users.staff2, "api_token", token.pk, path, response, method="POST")


def test_scanning_ids_records_each_existing_hidden_object_once_and_no_missing_one(users, foreign_order):
    # given: a second order staff2 may not see, and ids past the last one
    other = instance_start("order_fulfilment", OrderInputFactory(amount="901.00"), initiator=users.staff)
    client = browser(users.staff2)
    ids = [foreign_order.pk, other.pk, other.pk + 1, other.pk + 2, foreign_order.pk, other.pk]

    # when
    statuses = {client.get(reverse("console:instance_detail", args=[pk])).status_code for pk in ids}

    # then
    assert statuses == {404}
    assert [(e.subject_type, e.subject_id) for e in refusals()] == [
        ("instance", foreign_order.pk),
        ("instance", other.pk),
    ]
