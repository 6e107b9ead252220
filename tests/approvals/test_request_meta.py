"""Every audited task action keeps the request behind it: the client's address, user agent and path."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals.models import HumanTask, TaskKind
from approvals.services.tasks import task_claim
from orchestrator.models import AuditEvent, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory, OrderInputFactory

pytestmark = pytest.mark.django_db

BROWSER = {"REMOTE_ADDR": "192.0.2.44", "HTTP_USER_AGENT": "Mozilla/5.0 (MetaTest)"}


def expense() -> WorkflowInstance:
    return instance_start("expense_approval", ExpenseInputFactory())


def task_of(instance: WorkflowInstance) -> HumanTask:
    return HumanTask.objects.filter(instance=instance).order_by("-id").first()


def browser(user) -> Client:
    client = Client(**BROWSER)
    client.force_login(user)
    return client


def meta_of(task: HumanTask, action: str) -> dict:
    return AuditEvent.objects.filter(subject_type="task", subject_id=task.pk, action=action).get().request_meta


def expected(path: str) -> dict:
    return {"ip": "192.0.2.44", "user_agent": "Mozilla/5.0 (MetaTest)", "path": path}


def test_claim_keeps_the_request(users):
    # given
    task = task_of(expense())
    url = reverse("approvals:task_claim", args=[task.pk])
    # when
    browser(users.staff).post(url)
    # then
    assert meta_of(task, "task.claimed") == expected(url)


def test_release_keeps_the_request(users):
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    url = reverse("approvals:task_release", args=[task.pk])
    # when
    browser(users.staff).post(url)
    # then
    assert meta_of(task, "task.released") == expected(url)


def test_delegate_keeps_the_request(users):
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    url = reverse("approvals:task_delegate", args=[task.pk])
    # when
    browser(users.staff).post(url, {"to_user": users.staff2.pk, "note": "on leave"})
    # then
    assert meta_of(task, "task.delegated") == expected(url)


def test_bulk_claim_keeps_the_request_on_every_task(users):
    # given
    tasks = [task_of(expense()) for _ in range(2)]
    url = reverse("approvals:tasks_claim_bulk")
    # when
    browser(users.staff).post(url, {"task": [t.pk for t in tasks]})
    # then
    assert [meta_of(t, "task.claimed") for t in tasks] == [expected(url)] * 2


def test_snooze_keeps_the_request(users):
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    url = reverse("approvals:task_snooze", args=[task.pk])
    until = timezone.localtime(timezone.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    # when
    browser(users.staff).post(url, {"until": until})
    # then
    assert meta_of(task, "task.snoozed") == expected(url)


def test_a_decision_keeps_the_request(users):
    # given
    task = task_of(expense())
    url = reverse("approvals:task_decide", args=[task.pk])
    # when
    browser(users.staff).post(url, {"decision": "approve", "comment": "fine"})
    # then
    assert meta_of(task, "task.completed") == expected(url)


def test_resolving_an_escalation_keeps_the_request_on_every_event(users, run_steps):
    """The resolution and what it sets off in the same transaction (the step skipped) carry the request."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_shipping=True, fail_refund=4))
    run_steps(instance, advance=True)
    escalation = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)
    url = reverse("approvals:task_decide", args=[escalation.pk])
    # when
    browser(users.operator).post(url, {"decision": "resolved", "comment": "refunded by hand"})
    # then
    assert meta_of(escalation, "task.completed") == expected(url)
    skipped = AuditEvent.objects.get(instance=instance, action="step.skipped")
    assert skipped.request_meta == expected(url)
