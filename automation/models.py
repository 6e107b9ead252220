"""Automation above the engine: scheduled starts and signed webhooks.

The engine knows nothing of these tables: schedules start instances through ``instance_start``, and webhooks read
the engine's audit events through the ``unit_finishing`` seam (orchestrator/events.py) into an outbox.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models


def edit_stamp(values: dict[str, Any]) -> str:
    """A short digest of ``values`` (a field name to its JSON-able value: what an edit form shows of an object), the
    same for the same values whatever their keys' order. An edit form carries the stamp of the object as it showed
    it; the save compares it with the object's stamp under the row's lock, so that a change another admin saved
    meanwhile is not silently overwritten with the fields this form showed from before it."""
    text = json.dumps(values, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class MissedPolicy(models.TextChoices):
    CATCH_UP_ONCE = "catch_up_once", "Catch up once"
    SKIP = "skip", "Skip"


class ScheduleSource(models.TextChoices):
    CODE = "code", "Declared in code"
    ADMIN = "admin", "Created on the page"


class Schedule(models.Model):
    """Start ``workflow_name`` with ``input`` at every fire time of a cron expression or an interval."""

    name = models.CharField(max_length=100, unique=True)
    workflow_name = models.CharField(max_length=100)
    input = models.JSONField(default=dict, blank=True)
    cron = models.CharField(max_length=100, blank=True)
    interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    missed = models.CharField(max_length=20, choices=MissedPolicy.choices, default=MissedPolicy.CATCH_UP_ONCE)
    source = models.CharField(max_length=10, choices=ScheduleSource.choices, default=ScheduleSource.ADMIN)
    enabled = models.BooleanField(default=True)
    # Set for a schedule declared in code that no longer is (it stays, disabled, with its history).
    retired = models.BooleanField(default=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    # The next fire time the sweep waits for; NULL while disabled.
    next_fire_at = models.DateTimeField(null=True, blank=True)
    last_fire_at = models.DateTimeField(null=True, blank=True)
    # Interval schedules count their times from here, so they do not drift with the sweep.
    anchor = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The new-schedule form's one-time token that made it ("" when made otherwise), as a webhook's: the same form
    # sent twice finds this schedule instead of coming back refused for its own name.
    form_token = models.CharField(max_length=64, blank=True, default="")
    # Fires in a row that could not start, and when (the sweep's clock) the first of them failed: a started fire
    # ends the run, a skipped one neither counts nor ends it, a change of what it starts (workflow, input), a
    # pause and a resume clear it. At PAUSE_AFTER_FAILURES spanning PAUSE_AFTER the schedule pauses itself
    # (automation/schedules.py), as a failing webhook subscription does.
    consecutive_failures = models.PositiveIntegerField(default=0)
    failing_since = models.DateTimeField(null=True, blank=True)
    # Why the scheduler paused it, a sentence for its page, the list and the audit ("" while it runs, and when an
    # admin paused it: the audit names them), and when it was paused (by anyone; None while it runs).
    paused_reason = models.TextField(blank=True, default="")
    paused_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        permissions = [("manage_automation", "Can manage schedules and webhooks")]
        constraints = [
            models.UniqueConstraint(
                fields=["form_token"], condition=~models.Q(form_token=""), name="schedule_form_once"
            ),
            models.CheckConstraint(
                condition=(models.Q(cron="") & models.Q(interval_seconds__isnull=False))
                | (~models.Q(cron="") & models.Q(interval_seconds__isnull=True)),
                name="schedule_cron_xor_interval",
            ),
        ]
        indexes = [
            models.Index(fields=["next_fire_at"], name="schedule_due", condition=models.Q(enabled=True)),
        ]

    def __str__(self) -> str:
        return self.name

    # What the page's edit form changes (automation.schedules.schedule_save writes these, and the owner).
    EDITED_FIELDS = ("name", "workflow_name", "cron", "interval_seconds", "timezone", "missed", "input")

    def edit_stamp(self) -> str:
        """The :func:`edit_stamp` of the fields the edit form changes (``EDITED_FIELDS``): a pause, a resume or a
        fire leaves it as it is."""
        return edit_stamp({field: getattr(self, field) for field in self.EDITED_FIELDS})

    @property
    def every(self) -> timedelta | None:
        return timedelta(seconds=self.interval_seconds) if self.interval_seconds else None

    @property
    def recurrence(self) -> str:
        """The recurrence in words, for pages ("cron 0 9 * * 1-5" or "every 15 minutes")."""
        if self.cron:
            return self.cron
        seconds = self.interval_seconds or 0
        for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
            if seconds % size == 0:
                count = seconds // size
                return f"every {count} {unit}{'s' if count != 1 else ''}"
        return f"every {seconds} seconds"


class FireOutcome(models.TextChoices):
    STARTED = "started", "Started"
    SKIPPED = "skipped", "Skipped (missed)"
    FAILED = "failed", "Could not start"


class ScheduleFire(models.Model):
    """One fire time of a schedule, written once: the unique (schedule, fire_time) makes a second sweep's attempt
    at the same time fail instead of starting the workflow twice."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="fires")
    fire_time = models.DateTimeField()
    fired_at = models.DateTimeField()
    outcome = models.CharField(max_length=10, choices=FireOutcome.choices)
    instance = models.ForeignKey(
        "orchestrator.WorkflowInstance", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # How many fire times this row stands for (runs missed while Baton was down, caught up once or skipped).
    covers = models.PositiveIntegerField(default=1)
    error = models.TextField(blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["schedule", "fire_time"], name="schedule_fire_once")]

    def __str__(self) -> str:
        return f"{self.schedule_id}@{self.fire_time.isoformat()}"


WEBHOOK_EVENTS = {
    "instance.started": "Instance started",
    "instance.completed": "Instance completed",
    "instance.failed": "Instance failed",
    "instance.compensated": "Instance compensated",
    # An operator's cancel ends an instance too: without it a receiver mirroring instances never heard of the end
    "instance.cancelled": "Instance cancelled",
    "instance.escalated": "Instance escalated to people",
    "task.created": "Task created",
    "task.decided": "Task decided",
}


class WebhookSubscription(models.Model):
    """An address that receives the chosen events, signed with ``secret`` (HMAC-SHA256)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    name = models.CharField(max_length=100)
    url = models.URLField(max_length=500)
    events = models.JSONField(default=list)
    # The shared secret of the signature: the receiver needs it as it is, so it is stored as it is.
    secret = models.CharField(max_length=64)
    # The secret before the last roll, which signs deliveries beside ``secret`` until ``previous_secret_expires_at``
    # so that receivers can switch without refusing a delivery (docs/architecture.md, "Webhooks": rolling the secret).
    previous_secret = models.CharField(max_length=64, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    active = models.BooleanField(default=True)
    paused_reason = models.CharField(max_length=300, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    # Deliveries that ran out of attempts in a row; at PAUSE_AFTER the subscription pauses and its owner is told.
    consecutive_failures = models.PositiveIntegerField(default=0)
    failing_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # The new-webhook form's one-time token that made it ("" when made otherwise): the same form sent twice (a double
    # click, a browser resending) finds this subscription instead of making a second one with a secret of its own.
    form_token = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["form_token"], condition=~models.Q(form_token=""), name="webhook_form_once")
        ]

    def __str__(self) -> str:
        return self.name

    # What the page's edit form changes (automation.webhooks.webhook_change); the secret has a page of its own.
    EDITED_FIELDS = ("name", "url", "events")

    def edit_stamp(self) -> str:
        """The :func:`edit_stamp` of the fields the edit form changes (``EDITED_FIELDS``): a pause, a resume, a roll
        of the secret or a delivery leaves it as it is."""
        return edit_stamp({field: getattr(self, field) for field in self.EDITED_FIELDS})

    def secret_stamp(self) -> str:
        """The :func:`edit_stamp` of the secret in use (not the secret: the roll page carries it in the open): the
        roll form rolls the secret it was shown, once."""
        return edit_stamp({"secret": self.secret})

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets a delivery made at ``now`` is signed with: the current one first, then the previous one while
        its grace lasts."""
        if self.previous_secret and self.previous_secret_expires_at and self.previous_secret_expires_at > now:
            return [self.secret, self.previous_secret]
        return [self.secret]


class DeliveryState(models.TextChoices):
    PENDING = "pending", "Pending"
    SENDING = "sending", "Sending"
    RETRYING = "retrying", "Will retry"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Not sent (paused)"


class WebhookOutbox(models.Model):
    """An engine event worth telling subscribers, written in the engine's own statement (orchestrator/events.py);
    the sweep turns each into one delivery per matching subscription and deletes it."""

    event = models.CharField(max_length=40)
    # The audit event it comes from: (chain, seq) is unique, so a delivery is never made twice for one event.
    chain = models.CharField(max_length=40)
    seq = models.PositiveIntegerField()
    occurred_at = models.DateTimeField()
    body = models.JSONField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain", "seq"], name="outbox_event_once")]

    def __str__(self) -> str:
        return f"{self.event} {self.chain}#{self.seq}"


class WebhookDelivery(models.Model):
    """One event to one subscription: a durable row, retried with exponential back-off until delivered or out of
    attempts; its attempts' status codes and errors are what the admins' page shows."""

    subscription = models.ForeignKey(WebhookSubscription, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=40)
    event_key = models.CharField(max_length=60)
    # The JSON document sent, exactly as signed (text, not JSON: the signature covers these bytes).
    body = models.TextField()
    state = models.CharField(max_length=10, choices=DeliveryState.choices, default=DeliveryState.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    # Every attempt: [{"at": iso, "url": "https://...", "status": 500 | null, "error": "...", "ms": 12}], the latest
    # last; "url" is the address that attempt went to (a subscription's address may change between attempts).
    log = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["subscription", "event_key"], name="delivery_once_per_event"),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="delivery_due",
                condition=models.Q(state__in=["pending", "retrying"]),
            ),
            models.Index(fields=["subscription", "-created_at"], name="delivery_subscription"),
        ]

    def __str__(self) -> str:
        return f"{self.event} -> {self.subscription_id} ({self.state})"
