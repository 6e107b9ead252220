"""Engine data: workflow instances, step runs and the append-only audit trail.

Transition methods here only change fields in memory. The services in ``orchestrator/services`` lock, check,
call them, save, write audit and dispatch after commit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django_fsm import RETURN_VALUE, FSMField, FSMModelMixin, transition


class InstanceState(models.TextChoices):
    RUNNING = "running", "Running"
    WAITING = "waiting", "Waiting"
    PAUSED = "paused", "Paused"
    FAILED = "failed", "Failed"
    COMPENSATING = "compensating", "Compensating"
    COMPENSATED = "compensated", "Compensated"
    COMPLETED = "completed", "Completed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_INSTANCE_STATES = (InstanceState.RUNNING, InstanceState.WAITING)
OPEN_INSTANCE_STATES = (
    *ACTIVE_INSTANCE_STATES,
    InstanceState.PAUSED,
    InstanceState.FAILED,
    InstanceState.COMPENSATING,
)
FINAL_INSTANCE_STATES = (InstanceState.COMPLETED, InstanceState.COMPENSATED, InstanceState.CANCELLED)


class WorkflowInstance(FSMModelMixin, models.Model):
    """One run of a workflow definition, pinned to the definition's version."""

    workflow_name = models.CharField(max_length=100)
    workflow_version = models.PositiveIntegerField()
    state = FSMField(default=InstanceState.RUNNING, choices=InstanceState.choices, protected=True)
    title = models.CharField(max_length=200, blank=True)
    business_key = models.CharField(max_length=100, blank=True)
    data = models.JSONField(default=dict, blank=True)
    initiator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # NULL, not "", when absent: the partial unique constraint must not treat every keyless start as a repeat.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    input_hash = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(max_length=40, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    paused_until = models.DateTimeField(null=True, blank=True)
    # When the current pause began: on resume every duration deadline is moved on by the time spent paused.
    paused_at = models.DateTimeField(null=True, blank=True)
    # Head of this instance's audit hash chain; guarded by the instance row lock every writer takes.
    audit_seq = models.PositiveIntegerField(default=0)
    audit_head = models.CharField(max_length=64, blank=True)

    class Meta:
        permissions = [("operate_workflowinstance", "Can retry, pause, resume and cancel instances")]
        constraints = [
            models.UniqueConstraint(
                fields=["workflow_name", "idempotency_key"],
                name="instance_idempotency_key_unique",
                condition=models.Q(idempotency_key__isnull=False),
            )
        ]
        indexes = [
            models.Index(fields=["state", "-created_at"], name="instance_state_created"),
            models.Index(fields=["workflow_name", "state"], name="instance_workflow_state"),
            models.Index(fields=["-created_at"], name="instance_created"),
            models.Index(fields=["business_key"], name="instance_business_key"),
        ]

    def __str__(self) -> str:
        return self.title or f"{self.workflow_name} #{self.pk}"

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_INSTANCE_STATES

    # --- transitions (pure) ---
    @transition(
        field=state,
        source=[InstanceState.RUNNING, InstanceState.WAITING],
        target=RETURN_VALUE(InstanceState.RUNNING, InstanceState.WAITING),
    )
    def settle(self, busy: bool) -> str:
        """Running while automated work is queued or running; waiting while only people or timers are."""
        return InstanceState.RUNNING if busy else InstanceState.WAITING

    # A pause holds the start of new steps; work already running may still finish, fail or compensate the instance.
    @transition(field=state, source=[*ACTIVE_INSTANCE_STATES, InstanceState.PAUSED], target=InstanceState.COMPLETED)
    def complete(self, outcome: str, now: datetime) -> None:
        self.outcome = outcome
        self.finished_at = now
        self._pause_ended()

    @transition(
        field=state,
        source=[*ACTIVE_INSTANCE_STATES, InstanceState.PAUSED, InstanceState.COMPENSATING],
        target=InstanceState.FAILED,
    )
    def fail(self, error: str) -> None:
        self.error = error
        self._pause_ended()

    @transition(
        field=state,
        source=[*ACTIVE_INSTANCE_STATES, InstanceState.PAUSED, InstanceState.FAILED],
        target=InstanceState.COMPENSATING,
    )
    def start_compensation(self, error: str) -> None:
        self.error = error
        self._pause_ended()

    @transition(field=state, source=InstanceState.COMPENSATING, target=InstanceState.COMPENSATED)
    def finish_compensation(self, now: datetime) -> None:
        self.outcome = "compensated"
        self.finished_at = now

    # A step that took effect after the compensation ended (its worker reported late) must be undone as well.
    @transition(field=state, source=InstanceState.COMPENSATED, target=InstanceState.COMPENSATING)
    def reopen_compensation(self) -> None:
        self.outcome = ""
        self.finished_at = None

    @transition(field=state, source=InstanceState.FAILED, target=InstanceState.RUNNING)
    def retry(self) -> None:
        self.error = ""

    # A saga that began undoing never runs forward again: retrying it goes on with the undoing.
    @transition(field=state, source=InstanceState.FAILED, target=InstanceState.COMPENSATING)
    def retry_compensation(self) -> None:
        self.error = ""

    @transition(field=state, source=[InstanceState.RUNNING, InstanceState.WAITING], target=InstanceState.PAUSED)
    def pause(self, until: datetime | None, now: datetime | None = None) -> None:
        self.paused_until = until
        self.paused_at = now

    @transition(field=state, source=InstanceState.PAUSED, target=InstanceState.RUNNING)
    def resume(self) -> None:
        self.paused_until = None
        self.paused_at = None

    @transition(field=state, source=list(OPEN_INSTANCE_STATES), target=InstanceState.CANCELLED)
    def cancel(self, now: datetime) -> None:
        self.outcome = "cancelled"
        self.finished_at = now
        self._pause_ended()

    def _pause_ended(self) -> None:
        # Leaving a pause by any way but a resume ends it as well: a failed instance retried runs, it is not paused
        # again, and a paused_until kept would be read as a resume still planned.
        self.paused_until = None
        self.paused_at = None


class StepState(models.TextChoices):
    PENDING = "pending", "Pending"
    SCHEDULED = "scheduled", "Scheduled"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed (will retry)"
    DEAD = "dead", "Dead"
    SKIPPED = "skipped", "Skipped"
    COMPENSATED = "compensated", "Compensated"


class StepKind(models.TextChoices):
    TASK = "task", "Automated task"
    HUMAN = "human", "Human task"
    TIMER = "timer", "Timer"
    DECISION = "decision", "Decision"
    PARALLEL = "parallel", "Parallel"
    COMPENSATION = "compensation", "Compensation"
    SIGNAL = "signal", "Signal"


# States whose step still needs a worker (the instance is "running" while any step is in one of them).
BUSY_STEP_STATES = (StepState.SCHEDULED, StepState.RUNNING, StepState.FAILED)
DISPATCHABLE_STEP_STATES = (StepState.SCHEDULED, StepState.FAILED)


class StepRun(FSMModelMixin, models.Model):
    """One execution of one node of an instance: claimed by a worker, retried, compensated."""

    # No index of its own: the composite "step_instance" (instance, id) serves every lookup by instance.
    instance = models.ForeignKey(WorkflowInstance, on_delete=models.CASCADE, related_name="steps", db_index=False)
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=StepKind.choices)
    state = FSMField(default=StepState.PENDING, choices=StepState.choices, protected=True)
    attempt = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=1)
    # When the step may next run: first dispatch, retry back-off, or a timer's deadline.
    due_at = models.DateTimeField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    error_type = models.CharField(max_length=200, blank=True)
    # The step run this one compensates (kind == compensation).
    compensates = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    # The parallel step run this one belongs to, and its branch.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    branch = models.PositiveSmallIntegerField(null=True, blank=True)

    # Not a column: the state and attempt the engine read the row with, which its fenced writes expect
    # (``orchestrator.services.locks.lock_step`` / ``step_save``).
    _read_as: tuple[str, int]

    class Meta:
        indexes = [
            models.Index(fields=["instance", "id"], name="step_instance"),
            # The sweep's two questions: what is due, and whose lease has run out.
            models.Index(
                fields=["due_at"],
                name="step_due",
                condition=models.Q(state__in=["scheduled", "failed"]),
            ),
            models.Index(
                fields=["lease_expires_at"],
                name="step_lease",
                condition=models.Q(state="running", lease_expires_at__isnull=False),
            ),
            # The sweep's third: which signal waits have timed out (orchestrator/services/signals.py).
            models.Index(fields=["due_at"], name="step_signal_due", condition=models.Q(kind="signal", state="running")),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts and redeliveries: an external service dedupes on it."""
        return f"{self.instance_id}:{self.name}:{self.pk}"

    # --- transitions (pure) ---
    @transition(field=state, source=[StepState.PENDING, StepState.DEAD, StepState.FAILED], target=StepState.SCHEDULED)
    def schedule(self, due_at: datetime) -> None:
        self.due_at = due_at
        self.dispatched_at = None

    @transition(field=state, source=[StepState.SCHEDULED, StepState.FAILED], target=StepState.RUNNING)
    def start(self, now: datetime, lease_expires_at: datetime | None) -> None:
        self.attempt += 1
        self.started_at = now
        self.lease_expires_at = lease_expires_at

    @transition(field=state, source=[StepState.RUNNING, StepState.SCHEDULED], target=StepState.SUCCEEDED)
    def succeed(self, result: dict[str, Any], now: datetime) -> None:
        self.result = result
        self.finished_at = now
        self.lease_expires_at = None
        self.error = ""
        self.error_type = ""

    @transition(field=state, source=StepState.RUNNING, target=StepState.FAILED)
    def fail_attempt(self, error_type: str, error: str, retry_at: datetime) -> None:
        self.error_type = error_type
        self.error = error
        self.due_at = retry_at
        self.dispatched_at = None
        self.lease_expires_at = None

    @transition(field=state, source=StepState.RUNNING, target=StepState.DEAD)
    def die(self, error_type: str, error: str, now: datetime) -> None:
        self.error_type = error_type
        self.error = error
        self.finished_at = now
        self.lease_expires_at = None

    @transition(
        field=state,
        source=[StepState.PENDING, StepState.SCHEDULED, StepState.RUNNING, StepState.FAILED, StepState.DEAD],
        target=StepState.SKIPPED,
    )
    def skip(self, reason: str, now: datetime) -> None:
        self.error = reason
        self.finished_at = now
        self.lease_expires_at = None

    # A dead step compensates only when its handler returned and its result could not be recorded (its effect
    # happened; compensation.RESULT_LOST).
    @transition(field=state, source=[StepState.SUCCEEDED, StepState.DEAD], target=StepState.COMPENSATED)
    def mark_compensated(self) -> None:
        pass

    # Skipped while a worker ran it (a compensation began meanwhile) and the worker then reported success: its
    # effect happened, so it is recorded as done and the compensation undoes it too.
    @transition(field=state, source=StepState.SKIPPED, target=StepState.SUCCEEDED)
    def succeed_late(self, result: dict[str, Any], now: datetime) -> None:
        self.result = result
        self.finished_at = now
        self.lease_expires_at = None
        self.error = ""
        self.error_type = ""


class ReceivedSignal(models.Model):
    """An event delivered from outside to an instance (``orchestrator.services.signals.signal_deliver``).

    ``signal_id`` is the sender's id of the event: unique per instance, so a repeated delivery finds its row and
    changes nothing. ``step`` is the Signal step that consumed it; NULL while it is kept, because it arrived before
    the instance reached a node waiting for ``event``, or once rejected, because the node that came to consume it
    refused its payload (docs/architecture.md, "Signals"). ``payload`` is as sent while kept (or rejected), and as
    the consuming node's form or schema cleaned it once consumed.
    """

    instance = models.ForeignKey(WorkflowInstance, on_delete=models.CASCADE, related_name="signals", db_index=False)
    event = models.CharField(max_length=100)
    signal_id = models.CharField(max_length=200)
    payload = models.JSONField(default=dict, blank=True)
    # SHA-256 of the payload as sent: the same id with another payload is a conflict, not a repeat.
    payload_hash = models.CharField(max_length=64)
    received_at = models.DateTimeField()
    sender = models.CharField(max_length=160)  # the sender's actor label ("user:" and up to 150 characters)
    step = models.ForeignKey(StepRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    consumed_at = models.DateTimeField(null=True, blank=True)
    # A kept signal whose payload the node that came to consume it refused (its form or schema differs from the
    # one the delivery checked): set when refused, with {"node", "step", "errors"}; it is then kept no more.
    rejected_at = models.DateTimeField(null=True, blank=True)
    rejection = models.JSONField(default=dict, blank=True)

    class Meta:
        permissions = [("deliver_signal", "Can deliver signals to instances")]
        constraints = [
            models.UniqueConstraint(fields=["instance", "signal_id"], name="signal_instance_id_unique"),
        ]
        indexes = [
            # Kept signals waiting for their node: the engine's and the sweep's lookup.
            models.Index(
                fields=["instance", "event", "received_at"],
                name="signal_kept",
                condition=models.Q(consumed_at__isnull=True, rejected_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} {self.signal_id} -> #{self.instance_id}"


class AuditEvent(models.Model):
    """Append-only record of every transition. PostgreSQL/SQLite triggers refuse UPDATE and DELETE.

    Events form one hash chain per instance (``chain``), so writers of different instances never contend;
    ``hash`` is an HMAC (key from settings, never in the database) over the event's content and the previous
    event's hash (see ``orchestrator/audit.py``).
    """

    chain = models.CharField(max_length=40)
    seq = models.PositiveIntegerField()
    prev_hash = models.CharField(max_length=64, blank=True)
    hash = models.CharField(max_length=64)
    # The id of the BATON_AUDIT_KEYS key whose HMAC ``hash`` is; "" for a legacy event (plain SHA-256, written
    # before keying). The database default lets processes still on the old code insert during an upgrade.
    key_id = models.CharField(max_length=16, blank=True, default="", db_default="")
    occurred_at = models.DateTimeField()
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    # "user:alice" or "system:worker", kept as text so the record survives a renamed or removed user. 160: "user:"
    # and the longest username Django allows (150).
    actor_label = models.CharField(max_length=160)
    action = models.CharField(max_length=60)
    # No index of its own: "audit_instance_seq" (instance, seq) serves every lookup by instance.
    instance = models.ForeignKey(
        WorkflowInstance, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_events", db_index=False
    )
    subject_type = models.CharField(max_length=30)
    subject_id = models.BigIntegerField(null=True, blank=True)
    from_state = models.CharField(max_length=20, blank=True)
    to_state = models.CharField(max_length=20, blank=True)
    reason = models.TextField(blank=True)
    payload = models.JSONField(default=dict, blank=True)
    # The request's address ("ip"), user agent and path; the request id has its own column below.
    request_meta = models.JSONField(default=dict, blank=True)
    # The id of the HTTP request behind the event (X-Request-ID, orchestrator/accounts.py), "" outside a request.
    # In the hash when set (orchestrator/audit.py); the database default serves processes still on the old code.
    request_id = models.CharField(max_length=64, blank=True, default="", db_default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain", "seq"], name="audit_chain_seq_unique")]
        # The admin timeline (audit/selectors.py) pages by keyset on (occurred_at, id), newest first, under each
        # filter: every filter column leads an index that ends in that order, so a page is an index range scan at
        # millions of events (bench/audit.py). Text search over reasons uses a trigram index (migration 0008).
        indexes = [
            models.Index(fields=["instance", "seq"], name="audit_instance_seq"),
            models.Index(fields=["-occurred_at", "-id"], name="audit_occurred_id"),
            models.Index(fields=["action", "-occurred_at", "-id"], name="audit_action_occurred_id"),
            models.Index(fields=["actor_label", "-occurred_at", "-id"], name="audit_actor_occurred_id"),
            models.Index(fields=["subject_type", "subject_id", "-occurred_at", "-id"], name="audit_subject_occurred"),
            models.Index(fields=["request_id"], name="audit_request", condition=~models.Q(request_id="")),
        ]
        permissions = [("view_trail", "Can see the whole audit trail, export it and run its verification")]

    def __str__(self) -> str:
        return f"{self.chain}#{self.seq} {self.action}"

    @property
    def actor_username(self) -> str:
        """The username as it was when the event was written ("" for the system or anonymous)."""
        kind, _, name = self.actor_label.partition(":")
        return name if kind == "user" else ""

    @property
    def actor_system(self) -> str:
        """The system part that acted ("worker", "sweep", "migrate"...), or "" for a person."""
        kind, _, name = self.actor_label.partition(":")
        return name if kind == "system" else ("system" if self.actor_label == "system" else "")

    @property
    def client_ip(self) -> str:
        return str(self.request_meta.get("ip", "")) if isinstance(self.request_meta, dict) else ""

    @property
    def user_agent(self) -> str:
        return str(self.request_meta.get("user_agent", "")) if isinstance(self.request_meta, dict) else ""


class AuditChain(models.Model):
    """The head of an audit chain that belongs to no instance ("accounts": user, group and permission changes).

    An instance's chain keeps its head on the instance row; these chains keep theirs here, and every append locks
    this row, so appends to one chain are serialised exactly like appends under an instance's lock.
    """

    name = models.CharField(max_length=40, primary_key=True)
    seq = models.PositiveIntegerField(default=0)
    head = models.CharField(max_length=64, blank=True)

    def __str__(self) -> str:
        return f"{self.name}#{self.seq}"


# --- roll-ups: what the dashboard, the catalog and /metrics read instead of scanning instances --------------
#
# The sweep folds the audit trail into these tables (``orchestrator/rollups.py``), walking ``AuditEvent.id`` from a
# high-water mark: every instance state change and every step outcome is an audit event, so the trail already
# says everything the counts need, and the engine's hot path writes nothing more.


class RollupCursor(models.Model):
    """Where the roll-up pass has got to in the audit trail, and when the sweep last ran.

    ``position``: the last ``AuditEvent.id`` folded in. ``pending_position``/``pending_xids``: the highest id
    handed out when the previous pass looked, and the transactions of this database running then (PostgreSQL):
    ids up to ``pending_position`` are folded in only once all of those have ended, so an event whose transaction
    commits late is never stepped over. One row, ``name="audit"``, locked by the pass.
    """

    name = models.CharField(max_length=20, primary_key=True)
    position = models.BigIntegerField(default=0)
    pending_position = models.BigIntegerField(default=0)
    pending_xids = models.JSONField(default=list)
    swept_at = models.DateTimeField(null=True, blank=True)
    rolled_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name}@{self.position}"


class WorkflowVersionSeen(models.Model):
    """When each registered workflow version was first seen by a Baton process (recorded by the sweep and the
    catalog, from the registry), so the catalog can say since when a version exists."""

    workflow_name = models.CharField(max_length=100)
    workflow_version = models.PositiveIntegerField()
    first_seen_at = models.DateTimeField()
    fingerprint = models.CharField(max_length=64, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workflow_name", "workflow_version"], name="version_seen_unique")
        ]

    def __str__(self) -> str:
        return f"{self.workflow_name}@v{self.workflow_version}"


class InstanceStateCount(models.Model):
    """How many instances of a workflow version are in each state now, kept by the roll-up pass from the
    instance state changes in the audit trail (lagging the truth by one sweep interval)."""

    workflow_name = models.CharField(max_length=100)
    workflow_version = models.PositiveIntegerField()
    state = models.CharField(max_length=20)
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["workflow_name", "workflow_version", "state"], name="state_count_unique")
        ]

    def __str__(self) -> str:
        return f"{self.workflow_name}@v{self.workflow_version} {self.state}: {self.count}"


class WorkflowHourStats(models.Model):
    """One workflow's activity in one hour, one day (UTC) or all time (``span`` 1, 24 or 0; ``hour`` is the
    start, 1970-01-01 for all time), folded from the audit trail by the roll-up pass.

    ``durations``: how many instances completed in that hour with a duration (start to completion) in each bucket
    of ``orchestrator.rollups.DURATION_BUCKETS`` (not cumulative; one more entry for "longer"). ``step_durations``:
    the same for automated step attempts that ended (succeeded or died), by step name.
    """

    workflow_name = models.CharField(max_length=100)
    span = models.PositiveSmallIntegerField(default=1)
    hour = models.DateTimeField()
    started = models.BigIntegerField(default=0)
    completed = models.BigIntegerField(default=0)
    failed = models.BigIntegerField(default=0)
    compensated = models.BigIntegerField(default=0)
    cancelled = models.BigIntegerField(default=0)
    # Attempts that failed and were scheduled again by their retry policy, and operator retries of instances.
    step_retries = models.BigIntegerField(default=0)
    operator_retries = models.BigIntegerField(default=0)
    durations = models.JSONField(default=list)
    duration_sum = models.FloatField(default=0.0)
    step_durations = models.JSONField(default=dict)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workflow_name", "span", "hour"], name="hour_stats_unique")]
        indexes = [models.Index(fields=["span", "hour"], name="hour_stats_span_hour")]

    def __str__(self) -> str:
        return f"{self.workflow_name} {self.span}h from {self.hour:%Y-%m-%d %H}:00"
