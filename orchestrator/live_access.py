"""Open live sockets hear at once when their user's authority changes (orchestrator/consumers.py re-checks).

A sign-out, and any change to a user (active flag, staff flags, password), to a user's groups or permissions, or
to a group (its name, its permissions), from the admin or anywhere through the ORM, sends ``baton.recheck`` to the
sockets concerned after the change commits: ``user.<id>`` for one person, ``group.<id>`` for every member of a group
(members still listen there until their socket has re-checked). Changes that bypass signals (``QuerySet.update``,
raw SQL, a session row deleted) are caught by each socket's periodic re-check (``BATON_LIVE_RECHECK``).
Connected from ``OrchestratorConfig.ready``.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete
from django.dispatch import receiver

from orchestrator import live_names
from orchestrator.realtime import send_recheck, session_digest

User = get_user_model()
CHANGED = {"post_add", "post_remove", "post_clear"}


def recheck_on_commit(groups: Iterable[str], ended_session: str | None = None) -> None:
    """Ask the sockets in ``groups`` to re-check once the current transaction commits (never if it rolls back)."""
    transaction.on_commit(partial(send_recheck, sorted(set(groups)), ended_session))


@receiver(user_logged_out, dispatch_uid="baton-live-logout")
def _signed_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is None:
        return
    # Sent before logout() deletes the session row: the digest lets that session's sockets close without a lookup.
    key = getattr(getattr(request, "session", None), "session_key", None)
    recheck_on_commit([live_names.user_group(user.pk)], session_digest(key) if key else None)


@receiver(post_save, sender=User, dispatch_uid="baton-live-user-saved")
def _user_saved(sender: Any, instance: Any, created: bool, update_fields: Any, **kwargs: Any) -> None:
    if created or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return  # a new user has no socket; signing in changes nothing a socket relies on
    recheck_on_commit([live_names.user_group(instance.pk)])


@receiver(post_delete, sender=User, dispatch_uid="baton-live-user-deleted")
def _user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    recheck_on_commit([live_names.user_group(instance.pk)])


@receiver(post_save, sender=Group, dispatch_uid="baton-live-group-saved")
def _group_saved(sender: Any, instance: Group, created: bool, **kwargs: Any) -> None:
    # A group's name is authority too (approvals.selectors.is_manager reads "managers"): a rename changes what
    # its members may see. A new group has no members yet.
    if not created:
        recheck_on_commit([live_names.people_group(instance.pk)])


@receiver(pre_delete, sender=Group, dispatch_uid="baton-live-group-deleted")
def _group_deleted(sender: Any, instance: Group, **kwargs: Any) -> None:
    recheck_on_commit([live_names.people_group(instance.pk)])


def _m2m_targets(instance: Any, action: str, reverse: bool, pk_set: set[int] | None, kind: str) -> list[str]:
    """The ``<kind>.<id>`` groups to tell about one change of ``User.groups``, ``User.user_permissions`` or
    ``Group.permissions`` (``kind`` is the model on the owning side: "user" or "group").

    From the owning side ``instance`` is the one whose access changed. From the other side (a group's or a
    permission's ``user_set``/``group_set``) ``pk_set`` names them, except for a clear, whose rows are read before
    it happens (pre_clear).
    """
    if not reverse:
        return [f"{kind}.{instance.pk}"] if action in CHANGED else []
    if action == "pre_clear":
        related = getattr(instance, f"{kind}_set")
        return [f"{kind}.{pk}" for pk in related.values_list("pk", flat=True)]
    if action in ("post_add", "post_remove"):
        return [f"{kind}.{pk}" for pk in pk_set or ()]
    return []


def _m2m_changed(kind: str, instance: Any, action: str, reverse: bool, pk_set: Any) -> None:
    targets = _m2m_targets(instance, action, reverse, pk_set, kind)
    if targets:
        recheck_on_commit(targets)


@receiver(m2m_changed, sender=User.groups.through, dispatch_uid="baton-live-memberships")
def _memberships_changed(sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any) -> None:
    _m2m_changed("user", instance, action, reverse, pk_set)


@receiver(m2m_changed, sender=User.user_permissions.through, dispatch_uid="baton-live-user-permissions")
def _user_permissions_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    _m2m_changed("user", instance, action, reverse, pk_set)


@receiver(m2m_changed, sender=Group.permissions.through, dispatch_uid="baton-live-group-permissions")
def _group_permissions_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
) -> None:
    _m2m_changed("group", instance, action, reverse, pk_set)
