"""Who may call the API at all: an active, signed-in user (session or token). The role checks of each action are
the pages' own (docs/access-matrix.md) and sit in the views: ``orchestrator.selectors.can_operate`` for the
operator's actions, ``add_workflowinstance`` for a start; object checks (a foreign instance or task is 404) in
the selectors the views read through."""

from __future__ import annotations

import functools
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

MODEL_BACKEND_ONLY = ["django.contrib.auth.backends.ModelBackend"]


class IsActiveUser(BasePermission):
    """Signed in (session or token) with an active account: every endpoint's floor."""

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_active)


def has_model_perm(user: Any, perm: str) -> bool:
    """``user.has_perm(perm)`` (``perm`` is "app_label.codename") in one statement instead of Django's two.

    The same answer as Django's ``ModelBackend``, read fresh on every call (a permission removed a moment ago
    counts at once): False for an inactive or anonymous user, True for an active superuser, otherwise whether the
    permission is the user's own or one of their groups'. ``has_perm`` loads every permission of the user and of
    their groups (two queries) to answer one; this asks for the one, or none when the request's token look-up
    has already read them (``api.tokens.token_for_secret``). With another authentication backend
    configured (``AUTHENTICATION_BACKENDS``) it defers to ``has_perm``, which asks every backend.
    """
    if list(settings.AUTHENTICATION_BACKENDS) != MODEL_BACKEND_ONLY:
        return bool(user.has_perm(perm))
    if not (user and user.is_authenticated and user.is_active):
        return False
    if user.is_superuser:
        return True
    loaded = getattr(user, "_perm_cache", None)
    if loaded is not None:
        # Read in this request (with the token: api/tokens.py), as ModelBackend.has_perm would use it.
        return perm in loaded
    app_label, _, codename = perm.partition(".")
    with connection.cursor() as cursor:
        cursor.execute(_perm_sql(), [app_label, codename, user.pk, user.pk])
        return cursor.fetchone() is not None


@functools.cache
def _perm_sql() -> str:
    # The ORM's own statement for
    #   Permission.objects.filter(content_type__app_label=..., codename=...)
    #       .filter(Q(user=user) | Q(group__user=user)).exists()
    # written once: building that query (joins, lookups, compiling) cost about a sixth of a start's CPU in the
    # web process, on every request. The tables are the models' own; the values are parameters, read fresh.
    quote = connection.ops.quote_name
    permissions, content_types = quote(Permission._meta.db_table), quote(ContentType._meta.db_table)
    user_perms = quote(Permission.user_set.through._meta.db_table)
    group_perms = quote(Permission.group_set.through._meta.db_table)
    user_groups = quote(get_user_model().groups.through._meta.db_table)
    # Only the models' table names are formatted in (no input): the values are the statement's parameters.
    return (
        f"SELECT 1 FROM {permissions} p JOIN {content_types} ct ON ct.id = p.content_type_id "  # noqa: S608
        "WHERE ct.app_label = %s AND p.codename = %s AND ("
        f"EXISTS (SELECT 1 FROM {user_perms} up WHERE up.permission_id = p.id AND up.user_id = %s) "
        f"OR EXISTS (SELECT 1 FROM {group_perms} gp JOIN {user_groups} ug ON ug.group_id = gp.group_id "
        "WHERE gp.permission_id = p.id AND ug.user_id = %s)) LIMIT 1"
    )
