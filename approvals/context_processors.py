"""Counts in the navigation, on every page."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest


def nav_counts(request: HttpRequest) -> dict[str, Any]:
    """Open tasks assigned to the user and claimable through their groups (two indexed counts)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    from approvals.selectors import inbox_counts, is_manager

    return {"nav_counts": inbox_counts(user), "nav_is_manager": is_manager(user)}
