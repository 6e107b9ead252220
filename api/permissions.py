"""Who may call the API at all: an active, signed-in user (session or token). The role checks of each action are
the pages' own (docs/access-matrix.md) and sit in the views: ``orchestrator.selectors.can_operate`` for the
operator's actions, ``add_workflowinstance`` for a start; object checks (a foreign instance or task is 404) in
the selectors the views read through."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import Permission
from django.db.models import Q
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
    their groups (two queries) to answer one; this asks for the one. With another authentication backend
    configured (``AUTHENTICATION_BACKENDS``) it defers to ``has_perm``, which asks every backend.
    """
    if list(settings.AUTHENTICATION_BACKENDS) != MODEL_BACKEND_ONLY:
        return bool(user.has_perm(perm))
    if not (user and user.is_authenticated and user.is_active):
        return False
    if user.is_superuser:
        return True
    app_label, _, codename = perm.partition(".")
    return (
        Permission.objects.filter(content_type__app_label=app_label, codename=codename)
        .filter(Q(user=user) | Q(group__user=user))
        .exists()
    )
