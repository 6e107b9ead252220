"""Human tasks: what lands in people's inboxes, and the decisions they take."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone
from django_fsm import FSMField, FSMModelMixin, transition

from orchestrator.models import StepRun, WorkflowInstance


class TaskState(models.TextChoices):
    OPEN = "open", "Open"
    CLAIMED = "claimed", "Claimed"
    COMPLETED = "completed", "Completed"
    ESCALATED = "escalated", "Escalated"
    CANCELLED = "cancelled", "Cancelled"
    EXPIRED = "expired", "Expired"


ACTIONABLE_TASK_STATES = (TaskState.OPEN, TaskState.CLAIMED, TaskState.ESCALATED)
# The columns a change of holder (claim, release, escalate) writes: the snooze goes with the holder who set it.
HOLDER_FIELDS = ("assignee", "claimed_at", "snoozed_until")


def is_overdue(due_at: datetime | None, state: str, now: datetime) -> bool:
    """Past its due time and still waiting for someone (for a task, or a task row read with ``.values()``)."""
    return due_at is not None and state in ACTIONABLE_TASK_STATES and due_at < now


class TaskKind(models.TextChoices):
    APPROVAL = "approval", "Approval"
    FORM = "form", "Form"
    ESCALATION = "escalation", "Escalation"


class Priority(models.IntegerChoices):
    LOW = 0, "Low"
    NORMAL = 1, "Normal"
    HIGH = 2, "High"
    URGENT = 3, "Urgent"


class HumanTask(FSMModelMixin, models.Model):
    """A piece of work for a person: approve, fill a form, or resolve an escalated failure."""

    # Foreign keys without an index of their own where a composite index below starts with the column
    # ("task_instance", "task_done_by"): one index less to keep up on every insert.
    instance = models.ForeignKey(WorkflowInstance, on_delete=models.CASCADE, related_name="tasks", db_index=False)
    step = models.ForeignKey(StepRun, on_delete=models.CASCADE, related_name="tasks")
    kind = models.CharField(max_length=20, choices=TaskKind.choices)
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    state = FSMField(default=TaskState.OPEN, choices=TaskState.choices, protected=True)
    priority = models.SmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    # Both lists live in one table (TaskCandidate), so "may this user claim it?" is one EXISTS the planner
    # can drive row by row down the queue's index; two tables meant an OR that hashed the whole table.
    candidate_groups: models.ManyToManyField[Group, TaskCandidate] = models.ManyToManyField(
        Group, through="TaskCandidate", through_fields=("task", "group"), blank=True, related_name="candidate_tasks"
    )
    candidate_users: models.ManyToManyField[Any, TaskCandidate] = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        through="TaskCandidate",
        through_fields=("task", "user"),
        blank=True,
        related_name="candidate_tasks",
    )
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="assigned_tasks",
    )
    quorum = models.PositiveSmallIntegerField(default=1)
    approvals = models.PositiveSmallIntegerField(default=0)
    due_at = models.DateTimeField(null=True, blank=True)
    snoozed_until = models.DateTimeField(null=True, blank=True)
    escalation_level = models.PositiveSmallIntegerField(default=0)
    next_escalation_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    decision = models.CharField(max_length=20, blank=True)
    comment = models.TextField(blank=True)
    form_data = models.JSONField(default=dict, blank=True)
    completed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_index=False
    )

    class Meta:
        indexes = [
            # "My tasks" in its default order, straight from the index (no sort of a person's whole list).
            models.Index(
                fields=["assignee", "due_at", "-priority", "id"],
                name="task_mine_due",
                condition=models.Q(state__in=["open", "claimed", "escalated"]),
            ),
            # The team queue is walked in one of these orders; partial indexes hold only claimable tasks.
            models.Index(
                fields=["due_at", "-priority", "id"],
                name="task_queue_due",
                condition=models.Q(state__in=["open", "escalated"], assignee__isnull=True),
            ),
            models.Index(
                fields=["-priority", "due_at", "id"],
                name="task_queue_priority",
                condition=models.Q(state__in=["open", "escalated"], assignee__isnull=True),
            ),
            models.Index(
                fields=["created_at", "id"],
                name="task_queue_age",
                condition=models.Q(state__in=["open", "escalated"], assignee__isnull=True),
            ),
            models.Index(fields=["completed_by", "-completed_at", "-id"], name="task_done_by"),
            models.Index(fields=["instance", "id"], name="task_instance"),
            models.Index(
                fields=["next_escalation_at"],
                name="task_next_escalation",
                condition=models.Q(state__in=["open", "claimed", "escalated"]),
            ),
        ]

    def __str__(self) -> str:
        return self.title

    @property
    def is_actionable(self) -> bool:
        return self.state in ACTIONABLE_TASK_STATES

    @property
    def is_overdue(self) -> bool:
        return is_overdue(self.due_at, self.state, timezone.now())

    # --- transitions (pure) ---
    @transition(field=state, source=[TaskState.OPEN, TaskState.ESCALATED], target=TaskState.CLAIMED)
    def claim(self, user: models.Model, now: datetime) -> None:
        self.assignee = user  # type: ignore[assignment]
        self.claimed_at = now
        # A snooze is its holder's own choice: a task reaching a new holder is in their list at once.
        self.snoozed_until = None

    @transition(field=state, source=TaskState.CLAIMED, target=TaskState.OPEN)
    def release(self) -> None:
        self.assignee = None
        self.claimed_at = None
        self.snoozed_until = None

    @transition(field=state, source=list(ACTIONABLE_TASK_STATES), target=TaskState.COMPLETED)
    def complete(self, user: models.Model, decision: str, comment: str, data: dict, now: datetime) -> None:
        self.completed_by = user  # type: ignore[assignment]
        self.decision = decision
        self.comment = comment
        self.form_data = data
        self.completed_at = now
        self.next_escalation_at = None

    @transition(field=state, source=list(ACTIONABLE_TASK_STATES), target=TaskState.ESCALATED)
    def escalate(self, level: int, next_at: datetime | None) -> None:
        self.escalation_level = level
        self.next_escalation_at = next_at
        self.assignee = None
        self.claimed_at = None
        self.snoozed_until = None

    @transition(field=state, source=list(ACTIONABLE_TASK_STATES), target=TaskState.CANCELLED)
    def cancel(self, now: datetime) -> None:
        self.completed_at = now
        self.next_escalation_at = None

    @transition(field=state, source=list(ACTIONABLE_TASK_STATES), target=TaskState.EXPIRED)
    def expire(self, now: datetime) -> None:
        self.completed_at = now
        self.next_escalation_at = None


class TaskCandidate(models.Model):
    """One candidate of a task: a group or a user (exactly one of the two)."""

    # No index of its own: the unique (task, group) starts with it.
    task = models.ForeignKey(HumanTask, on_delete=models.CASCADE, related_name="candidates", db_index=False)
    group = models.ForeignKey(Group, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(group__isnull=True) ^ models.Q(user__isnull=True), name="candidate_group_xor_user"
            ),
            models.UniqueConstraint(fields=["task", "group"], name="candidate_task_group"),
            models.UniqueConstraint(fields=["task", "user"], name="candidate_task_user"),
        ]

    def __str__(self) -> str:
        return f"{self.task_id}: {self.group or self.user}"


class TaskDecision(models.Model):
    """One person's decision on a task; a quorum task collects several before it completes."""

    task = models.ForeignKey(HumanTask, on_delete=models.CASCADE, related_name="decisions")
    instance = models.ForeignKey(WorkflowInstance, on_delete=models.CASCADE, related_name="decisions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=20)
    comment = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["task", "user"], name="decision_one_per_user")]
        indexes = [
            models.Index(fields=["instance", "user"], name="decision_instance_user"),
            # "Done by me" reads a person's decisions (selectors.done_by); the unique (task, user) is led by the
            # task and cannot serve it.
            models.Index(fields=["user", "task"], name="decision_user_task"),
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.decision} {self.task_id}"


class SavedView(models.Model):
    """A named inbox filter, kept on the server; optionally shared with one group."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="saved_views")
    name = models.CharField(max_length=60)
    tab = models.CharField(max_length=10, default="mine")
    # The inbox's own query string parameters (filters and sort), validated again when the view is used.
    params = models.JSONField(default=dict, blank=True)
    shared_with = models.ForeignKey(Group, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="saved_view_owner_name")]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Notification(models.Model):
    """An in-app notice for one person (the bell); also sent by e-mail when they have an address."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=40)
    message = models.CharField(max_length=300)
    url = models.CharField(max_length=200, blank=True)
    task = models.ForeignKey(HumanTask, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    instance = models.ForeignKey(WorkflowInstance, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["user", "-created_at"], name="notification_user_created"),
            models.Index(fields=["user"], name="notification_unread", condition=models.Q(read_at__isnull=True)),
        ]

    def __str__(self) -> str:
        return self.message


class UserProfile(models.Model):
    """A person's own settings: for now the time zone their pages show times in and their date inputs are read in.

    ``time_zone`` is an IANA name (``Europe/Paris``); empty means the site's ``BATON_TIME_ZONE``. The zone is kept in
    the session at sign-in and when changed (``approvals/timezones.py``), so no page pays a query for it.
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="baton_profile")
    time_zone = models.CharField(max_length=64, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.user} ({self.time_zone or 'site zone'})"
