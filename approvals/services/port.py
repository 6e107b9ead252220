"""The engine's port, implemented: open a task for a human step, open an escalation, cancel tasks (called by the
engine inside its transaction, through ``orchestrator.ports``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.db.models import QuerySet

from approvals.models import (
    ACTIONABLE_TASK_STATES,
    HumanTask,
    Priority,
    TaskDecision,
    TaskKind,
)
from approvals.notifications import members_of, notify
from approvals.selectors import inbox_counts, instance_ids_seen, tasks_open_counts, visible_tasks
from approvals.services.base import (
    APPROVE,
    OPERATORS,
    PRIORITY_BY_NAME,
    able_people,
    add_candidates,
    announce,
    candidates_sql,
    escalate_nobody_can_act,
    groups_named,
    task_url,
)
from approvals.services.deadlines import tasks_shift_deadlines, tasks_sweep
from approvals.services.people import tasks_release_unfit
from orchestrator import rows
from orchestrator.audit_actions import AuditAction
from orchestrator.bidi import isolate
from orchestrator.dsl import APPROVAL, Human, as_timedelta
from orchestrator.models import StepKind, StepRun
from orchestrator.selectors import hide_paths
from orchestrator.services.locks import definition_of
from orchestrator.services.sweep_report import SweepReport
from orchestrator.services.unit import Unit

logger = logging.getLogger(__name__)


def task_open(unit: Unit, step: StepRun, node: Human) -> HumanTask:
    """Start a human step: insert the new (unsaved) ``step`` with its task, the task's SLA and first escalation
    deadline and its candidates; audit both.

    Raises ``IntegrityError``/``DataError`` for a value the database refuses (a title too long after rendering),
    which the caller records as the step's failure.
    """
    instance = unit.instance
    due_at = unit.now + as_timedelta(node.sla) if node.sla else None
    task = HumanTask(
        instance=instance,
        step=step,
        kind=TaskKind.APPROVAL if node.kind_of_task == APPROVAL else TaskKind.FORM,
        title=node.render_title(instance.title)[:200],
        priority=PRIORITY_BY_NAME[node.priority],
        quorum=node.quorum,
        due_at=due_at,
        next_escalation_at=unit.now + node.escalation[0].after if node.escalation else None,
    )
    group_ids, user_ids, able = _task_insert(
        task, node.candidate_groups, node.candidate_users, step=step, initiator_id=instance.initiator_id
    )
    unit.audit("step", step.pk, "", step.state, payload={"node": node.name}, action=AuditAction.STEP_STARTED)
    unit.audit(
        "task",
        task.pk,
        "",
        task.state,
        payload={
            "title": task.title,
            "groups": list(node.candidate_groups),
            "users": list(node.candidate_users),
        },
        action=AuditAction.TASK_OPENED,
    )
    if able < task.quorum:
        # Nobody (or too few for the quorum) can act on it: waiting would be forever, so it escalates now.
        escalate_nobody_can_act(unit, task, able=able, named=node.candidate_users)
    else:
        announce(unit, task, "task.opened", f"New task: {task.title}", groups=group_ids, users=user_ids)
    return task


def _escalation_title(unit: Unit, step: StepRun) -> str:
    """A title a manager understands: the business reference (the instance's title, e.g. "Order 1042 for
    ACME") and what went wrong in plain words; the engine's error text stays in the description and the audit.
    """
    node: Any = None
    try:
        node = definition_of(unit.instance).node(step.name)
    except Exception:
        node = None
    what = (getattr(node, "label", "") or step.name.replace("_", " ")).strip()
    subject = unit.instance.title or f"Instance #{unit.instance.pk}"
    if step.kind == StepKind.COMPENSATION:
        undo = getattr(getattr(node, "compensate", None), "__name__", "")
        undo = undo.replace("_", " ") if undo else f"undoing {what.lower()}"
        text = f"{subject}: {undo} failed and must be finished by hand"
    else:
        text = f"{subject}: {what.lower()} failed and needs an operator's decision"
    return text[:200]


def escalation_open(unit: Unit, step: StepRun, *, reason: str) -> HumanTask:
    """A failure nobody should leave silent: an escalation task for the operators. Raises nothing of its own."""
    groups = groups_named([OPERATORS])
    task = HumanTask(
        instance=unit.instance,
        step=step,
        kind=TaskKind.ESCALATION,
        title=_escalation_title(unit, step),
        # Managers see every task and the escalation's candidates its page: the error without the server's paths,
        # as the instance page shows a step's error to whoever may not operate (operators read them there).
        description=hide_paths(step.error),
        priority=Priority.URGENT,
    )
    task.save()
    add_candidates(task, groups=groups)
    unit.audit(
        "task",
        task.pk,
        "",
        task.state,
        reason=reason,
        # step_kind: an undo that failed is told to operators apart from other failures (console/alerts.py).
        payload={"kind": "escalation", "step_kind": str(step.kind)},
        action=AuditAction.TASK_OPENED,
    )
    announce(
        unit, task, "task.opened", f"Escalation: {task.title}", groups=[g.pk for g in groups], users=[], level="danger"
    )
    operators = members_of([OPERATORS], exclude=[unit.instance.initiator_id])
    notify(unit, operators, "escalation", f"Needs an operator: {isolate(task.title)}", url=task_url(task), task=task)
    if not able_people(task, limit=1):
        # No operator but the initiator (who may not resolve it), or none at all: managers take it too.
        escalate_nobody_can_act(unit, task)
    return task


def _task_insert(
    task: HumanTask, groups: Sequence[str], users: Sequence[str], *, step: StepRun, initiator_id: int | None = None
) -> tuple[list[int], list[int], int]:
    """INSERT the new ``step``, its task and the task's candidates named in the definition; the ids of the
    groups and users found, and how many people are able to act on the task (see :func:`able_people`), counted up
    to the task's quorum.

    On PostgreSQL one statement does it all (the task reads the new step's id, the candidates the new task's,
    from WITHs): a worker's step waits on each round trip. Elsewhere the step, the task, then each list of
    candidates.
    """
    group_ids: list[int] = []
    user_ids: list[int] = []
    if rows.on_postgresql():
        step_sql, params = rows.insert_statement([step], returning=True)
        task_sql, task_params = rows.insert_statement(
            [task], returning=True, expressions={"step_id": "(SELECT id FROM new_step)"}
        )
        params += task_params
        parts = [f"new_step AS ({step_sql})", f"new_task AS ({task_sql})"]
        found = []
        for kind, names in (("group", groups), ("user", users)):
            if names:
                parts.append(f"new_{kind}s AS ({candidates_sql(kind, names, 'new_task.id', 'new_task, ')})")
                params += list(names)
            found.append(f"ARRAY(SELECT {kind}_id FROM new_{kind}s)" if names else "ARRAY[]::bigint[]")
        # Who can act, counted in the same statement (the new candidate rows are visible only through the WITHs).
        able_sql, able_params = _able_at_open_sql(bool(groups), bool(users), task, initiator_id)
        with rows.cursor() as cursor:
            cursor.execute(
                f"WITH {', '.join(parts)} SELECT (SELECT id FROM new_step), (SELECT id FROM new_task),"
                f" {', '.join(found)}, {able_sql}",
                params + able_params,
            )
            step.pk, task.pk, found_groups, found_users, able = cursor.fetchone()
        task.step = step  # the task's step_id, read back
        rows.inserted([step, task])
        group_ids, user_ids = list(found_groups), list(found_users)
    else:
        rows.insert(step)
        task.step = step
        rows.insert(task)
        with rows.cursor() as cursor:
            for kind, names, ids in (("group", groups, group_ids), ("user", users, user_ids)):
                if names:
                    cursor.execute(candidates_sql(kind, names, "%s", ""), [task.pk, *names])
                    ids += [row[0] for row in cursor.fetchall()]
        able = len(able_people(task, limit=task.quorum))
    if len(group_ids) < len(set(groups)):
        # A definition naming a group nobody created yet still gets a visible queue, not a lost task.
        known = set(Group.objects.filter(pk__in=group_ids).values_list("name", flat=True))
        created = groups_named([name for name in dict.fromkeys(groups) if name not in known])
        add_candidates(task, groups=created)
        group_ids += [g.pk for g in created]
    return group_ids, user_ids, able


def _able_at_open_sql(groups: bool, users: bool, task: HumanTask, initiator_id: int | None) -> tuple[str, list[Any]]:
    """The count, capped at the quorum, of :func:`able_people` for a task being inserted by ``_task_insert``'s
    statement: candidates read from its ``new_groups``/``new_users`` WITHs (absent when the definition names
    none)."""
    if not (groups or users):
        return "0", []
    users_table, members = get_user_model()._meta.db_table, User.groups.through._meta.db_table
    named = ["u.id IN (SELECT user_id FROM new_users)"] if users else []
    if groups:
        named.append(
            f"u.id IN (SELECT m.user_id FROM {members} m WHERE m.group_id IN (SELECT group_id FROM new_groups))"
        )
    sql = (
        f"(SELECT count(*) FROM (SELECT 1 FROM {users_table} u WHERE u.is_active AND u.id IS DISTINCT FROM %s"
        f" AND ({' OR '.join(named)})"
    )
    params: list[Any] = [initiator_id]
    if task.kind == TaskKind.APPROVAL:
        # One approval per person per instance: an earlier approver of this instance cannot approve this task.
        sql += (
            f" AND NOT EXISTS (SELECT 1 FROM {TaskDecision._meta.db_table} d WHERE d.user_id = u.id"
            " AND d.instance_id = %s AND d.decision = %s)"
        )
        params += [task.instance_id, APPROVE]
    return f"{sql} LIMIT %s) able)", [*params, task.quorum]


def tasks_cancel_for_steps(unit: Unit, step_ids: list[int], reason: str) -> None:
    """Cancel the open tasks of steps the engine skipped (compensation, rejection). Raises nothing of its own."""
    if step_ids:
        _cancel_tasks(unit, HumanTask.objects.filter(step_id__in=step_ids, state__in=ACTIONABLE_TASK_STATES), reason)


def tasks_cancel_for_instance(unit: Unit, reason: str) -> None:
    """Cancel every open task of the instance, escalations included (the instance is cancelled).

    Raises nothing of its own.
    """
    _cancel_tasks(unit, HumanTask.objects.filter(instance=unit.instance, state__in=ACTIONABLE_TASK_STATES), reason)


def _cancel_tasks(unit: Unit, tasks: Any, reason: str) -> None:
    for task in tasks:
        from_state = task.state
        task.cancel(unit.now)
        rows.update(task, ["state", "completed_at", "next_escalation_at"])
        unit.audit("task", task.pk, from_state, task.state, reason=reason, action=AuditAction.TASK_CANCELLED)
        announce(unit, task, "task.cancelled", "")


class ApprovalsHumanTasks:
    """The engine's human side (``orchestrator.ports.HumanTasks``), registered by ``ApprovalsConfig.ready()``. Each
    method hands over to the service that does the work; see the protocol for what each one is asked."""

    def task_open(self, unit: Unit, step: StepRun, node: Human) -> None:
        """See :func:`task_open` (what it raises too)."""
        task_open(unit, step, node)

    def escalation_open(self, unit: Unit, step: StepRun, *, reason: str) -> None:
        """See :func:`escalation_open`; raises nothing of its own."""
        escalation_open(unit, step, reason=reason)

    def tasks_cancel_for_steps(self, unit: Unit, step_ids: list[int], reason: str) -> None:
        """See :func:`tasks_cancel_for_steps`; raises nothing of its own."""
        tasks_cancel_for_steps(unit, step_ids, reason)

    def tasks_cancel_for_instance(self, unit: Unit, reason: str) -> None:
        """See :func:`tasks_cancel_for_instance`; raises nothing of its own."""
        tasks_cancel_for_instance(unit, reason)

    def tasks_shift_deadlines(self, unit: Unit, paused_at: datetime, held: Any) -> None:
        """See ``deadlines.tasks_shift_deadlines``; raises nothing of its own."""
        tasks_shift_deadlines(unit, paused_at, held)

    def tasks_sweep(self, now: datetime, *, report: SweepReport) -> dict[str, int]:
        """See ``deadlines.tasks_sweep``; raises only what the database raises outside a task's own
        transaction."""
        return tasks_sweep(now, report=report)

    def tasks_release_unfit(self, now: datetime) -> dict[str, int]:
        """See ``people.tasks_release_unfit``; raises nothing of its own."""
        return tasks_release_unfit(now)

    def sees_instance(self, user: User, instance_id: int) -> bool:
        """True if ``user`` sees one of the instance's tasks (``selectors.visible_tasks``). Raises nothing
        of its own."""
        return visible_tasks(user).filter(instance_id=instance_id).exists()

    def instance_ids_seen(self, user: User) -> QuerySet[Any]:
        """``selectors.instance_ids_seen``: the rule of :meth:`sees_instance`, for a list. Raises nothing of its
        own."""
        return instance_ids_seen(user)

    def tasks_open_counts(self, now: datetime) -> dict[str, int]:
        """See ``selectors.tasks_open_counts``; raises nothing of its own."""
        return tasks_open_counts(now)

    def live_counts(self, user: User) -> dict[str, int]:
        """The inbox counts read fresh (``selectors.inbox_counts``). Raises nothing of its own."""
        return inbox_counts(user, fresh=True)
