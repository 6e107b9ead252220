"""In-app notifications (the bell) and their e-mails, written in the caller's transaction, sent after commit."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.mail import send_mass_mail
from django.db import transaction
from django.urls import reverse

from approvals.models import HumanTask, Notification
from orchestrator import live_names, rows
from orchestrator.bidi import isolate
from orchestrator.models import WorkflowInstance
from orchestrator.services.unit import Unit

logger = logging.getLogger(__name__)
# A group-wide notice goes to at most this many people; beyond that a queue, not a bell, is the right tool.
FAN_OUT_LIMIT = 200


def members_of(group_names: Iterable[str], *, exclude: Iterable[int | None] = ()) -> list[int]:
    """Active members of the groups, less ``exclude`` (an instance's initiator, who may not act on it).

    Raises nothing of its own.
    """
    return list(
        User.objects.filter(groups__name__in=list(group_names), is_active=True)
        .exclude(pk__in=[uid for uid in exclude if uid])
        .values_list("pk", flat=True)
        .distinct()[:FAN_OUT_LIMIT]
    )


def notify(
    unit: Unit,
    user_ids: Iterable[int],
    kind: str,
    message: str,
    *,
    url: str = "",
    task: HumanTask | None = None,
) -> None:
    """Create a notification for each user, then after commit e-mail them and ring their bell.

    Callers pass active people (``members_of`` reads only those); the e-mail is sent to active accounts only in
    any case, so a person deactivated meanwhile gets no mail.

    Raises nothing of its own (a mail failure after commit is logged).
    """
    recipients = sorted({uid for uid in user_ids if uid})
    if not recipients:
        return
    unit.inserts += [
        Notification(user_id=uid, kind=kind, message=message[:300], url=url, task=task, instance_id=unit.instance.pk)
        for uid in recipients
    ]
    unit.notify(
        [live_names.user_group(uid) for uid in recipients],
        {
            "type": live_names.NOTIFICATION,
            "message": message,
            "level": "info",
            "refresh": [live_names.COUNTS, live_names.NOTIFICATIONS],
        },
    )
    # Addresses are read after commit, outside the instance's lock: a mail is news, not part of the decision.
    transaction.on_commit(partial(_send_mail, kind, message, url, recipients))


def _emails_of(user_ids: list[int]) -> list[str]:
    with rows.cursor() as cursor:
        cursor.execute(
            f"SELECT email FROM {User._meta.db_table} WHERE id IN ({', '.join(['%s'] * len(user_ids))})"
            " AND email <> '' AND is_active",
            user_ids,
        )
        return [row[0] for row in cursor.fetchall()]


def _send_mail(kind: str, message: str, url: str, user_ids: list[int]) -> None:
    link = f"\n\n{settings.BATON_BASE_URL.rstrip('/')}{url}" if url else ""
    subject = f"[Baton] {message}"[:150]
    try:
        emails = _emails_of(user_ids)
        if not emails:
            return
        send_mass_mail(
            [(subject, f"{message}{link}", settings.DEFAULT_FROM_EMAIL, [email]) for email in emails],
            fail_silently=False,
        )
    except Exception:
        # The notice is in the bell already; a mail server outage must not undo or repeat the work.
        logger.exception("could not e-mail %s notification", kind)


def tell_initiator(sender: Any, *, unit: Unit, instance: WorkflowInstance, **kwargs: Any) -> None:
    """Receiver of ``orchestrator.signals.instance_finished``: whoever started the work hears how it ended (a
    notification written with the outcome, in the unit's statement), unless they ended it themselves. Raises
    nothing of its own."""
    if instance.initiator_id is None or unit.actor.user_id == instance.initiator_id:
        return
    outcome = instance.outcome if instance.state == "completed" else instance.state
    notify(
        unit,
        [instance.initiator_id],
        f"instance.{instance.state}",
        f"{isolate(instance.title or instance)}: {outcome}",
        url=reverse("console:instance_detail", args=[instance.pk]),
    )
