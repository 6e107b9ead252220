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


@pytest.mark.parametrize("model", ["orchestrator/auditevent", "audit/verification"])
def test_the_admin_shows_the_trail_only_to_those_who_may_see_the_whole_trail(users, instance, model):
    """A staff member given "Can view audit event" (what the instance page asks to show an instance's own history)
    may use the Django admin, but the admin lists every chain: other teams' instances, sign-ins with addresses,
    exports. Like /audit/, it needs orchestrator.view_trail."""
    # given
    from django.contrib.auth.models import Permission

    from audit.models import Verification

    Verification.objects.create(requested_at=instance.created_at, active=None, state="passed")
    person = users.staff2
    person.is_staff = True
    person.save()
    person.user_permissions.add(
        Permission.objects.get(codename="view_auditevent"), Permission.objects.get(codename="view_verification")
    )
    client = Client()
    client.force_login(person)
    event = AuditEvent.objects.filter(instance=instance).first()
    row = event if model == "orchestrator/auditevent" else Verification.objects.get()

    # when
    listed = client.get(f"/admin/{model}/")
    viewed = client.get(f"/admin/{model}/{row.pk}/change/")
    index = client.get("/admin/")

    # then
    assert listed.status_code == 403
    assert viewed.status_code == 403
    assert f"/admin/{model}/".encode() not in index.content
    # and an auditor who is staff sees them
    person.user_permissions.add(Permission.objects.get(codename="view_trail"))
    auditor = Client()
    auditor.force_login(person)
    assert auditor.get(f"/admin/{model}/").status_code == 200
