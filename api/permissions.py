"""Who may call the API at all: an active, signed-in user (session or token). The role checks of each action are
the pages' own (docs/access-matrix.md) and sit in the views: ``orchestrator.selectors.can_operate`` for the
operator's actions, ``add_workflowinstance`` for a start; object checks (a foreign instance or task is 404) in
the selectors the views read through."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request


class IsActiveUser(BasePermission):
    """Signed in (session or token) with an active account: every endpoint's floor."""

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_active)
