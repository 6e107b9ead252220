"""Counts in the navigation, on every page."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from approvals.selectors import inbox_counts, shows_manager_pages


def nav_counts(request: HttpRequest) -> dict[str, Any]:
    """Open tasks assigned to the user and claimable through their groups (two indexed counts)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    # Lazy: an htmx fragment that never shows the navigation costs no query for it.
    return {
        "nav_counts": SimpleLazyObject(lambda: inbox_counts(user)),
        "nav_is_manager": SimpleLazyObject(lambda: shows_manager_pages(user)),
    }
