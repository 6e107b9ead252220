"""Operator alerts: in the bell and by e-mail, when instances fail, when a compensation needs a person and when
the sweep falls behind; throttled, so that a storm is one message.

The engine's failures and compensations needing a person reach an outbox (``console.models.AlertOutbox``) in the
engine's own statement (``alert_rows``, a receiver of ``orchestrator.events.unit_finishing``). A periodic pass
(``console.tasks.operator_alerts``, every ``BATON_ALERT_INTERVAL`` seconds) takes each kind's rows; if there are
some and the last message of that kind (``console.models.AlertWatermark``) is at least ``BATON_ALERT_THROTTLE``
seconds old, it sends ONE message summing them all up (how many, in which workflows, the commonest error) to every
active operator and deletes them; otherwise they wait for the next message. The sweep falling behind is read live.
Nothing is sent inside the engine's transactions, so a failing instance never waits for a mail server: the bell's
notices are written with the delete (if they fail, the rows come back and the next pass tells them), the e-mail
goes after commit (a mail server that is down costs that e-mail, logged; the bell has the news).
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from approvals.models import Notification
from approvals.notifications import _send_mail, members_of
from console.models import AlertOutbox, AlertWatermark
from console.selectors import _sweep_lag
from orchestrator.models import StepKind
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


def alert_rows(sender: Any, unit: Any, **_kwargs: Any) -> None:
    """Receiver of ``unit_finishing`` (orchestrator/events.py): an :class:`AlertOutbox` row for each event of the
    unit operators are told of (an instance failed; a compensation's escalation opened), written with the events."""
    for event in unit.events:
        if event.action == "instance.failed":
            kind = FAILED
        elif (
            event.action == "task.opened"
            and event.payload.get("kind") == "escalation"
            and event.payload.get("step_kind") == StepKind.COMPENSATION
        ):
            kind = COMPENSATION
        else:
            continue
        reason = (event.reason or "").strip()
        unit.inserts.append(
            AlertOutbox(
                kind=kind,
                workflow_name=unit.instance.workflow_name,
                title=unit.instance.title,
                reason=reason.splitlines()[0][:200] if reason else "",
                occurred_at=event.occurred_at,
            )
        )


def _take(kind: str) -> list[tuple[str, str, str]]:
    """Delete the outbox rows of ``kind`` and return them as (workflow, title, reason), oldest first. One statement:
    what it returns is exactly what it deleted, so a row committed meanwhile stays for the next pass."""
    table = AlertOutbox._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {table} WHERE kind = %s RETURNING id, workflow_name, title, reason",  # noqa: S608 - our table
            [kind],
        )
        rows = sorted(cursor.fetchall())
    return [(workflow, title, reason) for _, workflow, title, reason in rows]


def _failures(rows: list[tuple[str, str, str]]) -> str:
    """A sentence naming how many instances failed, the workflows and the commonest error."""
    workflows = Counter(name for name, _, _ in rows)
    reasons = Counter(reason[:80] for _, _, reason in rows)
    top, top_n = reasons.most_common(1)[0]
    where = ", ".join(f"{name} ({n})" for name, n in workflows.most_common(3))
    noun = "instance" if len(rows) == 1 else "instances"
    return f"{len(rows)} {noun} failed: {where}. Commonest error ({top_n}): {top or 'none recorded'}"


def _compensations(rows: list[tuple[str, str, str]]) -> str:
    noun = "compensation needs" if len(rows) == 1 else "compensations need"
    workflow, title, _ = rows[0]
    return f"{len(rows)} {noun} a person (failed to undo on its own), e.g. {title or f'a {workflow} instance'}"


def alert_pass(now: datetime | None = None) -> dict[str, int]:
    """One pass over the three kinds; returns how many events each message told (0: no message this pass)."""
    now = now or timezone.now()
    told: dict[str, int] = {}
    for kind, say in ((FAILED, _failures), (COMPENSATION, _compensations)):
        told[kind] = _maybe_send(kind, now, lambda _since, k=kind, s=say: _outbox_news(k, s))
    told[SWEEP] = _maybe_send(kind=SWEEP, now=now, read=lambda since: _sweep_news(since, now))
    return told


def _outbox_news(kind: str, say: Any) -> tuple[int, str]:
    rows = _take(kind)
    return (len(rows), say(rows)) if rows else (0, "")


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
            return 0  # the news waits in the outbox: the next message after the throttle covers it too
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
