"""Each kind of event the issue lists is recorded, with its actor and the request's data: sign-in, sign-out and
failed sign-in; refused access (test_views.py); user, group, permission and active-flag changes from the Django
admin; saved views created, shared and deleted; API tokens created and revoked; workflow versions first seen."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from api.tokens import token_create
from approvals.models import SavedView
from orchestrator import registry
from orchestrator.apps import _record_workflow_versions
from orchestrator.audit import ACCESS_CHAIN, ACCOUNTS_CHAIN, SAVED_VIEWS_CHAIN, WORKFLOWS_CHAIN, verify_trail
from orchestrator.dsl import StepContext, Task, Workflow
from orchestrator.models import AuditEvent
from tests.admin_forms import post_user_change
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db

AGENT = "EventsTest/2.0"
REQUEST_ID = "req-0123456789abcdef"


def _noop(ctx: StepContext) -> dict:
    return {}


def browser() -> Client:
    return Client(REMOTE_ADDR="203.0.113.50", HTTP_USER_AGENT=AGENT, HTTP_X_REQUEST_ID=REQUEST_ID)


def last(action: str) -> AuditEvent:
    return AuditEvent.objects.filter(action=action).latest("id")


def from_the_browser(event: AuditEvent, path: str) -> None:
    assert event.request_meta == {"ip": "203.0.113.50", "user_agent": AGENT, "path": path}
    assert event.request_id == REQUEST_ID


def test_a_sign_in_and_a_sign_out_are_recorded_with_the_request(users):
    # given
    client = browser()

    # when
    client.post("/login/", {"username": "staff", "password": PASSWORD})
    client.post("/logout/")

    # then
    signed_in, signed_out = last("access.signed_in"), last("access.signed_out")
    for event, path in ((signed_in, "/login/"), (signed_out, "/logout/")):
        assert event.chain == ACCESS_CHAIN
        assert (event.actor_label, event.actor_id, event.subject_id) == ("user:staff", users.staff.pk, users.staff.pk)
        from_the_browser(event, path)


@pytest.mark.parametrize("username", ["staff", "nobody-such"])
def test_a_failed_sign_in_is_recorded_with_the_name_typed_never_the_password(users, username):
    # when
    response = browser().post("/login/", {"username": username, "password": "wrong-secret-123"})

    # then
    assert response.status_code == 200
    event = last("access.sign_in_failed")
    assert event.actor_label == "anonymous"
    assert event.actor_id is None
    assert event.payload == {"username": username}
    assert event.subject_id == (users.staff.pk if username == "staff" else None)
    assert "wrong-secret-123" not in str(event.payload) + str(event.request_meta) + event.reason
    from_the_browser(event, "/login/")


def test_a_failed_sign_in_with_junk_is_recorded_safely(users):
    """A NUL byte and 10,000 characters as the username: recorded cut and cleaned, the page still answers."""
    # when
    response = browser().post("/login/", {"username": "a\x00b" + "x" * 10_000, "password": "x"})

    # then
    assert response.status_code == 200
    assert last("access.sign_in_failed").payload["username"] == "ab" + "x" * 148


def test_deactivating_a_user_in_the_django_admin_is_recorded_with_the_request(users):
    # given
    client = browser()
    client.force_login(users.admin)

    # when
    post_user_change(client, users.staff2, is_active=False)

    # then
    event = last("user.deactivated")
    assert event.chain == ACCOUNTS_CHAIN
    assert (event.actor_label, event.subject_id) == ("user:admin", users.staff2.pk)
    assert event.request_id == REQUEST_ID
    assert event.request_meta["ip"] == "203.0.113.50"


def test_a_permission_given_to_a_user_is_recorded(users):
    # given
    perm = Permission.objects.get(codename="view_trail")

    # when
    users.operator.user_permissions.add(perm)

    # then
    event = last("user.permissions_added")
    assert event.payload == {"user": "operator", "permissions": ["orchestrator.view_trail"]}
    assert event.actor_label == "system"


def test_saved_views_created_shared_and_deleted_are_recorded_with_before_and_after(users):
    # given
    client = browser()
    client.force_login(users.staff)

    # when
    client.post("/inbox/views/", {"name": "Urgent", "tab": "queue", "priority": "3"})
    client.post("/inbox/views/", {"name": "Urgent", "tab": "queue", "priority": "3", "shared_with": users.approvers.pk})
    view = SavedView.objects.get(owner=users.staff, name="Urgent")
    client.post(f"/inbox/views/{view.pk}/delete/")

    # then
    events = list(AuditEvent.objects.filter(chain=SAVED_VIEWS_CHAIN).order_by("seq"))
    assert [e.action for e in events] == ["saved_view.created", "saved_view.shared", "saved_view.deleted"]
    assert all(e.actor_label == "user:staff" and e.subject_id == view.pk for e in events)
    assert events[1].payload["changed"] == {"shared_with": [None, "approvers"]}
    assert events[2].payload["before"]["shared_with"] == "approvers"
    from_the_browser(events[0], "/inbox/views/")


def test_saving_the_same_view_again_writes_nothing(users):
    client = browser()
    client.force_login(users.staff)
    client.post("/inbox/views/", {"name": "Mine", "tab": "mine"})
    client.post("/inbox/views/", {"name": "Mine", "tab": "mine"})
    assert AuditEvent.objects.filter(chain=SAVED_VIEWS_CHAIN).count() == 1


def test_someone_elses_saved_view_is_not_deleted_and_nothing_is_recorded(users):
    view = SavedView.objects.create(owner=users.staff, name="Theirs", tab="queue", params={})
    client = browser()
    client.force_login(users.staff2)
    client.post(f"/inbox/views/{view.pk}/delete/")
    assert SavedView.objects.filter(pk=view.pk).exists()
    assert not AuditEvent.objects.filter(chain=SAVED_VIEWS_CHAIN).exists()


def test_workflow_versions_are_recorded_once_when_first_seen(register_workflow):
    """After migrate and at a worker's start: each registered version once, with its shape's fingerprint."""
    # given
    _record_workflow_versions()
    before = AuditEvent.objects.filter(chain=WORKFLOWS_CHAIN).count()
    flow = register_workflow(Workflow(name="audit_first_seen", version=3, steps=[Task("only", _noop)]))

    # when
    _record_workflow_versions()
    _record_workflow_versions()

    # then
    new = list(AuditEvent.objects.filter(chain=WORKFLOWS_CHAIN).order_by("seq")[before:])
    assert [(e.payload["name"], e.payload["version"]) for e in new] == [(flow.name, flow.version)]
    assert new[0].payload["fingerprint"] == flow.fingerprint()
    assert new[0].actor_label == "system:deploy"
    seen = {(e.payload["name"], e.payload["version"]) for e in AuditEvent.objects.filter(chain=WORKFLOWS_CHAIN)}
    assert {(w.name, w.version) for w in registry.latest_all()} <= seen


def test_a_request_id_is_returned_and_junk_ones_are_replaced(users):
    good = browser().get("/login/")
    junk = Client(HTTP_X_REQUEST_ID='x y"<script>').get("/login/")
    assert good["X-Request-ID"] == REQUEST_ID
    assert junk["X-Request-ID"] != 'x y"<script>'
    assert len(junk["X-Request-ID"]) == 32


def test_every_new_kind_of_event_keeps_the_chains_verifiable(users):
    """Sign-ins, refusals, saved views and tokens all go into keyed chains that verify."""
    client = browser()
    client.post("/login/", {"username": "staff", "password": PASSWORD})
    client.get("/audit/")
    client.post("/inbox/views/", {"name": "V", "tab": "mine"})
    token_create(users.staff, "t")
    assert verify_trail().breaks == []
