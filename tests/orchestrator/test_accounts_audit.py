"""Account changes are written to the audit trail's "accounts" chain with who made them, from the Django admin or
anywhere else, and never with the password hash."""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from orchestrator.audit import ACCOUNTS_CHAIN, verify_chain
from orchestrator.models import AuditEvent
from tests.admin_forms import post_group_change, post_user_change
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

META = {"REMOTE_ADDR": "198.51.100.7", "HTTP_USER_AGENT": "AdminBrowser/2.0"}


def admin_client(users) -> Client:
    client = Client(**META)
    client.force_login(users.admin)
    return client


# The seq of the accounts chain's last event once the ``users`` fixture is in place (creating them is audited too).
BASELINE = {"seq": 0}


@pytest.fixture(autouse=True)
def baseline(users) -> None:
    last = AuditEvent.objects.filter(chain=ACCOUNTS_CHAIN).order_by("-seq").values_list("seq", flat=True).first()
    BASELINE["seq"] = last or 0


def account_events(*actions: str) -> list[AuditEvent]:
    """The accounts chain's events since the test's given step, in order (only ``actions`` when named)."""
    events = AuditEvent.objects.filter(chain=ACCOUNTS_CHAIN, seq__gt=BASELINE["seq"]).order_by("seq")
    if actions:
        events = events.filter(action__in=actions)
    return list(events)


def by_admin(event: AuditEvent, path: str) -> None:
    """The event names the admin as actor and carries the admin request's address, user agent and path."""
    assert (event.actor_label, event.actor_id) == ("user:admin", User.objects.get(username="admin").pk)
    assert event.request_meta == {"ip": "198.51.100.7", "user_agent": "AdminBrowser/2.0", "path": path}


def test_a_password_reset_in_the_admin_is_audited_without_the_hash(users):
    """A superuser sets another user's password: one event, by the admin, from their request; neither the new
    hash nor the old one appears anywhere in the event."""
    # given
    client = admin_client(users)
    url = reverse("admin:auth_user_password_change", args=[users.staff.pk])
    old_hash = users.staff.password

    # when
    response = client.post(
        url, {"password1": "N3w-secret-pass!", "password2": "N3w-secret-pass!", "usable_password": "true"}
    )

    # then
    assert response.status_code == 302
    users.staff.refresh_from_db()
    assert users.staff.check_password("N3w-secret-pass!")
    [event] = account_events("user.password_changed")
    by_admin(event, url)
    assert (event.subject_type, event.subject_id, event.payload) == (
        "user",
        users.staff.pk,
        {"user": "staff", "usable": True},
    )
    stored = json.dumps([event.payload, event.reason, event.request_meta])
    assert users.staff.password not in stored
    assert old_hash not in stored
    assert "N3w-secret-pass!" not in stored


@pytest.mark.parametrize(
    ("changes", "actions"),
    [
        ({"is_active": False}, ["user.deactivated"]),
        ({"is_staff": True}, ["user.staff_granted"]),
        ({"is_superuser": True, "is_staff": True}, ["user.staff_granted", "user.superuser_granted"]),
        ({"username": "staff-renamed"}, ["user.renamed"]),
    ],
)
def test_flag_changes_in_the_admin_are_audited(users, changes, actions):
    """Active, staff and superuser flags (and the username) changed in the admin: one event each, by the admin."""
    # given
    client = admin_client(users)
    path = reverse("admin:auth_user_change", args=[users.staff.pk])

    # when
    post_user_change(client, users.staff, **changes)

    # then
    events = account_events(*actions)
    assert [e.action for e in events] == actions
    for event in events:
        by_admin(event, path)
        assert event.subject_id == users.staff.pk


def test_reactivating_and_revoking_are_audited_too(users):
    """The reverse changes have their own events."""
    # given
    users.staff.is_active = False
    users.staff.is_staff = True
    users.staff.save()
    client = admin_client(users)

    # when
    post_user_change(client, users.staff, is_active=True, is_staff=False)

    # then
    assert [e.action for e in account_events("user.activated", "user.staff_revoked")] == [
        "user.activated",
        "user.staff_revoked",
    ]
    assert all(e.actor_label == "user:admin" for e in account_events("user.activated", "user.staff_revoked"))


def test_group_membership_changes_in_the_admin_are_audited(users):
    """Moving a user from approvers to managers in the admin: the groups added and removed, by name."""
    # given
    client = admin_client(users)
    path = reverse("admin:auth_user_change", args=[users.staff.pk])

    # when
    post_user_change(client, users.staff, groups=[users.managers.pk])

    # then
    added, removed = account_events("user.groups_added"), account_events("user.groups_removed")
    assert [e.payload for e in added] == [{"user": "staff", "groups": ["managers"]}]
    assert [e.payload for e in removed] == [{"user": "staff", "groups": ["approvers"]}]
    by_admin(added[0], path)
    by_admin(removed[0], path)


def test_user_permission_changes_in_the_admin_are_audited(users):
    """A permission granted directly to a user, then taken away."""
    # given
    client = admin_client(users)
    permission = Permission.objects.get(codename="change_user")

    # when
    post_user_change(client, users.staff, user_permissions=[permission.pk])
    post_user_change(client, users.staff, user_permissions=[])

    # then
    events = account_events("user.permissions_added", "user.permissions_removed")
    assert [(e.action, e.payload) for e in events] == [
        ("user.permissions_added", {"user": "staff", "permissions": ["auth.change_user"]}),
        ("user.permissions_removed", {"user": "staff", "permissions": ["auth.change_user"]}),
    ]
    assert all(e.actor_label == "user:admin" for e in events)


def test_group_permission_changes_in_the_admin_are_audited(users):
    """A permission given to a whole group."""
    # given
    client = admin_client(users)
    permission = Permission.objects.get(codename="change_user")

    # when
    post_group_change(client, users.approvers, permissions=[permission.pk])

    # then
    [event] = account_events("group.permissions_added")
    by_admin(event, reverse("admin:auth_group_change", args=[users.approvers.pk]))
    assert (event.subject_type, event.subject_id) == ("group", users.approvers.pk)
    assert event.payload == {"group": "approvers", "permissions": ["auth.change_user"]}


def test_creating_and_deleting_a_user_in_the_admin_is_audited(users):
    """Created with its flags; deleted with its name."""
    # given
    client = admin_client(users)
    created = client.post(
        reverse("admin:auth_user_add"),
        {
            "username": "newbie",
            "password1": "N3w-secret-pass!",
            "password2": "N3w-secret-pass!",
            "usable_password": "true",
        },
    )
    assert created.status_code == 302
    newbie = User.objects.get(username="newbie")

    # when
    deleted = client.post(reverse("admin:auth_user_delete", args=[newbie.pk]), {"post": "yes"})

    # then
    assert deleted.status_code == 302
    events = account_events("user.created", "user.deleted")
    assert [(e.action, e.subject_id, e.payload["user"]) for e in events] == [
        ("user.created", newbie.pk, "newbie"),
        ("user.deleted", newbie.pk, "newbie"),
    ]
    assert all(e.actor_label == "user:admin" for e in events)


def test_deleting_a_group_names_who_lost_it(users):
    """A group deleted in the admin takes its memberships without an m2m signal; the event lists the members."""
    # given
    client = admin_client(users)
    group = Group.objects.create(name="auditors")
    users.staff.groups.add(group)

    # when
    response = client.post(reverse("admin:auth_group_delete", args=[group.pk]), {"post": "yes"})

    # then
    assert response.status_code == 302
    [event] = account_events("group.deleted")
    assert event.payload == {"group": "auditors", "members": ["staff"]}
    assert event.actor_label == "user:admin"


def test_changes_outside_a_request_are_by_the_system(users):
    """A shell or a management command changes a password and a membership: the actor is "system", no request
    metadata."""
    # when
    users.staff2.set_password("another-pass-123")
    users.staff2.save()
    users.operators.user_set.add(users.staff2)

    # then
    events = account_events("user.password_changed", "user.groups_added")
    assert [(e.action, e.actor_label, e.request_meta) for e in events] == [
        ("user.password_changed", "system", {}),
        ("user.groups_added", "system", {}),
    ]
    assert events[1].payload == {"user": "staff2", "groups": ["operators"]}


def test_changepassword_command_is_audited(users, monkeypatch):
    """manage.py changepassword is "anywhere" too."""
    # given
    monkeypatch.setattr("getpass.getpass", lambda *_a, **_k: "Str0ng-enough-pass")

    # when
    call_command("changepassword", "staff2", stdout=io.StringIO())

    # then
    assert [(e.action, e.actor_label) for e in account_events("user.password_changed")] == [
        ("user.password_changed", "system")
    ]


def test_a_login_writes_nothing(users):
    """Signing in updates last_login only: no account event."""
    # given
    UserFactory(username="walker")
    before = len(account_events())

    # when
    assert Client().login(username="walker", password="demo")

    # then
    assert len(account_events()) == before


def test_the_accounts_chain_verifies(users):
    """Events from many kinds of change form one unbroken chain."""
    # given
    client = admin_client(users)
    post_user_change(client, users.staff, is_staff=True, groups=[users.managers.pk])
    users.staff2.set_password("another-pass-123")
    users.staff2.save()

    # when
    events = account_events()

    # then
    assert len(events) >= 3
    assert verify_chain(list(AuditEvent.objects.filter(chain=ACCOUNTS_CHAIN).order_by("seq"))) is None


def test_a_sign_in_whose_headers_and_path_carry_nul_bytes_is_audited_cleaned_not_a_500(users):
    """gunicorn and daphne refuse a NUL in a header, another server may not; the path is percent-decoded. The
    audit trail stores request_meta as JSON, where PostgreSQL refuses NUL and lone surrogates: it once made the
    audited action a 500."""
    from orchestrator.accounts import ACCESS_CHAIN

    # given
    client = Client(HTTP_USER_AGENT="Agent\x00/1.0 \ud800", REMOTE_ADDR="203.0.113.9")
    users.staff.set_password("pass-for-nul-test")
    users.staff.save()

    # when
    response = client.post(
        reverse("login") + "?next=/x%00y", {"username": users.staff.username, "password": "pass-for-nul-test"}
    )

    # then: signed in, the sign-in recorded with the header shown, not dropped
    assert response.status_code == 302
    event = AuditEvent.objects.filter(chain=ACCESS_CHAIN, action="access.signed_in").latest("seq")
    assert event.request_meta["user_agent"] == "Agent\\x00/1.0 ?"
    assert event.actor_id == users.staff.pk
