"""Each person's time zone: kept in their profile, carried in the session, activated for every request.

Pages show times with ``|date`` (or ``{% when %}``) in the current time zone, and date inputs are read with
``timezone.make_aware`` in it (``orchestrator/timeparse.py``), so activating the person's zone is all that is
needed for both. The zone rides in the session (set at sign-in and when changed), so no page pays a query for it.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from django import forms
from django.conf import settings
from django.contrib.auth.signals import user_logged_in
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from orchestrator.bidi import isolate
from orchestrator.recurrence import NOT_PLACES

SESSION_KEY = "baton_time_zone"
# Whether the person chose a zone (else the page proposes the browser's); stored beside the zone.
SESSION_CHOSEN = "baton_time_zone_chosen"


@lru_cache(maxsize=1)
def zone_names() -> tuple[str, ...]:
    """Every IANA zone name this Python knows that names a place, sorted (about 600): not ``localtime`` (the
    server's own zone) or the ``Factory`` placeholder (``orchestrator.recurrence.NOT_PLACES``)."""
    return tuple(sorted(zoneinfo.available_timezones() - NOT_PLACES))


def valid_zone(name: str) -> bool:
    """Whether ``name`` is an IANA zone name this Python knows (no path tricks: only names from the list)."""
    return name in zone_names()


@lru_cache(maxsize=256)
def _zone(name: str) -> zoneinfo.ZoneInfo | None:
    try:
        return zoneinfo.ZoneInfo(name) if valid_zone(name) else None
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


def remember(request: HttpRequest, name: str) -> None:
    """Keep ``name`` (a zone name or "" for the site's zone) in the session; the next request uses it."""
    request.session[SESSION_KEY] = name
    request.session[SESSION_CHOSEN] = bool(name)


def on_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """At sign-in, put the person's zone in the session (one query, at sign-in only)."""
    if request is None or not hasattr(request, "session"):
        return
    from approvals.models import UserProfile

    name = UserProfile.objects.filter(user=user).values_list("time_zone", flat=True).first() or ""
    request.session[SESSION_KEY] = name if valid_zone(name) else ""
    request.session[SESSION_CHOSEN] = bool(name)


def connect() -> None:
    """Read the zone into the session at every sign-in (``ApprovalsConfig.ready``)."""
    user_logged_in.connect(on_login, dispatch_uid="baton-time-zone-login")


class UserTimeZoneMiddleware:
    """Activate the signed-in person's time zone for the request (from the session; no query)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        session = getattr(request, "session", None)
        try:
            name = session.get(SESSION_KEY, "") if session is not None else ""
        except DatabaseError:
            # The session's database is unreachable: the site's zone serves, and the view, meeting the same outage,
            # answers 503 through DatabaseUnavailableMiddleware (an error raised here would be a bare 500).
            name = ""
        zone = _zone(name) if name else None
        if zone is None and not name:
            # No zone chosen: the zone already active (the site's, or a caller's) serves, and whatever the request
            # activates is undone after it, so it never reaches the thread's next request.
            with timezone.override(timezone.get_current_timezone()):
                return self.get_response(request)
        # An override, so the zone active before the request is back afterwards. A name that is no zone any more
        # (None) means the site's.
        with timezone.override(zone):
            return self.get_response(request)


class TimeZoneForm(forms.Form):
    """The settings page's form: a zone name from the list, or empty for the site's zone."""

    time_zone = forms.CharField(
        required=False,
        max_length=64,
        label="Time zone",
        help_text="Times on every page are shown in this zone, and dates you type are read in it. "
        "Leave empty to use the site's zone.",
    )

    def clean_time_zone(self) -> str:
        name = self.cleaned_data["time_zone"].strip()
        if name and not valid_zone(name):
            raise forms.ValidationError(
                f"“{isolate(name[:64])}” is not a time zone name. Pick one from the list, like Europe/Paris or "
                "America/New_York."
            )
        return name


def site_zone() -> str:
    """The site's zone (``BATON_TIME_ZONE``), used by whoever chose none."""
    return settings.TIME_ZONE


def time_zone_set(user: Any, name: str) -> None:
    """Save ``user``'s zone (an IANA name already checked by :class:`TimeZoneForm`, or "" for the site's zone).
    Raises ``ValueError`` for a name that is not a zone."""
    from approvals.models import UserProfile

    if name and not valid_zone(name):
        raise ValueError(f"{isolate(repr(name))} is not a time zone name")
    UserProfile.objects.update_or_create(user=user, defaults={"time_zone": name})
