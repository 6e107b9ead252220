"""In-app notices to the people who may manage automation: a schedule or a subscription that stopped doing its work
waits for one of them."""

from __future__ import annotations

import logging
from functools import partial

from django.db import transaction

logger = logging.getLogger(__name__)


def tell_owner(owner_id: int | None, *, kind: str, message: str, url: str) -> list[int]:
    """Notify ``owner_id`` (a user id, or None) with ``message`` linking to ``url``, or, when the owner has left
    (deactivated, deleted, or no longer allowed on the automation pages), everyone who may manage automation: a
    notice to someone who cannot act on it reaches nobody. Sent live after the caller's transaction commits.
    Returns the ids told ([] when nobody may manage automation, logged)."""
    from approvals.models import Notification
    from automation.selectors import manager_ids
    from orchestrator.realtime import send_now

    managers = manager_ids()
    recipients = [owner_id] if owner_id is not None and owner_id in managers else managers
    if not recipients:
        logger.warning("%s: nobody may manage automation to be told (%s)", kind, message)
        return []
    Notification.objects.bulk_create(
        Notification(user_id=user_id, kind=kind, message=message[:300], url=url) for user_id in recipients
    )
    event = {"type": "notification", "message": message, "level": "danger", "refresh": ["counts", "notifications"]}
    transaction.on_commit(partial(send_now, [f"user.{user_id}" for user_id in recipients], event))
    return recipients
