"""The unit of work every engine write goes through.

A unit holds the locked instance row and collects, for one transaction, the audit events, the step
dispatches and the live broadcasts. ``finish()`` writes the events and the instance in two statements and
registers dispatch and broadcast to run only after commit (docs/architecture.md, rules 1 and 6).
"""

from __future__ import annotations

import copy
import json
import logging
from datetime import datetime
from functools import partial
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import Model
from django.utils import timezone

from orchestrator import audit, live_names, registry, rows
from orchestrator.audit import Actor
from orchestrator.audit_actions import AuditAction
from orchestrator.dsl import Task, seconds
from orchestrator.events import unit_finishing
from orchestrator.models import AuditEvent, InstanceState, StepRun, WorkflowInstance
from orchestrator.realtime import send_all_now
from orchestrator.signals import instance_finished

logger = logging.getLogger(__name__)

# States worth telling the initiator about.
OUTCOME_STATES = (InstanceState.COMPLETED, InstanceState.FAILED, InstanceState.COMPENSATED, InstanceState.CANCELLED)

# Fields a unit may change; finish() writes only those that did (the data JSON is the costly one).
TRACKED_FIELDS = ("state", "title", "data", "outcome", "error", "finished_at", "paused_until", "paused_at")


# Every fenced step write: the row must still be in the state and at the attempt it was read with (step._read_as).
FENCE = "state = %s AND attempt = %s"


class Fenced(Exception):
    """The step moved on while this transaction waited for its instance's lock; nothing may be written."""

    @classmethod
    def of(cls, step: StepRun) -> Fenced:
        """The exception for ``step``, naming the state and attempt it was read with. Raises nothing."""
        return cls(f"step {step.pk} is no longer {step._read_as[0]} at attempt {step._read_as[1]}")


class Unit:
    """One transaction's work on one locked instance."""

    def __init__(
        self,
        instance: WorkflowInstance,
        actor: Actor,
        *,
        now: datetime | None = None,
        request_meta: dict[str, Any] | None = None,
        broadcast: bool = True,
    ) -> None:
        self.instance = instance
        self.broadcast = broadcast
        self._snapshot = self._values()
        self.actor = actor
        self.now = now or timezone.now()
        self.request_meta = request_meta or {}
        self.events: list[AuditEvent] = []
        self.dispatches: list[tuple[int, dict[str, Any]]] = []
        self.groups: set[str] = set()
        self.notes: list[dict[str, Any]] = []
        # Rows nothing reads before commit (notifications, a step given its id ahead): written with the audit
        # events at finish().
        self.inserts: list[Model] = []
        # A step id taken ahead by the statement that inserted the instance (instance_start): the first automated
        # step uses it and is written at finish().
        self.reserved_step_id: int | None = None
        # Step writes fenced on the state and attempt they were read with, done by finish() (see fence()).
        self.fenced: list[tuple[StepRun, list[str]]] = []
        # Set when this unit scheduled automated work, so settling needs no query.
        self.scheduled_work = False
        self.initial_state = instance.state

    def audit(
        self,
        subject_type: str,
        subject_id: int | None,
        from_state: str = "",
        to_state: str = "",
        reason: str = "",
        payload: dict[str, Any] | None = None,
        *,
        action: AuditAction,
    ) -> None:
        """Append an ``action`` event about ``subject_type`` ``subject_id`` to the instance's chain (written at
        ``finish``). Raises nothing of its own."""
        self.events.append(
            audit.append(
                self.instance,
                now=self.now,
                actor=self.actor,
                action=action,
                subject_type=subject_type,
                subject_id=subject_id,
                from_state=from_state,
                to_state=to_state,
                reason=reason,
                payload=payload,
                request_meta=self.request_meta,
            )
        )

    def dispatch(self, step: StepRun) -> None:
        """Send "look at step X" after commit, with its node's queue and time limits (:func:`dispatch_options`).

        Raises nothing of its own (a definition that cannot be loaded sends without options).
        """
        try:
            node = registry.get(self.instance.workflow_name, self.instance.workflow_version).node(step.name)
        except Exception:
            node = None  # the definition is gone: the claim records why the step cannot run
        self.dispatches.append((step.pk, dispatch_options(node)))
        self.scheduled_work = True

    def fence(self, step: StepRun, fields: list[str]) -> None:
        """Write ``fields`` of a step read by ``locks.lock_step`` in ``finish``'s statement, only if the step is
        still in the state and at the attempt it was read with; else ``finish`` raises :class:`Fenced`.

        The row changes only at ``finish``: use it only where nothing reads the step's row before then (the locked
        claim, the record of a task step in a linear flow).
        """
        self.fenced.append((step, fields))

    def notify(self, groups: list[str], event: dict[str, Any]) -> None:
        """Queue a live event for ``groups`` (sent after commit). Raises nothing."""
        self.notes.append({"groups": groups, "event": event})

    def mark(self) -> dict[str, Any]:
        """What this unit and its instance hold now, for :meth:`rewind` after a savepoint rolled back: the rows
        went back, and the events, rows, dispatches and instance fields collected in memory must go back with them
        (signals: a consumption whose flow raises, docs/architecture.md "Signals"). Raises nothing."""
        fields = WorkflowInstance._meta.concrete_fields
        instance = {f.attname: copy.deepcopy(getattr(self.instance, f.attname)) for f in fields}
        lists = {name: list(getattr(self, name)) for name in ("events", "dispatches", "notes", "inserts", "fenced")}
        return {
            "instance": instance,
            "lists": lists,
            "groups": set(self.groups),
            "reserved_step_id": self.reserved_step_id,
            "scheduled_work": self.scheduled_work,
        }

    def rewind(self, mark: dict[str, Any]) -> None:
        """Put this unit and its instance back as :meth:`mark` found them. Raises nothing."""
        # Into the instance's __dict__: the state field is a protected FSM field, which refuses setattr.
        vars(self.instance).update(copy.deepcopy(mark["instance"]))
        for name, value in mark["lists"].items():
            setattr(self, name, list(value))
        self.groups = mark["groups"]
        self.reserved_step_id = mark["reserved_step_id"]
        self.scheduled_work = mark["scheduled_work"]

    def _values(self) -> dict[str, Any]:
        values = {name: getattr(self.instance, name) for name in TRACKED_FIELDS}
        values["data"] = json.dumps(values["data"], sort_keys=True, default=str)
        return values

    def finish(self) -> None:
        """Write audit events and the changed instance fields; register dispatch and broadcast for after commit.

        Raises :class:`Fenced` when a fenced step write found the step moved on; what a listener of
        ``instance_finished`` raises.
        """
        if self.events and unit_finishing.receivers:
            unit_finishing.send(sender=Unit, unit=self)  # apps above the engine add their outbox rows
        state_changed = self.instance.state != self.initial_state
        if state_changed and self.instance.state in OUTCOME_STATES:
            # Listeners (approvals tells the initiator) add their rows to this unit: they commit with the outcome.
            instance_finished.send(sender=Unit, unit=self, instance=self.instance)
        current = self._values()
        fields = [name for name in TRACKED_FIELDS if current[name] != self._snapshot[name]]
        if self.events:
            fields += ["audit_seq", "audit_head"]
            if self.broadcast:
                self.groups.add(live_names.instance_group(self.instance.pk))
                if state_changed:
                    # The instance list follows states; step-level news goes only to pages showing the instance.
                    self.groups.add(live_names.OPS_GROUP)
        fences: list[rows.Fence] = [(step, step_fields, FENCE, step._read_as) for step, step_fields in self.fenced]
        if fields or fences:
            # The events, the other new rows, the fenced step writes and the instance's new chain head in one
            # statement.
            matched = rows.update(
                self.instance,
                [*fields, "updated_at"],
                insert_first=[*self.events, *self.inserts],
                update_first=fences,
            )
            if not matched and self.fenced:
                raise Fenced.of(self.fenced[0][0])
            for step, _ in self.fenced:
                step._read_as = (step.state, step.attempt)
        elif self.inserts:
            rows.insert_many(self.inserts)
        for step_id, options in self.dispatches:
            transaction.on_commit(partial(send_step, step_id, options))
        news: list[tuple[list[str], dict[str, Any]]] = []
        if self.groups:
            event = {
                "type": live_names.INSTANCE_CHANGED,
                "instance": self.instance.pk,
                "state": self.instance.state,
                "refresh": [live_names.INSTANCES, live_names.instance_refresh(self.instance.pk)],
            }
            news.append((sorted(self.groups), event))
        news += [(note["groups"], note["event"]) for note in self.notes]
        if news:
            # One hook, so one round trip to Redis for the instance's news and the inbox's (a new task) together.
            transaction.on_commit(partial(send_all_now, news))


# --- time limits and leases (docs/architecture.md, "Time limits and leases") ---------------------------------

# Seconds from a step's soft time limit (its node's timeout: the handler gets SoftTimeLimitExceeded and its failure
# is recorded) to its hard one (the pool kills the process).
HARD_LIMIT_MARGIN = 5.0
# Timers and decisions run no handler: the claim and the record only.
NO_HANDLER_TIMEOUT = 60.0


def step_limits(node: Any) -> tuple[float, float, float]:
    """``(soft, hard, lease)`` in seconds for a step of ``node`` (a dsl node, or None when its definition is gone).

    soft < hard < lease: a late handler is stopped by its soft limit and records a failure, a stuck one is killed at
    the hard limit, and only after that, ``BATON_LEASE_GRACE`` seconds later, does the sweep count the lease as lost
    and schedule the next attempt. The clocks start at message receipt (limits) and at the claim (lease), which comes
    after it, so a worker that comes back after its lease expired can only be fenced by the attempt number, never find
    a second attempt running beside a process the pool has not yet killed.

    Raises nothing.
    """
    soft = seconds(node.timeout, "timeout") if isinstance(node, Task) else NO_HANDLER_TIMEOUT
    hard = soft + HARD_LIMIT_MARGIN
    return soft, hard, hard + settings.BATON_LEASE_GRACE


def dispatch_options(node: Any) -> dict[str, Any]:
    """Celery ``apply_async`` options for a step of ``node``: its queue and time limits. Every send of a step, first,
    retry or the sweep's re-send, uses these.

    Raises nothing.
    """
    if node is None:
        return {}
    soft, hard, _ = step_limits(node)
    options: dict[str, Any] = {"soft_time_limit": soft, "time_limit": hard}
    if getattr(node, "queue", None):
        options["queue"] = node.queue
    return options


def step_dispatch_options(step_ids: list[int]) -> dict[int, dict[str, Any]]:
    """:func:`dispatch_options` for each of ``step_ids`` (one query), for senders that hold only ids (the sweep).

    Raises nothing of its own.
    """
    found = StepRun.objects.filter(pk__in=step_ids).values_list(
        "pk", "name", "instance__workflow_name", "instance__workflow_version"
    )
    options: dict[int, dict[str, Any]] = {}
    for step_id, name, workflow_name, version in found:
        try:
            node = registry.get(workflow_name, version).node(name)
        except Exception:
            node = None
        options[step_id] = dispatch_options(node)
    return options


# The Celery task that runs a step (orchestrator/tasks.py), published by name: the services never import the
# module of Celery entry points that calls them.
STEP_RUN_TASK = "orchestrator.tasks.step_run"


def send_step(step_id: int, options: dict[str, Any]) -> None:
    """Publish the Celery message for step ``step_id`` with ``options`` (:func:`dispatch_options`); a failure here
    is logged and repaired by the sweep, never raised."""
    try:
        # ignore_result as the task declares it (apply_async would have added it from the task object).
        # argsrepr and kwargsrepr given: Celery would otherwise build them with saferepr on every publish.
        current_app.send_task(
            STEP_RUN_TASK,
            args=(step_id,),
            ignore_result=True,
            argsrepr=f"({step_id},)",
            kwargsrepr="{}",
            **options,
        )
    except Exception:
        # The state is committed; the sweep re-dispatches after BATON_REDISPATCH_AFTER seconds.
        logger.exception("could not publish step %s; the sweep will re-dispatch it", step_id)
