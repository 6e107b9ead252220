"""Times in the API's answers: UTC, written with ``Z``, whatever the site's or the person's time zone.

DRF writes a time in the time zone active for the request: the site's (``BATON_TIME_ZONE``) for a token, the
person's (approvals/timezones.py) for a browser session, so ``created_at`` came as ``…+01:00`` to one client and
``…Z`` to another, and the audit trail's ``occurred_at`` (its hashed content) as ``…+00:00``. The API's times all
carry their offset (it refuses a naive one), so UTC loses nothing, and one way of writing them lets a client
compare them as text.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from rest_framework.views import APIView


class ApiTimesInUtc:
    """UTC for every DRF view (the API's; not the tokens page, a page for people, which shows their zone). After
    ``approvals.timezones.UserTimeZoneMiddleware``; the zone active before the request is back after it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with timezone.override(timezone.get_current_timezone()):
            return self.get_response(request)

    def process_view(self, request: HttpRequest, view_func: Callable[..., Any], *_args: Any) -> None:
        view_class = getattr(view_func, "cls", None)
        if isinstance(view_class, type) and issubclass(view_class, APIView):
            timezone.activate(UTC)
