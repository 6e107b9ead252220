"""The console's own state: bulk jobs (the list of instances a dry run counted, worked row by row) and the
watermarks of operator alerts (what the last alert covered, so that a storm of failures is one message).

Bulk jobs are durable: each instance of a job is a row, in PostgreSQL, written by the dry run itself. Confirming
starts work on exactly those rows, never on instances that match the filter later; a worker that dies leaves
rows pending, and the periodic resume picks them up (``console/tasks.py``).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from orchestrator.models import WorkflowInstance


class BulkAction(models.TextChoices):
    RETRY = "retry", "Retry"
    CANCEL = "cancel", "Cancel"
    PAUSE = "pause", "Pause"
    RESUME = "resume", "Resume"


class BulkJobState(models.TextChoices):
    DRY_RUN = "dry_run", "Dry run"  # counted, not confirmed: nothing happens to its instances
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    STOPPED = "stopped", "Stopped"


class BulkJob(models.Model):
    """One bulk action over the instances a filter matched at its dry run."""

    action = models.CharField(max_length=10, choices=BulkAction.choices)
    state = models.CharField(max_length=10, choices=BulkJobState.choices, default=BulkJobState.DRY_RUN)
    # The filter as the list page cleaned it (for the record and the page; the rows are what counts).
    filters = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True)
    # A pause's planned end (pause only).
    until = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Set by each batch a worker finishes: a queued or running job not worked for a while is taken up again.
    worked_at = models.DateTimeField(null=True, blank=True)
    total = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [
            models.Index(
                fields=["worked_at"], name="bulk_job_open", condition=models.Q(state__in=["queued", "running"])
            ),
            models.Index(fields=["-created_at"], name="bulk_job_created"),
        ]

    def __str__(self) -> str:
        return f"bulk {self.action} #{self.pk}"

    @property
    def is_open(self) -> bool:
        return self.state in (BulkJobState.QUEUED, BulkJobState.RUNNING)


class BulkItemState(models.TextChoices):
    PENDING = "pending", "Pending"
    DONE = "done", "Done"  # the action took effect
    SKIPPED = "skipped", "Skipped"  # it no longer applied (the reason is in ``detail``)
    ERROR = "error", "Error"  # it raised something unexpected (logged; the detail says what)


class BulkJobItem(models.Model):
    """One instance of a bulk job, in the order the dry run listed it."""

    job = models.ForeignKey(BulkJob, on_delete=models.CASCADE, related_name="items", db_index=False)
    instance = models.ForeignKey(WorkflowInstance, on_delete=models.CASCADE, related_name="+")
    state = models.CharField(max_length=10, choices=BulkItemState.choices, default=BulkItemState.PENDING)
    detail = models.CharField(max_length=300, blank=True)
    acted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "instance"], name="bulk_item_once")]
        indexes = [
            models.Index(fields=["job", "id"], name="bulk_item_pending", condition=models.Q(state="pending")),
            models.Index(fields=["job", "state"], name="bulk_item_job_state"),
        ]

    def __str__(self) -> str:
        return f"{self.job} · instance {self.instance_id}: {self.state}"


class AlertWatermark(models.Model):
    """When the last operator alert of a kind was sent (the throttle) and what it covered (``seen_until``: the
    pass's time; news of failures and compensations comes from :class:`AlertOutbox`, the sweep's lag is read live).
    One row per kind, locked while an alert pass runs."""

    kind = models.CharField(max_length=40, primary_key=True)
    seen_until = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    # How many events the messages of this kind have covered in all (for the page and the tests).
    told = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.kind} until {self.seen_until}"


class AlertOutbox(models.Model):
    """An event operators are to be told of (an instance failed, a compensation needs a person), written in the
    engine's own statement (orchestrator/events.py, ``unit_finishing``): it exists exactly when the event does,
    however late its transaction commits. The alert pass deletes the rows it tells, so nothing is told twice and
    nothing committed after a pass's read is missed (reading audit events by time did miss those)."""

    kind = models.CharField(max_length=40)
    workflow_name = models.CharField(max_length=100)
    title = models.CharField(max_length=200, blank=True)
    reason = models.CharField(max_length=200, blank=True)  # the first line of the event's reason
    occurred_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["kind", "id"], name="alert_outbox_kind")]

    def __str__(self) -> str:
        return f"{self.kind} {self.workflow_name} at {self.occurred_at}"
