"""Who may call what: the same role checks as the pages (docs/access-matrix.md). Object checks (a foreign
instance or task is 404) live in the selectors the views read through."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from orchestrator import selectors


class IsActiveUser(BasePermission):
    """Signed in (session or token) with an active account: every endpoint's floor."""

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_active)


class CanStart(BasePermission):
    """Starting an instance needs ``orchestrator.add_workflowinstance``, as the start page does."""

    message = "Your role may not start workflows."

    def has_permission(self, request: Request, view: Any) -> bool:
        return request.user.has_perm("orchestrator.add_workflowinstance")


def may_operate(user: Any) -> bool:
    """Retry, skip, pause, resume and cancel: operators and admins (``orchestrator.operate_workflowinstance``)."""
    return selectors.can_operate(user)
