"""Operator alerts: in the bell and by e-mail, when instances fail, when a compensation needs a person and when
the sweep falls behind; throttled, so that a storm is one message.

A periodic pass (``console.tasks.operator_alerts``, every ``BATON_ALERT_INTERVAL`` seconds) reads what happened
since the watermark of each kind (``console.models.AlertWatermark``). If there is news and the last message of
that kind is at least ``BATON_ALERT_THROTTLE`` seconds old, it sends ONE message summing it all up (how many,
in which workflows, the commonest error) to every active operator, and moves the watermark; otherwise the news
waits for the next message. Nothing here runs inside the engine's transactions: an alert that fails to send is
logged and tried again on the next pass, and a failing instance never waits for a mail server.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from approvals.models import ACTIONABLE_TASK_STATES, HumanTask, Notification, TaskKind
from approvals.notifications import _send_mail, members_of
from console.models import AlertWatermark
from console.selectors import _sweep_lag
from orchestrator.models import AuditEvent, StepKind
from orchestrator.realtime import send_now

logger = logging.getLogger(__name__)

OPERATORS = "operators"
FAILED, COMPENSATION, SWEEP = "instance.failed", "compensation.escalated", "sweep.behind"


def throttle() -> timedelta:
    """The least time between two messages of one kind (``BATON_ALERT_THROTTLE`` seconds, default 300)."""
    return timedelta(seconds=float(getattr(settings, "BATON_ALERT_THROTTLE", 300)))


def _incidents_url() -> str:
    try:
        return reverse("console:incidents")
    except NoReverseMatch:  # pragma: no cover - the console's URLs are always installed with it
        return ""


def _failures_since(since: datetime | None, until: datetime) -> tuple[int, str]:
    """How many instances failed in (since, until], and a sentence naming the workflows and commonest error."""
    events = AuditEvent.objects.filter(action="instance.failed", occurred_at__lte=until)
    if since is not None:
        events = events.filter(occurred_at__gt=since)
    rows = list(events.values_list("instance__workflow_name", "reason")[:1000])
    if not rows:
        return 0, ""
    workflows = Counter(name for name, _ in rows)
    reasons = Counter((reason or "").splitlines()[0][:80] if reason else "" for _, reason in rows)
    top, top_n = reasons.most_common(1)[0]
    where = ", ".join(f"{name} ({n})" for name, n in workflows.most_common(3))
    more = "" if len(rows) < 1000 else " or more"
    noun = "instance" if len(rows) == 1 else "instances"
    return len(rows), f"{len(rows)}{more} {noun} failed: {where}. Commonest error ({top_n}): {top or 'none recorded'}"


def _compensations_since(since: datetime | None, until: datetime) -> tuple[int, str]:
    tasks = HumanTask.objects.filter(
        kind=TaskKind.ESCALATION,
        step__kind=StepKind.COMPENSATION,
        created_at__lte=until,
        state__in=ACTIONABLE_TASK_STATES,
    )
    if since is not None:
        tasks = tasks.filter(created_at__gt=since)
    n = tasks.count()
    if not n:
        return 0, ""
    first = tasks.select_related("instance").order_by("created_at").first()
    title = first.instance.title if first is not None else ""
    noun = "compensation needs" if n == 1 else "compensations need"
    return n, f"{n} {noun} a person (failed to undo on its own), e.g. {title}"


def alert_pass(now: datetime | None = None) -> dict[str, int]:
    """One pass over the three kinds; returns how many events each message told (0: no message this pass)."""
    now = now or timezone.now()
    told: dict[str, int] = {}
    for kind, read in ((FAILED, _failures_since), (COMPENSATION, _compensations_since)):
        told[kind] = _maybe_send(kind, now, lambda since, r=read: r(since, now))
    told[SWEEP] = _maybe_send(kind=SWEEP, now=now, read=lambda since: _sweep_news(since, now))
    return told


def _sweep_news(since: datetime | None, now: datetime) -> tuple[int, str]:
    lag = _sweep_lag(now)
    if not lag["behind"]:
        return 0, ""
    behind = now - lag["since"]
    return 1, f"The sweep is behind: due work has waited {int(behind.total_seconds())} s (workers or beat down?)"


def _maybe_send(kind: str, now: datetime, read: Any) -> int:
    with transaction.atomic():
        mark, _ = AlertWatermark.objects.select_for_update().get_or_create(kind=kind)
        if mark.sent_at is not None and now - mark.sent_at < throttle():
            return 0  # the news waits: the next message after the throttle covers it too
        # A first pass tells only what happened within the throttle before it, not the whole history.
        count, message = read(mark.seen_until or now - throttle())
        if not count:
            return 0
        recipients = members_of([OPERATORS])
        url = _incidents_url()
        Notification.objects.bulk_create(
            [Notification(user_id=uid, kind=kind, message=message[:300], url=url) for uid in recipients]
        )
        mark.seen_until, mark.sent_at, mark.told = now, now, mark.told + count
        mark.save(update_fields=["seen_until", "sent_at", "told"])
        groups = [f"user.{uid}" for uid in recipients]
        event = {"type": "notification", "message": message, "level": "warning", "refresh": ["counts", "notifications"]}
        if recipients:
            transaction.on_commit(lambda: send_now(groups, event))
            transaction.on_commit(lambda: _send_mail(kind, message, url, recipients))
    return count
