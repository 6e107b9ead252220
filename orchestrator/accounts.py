"""Changes to people's accounts go into the audit trail's "accounts" chain, whoever makes them and from wherever.

A superuser can reset another user's password in the Django admin and act as them; Baton cannot forbid that, so
it shows it. Password, active-flag, staff and superuser changes, group memberships, user and group permissions,
and users and groups created or deleted are each one event with who did it (the signed-in user of the current
request, or "system" outside a request: a management command, a shell) and the request's address, user agent and
path. The password hash itself is never written. The signals fire for the Django admin, the ORM and management
commands alike; a raw SQL update bypasses them (the database role should not be used by hand).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save
from django.http import HttpRequest, HttpResponse

from orchestrator.audit import ACCOUNTS_CHAIN, Actor, append_standalone
from orchestrator.audit_actions import AuditAction

_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar("baton_request", default=None)

# The user fields whose changes are audited; a save touching none of them (a login's last_login) costs nothing.
TRACKED = ("username", "password", "is_active", "is_staff", "is_superuser")
FLAGS = {
    "is_active": (AuditAction.USER_ACTIVATED, AuditAction.USER_DEACTIVATED),
    "is_staff": (AuditAction.USER_STAFF_GRANTED, AuditAction.USER_STAFF_REVOKED),
    "is_superuser": (AuditAction.USER_SUPERUSER_GRANTED, AuditAction.USER_SUPERUSER_REVOKED),
}


class CurrentRequestMiddleware:
    """Keeps the current request in a context variable, so account signals can name who made a change."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)


def current_actor() -> Actor:
    """The signed-in user of the current request, else the plain "system" (no request: a command, a shell)."""
    request = _request.get()
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return Actor.of(user)
    return Actor("system")


def request_meta(request: HttpRequest) -> dict[str, Any]:
    """What the audit trail keeps about the request behind an action.

    The address is the peer's, or behind a proxy (``BATON_BEHIND_PROXY``) the last one in X-Forwarded-For, the one
    the proxy itself appended: entries before it come from the client and prove nothing. Without that setting the
    header is ignored, since anyone can send it.
    """
    from django.conf import settings

    ip = request.META.get("REMOTE_ADDR", "")
    if settings.BATON_BEHIND_PROXY:
        forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        ip = next((part for part in reversed(forwarded) if part), ip)
    return {
        "ip": ip,
        "user_agent": request.META.get("HTTP_USER_AGENT", "")[:200],
        "path": request.path,
    }


def current_request_meta() -> dict[str, Any]:
    """The current request's ip, user agent and path for the audit trail ({} outside a request)."""
    request = _request.get()
    if request is None:
        return {}
    return request_meta(request)


def _write(action: AuditAction, subject_type: str, subject_id: int | None, payload: dict[str, Any]) -> None:
    append_standalone(
        ACCOUNTS_CHAIN,
        actor=current_actor(),
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        payload=payload,
        request_meta=current_request_meta(),
    )


def _user_stored(sender: Any, instance: Any, raw: bool = False, update_fields: Any = None, **_: Any) -> None:
    """pre_save: remember the stored row's tracked fields, to compare after the save."""
    instance._baton_stored = None
    if raw or instance.pk is None:
        return
    if update_fields is not None and not set(update_fields) & set(TRACKED):
        return
    instance._baton_stored = sender.objects.filter(pk=instance.pk).values(*TRACKED).first()


def _user_saved(sender: Any, instance: Any, created: bool, raw: bool = False, **_: Any) -> None:
    """post_save: one event per tracked change (never the password hash itself)."""
    if raw:
        return
    name = instance.get_username()
    if created:
        flags = {field: getattr(instance, field) for field in FLAGS}
        _write(AuditAction.USER_CREATED, "user", instance.pk, {"user": name, **flags})
        return
    stored = getattr(instance, "_baton_stored", None)
    if not stored:
        return
    if stored["username"] != name:
        _write(AuditAction.USER_RENAMED, "user", instance.pk, {"from": stored["username"], "to": name})
    if stored["password"] != instance.password:
        _write(
            AuditAction.USER_PASSWORD_CHANGED,
            "user",
            instance.pk,
            {"user": name, "usable": instance.has_usable_password()},
        )
    for field, (granted, revoked) in FLAGS.items():
        if stored[field] != getattr(instance, field):
            _write(granted if getattr(instance, field) else revoked, "user", instance.pk, {"user": name})


def _user_deleted(sender: Any, instance: Any, **_: Any) -> None:
    _write(AuditAction.USER_DELETED, "user", instance.pk, {"user": instance.get_username()})


def _group_saved(sender: Any, instance: Group, created: bool, raw: bool = False, **_: Any) -> None:
    if created and not raw:
        _write(AuditAction.GROUP_CREATED, "group", instance.pk, {"group": instance.name})


def _group_deleting(sender: Any, instance: Group, **_: Any) -> None:
    # Memberships go with the group without an m2m signal: name who lost it.
    members = sorted(instance.user_set.values_list("username", flat=True))
    _write(AuditAction.GROUP_DELETED, "group", instance.pk, {"group": instance.name, "members": members})


def _names(model: Any, pks: Iterable[int]) -> list[str]:
    if model is Permission:
        perms = Permission.objects.filter(pk__in=list(pks)).select_related("content_type")
        return sorted(f"{p.content_type.app_label}.{p.codename}" for p in perms)
    if model is Group:
        return sorted(Group.objects.filter(pk__in=list(pks)).values_list("name", flat=True))
    return sorted(model.objects.filter(pk__in=list(pks)).values_list(model.USERNAME_FIELD, flat=True))


def _m2m(owner: str, what: str) -> Callable[..., None]:
    """An m2m_changed receiver for ``owner`` ("user" or "group") and its relation ``what`` ("groups",
    "permissions"): one event per owner whose set changed, from either side of the relation."""

    def receiver(sender: Any, instance: Any, action: str, reverse: bool, model: Any, pk_set: Any, **_: Any) -> None:
        if action == "pre_clear":
            # post_clear does not say what was cleared: read it first.
            instance._baton_clear_related = set(
                _related_manager(instance, owner, what, reverse).values_list("pk", flat=True)
            )
            return
        if action not in ("post_add", "post_remove", "post_clear"):
            return
        if action == "post_clear":
            pk_set = getattr(instance, "_baton_clear_related", set())
            instance._baton_clear_related = None
        if not pk_set:
            return
        verb = "added" if action == "post_add" else "removed"
        if not reverse:
            owner_model: Any = type(instance)
            pairs = [(instance, list(pk_set))]
            target_model = model
        else:
            owner_model, target_model = model, type(instance)
            pairs = [(o, [instance.pk]) for o in owner_model.objects.filter(pk__in=list(pk_set))]
        for subject, targets in pairs:
            label = subject.name if owner_model is Group else subject.get_username()
            _write(
                AuditAction(f"{owner}.{what}_{verb}"),  # user/group . groups/permissions _ added/removed
                owner,
                subject.pk,
                {owner: label, what: _names(target_model, targets)},
            )

    return receiver


def _related_manager(instance: Any, owner: str, what: str, reverse: bool) -> Any:
    if not reverse:
        return getattr(instance, "groups" if what == "groups" else ("user_permissions" if owner == "user" else what))
    return getattr(instance, "user_set" if owner == "user" else "group_set")


def connect() -> None:
    """Connect the receivers (OrchestratorConfig.ready)."""
    user_model = get_user_model()
    pre_save.connect(_user_stored, sender=user_model, dispatch_uid="baton_accounts_user_stored")
    post_save.connect(_user_saved, sender=user_model, dispatch_uid="baton_accounts_user_saved")
    post_delete.connect(_user_deleted, sender=user_model, dispatch_uid="baton_accounts_user_deleted")
    post_save.connect(_group_saved, sender=Group, dispatch_uid="baton_accounts_group_saved")
    pre_delete.connect(_group_deleting, sender=Group, dispatch_uid="baton_accounts_group_deleting")
    m2m_changed.connect(
        _m2m("user", "groups"), sender=user_model.groups.through, dispatch_uid="baton_accounts_user_groups", weak=False
    )
    m2m_changed.connect(
        _m2m("user", "permissions"),
        sender=user_model.user_permissions.through,
        dispatch_uid="baton_accounts_user_permissions",
        weak=False,
    )
    m2m_changed.connect(
        _m2m("group", "permissions"),
        sender=Group.permissions.through,
        dispatch_uid="baton_accounts_group_permissions",
        weak=False,
    )
