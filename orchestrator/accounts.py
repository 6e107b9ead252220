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
import logging
import re
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser, Group, Permission
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db import DatabaseError, models
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save
from django.http import Http404, HttpRequest, HttpResponse
from django.utils import timezone

from orchestrator.audit import ACCESS_CHAIN, ACCOUNTS_CHAIN, Actor, append_standalone
from orchestrator.audit_actions import AuditAction
from orchestrator.models import AuditEvent
from orchestrator.services.results import clean_text

logger = logging.getLogger(__name__)

# A request id a client or proxy sends is kept only when it looks like one (no spaces, quotes or control
# characters that would spoil a log line or a CSV cell); otherwise the request gets a fresh one.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,64}")

_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar("baton_request", default=None)

# The user fields whose changes are audited; a save touching none of them (a login's last_login) costs nothing.
TRACKED = ("username", "password", "is_active", "is_staff", "is_superuser")
FLAGS = {
    "is_active": (AuditAction.USER_ACTIVATED, AuditAction.USER_DEACTIVATED),
    "is_staff": (AuditAction.USER_STAFF_GRANTED, AuditAction.USER_STAFF_REVOKED),
    "is_superuser": (AuditAction.USER_SUPERUSER_GRANTED, AuditAction.USER_SUPERUSER_REVOKED),
}


class CurrentRequestMiddleware:
    """Keeps the current request in a context variable, so account signals can name who made a change; gives it a
    request id (the caller's ``X-Request-ID`` when well formed, else a new UUID) that every audit event it causes
    carries and the response returns; and writes a refused request into the ``access`` chain: any 403 answer, and a
    404 that hid an object the person may not see (``hidden_404``; see ``hidden_refused`` for which are kept)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        given = request.META.get("HTTP_X_REQUEST_ID", "")
        request.baton_request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex  # type: ignore[attr-defined]
        token = _request.set(request)
        try:
            response = self.get_response(request)
            if response.status_code == 403:
                access_refused(request, response)
            elif response.status_code == 404 and hasattr(request, "baton_hidden"):
                hidden_refused(request, response)
        finally:
            _request.reset(token)
        response["X-Request-ID"] = request.baton_request_id  # type: ignore[attr-defined]
        return response


def holder_ids(app_label: str, codename: str) -> list[int]:
    """Ids of the active users who hold the permission ``app_label.codename``: superusers, and holders directly or
    through a group (what ``user.has_perm`` answers for each, in one query), ascending."""
    from django.db.models import Q

    perm = Permission.objects.filter(codename=codename, content_type__app_label=app_label)
    users = (
        get_user_model()
        .objects.filter(is_active=True)
        .filter(Q(is_superuser=True) | Q(user_permissions__in=perm) | Q(groups__permissions__in=perm))
    )
    return sorted(set(users.values_list("pk", flat=True)))


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
    # Cleaned as PostgreSQL stores JSON (no NUL, no lone surrogate): headers and a percent-decoded path are the
    # client's to choose, and a server that lets a NUL through must not turn an audited action into a 500.
    meta = {
        "ip": clean_text(ip, 100),
        "user_agent": clean_text(request.META.get("HTTP_USER_AGENT", ""), 200),
        "path": clean_text(request.path, 2000),
    }
    # Set by CurrentRequestMiddleware; orchestrator/audit.py moves it to the event's request_id column.
    request_id = getattr(request, "baton_request_id", "")
    if request_id:
        meta["request_id"] = request_id
    return meta


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


# --- Access: sign-in, sign-out, failed sign-in, refused requests (the "access" chain) ---------------------------


def _access(
    request: HttpRequest | None,
    actor: Actor,
    action: AuditAction,
    subject_type: str,
    subject_id: int | None,
    payload: dict[str, Any],
    reason: str = "",
) -> None:
    append_standalone(
        ACCESS_CHAIN,
        actor=actor,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        reason=reason,
        payload=payload,
        request_meta=request_meta(request) if request is not None else current_request_meta(),
    )


def _signed_in(sender: Any, request: HttpRequest | None, user: AbstractBaseUser, **_: Any) -> None:
    _access(request, Actor.of(user), AuditAction.ACCESS_SIGNED_IN, "user", user.pk, {"user": user.get_username()})


def _signed_out(sender: Any, request: HttpRequest | None, user: AbstractBaseUser | None, **_: Any) -> None:
    if user is None:  # signing out without being signed in changes nothing
        return
    _access(request, Actor.of(user), AuditAction.ACCESS_SIGNED_OUT, "user", user.pk, {"user": user.get_username()})


def _sign_in_failed(sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **_: Any) -> None:
    # Django has already masked the password in ``credentials``; only the name typed is kept.
    sign_in_refused(request, str(credentials.get("username", "")))


def sign_in_refused(request: HttpRequest | None, username: str) -> None:
    """Record a failed sign-in as ``username`` (the name typed, without NUL bytes, which PostgreSQL refuses in
    text, and cut to 150 characters; never the password), naming the account when one has that name."""
    typed = username.replace("\x00", "")[:150]
    known = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: typed}).values_list("pk", flat=True)
    user_id = next(iter(known), None)
    _access(request, Actor("anonymous"), AuditAction.ACCESS_SIGN_IN_FAILED, "user", user_id, {"username": typed})


def access_refused(request: HttpRequest, response: HttpResponse) -> None:
    """Record that ``request`` was answered 403: who asked (or anonymous), the method and path, and the object the
    route names (the first integer in its URL arguments). A failure to record is logged, never turned into a 500:
    the refusal itself has already been decided."""
    user: AbstractBaseUser | AnonymousUser | None = getattr(request, "user", None)
    actor = Actor.of(user) if user is not None else Actor("anonymous")
    match = getattr(request, "resolver_match", None)
    kwargs = dict(match.kwargs) if match is not None else {}
    subject_id = next((v for v in kwargs.values() if isinstance(v, int)), None)
    route = match.view_name if match is not None else ""
    subject_type = _ROUTE_SUBJECTS.get(next(iter(kwargs), ""), "route")
    try:
        _access(
            request,
            actor,
            AuditAction.ACCESS_REFUSED,
            subject_type,
            subject_id,
            {"method": request.method, "route": route, "status": response.status_code},
            reason=str(getattr(response, "reason_phrase", "")),
        )
    except DatabaseError:
        logger.exception("could not record the refused request %s %s", request.method, request.path)


def item_refused(request: HttpRequest, kind: str, object_id: int, reason: str) -> None:
    """Record that ``request``'s user was refused an action on ``kind`` #``object_id`` for who they are (four-eyes,
    not a candidate: what a single action answers 403, recorded by ``CurrentRequestMiddleware``), inside a bulk
    action answered as a whole, whose redirect no middleware reads as a refusal. ``reason`` is the message the
    person was shown. A failure to record is logged, never raised."""
    user: Any = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return
    try:
        _item_refusal(request, user, kind, object_id, status=403, marked="bulk", reason=reason)
    except DatabaseError:
        logger.exception("could not record the refused item %s %s of %s", kind, object_id, request.path)


def _item_refusal(
    request: HttpRequest, user: Any, kind: str, object_id: int, *, status: int, marked: str, reason: str
) -> None:
    """Append one ``access.refused`` event for ``kind`` #``object_id``: the request's method and route, the
    ``status`` a single action would have answered, and ``marked`` (``"bulk"``, ``"hidden"``) set true in the
    payload. Raises what the append raises (DatabaseError); the callers log it."""
    match = getattr(request, "resolver_match", None)
    route = match.view_name if match is not None else ""
    payload = {"method": request.method, "route": route, "status": status, marked: True}
    _access(request, Actor.of(user), AuditAction.ACCESS_REFUSED, kind, object_id, payload, reason=reason)


# A 404 that hid one object from one person is recorded once in this window (docs/architecture.md, "Refusals hidden as
# 404"): someone reloading the page or scanning ids in a loop adds one event per hidden object, not one per request.
HIDDEN_REFUSAL_WINDOW = timedelta(minutes=10)


def hidden_404(request: Any, kind: str, model: type[models.Model], object_id: int, message: str) -> Http404:
    """The ``Http404`` for a view to raise when ``request``'s user may not see ``model`` #``object_id``.

    Views answer 404, not 403, for an object that is not the person's to see, so a caller cannot tell it from one
    that does not exist (docs/access-matrix.md). The request (a Django request, or DRF's wrapper of one) is marked
    with ``(kind, model, object_id)`` and nothing else happens here: ``CurrentRequestMiddleware`` records the
    refusal once the 404 is answered, outside the view's transaction (``hidden_refused``). ``kind`` names the
    object in the trail ("instance", "task", "bulk_job", "api_token"); ``message`` is the 404's text, the same as for
    an id that does not exist.
    """
    django_request = getattr(request, "_request", request)
    django_request.baton_hidden = (kind, model, object_id)
    return Http404(message)


def hidden_refused(request: HttpRequest, response: HttpResponse) -> None:
    """Record a 404 that hid an object (marked by ``hidden_404``) as an ``access.refused`` event with status 404.

    Kept only when it says something about a person and does not let a flood grow the trail: the user is signed
    in (an anonymous request never reaches an object), the object exists (a 404 for an id that is truly missing
    is no refusal), and no refusal of the same object to the same person was recorded in the last
    ``HIDDEN_REFUSAL_WINDOW``. The 404 the caller gets is the same either way. A failure to record is logged, never
    turned into a 500."""
    kind, model, object_id = request.baton_hidden  # type: ignore[attr-defined]
    hidden_item_refused(request, kind, model, object_id, status=response.status_code)


def hidden_item_refused(
    request: HttpRequest, kind: str, model: type[models.Model], object_id: int, *, status: int = 404
) -> None:
    """Record that ``request``'s user was refused ``model`` #``object_id`` (``kind`` as for ``hidden_404``) as not
    theirs to see, by :func:`hidden_refused`'s rule (signed in, the object exists, once per person and object per
    ``HIDDEN_REFUSAL_WINDOW``): for a 404 answer, and for one item of a bulk action answered as a whole (the
    request's answer is a redirect, its refusal of that item the one a single action would have answered 404).
    A failure to record is logged, never raised."""
    user: Any = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not 0 < object_id < 2**63:  # past bigint: no such row
        return
    try:
        if not model._default_manager.filter(pk=object_id).exists():
            return
        recent = AuditEvent.objects.filter(
            subject_type=kind,
            subject_id=object_id,
            occurred_at__gte=timezone.now() - HIDDEN_REFUSAL_WINDOW,
            chain=ACCESS_CHAIN,
            action=AuditAction.ACCESS_REFUSED,
            actor_id=user.pk,
        )
        if recent.exists():
            return
        reason = "Not Found (hidden: not theirs to see)"
        _item_refusal(request, user, kind, object_id, status=status, marked="hidden", reason=reason)
    except DatabaseError:
        logger.exception("could not record the hidden refusal %s %s", request.method, request.path)


# The URL argument that names the object a refused request was about.
_ROUTE_SUBJECTS = {"instance_id": "instance", "task_id": "task", "view_id": "saved_view", "object_id": "object"}


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
    user_logged_in.connect(_signed_in, dispatch_uid="baton_access_signed_in")
    user_logged_out.connect(_signed_out, dispatch_uid="baton_access_signed_out")
    user_login_failed.connect(_sign_in_failed, dispatch_uid="baton_access_sign_in_failed")
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
