"""A person's own settings page: the time zone their pages use (proposed from the browser's)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme

from approvals.models import UserProfile
from approvals.timezones import TimeZoneForm, remember, site_zone, time_zone_set, zone_names
from orchestrator.typing import AuthedRequest


@login_required
def profile(request: AuthedRequest) -> HttpResponse:
    """GET: the form, with the browser's zone offered by the page's script. POST (CSRF): save the zone, keep it in
    the session and go back to ``next`` (a local address) or this page; a name that is no zone answers 400 with
    what was typed kept."""
    current = UserProfile.objects.filter(user=request.user).values_list("time_zone", flat=True).first() or ""
    if request.method == "POST":
        form = TimeZoneForm(request.POST)
        if form.is_valid():
            name = form.cleaned_data["time_zone"]
            time_zone_set(request.user, name)
            remember(request, name)
            messages.success(request, f"Times are now shown in {name or site_zone() + ' (the site zone)'}.")
            target = request.POST.get("next", "")
            if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
                return redirect(target)
            return redirect("approvals:profile")
        status = 400
    else:
        form = TimeZoneForm(initial={"time_zone": current})
        status = 200
    context = {
        "form": form,
        "zones": zone_names(),
        "current": current,
        "site_zone": site_zone(),
        "active_nav": "profile",
    }
    return render(request, "approvals/profile.html", context, status=status)
