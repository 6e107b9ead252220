"""Task deadlines: the escalation ladder's rungs fired by the sweep, and deadlines moved on by a pause."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from approvals.models import (
    ACTIONABLE_TASK_STATES,
    HOLDER_FIELDS,
    HumanTask,
)
from approvals.notifications import members_of, notify
from approvals.services.base import (
    able_people,
    add_candidates,
    announce,
    escalate_nobody_can_act,
    group_unable_why,
    people_of,
    task_url,
)
from orchestrator import rows
from orchestrator.audit_actions import AuditAction
from orchestrator.bidi import isolate
from orchestrator.dsl import Escalate, Reassign, Remind
from orchestrator.models import InstanceState, WorkflowInstance
from orchestrator.services.lifecycle import fail_for_missing_definition, instance_fail
from orchestrator.services.locks import SWEEPER, definition_or_none
from orchestrator.services.sweep import isolated
from orchestrator.services.sweep_report import SweepReport
from orchestrator.services.unit import Unit

logger = logging.getLogger(__name__)


def tasks_shift_deadlines(unit: Unit, paused_at: datetime, held: Any) -> None:
    """On resume: move the open tasks' SLA (``due_at``) and next escalation rung on by ``held``, an SQL
    expression of the time each was held (``instance_resume``). An SLA already due when the pause began stays
    where it was (it is overdue either way). Every next rung moves, one already due too: ``held`` is at most the
    time since the pause began, so a due rung stays due and fires on resume, and the time it was held is counted
    by the rungs after it (``_escalation_fire`` reads it off ``next_escalation_at``).

    Raises nothing of its own.
    """
    open_tasks = HumanTask.objects.filter(instance=unit.instance, state__in=ACTIONABLE_TASK_STATES)
    open_tasks.filter(due_at__gt=paused_at).update(due_at=F("due_at") + held)
    open_tasks.filter(next_escalation_at__isnull=False).update(next_escalation_at=F("next_escalation_at") + held)


def tasks_sweep(now: datetime | None = None, *, report: SweepReport | None = None) -> dict[str, int]:
    """Fire due escalation rungs (remind, reassign, escalate) with SKIP LOCKED, one task per transaction.

    Returns ``{"escalations": rungs fired}``. A task whose handling raises is logged, audited on its instance and
    skipped (``orchestrator.services.sweep.isolated``), and counted in ``report.errors`` when the sweep passes its
    report. Raises only what the database raises outside a task's own transaction.
    """
    now = now or timezone.now()
    due = list(
        HumanTask.objects.filter(state__in=ACTIONABLE_TASK_STATES, next_escalation_at__lte=now)
        # A paused instance's rungs wait for the resume, which moves them on by the pause; a failed instance's
        # tasks cannot be decided, so their deadlines wait for an operator's retry.
        .exclude(instance__state__in=[InstanceState.PAUSED, InstanceState.FAILED])
        .order_by("next_escalation_at")
        .values_list("pk", "instance_id")[:200]
    )
    fired = 0
    for task_id, instance_id in due:
        # One task per transaction; one that raises is logged, audited and counted, and the others go on.
        fired += isolated(
            report, "task deadline", "task", task_id, instance_id, partial(_escalation_fire, task_id, now)
        )
    return {"escalations": fired}


def _escalation_fire(task_id: int, now: datetime) -> int:
    with transaction.atomic():
        instance_id = HumanTask.objects.filter(pk=task_id).values_list("instance_id", flat=True).first()
        if instance_id is None:
            return 0
        instance = WorkflowInstance.objects.select_for_update(skip_locked=True).filter(pk=instance_id).first()
        if instance is None:
            return 0
        task = HumanTask.objects.select_related("step").get(pk=task_id)
        if not task.is_actionable or not task.next_escalation_at or task.next_escalation_at > now:
            return 0
        if instance.state == InstanceState.PAUSED:
            return 0  # paused after the query: the rung waits for the resume
        workflow = definition_or_none(instance)
        if workflow is None:
            # Its ladder is in the missing definition: the instance fails with the reason, and the deadline waits.
            unit = Unit(instance, SWEEPER, now=now)
            fail_for_missing_definition(unit)
            unit.finish()
            return 0
        node = workflow.node(task.step.name)
        ladder = list(getattr(node, "escalation", ()))
        if task.escalation_level >= len(ladder):
            task.next_escalation_at = None
            rows.update(task, ["next_escalation_at"])
            return 0
        rung = ladder[task.escalation_level]
        level = task.escalation_level + 1
        following = ladder[level] if level < len(ladder) else None
        # Rungs count from the task's creation, so the ladder keeps its shape whenever the sweep runs, plus the
        # time pauses held this rung (never negative: the first rung counts from the opening unit's clock, a hair
        # before created_at).
        held = max(timedelta(0), task.next_escalation_at - (task.created_at + rung.after))
        next_at = task.created_at + following.after + held if following else None
        unit = Unit(instance, SWEEPER, now=now)
        from_state = task.state
        if isinstance(rung, Remind):
            task.escalation_level = level
            task.next_escalation_at = next_at
            rows.update(task, ["escalation_level", "next_escalation_at"])
            unit.audit(
                "task", task.pk, from_state, task.state, payload={"level": level}, action=AuditAction.TASK_REMINDED
            )
            announce(unit, task, "task.reminded", f"Reminder: {task.title} is waiting")
            notify(
                unit,
                people_of(task),
                "reminder",
                f"Reminder: {isolate(task.title)} is waiting",
                url=task_url(task),
                task=task,
            )
        elif isinstance(rung, Reassign):
            _hand_to_group(unit, task, rung.group, level, next_at, reassigned=True)
        elif isinstance(rung, Escalate):
            if rung.fail_instance:
                task.expire(now)
                rows.update(task, ["state", "completed_at", "next_escalation_at"])
                unit.audit("task", task.pk, from_state, task.state, action=AuditAction.TASK_EXPIRED)
                instance_fail(
                    unit,
                    f"{task.title}: no decision in time",
                    allowed=(InstanceState.RUNNING, InstanceState.WAITING),
                )
            else:
                _hand_to_group(unit, task, rung.group, level, next_at, reassigned=False)
        unit.finish()
        return 1


def _hand_to_group(
    unit: Unit, task: HumanTask, group_name: str, level: int, next_at: datetime | None, *, reassigned: bool
) -> None:
    """A ladder rung gives the task to ``group_name`` too: escalated state, the group a candidate, its members told.

    ``reassigned`` is the quieter rung (an escalation group takes over); otherwise managers are being escalated to.
    A group of that name that does not exist (renamed or deleted since) is not created: managers and operators get
    the task instead, titled with the missing name (:func:`escalate_nobody_can_act`). A group that exists but has
    no active member who may act (empty, every member deactivated or gone, or only the instance's initiator, whom
    four-eyes bars: docs/architecture.md, "Who may act on a task") is a candidate all the same, and managers and
    operators get the task too, titled with the group and why. Raises nothing of its own.
    """
    # Read in the rung's transaction, the instance locked: a member who joined since ``manage.py check`` warned of
    # an empty group counts. FOR UPDATE also waits for a membership being added right now (its insert holds a key
    # share of the group row until it commits), so the look-up sees that member rather than a moment before them.
    group = Group.objects.select_for_update().filter(name=group_name).first()
    if group is None:
        # Never created here: a group renamed (or deleted) since the definition was written came back as a new,
        # empty group, and the escalation reached nobody. The rung still fires, and the task goes where a task
        # nobody can act on goes, managers and operators, titled with the name to fix (``manage.py check
        # --database default`` warns of such a rung beforehand: approvals/checks.py).
        task.escalation_level, task.next_escalation_at = level, next_at
        escalate_nobody_can_act(unit, task, missing_group=group_name)
        return
    if not able_people(task, group=group, limit=1):
        # Handed to the group alone, the task reached nobody new and stalled without a word. The group stays a
        # candidate (a member added later finds the task in their queue); managers and operators take it now.
        task.escalation_level, task.next_escalation_at = level, next_at
        add_candidates(task, groups=[group])
        why = group_unable_why(group, unit.instance.initiator_id)
        escalate_nobody_can_act(unit, task, unable_group=group_name, unable_why=why)
        return
    from_state, holder = task.state, task.assignee_id
    task.escalate(level, next_at)
    rows.update(task, ["state", "escalation_level", "next_escalation_at", *HOLDER_FIELDS])
    add_candidates(task, groups=[group])
    action, kind = (
        (AuditAction.TASK_REASSIGNED, "reassigned") if reassigned else (AuditAction.TASK_ESCALATED, "escalated")
    )
    unit.audit("task", task.pk, from_state, task.state, payload={"group": group_name}, action=action)
    if reassigned:
        announce(unit, task, "task.escalated", f"Reassigned to {group_name}: {task.title}", former_holder=holder)
        message = f"Overdue, now yours: {isolate(task.title)}"
    else:
        announce(
            unit,
            task,
            "task.escalated",
            f"Escalated to {group_name}: {task.title}",
            level="warning",
            former_holder=holder,
        )
        message = f"Escalated: {isolate(task.title)}"
    members = members_of([group_name], exclude=[unit.instance.initiator_id])
    notify(unit, members, kind, message, url=task_url(task), task=task)
