"""Pages for admins: schedules (next runs, fires) and webhooks (secret, deliveries with their status)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from automation import schedules, selectors, webhooks
from automation.forms import RollSecretForm, ScheduleForm, WebhookEditForm, WebhookForm
from automation.models import WEBHOOK_EVENTS, Schedule, ScheduleSource, WebhookSubscription
from orchestrator import registry
from orchestrator.accounts import request_meta
from orchestrator.audit import Actor
from orchestrator.bidi import isolate
from orchestrator.forms import add_field_errors


def managers_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Signed in, then admins only: anyone else is told the page does not exist (404)."""

    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not selectors.may_manage(request.user):
            raise Http404("No such page.")
        return view(request, *args, **kwargs)

    return wrapped


@managers_only
def schedule_list(request: HttpRequest) -> HttpResponse:
    """Every schedule with its next run, and the schedules declared in code that do not run (the sync left them
    out: a name an admin's schedule has, a name declared twice, an input the start form refuses)."""
    context = {
        "schedules": selectors.schedule_list(),
        "left_out": schedules.declared_left_out(),
        "pause_after": _pause_after(),
        "active_nav": "automation",
    }
    return render(request, "automation/schedule_list.html", context)


def _pause_after() -> dict[str, float]:
    """The rule a failing schedule pauses itself by, for the pages: ``failures`` in a row over ``hours``."""
    return {"failures": schedules.PAUSE_AFTER_FAILURES, "hours": schedules.PAUSE_AFTER.total_seconds() / 3600}


def _typed_into(schedule: Schedule, data: dict[str, Any], user: Any) -> Schedule:
    """``schedule`` with what the admin typed into :class:`ScheduleForm` (its ``cleaned_data``: an interval in
    minutes, stored in seconds; a cron left out when only an interval was given), owned by ``user``. Whoever
    creates or changes what a schedule starts owns it: its starts' initiator, kept off their tasks by four-eyes (an
    admin could otherwise set the input of someone else's schedule, then approve it). Returns ``schedule``."""
    minutes = data.get("interval_minutes")
    schedule.name = data["name"]
    schedule.workflow_name = data["workflow_name"]
    schedule.cron = "" if minutes and not data["cron"] else data["cron"]
    schedule.interval_seconds = minutes * 60 if minutes else None
    schedule.timezone = data["timezone"]
    schedule.missed = data["missed"]
    schedule.input = data["input"]
    schedule.owner = user
    return schedule


@require_http_methods(["GET", "HEAD", "POST"])
@managers_only
def schedule_new(request: HttpRequest) -> HttpResponse:
    """The form; a POST creates the schedule (400 with what was typed and the reasons when it cannot)."""
    # A fresh one-time token each time the empty form is given: sent twice, the form creates once.
    form = ScheduleForm(request.POST or None, initial={"form_token": secrets.token_urlsafe(24)})
    status = 200
    if request.method == "POST":
        if form.is_valid():
            schedule = _typed_into(Schedule(source=ScheduleSource.ADMIN), form.cleaned_data, request.user)
            schedule.form_token = form.cleaned_data["form_token"]
            try:
                schedules.schedule_save(schedule, actor=Actor.of(request.user), request_meta=request_meta(request))
            except schedules.ScheduleSentTwice as twice:
                named = isolate(twice.schedule.name)
                messages.info(request, f"This form was sent already: it created {named} once, below.")
                return redirect("automation:schedule_detail", twice.schedule.pk)
            except schedules.ScheduleInvalid as exc:
                add_field_errors(form, exc.errors)
            else:
                named = isolate(schedule.name)
                messages.success(request, f"Schedule {named} created; it first fires at the time below.")
                return redirect("automation:schedule_detail", schedule.pk)
        status = 400
    return render(request, "automation/schedule_form.html", {"form": form, "active_nav": "automation"}, status=status)


def _seen_now(form: Any, stamp: str) -> None:
    """``form``, refused because the object changed since it was shown, made to carry ``stamp`` (the object's edit
    stamp now): saving it again, having looked, replaces the other admin's change on purpose."""
    form.data = form.data.copy()
    form.data["seen"] = stamp


def _schedule_initial(schedule: Schedule) -> dict[str, Any]:
    """The form's fields as the schedule holds them (an interval in whole minutes, the input as indented JSON)."""
    return {
        "name": schedule.name,
        "workflow_name": schedule.workflow_name,
        "cron": schedule.cron,
        "interval_minutes": schedule.interval_seconds // 60 if schedule.interval_seconds else None,
        "timezone": schedule.timezone,
        "missed": schedule.missed,
        "input": json.dumps(schedule.input, indent=2, ensure_ascii=False),
        "seen": schedule.edit_stamp(),
    }


@require_http_methods(["GET", "HEAD", "POST"])
@managers_only
def schedule_edit(request: HttpRequest, schedule_id: int) -> HttpResponse:
    """The form holding what the schedule is; a POST changes it (400 with what was typed and the reasons when it
    cannot, the schedule left as it was). A schedule declared in code is changed in code: its page says so."""
    schedule = get_object_or_404(Schedule, pk=schedule_id)
    if schedule.source == ScheduleSource.CODE:
        named = isolate(schedule.name)
        messages.warning(request, f"Schedule {named} is declared in code: change it in its workflow's code.")
        return redirect("automation:schedule_detail", schedule.pk)
    form = ScheduleForm(request.POST or None, initial=_schedule_initial(schedule))
    # The page's title and links name the schedule as saved, not as typed into a form that was refused.
    editing = {"pk": schedule.pk, "name": schedule.name}
    status = 200
    if request.method == "POST":
        if form.is_valid():
            _typed_into(schedule, form.cleaned_data, request.user)
            try:
                schedules.schedule_save(
                    schedule,
                    actor=Actor.of(request.user),
                    request_meta=request_meta(request),
                    seen=form.cleaned_data["seen"],
                )
            except schedules.ScheduleInvalid as exc:
                add_field_errors(form, exc.errors)
                if isinstance(exc, schedules.ScheduleChanged):
                    _seen_now(form, exc.stamp)
            else:
                messages.success(request, f"Schedule {isolate(schedule.name)} changed; its next runs are below.")
                return redirect("automation:schedule_detail", schedule.pk)
        status = 400
    context = {"form": form, "editing": editing, "active_nav": "automation"}
    return render(request, "automation/schedule_form.html", context, status=status)


@managers_only
def schedule_detail(request: HttpRequest, schedule_id: int) -> HttpResponse:
    """A schedule: its recurrence, its next five runs and its recent fires."""
    schedule = get_object_or_404(Schedule.objects.select_related("owner"), pk=schedule_id)
    upcoming = schedules.upcoming(schedule, 5) if schedule.enabled else []
    left_out = schedules.declared_left_out(schedule.name)
    context = {
        "schedule": schedule,
        "upcoming": upcoming,
        "missed": schedules.missed_runs(schedule),
        # As schedules._tell_failing decides (automation.notices.tell_owner): an owner who left is not told.
        "owner_told": schedule.owner is not None and selectors.may_manage(schedule.owner),
        "problem": schedules.recurrence_problem(schedule),
        # Failing, not yet paused: since when, in the schedule's zone (its times are read there), and the rule.
        "failing_since": (
            schedules.local_time(schedule, schedule.failing_since)
            if schedule.enabled and not schedule.retired and schedule.consecutive_failures and schedule.failing_since
            else ""
        ),
        "pause_after": _pause_after(),
        "fires": selectors.recent_fires(schedule),
        # A declaration of this name the sync left out: the admin's schedule it clashes with, or this declared one's
        # new declaration (this one runs as last declared).
        "left_out": left_out,
        "retired_why": _retired_why(schedule, left_out),
        "active_nav": "automation",
    }
    return render(request, "automation/schedule_detail.html", context)


@require_POST
@managers_only
def schedule_toggle(request: HttpRequest, schedule_id: int) -> HttpResponse:
    """Pause or resume (``enabled=0|1``)."""
    schedule = get_object_or_404(Schedule, pk=schedule_id)
    enabled = request.POST.get("enabled") == "1"
    try:
        schedules.schedule_toggle(
            schedule.pk, enabled=enabled, actor=Actor.of(request.user), request_meta=request_meta(request)
        )
    except schedules.ScheduleInvalid as exc:
        messages.warning(request, " ".join(" ".join(v) for v in exc.errors.values()))
    else:
        messages.success(request, f"Schedule {isolate(schedule.name)} {'resumed' if enabled else 'paused'}.")
    return redirect("automation:schedule_detail", schedule.pk)


@managers_only
def webhook_list(request: HttpRequest) -> HttpResponse:
    """Every subscription with its delivery counts."""
    context = {"subscriptions": selectors.webhook_list(), "events": WEBHOOK_EVENTS, "active_nav": "automation"}
    return render(request, "automation/webhook_list.html", context)


@require_http_methods(["GET", "HEAD", "POST"])
@managers_only
def webhook_new(request: HttpRequest) -> HttpResponse:
    """The form; a POST subscribes (400 with what was typed and the reasons when it cannot)."""
    # A fresh one-time token each time the empty form is given: sent twice, the form subscribes once.
    form = WebhookForm(request.POST or None, initial={"form_token": secrets.token_urlsafe(24)})
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            try:
                subscription = webhooks.webhook_subscribe(
                    owner=request.user,
                    name=data["name"],
                    url=data["url"],
                    events=data["events"],
                    request_meta=request_meta(request),
                    form_token=data["form_token"],
                )
            except webhooks.WebhookSentTwice as twice:
                named = isolate(twice.subscription.name)
                messages.info(request, f"This form was sent already: it subscribed {named} once, below.")
                return redirect("automation:webhook_detail", twice.subscription.pk)
            except webhooks.WebhookInvalid as exc:
                add_field_errors(form, exc.errors)
            else:
                named = isolate(subscription.name)
                messages.success(request, f"Subscribed {named}. Give its receiver the secret below.")
                return redirect("automation:webhook_detail", subscription.pk)
        status = 400
    return render(request, "automation/webhook_form.html", {"form": form, "active_nav": "automation"}, status=status)


@require_http_methods(["GET", "HEAD", "POST"])
@managers_only
def webhook_edit(request: HttpRequest, webhook_id: int) -> HttpResponse:
    """The subscription form holding what the subscription is; a POST changes it through
    :func:`automation.webhooks.webhook_change` (400 with what was typed and the reasons when it cannot, the
    subscription left as it was). A paused one says why and offers to resume when saved."""
    subscription = get_object_or_404(WebhookSubscription, pk=webhook_id)
    initial = {
        "name": subscription.name,
        "url": subscription.url,
        "events": subscription.events,
        "seen": subscription.edit_stamp(),
    }
    form = WebhookEditForm(request.POST or None, initial=initial, paused=not subscription.active)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            try:
                changed_subscription, changed = webhooks.webhook_change(
                    subscription.pk,
                    actor=Actor.of(request.user),
                    name=data["name"],
                    url=data["url"],
                    events=data["events"],
                    resume=bool(data.get("resume")),
                    request_meta=request_meta(request),
                    seen=data["seen"],
                )
            except webhooks.WebhookInvalid as exc:
                add_field_errors(form, exc.errors)
                if isinstance(exc, webhooks.WebhookChanged):
                    _seen_now(form, exc.stamp)
            else:
                messages.success(request, _changed_message(changed_subscription, changed))
                return redirect("automation:webhook_detail", subscription.pk)
        status = 400
    context = {"form": form, "subscription": subscription, "active_nav": "automation"}
    return render(request, "automation/webhook_form.html", context, status=status)


def _changed_message(subscription: WebhookSubscription, changed: list[str]) -> str:
    """What saving the edit form did to ``subscription`` (as saved), in words; a paused one says it still is."""
    name = isolate(subscription.name)
    paused = "" if subscription.active else " It is still paused: resume it below to send what waited."
    if not changed:
        return f"Webhook {name}: nothing changed.{paused}"
    words = {"name": "name", "url": "address", "events": "events"}
    fields = [words[field] for field in changed if field in words]
    parts = [f"{', '.join(fields)} changed"] if fields else []
    if "url" in changed:
        # A paused subscription sends nothing (delivery_send's claim skips it) until it resumes.
        when = "now" if subscription.active else "when it resumes"
        parts.append(f"deliveries waiting for a retry go to the new address {when}")
    if "resumed" in changed:
        parts.append("resumed: what waited is being sent")
    return f"Webhook {name}: {'; '.join(parts)}.{paused}"


@require_http_methods(["GET", "HEAD", "POST"])
@managers_only
def webhook_roll_secret(request: HttpRequest, webhook_id: int) -> HttpResponse:
    """The confirmation: when the old secret stops signing; a POST rolls the secret
    (:func:`automation.webhooks.webhook_roll_secret`) and shows the new one on the subscription's page (400 with
    the reason for a grace not offered)."""
    subscription = get_object_or_404(WebhookSubscription, pk=webhook_id)
    form = RollSecretForm(request.POST or None, initial={"seen": subscription.secret_stamp()})
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                rolled = webhooks.webhook_roll_secret(
                    subscription.pk,
                    actor=Actor.of(request.user),
                    grace_seconds=form.cleaned_data["grace"],
                    request_meta=request_meta(request),
                    seen=form.cleaned_data["seen"],
                )
            except webhooks.WebhookRolledAlready:
                messages.info(
                    request,
                    "The secret this page showed was rolled already (the form was sent twice, or someone else "
                    "rolled it): nothing was rolled again. The secret in use is below.",
                )
                return redirect("automation:webhook_detail", subscription.pk)
            except webhooks.WebhookInvalid as exc:
                add_field_errors(form, exc.errors)
            else:
                if rolled.previous_secret_expires_at:
                    ends = timezone.localtime(rolled.previous_secret_expires_at)
                    until = f"the old one signs beside it until {ends:%Y-%m-%d %H:%M %Z}"
                else:
                    until = "the old one no longer signs anything"
                named = isolate(rolled.name)
                messages.success(request, f"New secret for {named} below: give it to its receiver; {until}.")
                return redirect("automation:webhook_detail", subscription.pk)
        status = 400
    context = {
        "form": form,
        "subscription": subscription,
        # As the subscription's page decides: a previous secret whose grace ended is still stored, signing nothing.
        "in_grace": len(subscription.signing_secrets(timezone.now())) > 1,
        "active_nav": "automation",
    }
    return render(request, "automation/webhook_roll_secret.html", context, status=status)


@managers_only
def webhook_detail(request: HttpRequest, webhook_id: int) -> HttpResponse:
    """A subscription: its secret and signature format, and its latest deliveries with each attempt's status."""
    subscription = get_object_or_404(WebhookSubscription.objects.select_related("owner"), pk=webhook_id)
    now = timezone.now()
    context = {
        "subscription": subscription,
        "in_grace": len(subscription.signing_secrets(now)) > 1,
        # As webhooks._tell_owner decides: an owner who left (deactivated, no longer an admin, deleted) is not told,
        # every admin is.
        "owner_told": subscription.owner is not None and selectors.may_manage(subscription.owner),
        "deliveries": selectors.recent_deliveries(subscription),
        "events": WEBHOOK_EVENTS,
        "tolerance_minutes": webhooks.TOLERANCE // 60,
        "active_nav": "automation",
    }
    return render(request, "automation/webhook_detail.html", context)


@require_POST
@managers_only
def webhook_toggle(request: HttpRequest, webhook_id: int) -> HttpResponse:
    """Pause or resume (``active=0|1``); resuming sends what waited."""
    subscription = get_object_or_404(WebhookSubscription, pk=webhook_id)
    active = request.POST.get("active") == "1"
    webhooks.webhook_toggle(
        subscription.pk, active=active, actor=Actor.of(request.user), request_meta=request_meta(request)
    )
    messages.success(request, f"Webhook {isolate(subscription.name)} {'resumed' if active else 'paused'}.")
    return redirect("automation:webhook_detail", subscription.pk)


def _retired_why(schedule: Schedule, left_out: list[schedules.LeftOut]) -> str:
    """Why a retired schedule is no longer declared, as this process's registry sees it ("" when not retired): its
    workflow no longer declares it, its workflow is not registered, or it is declared (the sync that retired it ran
    where its workflow was not registered; the next one brings it back)."""
    if not schedule.retired:
        return ""
    if any(item.kind == "not_synced" for item in left_out):
        return (
            "the last sync did not find it (its workflow was not registered where the sync ran), but it is declared "
            "here: the next migrate, or a process's first sweep, brings it back."
        )
    if registry.all_versions(schedule.workflow_name):
        return f"{schedule.workflow_name} no longer declares it in its latest version."
    return (
        f"its workflow {schedule.workflow_name} is not registered in this deployment (its module or package is "
        "missing)."
    )
