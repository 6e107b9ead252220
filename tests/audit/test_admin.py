"""The Django admin shows the engine's records read-only, to everyone: no add, change or delete for audit events
(superusers included), nor for instances, steps and tasks, whose states change only through their services."""

from __future__ import annotations

import pytest
from django.test import Client

from approvals.models import HumanTask
from orchestrator.models import AuditEvent, StepRun
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory

pytestmark = pytest.mark.django_db

MODELS = {
    "orchestrator/auditevent": lambda i: AuditEvent.objects.filter(instance=i).first(),
    "orchestrator/workflowinstance": lambda i: i,
    "orchestrator/steprun": lambda i: StepRun.objects.filter(instance=i).first(),
    "approvals/humantask": lambda i: HumanTask.objects.filter(instance=i).first(),
}


@pytest.fixture
def instance(run_steps, users):
    started = instance_start("expense_approval", ExpenseInputFactory(), initiator=users.staff)
    run_steps(started, advance=True)
    return started


@pytest.fixture
def superuser(users) -> Client:
    client = Client()
    client.force_login(users.admin)
    return client


@pytest.mark.parametrize("model", list(MODELS))
def test_a_superuser_can_list_and_view_but_not_add_change_or_delete(superuser, instance, model):
    # given
    row = MODELS[model](instance)
    base = f"/admin/{model}/"
    before = AuditEvent.objects.exclude(chain="access").count()

    # when
    listed = superuser.get(base)
    viewed = superuser.get(f"{base}{row.pk}/change/")
    add = superuser.get(f"{base}add/")
    delete = superuser.post(f"{base}{row.pk}/delete/", {"post": "yes"})
    change = superuser.post(f"{base}{row.pk}/change/", {"reason": "rewritten", "state": "completed"})

    # then
    assert listed.status_code == 200
    assert viewed.status_code == 200
    assert b'name="_save"' not in viewed.content
    assert add.status_code == 403
    assert delete.status_code == 403
    assert change.status_code == 403
    assert type(row).objects.filter(pk=row.pk).exists()
    assert AuditEvent.objects.exclude(chain="access").count() == before


def test_the_audit_event_list_offers_no_bulk_delete(superuser, instance):
    response = superuser.get("/admin/orchestrator/auditevent/")
    assert b"delete_selected" not in response.content
    assert b"Add audit event" not in response.content
