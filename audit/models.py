"""A verification of the audit trail: one durable row per run, with its progress and its verdict."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class VerificationState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    PASSED = "passed", "Every chain verifies"
    FAILED = "failed", "Broken links found"
    ERROR = "error", "Could not finish"


class Verification(models.Model):
    """One run of ``verify_trail`` over every chain: asked for by an admin ("Verify now") or by the daily schedule.

    The row is written before the job is sent and updated as it goes, so the page shows its progress live and its
    result afterwards; a worker that died mid-run leaves a row whose heartbeat stops (``stale``). At most one run
    is queued or running at a time: ``active`` is True only then, and unique.
    """

    state = models.CharField(max_length=10, choices=VerificationState.choices, default=VerificationState.QUEUED)
    # True while queued or running, NULL afterwards: a unique column, so a second concurrent start is refused.
    active = models.BooleanField(null=True, default=True, unique=True)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    # The username as it was, kept when the user is later removed; "" for the schedule.
    requested_by_label = models.CharField(max_length=150, blank=True)
    scheduled = models.BooleanField(default=False)
    requested_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    events_total = models.BigIntegerField(default=0)
    events_done = models.BigIntegerField(default=0)
    chains_done = models.BigIntegerField(default=0)
    legacy_events = models.BigIntegerField(default=0)
    breaks_count = models.IntegerField(default=0)
    # The first problems found, in chain order: [{"chain", "seq", "event_id", "problem"}], at most BREAKS_KEPT.
    breaks = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    # What the run checked the chains against outside the database: "" before the verdict; else the seal file and
    # how many of its lines were read, or why no seal was checked. The database default lets a process still on the
    # old code queue a run during an upgrade.
    seals = models.TextField(blank=True, default="", db_default="")

    class Meta:
        indexes = [models.Index(fields=["-requested_at"], name="audit_verification_recent")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(active=True) | models.Q(active__isnull=True), name="audit_active_true_or_null"
            )
        ]

    def __str__(self) -> str:
        return f"verification {self.pk} ({self.state})"

    @property
    def percent(self) -> int:
        """Progress from 0 to 100, by events checked against the count when the run started."""
        if self.state in (VerificationState.PASSED, VerificationState.FAILED):
            return 100
        if not self.events_total:
            return 0
        return min(99, int(self.events_done * 100 / self.events_total))

    @property
    def first_break(self) -> dict | None:
        return self.breaks[0] if self.breaks else None

    @property
    def is_active(self) -> bool:
        return self.state in (VerificationState.QUEUED, VerificationState.RUNNING)
