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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Taken:
    """What one pass took from the outbox for a kind, summed up: how many rows, the commonest workflows (at most
    three, with their counts), the commonest reason (its first 80 characters) with its count, and the oldest row's
    workflow and title. Ties go to what came first."""

    count: int
    workflows: list[tuple[str, int]]
    reason: tuple[str, int]
    first: tuple[str, str]


# One statement: what it sums up is exactly what it deleted, so a row committed meanwhile stays for the next pass.
# PostgreSQL sums the rows up itself: fetched into the pass, a storm of a million failures (a bulk retry of a million
# instances that fail again) cost the beat's worker half a gigabyte, at every pass if that failed.
_TAKE_SUMMED = """
WITH gone AS (DELETE FROM {table} WHERE kind = %s RETURNING id, workflow_name, title, left(reason, 80) AS reason)
SELECT 'count', '', '', count(*), 0::bigint FROM gone
UNION ALL (SELECT 'workflow', workflow_name, '', count(*), min(id) FROM gone GROUP BY workflow_name
           ORDER BY count(*) DESC, min(id) LIMIT 3)
UNION ALL (SELECT 'reason', reason, '', count(*), min(id) FROM gone GROUP BY reason ORDER BY count(*) DESC, min(id)
           LIMIT 1)
UNION ALL (SELECT 'first', workflow_name, title, 1, id FROM gone ORDER BY id LIMIT 1)
"""


def _take(kind: str) -> Taken | None:
    """Delete the outbox rows of ``kind`` and return them summed up (None when there were none), in one statement."""
    table = connection.ops.quote_name(AlertOutbox._meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_TAKE_SUMMED.format(table=table), [kind])
            found = cursor.fetchall()
        else:  # the demo's SQLite: no DELETE in a WITH; its storms are small
            cursor.execute(
                f"DELETE FROM {table} WHERE kind = %s RETURNING id, workflow_name, title, reason",  # noqa: S608
                [kind],
            )
            found = _summed(sorted(cursor.fetchall()))
    count = next(n for tag, _, _, n, _ in found if tag == "count")
    if not count:
        return None
    # UNION ALL keeps no order of its own: the commonest first, ties to the one seen first.
    workflows = sorted((-n, at, name) for tag, name, _, n, at in found if tag == "workflow")
    reason = next((text, n) for tag, text, _, n, _ in found if tag == "reason")
    first = next((name, title) for tag, name, title, _, _ in found if tag == "first")
    return Taken(count, [(name, -n) for n, _, name in workflows], reason, first)


def _summed(rows: list[tuple[int, str, str, str]]) -> list[tuple[str, str, str, int, int]]:
    """The rows (id, workflow, title, reason), oldest first, summed up as ``_TAKE_SUMMED`` answers."""
    if not rows:
        return [("count", "", "", 0, 0)]
    workflows: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    firsts: dict[tuple[str, str], int] = {}
    for row_id, workflow, _, reason in rows:
        workflows[workflow] += 1
        reasons[reason[:80]] += 1
        firsts.setdefault(("workflow", workflow), row_id)
        firsts.setdefault(("reason", reason[:80]), row_id)
    first_id, workflow, title, _ = rows[0]
    return [
        ("count", "", "", len(rows), 0),
        *[("workflow", name, "", n, firsts["workflow", name]) for name, n in workflows.most_common(3)],
        *[("reason", text, "", n, firsts["reason", text]) for text, n in reasons.most_common(1)],
        ("first", workflow, title, 1, first_id),
    ]


def _failures(taken: Taken) -> str:
    """A sentence naming how many instances failed, the workflows and the commonest error."""
    top, top_n = taken.reason
    where = ", ".join(f"{name} ({n})" for name, n in taken.workflows)
    noun = "instance" if taken.count == 1 else "instances"
    return f"{taken.count} {noun} failed: {where}. Commonest error ({top_n}): {top or 'none recorded'}"


def _compensations(taken: Taken) -> str:
    noun = "compensation needs" if taken.count == 1 else "compensations need"
    workflow, title = taken.first
    return f"{taken.count} {noun} a person (failed to undo on its own), e.g. {title or f'a {workflow} instance'}"


def alert_pass(now: datetime | None = None) -> dict[str, int]:
    """One pass over the three kinds; returns how many events each message told (0: no message this pass)."""
    now = now or timezone.now()
    told: dict[str, int] = {}
    for kind, say in ((FAILED, _failures), (COMPENSATION, _compensations)):
        told[kind] = _maybe_send(kind, now, lambda _since, k=kind, s=say: _outbox_news(k, s))
    told[SWEEP] = _maybe_send(kind=SWEEP, now=now, read=lambda since: _sweep_news(since, now))
    return told


def _outbox_news(kind: str, say: Any) -> tuple[int, str]:
    taken = _take(kind)
    return (taken.count, say(taken)) if taken is not None else (0, "")


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
        recipients = members_of([OPERATORS])
        if not recipients:
            # Nobody to tell: the news waits in the outbox for the first active operator (taken now, it was told to
            # nobody and lost for good).
            return 0
        count, message = read(mark.seen_until or now - throttle())
        if not count:
            return 0
        url = _incidents_url()
        Notification.objects.bulk_create(
            [Notification(user_id=uid, kind=kind, message=message[:300], url=url) for uid in recipients]
        )
        mark.seen_until, mark.sent_at, mark.told = now, now, mark.told + count
        mark.save(update_fields=["seen_until", "sent_at", "told"])
        groups = [f"user.{uid}" for uid in recipients]
        event = {"type": "notification", "message": message, "level": "warning", "refresh": ["counts", "notifications"]}
        transaction.on_commit(lambda: send_now(groups, event))
        transaction.on_commit(lambda: _send_mail(kind, message, url, recipients))
    return count
