"""Reads for the automation pages (a fixed number of queries per page, pinned in tests)."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.utils.dateparse import parse_datetime

from automation.models import DeliveryState, Schedule, ScheduleFire, WebhookDelivery, WebhookSubscription
from orchestrator.accounts import holder_ids


def may_manage(user: Any) -> bool:
    """Admins and holders of ``automation.manage_automation`` see and change schedules and webhooks."""
    return bool(user.is_active and (user.is_superuser or user.has_perm("automation.manage_automation")))


def manager_ids() -> list[int]:
    """The active users :func:`may_manage` allows: superusers and holders of the permission, directly or by group."""
    return holder_ids("automation", "manage_automation")


def schedule_list() -> QuerySet[Schedule]:
    """Every schedule, each with ``last_outcome``: its latest fire's (a ``FireOutcome`` value, None before the
    first), so that the list tells a schedule failing at every fire from one that starts."""
    latest = ScheduleFire.objects.filter(schedule=OuterRef("pk")).order_by("-fire_time").values("outcome")[:1]
    return Schedule.objects.select_related("owner").annotate(last_outcome=Subquery(latest)).order_by("retired", "name")


def recent_fires(schedule: Schedule, limit: int = 20) -> list[ScheduleFire]:
    return list(schedule.fires.select_related("instance").order_by("-fire_time")[:limit])


def webhook_list() -> QuerySet[WebhookSubscription]:
    return (
        WebhookSubscription.objects.select_related("owner")
        .annotate(
            delivered=Count("deliveries", filter=Q(deliveries__state=DeliveryState.DELIVERED)),
            failed=Count("deliveries", filter=Q(deliveries__state=DeliveryState.FAILED)),
            waiting=Count(
                "deliveries",
                filter=Q(deliveries__state__in=[DeliveryState.PENDING, DeliveryState.RETRYING, DeliveryState.SENDING]),
            ),
        )
        .order_by("-active", "name")
    )


def recent_deliveries(subscription: WebhookSubscription, limit: int = 50) -> list[WebhookDelivery]:
    """The latest deliveries, each with ``attempt_log``: its attempts with their times as datetimes."""
    deliveries = list(subscription.deliveries.order_by("-created_at", "-id")[:limit])
    for delivery in deliveries:
        delivery.attempt_log = [  # type: ignore[attr-defined]
            {**entry, "at": parse_datetime(str(entry.get("at", "")))}
            for entry in delivery.log
            if isinstance(entry, dict)
        ]
    return deliveries
