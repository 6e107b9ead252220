"""Posting the Django admin's change forms as a browser would: every field with its current value, then changes."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone


def user_change_data(user: User, **changes: Any) -> dict[str, Any]:
    """The admin's user change form as submitted unchanged, with ``changes`` applied (a False flag is left out,
    as an unticked checkbox is)."""
    user.refresh_from_db()
    joined = timezone.localtime(user.date_joined)
    data: dict[str, Any] = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "is_active": user.is_active,
        "is_staff": user.is_staff,
        "is_superuser": user.is_superuser,
        "groups": [g.pk for g in user.groups.all()],
        "user_permissions": [p.pk for p in user.user_permissions.all()],
        "last_login_0": "",
        "last_login_1": "",
        "date_joined_0": joined.strftime("%Y-%m-%d"),
        "date_joined_1": joined.strftime("%H:%M:%S"),
    }
    data.update(changes)
    return {k: ("on" if v is True else v) for k, v in data.items() if v is not False}


def post_user_change(client: Client, user: User, **changes: Any) -> Any:
    """Save the user's admin change form with ``changes``; fails the test unless the admin accepted it."""
    response = client.post(reverse("admin:auth_user_change", args=[user.pk]), user_change_data(user, **changes))
    errors = response.context["adminform"].form.errors if response.status_code == 200 else None
    assert response.status_code == 302, errors
    return response


def post_group_change(client: Client, group: Group, **changes: Any) -> Any:
    """Save the group's admin change form with ``changes`` (name, permissions)."""
    data = {"name": group.name, "permissions": [p.pk for p in group.permissions.all()], **changes}
    response = client.post(reverse("admin:auth_group_change", args=[group.pk]), data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.status_code == 200 else ""
    return response
