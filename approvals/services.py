"""Every write on human tasks: open, claim, release, decide, delegate, escalate, cancel.

Each public service locks the instance row first (the engine's lock order), then the task, checks who may act,
runs the transition, writes audit and advances the instance, all in one transaction; live events go out after
commit. A lost race raises :class:`TaskConflict` (HTTP 409 / a message on the page), never a 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.core.exceptions import ValidationError
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.urls import reverse
from django.utils import timezone

from approvals.models import (
    ACTIONABLE_TASK_STATES,
    HumanTask,
    Notification,
    Priority,
    TaskCandidate,
    TaskDecision,
    TaskKind,
    TaskState,
)
from approvals.notifications import members_of, notify
from approvals.selectors import is_manager
from orchestrator import rows
from orchestrator.audit import Actor
from orchestrator.dsl import APPROVAL, Escalate, Human, Reassign, Remind
from orchestrator.inputs import COMMENT_MAX, NOTE_MAX, check_text, check_when
from orchestrator.models import InstanceState, StepKind, StepRun, StepState, WorkflowInstance
from orchestrator.realtime import send_now
from orchestrator.services import engine
from orchestrator.services.results import clean_text
from orchestrator.services.unit import Unit

logger = logging.getLogger(__name__)

OPERATORS = "operators"
MANAGERS = "managers"
PRIORITY_BY_NAME = {
    "low": Priority.LOW,
    "normal": Priority.NORMAL,
    "high": Priority.HIGH,
    "urgent": Priority.URGENT,
}

APPROVE = "approve"
REJECT = "reject"
SUBMIT = "submit"
# Escalation resolutions.
RETRY = "retry"
SKIP = "skip"
FAIL = "fail"
RESOLVED = "resolved"


class TaskError(Exception):
    """Base of the errors a person can cause; the message is shown to them as it is."""


class TaskNotFound(TaskError):
    """The task does not exist or the user may not see it (both answer 404)."""


class TaskForbidden(TaskError):
    """The user sees the task but may not take this action (four-eyes, not a candidate)."""


class TaskConflict(TaskError):
    """Someone else got there first, or the task is no longer open (HTTP 409)."""


class TaskInvalid(TaskError):
    """The decision's input is not valid (a reject without a comment, a form with errors)."""

    def __init__(self, message: str, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or {}


def _checked_text(value: str, what: str, max_length: int, field: str) -> str:
    """``inputs.check_text`` with its refusal as a TaskInvalid naming ``field``."""
    try:
        return check_text(value, what, max_length)
    except ValidationError as exc:
        raise TaskInvalid(" ".join(exc.messages), {field: exc.messages}) from None


# --- opening and closing, called by the engine inside its transaction ------------------------------------


def _groups(names: list[str] | tuple[str, ...]) -> list[Group]:
    existing = {g.name: g for g in Group.objects.filter(name__in=names)}
    # A definition naming a group nobody created yet still gets a visible queue, not a lost task.
    return [existing.get(name) or Group.objects.get_or_create(name=name)[0] for name in names]


def task_open(unit: Unit, step: StepRun, node: Human) -> HumanTask:
    """Start a human step: insert the new (unsaved) ``step`` with its task, the task's SLA and first escalation
    deadline and its candidates; audit both."""
    instance = unit.instance
    due_at = unit.now + node.sla if node.sla else None
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
    unit.audit("step.started", "step", step.pk, "", step.state, payload={"node": node.name})
    unit.audit(
        "task.opened",
        "task",
        task.pk,
        "",
        task.state,
        payload={
            "title": task.title,
            "groups": list(node.candidate_groups),
            "users": list(node.candidate_users),
        },
    )
    if able < task.quorum:
        # Nobody (or too few for the quorum) can act on it: waiting would be forever, so it escalates now.
        _escalate_nobody_can_act(unit, task, able=able, named=node.candidate_users)
    else:
        _announce(unit, task, "task.opened", f"New task: {task.title}", groups=group_ids, users=user_ids)
    return task


def _escalation_title(unit: Unit, step: StepRun) -> str:
    """A title a manager understands: the business reference (the instance's title, e.g. "Order 1042 for
    ACME") and what went wrong in plain words; the engine's error text stays in the description and the audit.
    """
    node: Any = None
    try:
        node = engine.definition_of(unit.instance).node(step.name)
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
    """A failure nobody should leave silent: an escalation task for the operators."""
    groups = _groups([OPERATORS])
    task = HumanTask(
        instance=unit.instance,
        step=step,
        kind=TaskKind.ESCALATION,
        title=_escalation_title(unit, step),
        description=step.error,
        priority=Priority.URGENT,
    )
    task.save()
    _add_candidates(task, groups=groups)
    unit.audit("task.opened", "task", task.pk, "", task.state, reason=reason, payload={"kind": "escalation"})
    _announce(
        unit, task, "task.opened", f"Escalation: {task.title}", groups=[g.pk for g in groups], users=[], level="danger"
    )
    operators = members_of([OPERATORS], exclude=[unit.instance.initiator_id])
    notify(unit, operators, "escalation", f"Needs an operator: {task.title}", url=_url(task), task=task)
    if not able_people(task, limit=1):
        # No operator but the initiator (who may not resolve it), or none at all: managers take it too.
        _escalate_nobody_can_act(unit, task)
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
                parts.append(f"new_{kind}s AS ({_candidates_sql(kind, names, 'new_task.id', 'new_task, ')})")
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
                    cursor.execute(_candidates_sql(kind, names, "%s", ""), [task.pk, *names])
                    ids += [row[0] for row in cursor.fetchall()]
        able = len(able_people(task, limit=task.quorum))
    if len(group_ids) < len(set(groups)):
        # A definition naming a group nobody created yet still gets a visible queue, not a lost task.
        known = set(Group.objects.filter(pk__in=group_ids).values_list("name", flat=True))
        created = _groups([name for name in dict.fromkeys(groups) if name not in known])
        _add_candidates(task, groups=created)
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


def able_people(task: HumanTask, *, limit: int | None = None) -> list[int]:
    """Ids of the people who could decide ``task`` now: active, a candidate (by name or by a group they belong
    to), not the instance's initiator, not someone who already decided this task, and for an approval not
    someone who approved another task of the instance (four-eyes). At most ``limit`` ids.

    The rule is written down in docs/architecture.md ("Who may act on a task").
    """
    candidates = TaskCandidate.objects.filter(task_id=task.pk)
    people = (
        get_user_model()
        .objects.filter(is_active=True)
        .filter(
            Q(pk__in=candidates.filter(user__isnull=False).values("user_id"))
            | Q(groups__in=candidates.filter(group__isnull=False).values("group_id"))
        )
        .exclude(pk__in=TaskDecision.objects.filter(task_id=task.pk).values("user_id"))
    )
    initiator_id = WorkflowInstance.objects.filter(pk=task.instance_id).values_list("initiator_id", flat=True).first()
    if initiator_id:
        people = people.exclude(pk=initiator_id)
    if task.kind == TaskKind.APPROVAL:
        earlier = TaskDecision.objects.filter(instance_id=task.instance_id, decision=APPROVE)
        people = people.exclude(pk__in=earlier.values("user_id"))
    ids = people.values_list("pk", flat=True).distinct().order_by("pk")
    return list(ids[:limit] if limit is not None else ids)


def _nobody_why(task: HumanTask, initiator_id: int | None, able: int, named: Sequence[str] = ()) -> str:
    """Why too few people can act on ``task``, in a manager's words (the candidate groups and users one by one;
    ``named``: the usernames the definition names, so that unknown ones are said too)."""
    known = set(get_user_model().objects.filter(username__in=list(named)).values_list("username", flat=True))
    reasons = [f"no user named {name}" for name in dict.fromkeys(named) if name not in known]
    for group in task.candidate_groups.order_by("name"):
        if not group.user_set.filter(is_active=True).exists():
            reasons.append(f"no active member in group {group.name}")
        else:
            reasons.append(f"no one in group {group.name} may act (the initiator or earlier approvers only)")
    for user in task.candidate_users.order_by("username"):
        if not user.is_active:
            reasons.append(f"user {user.get_username()} is deactivated")
        elif user.pk == initiator_id:
            reasons.append(f"user {user.get_username()} started this workflow")
        else:
            reasons.append(f"user {user.get_username()} may not act")
    if not reasons:
        reasons.append("no candidate group or user exists")
    why = "; ".join(reasons)
    if able and able < task.quorum - task.approvals:
        why = f"only {able} of the {task.quorum - task.approvals} people needed can act: {why}"
    return why


def _escalate_nobody_can_act(unit: Unit, task: HumanTask, *, able: int = 0, named: Sequence[str] = ()) -> None:
    """Too few active people can act on ``task`` (unknown names, empty groups, everyone deactivated, only the
    initiator): it becomes a visible escalation for managers and operators at once, titled with the reason, instead
    of waiting forever. Managers and operators join the candidates (four-eyes still applies to them)."""
    verb = {TaskKind.APPROVAL: "approve", TaskKind.FORM: "complete"}.get(TaskKind(task.kind), "resolve")
    why = _nobody_why(task, unit.instance.initiator_id, able, named)
    from_state = task.state
    task.title = f"Nobody can {verb}: {why} ({task.title})"[:200]
    task.priority = Priority.URGENT
    task.escalate(task.escalation_level, task.next_escalation_at)
    rows.update(
        task, ["title", "priority", "state", "escalation_level", "next_escalation_at", "assignee", "claimed_at"]
    )
    groups = _groups([MANAGERS, OPERATORS])
    _add_candidates(task, groups=groups)
    unit.audit(
        "task.escalated",
        "task",
        task.pk,
        from_state,
        task.state,
        reason=f"Nobody can {verb}: {why}",
        payload={"groups": [MANAGERS, OPERATORS], "nobody_can_act": True},
    )
    _announce(unit, task, "task.escalated", f"Escalation: {task.title}", level="danger")
    members = members_of([MANAGERS, OPERATORS], exclude=[unit.instance.initiator_id])
    notify(unit, members, "escalation", f"Needs a manager or an operator: {task.title}", url=_url(task), task=task)


def _candidates_sql(kind: str, names: Sequence[str], task_id: str, task_from: str) -> str:
    """INSERT ... SELECT of the candidate groups (``kind`` "group", by name) or users (by username) found among
    ``names``, for the task whose id is the SQL ``task_id`` (read from ``task_from``); returns their ids."""
    if kind == "group":
        table, key, group_id, user_id = Group._meta.db_table, "name", "x.id", "NULL"
    else:
        table, key, group_id, user_id = get_user_model()._meta.db_table, "username", "NULL", "x.id"
    return (
        f"INSERT INTO {TaskCandidate._meta.db_table} (task_id, group_id, user_id)"
        f" SELECT {task_id}, {group_id}, {user_id} FROM {task_from}{table} x"
        f" WHERE x.{key} IN ({', '.join(['%s'] * len(names))}) RETURNING {kind}_id"
    )


def _add_candidates(task: HumanTask, *, groups: Sequence[Group] = (), users: Sequence[User] = ()) -> None:
    TaskCandidate.objects.bulk_create(
        [TaskCandidate(task=task, group=g) for g in groups] + [TaskCandidate(task=task, user=u) for u in users],
        ignore_conflicts=True,
    )


def tasks_cancel_for_steps(unit: Unit, step_ids: list[int], reason: str) -> None:
    """Cancel the open tasks of steps the engine skipped (compensation, rejection)."""
    if step_ids:
        _cancel_tasks(unit, HumanTask.objects.filter(step_id__in=step_ids, state__in=ACTIONABLE_TASK_STATES), reason)


def tasks_cancel_for_instance(unit: Unit, reason: str) -> None:
    """Cancel every open task of the instance, escalations included (the instance is cancelled)."""
    _cancel_tasks(unit, HumanTask.objects.filter(instance=unit.instance, state__in=ACTIONABLE_TASK_STATES), reason)


def _cancel_tasks(unit: Unit, tasks: Any, reason: str) -> None:
    for task in tasks:
        from_state = task.state
        task.cancel(unit.now)
        rows.update(task, ["state", "completed_at", "next_escalation_at"])
        unit.audit("task.cancelled", "task", task.pk, from_state, task.state, reason=reason)
        _announce(unit, task, "task.cancelled", "")


# Events whose news reaches the one person it concerns as a notification (bell and toast): the candidates' and
# the assignee's pages only refresh, so nobody sees a second toast, and nobody else reads "delegated to you".
QUIET_ANNOUNCEMENTS = frozenset({"task.delegated"})


def _announce(
    unit: Unit,
    task: HumanTask,
    kind: str,
    message: str,
    *,
    groups: list[int] | None = None,
    users: list[int] | None = None,
    level: str = "info",
) -> None:
    """Tell the task's candidates and assignee (ids given by a caller that just wrote them, else read)."""
    if groups is None or users is None:
        with rows.cursor() as cursor:
            cursor.execute(
                f"SELECT group_id, user_id FROM {TaskCandidate._meta.db_table} WHERE task_id = %s", [task.pk]
            )
            pairs = cursor.fetchall()
        groups = [g for g, _ in pairs if g is not None]
        users = [u for _, u in pairs if u is not None]
    targets = [f"group.{g}" for g in groups]
    if task.assignee_id:
        targets.append(f"user.{task.assignee_id}")
    targets += [f"user.{u}" for u in users]
    event: dict[str, Any] = {"type": kind, "task": task.pk, "refresh": ["inbox", "counts", f"task-{task.pk}"]}
    if message and kind not in QUIET_ANNOUNCEMENTS:
        event.update(message=message, level=level)
    unit.notify(targets, event)


# --- who may do what ----------------------------------------------------------------------------------


# "Is this user a candidate of task t?" as one EXISTS over the candidates table, for a task aliased ``t``.
CANDIDATE_EXISTS = (
    f"EXISTS (SELECT 1 FROM {TaskCandidate._meta.db_table} c WHERE c.task_id = t.id AND (c.user_id = %s"
    f" OR c.group_id IN (SELECT m.group_id FROM {User.groups.through._meta.db_table} m WHERE m.user_id = %s)))"
)


def is_candidate(user: User, task: HumanTask) -> bool:
    """A candidate by name or by one of their groups."""
    # A permission check reads the user's groups afresh (not the per-request cache the lists use).
    with rows.cursor() as cursor:
        cursor.execute(
            f"SELECT {CANDIDATE_EXISTS} FROM {HumanTask._meta.db_table} t WHERE t.id = %s", [user.pk, user.pk, task.pk]
        )
        row = cursor.fetchone()
        return bool(row and row[0])


@dataclass
class LockedTask:
    """A task read under its instance's lock, with the unit that writes it and the acting user's permission
    answers, read in the same statement: a candidate now, approved another task of this instance before, already
    decided this task (a quorum task collects one decision per person)."""

    task: HumanTask
    unit: Unit
    is_candidate: bool
    approved_before: bool
    decided_this: bool = False


def _lock_task(task_id: int, user: User, request_meta: dict | None = None) -> LockedTask:
    tasks, steps, instances = HumanTask._meta.db_table, StepRun._meta.db_table, WorkflowInstance._meta.db_table
    locked = rows.select(
        [(WorkflowInstance, "i")],
        f"FROM {instances} i WHERE i.id = (SELECT t.instance_id FROM {tasks} t WHERE t.id = %s){rows.lock_clause()}",
        [task_id],
    )
    if not locked:
        raise TaskNotFound("No such task.")
    instance = locked[0][0]
    # Read after the lock: every write to a task, its step or its decisions happens under the instance's lock.
    # The two permission questions ride along: is the user a candidate, and did they approve this instance before.
    # Whether the account is still active rides along too: the user object the request loaded may predate a
    # deactivation that committed while the request waited for this lock.
    task, step, candidate, approved_before, decided_this, active = rows.select(
        [(HumanTask, "t"), (StepRun, "s")],
        f"FROM {tasks} t JOIN {steps} s ON s.id = t.step_id WHERE t.id = %s",
        [user.pk, user.pk, user.pk, APPROVE, user.pk, user.pk, task_id],
        extra=[
            CANDIDATE_EXISTS,
            f"EXISTS (SELECT 1 FROM {TaskDecision._meta.db_table} d WHERE d.instance_id = t.instance_id"
            " AND d.user_id = %s AND d.decision = %s)",
            f"EXISTS (SELECT 1 FROM {TaskDecision._meta.db_table} d WHERE d.task_id = t.id AND d.user_id = %s)",
            f"EXISTS (SELECT 1 FROM {User._meta.db_table} u WHERE u.id = %s AND u.is_active)",
        ],
    )[0]
    assert isinstance(task, HumanTask)
    assert isinstance(step, StepRun)
    assert isinstance(instance, WorkflowInstance)
    task.step = step
    # Candidates, the assignee and managers see a task; anyone else gets a 404.
    if not (task.assignee_id == user.pk or candidate or is_manager(user)):
        raise TaskNotFound("No such task.")
    if not active:
        # Every action on a task goes through here: a deactivated account does none of them (a manager's
        # delegation or release included), whatever the object the caller holds says.
        raise TaskForbidden("Your account is deactivated.")
    unit = Unit(instance, Actor.of(user), request_meta=request_meta)
    return LockedTask(task, unit, bool(candidate), bool(approved_before), bool(decided_this))


def _check_not_initiator(user: User, locked: LockedTask) -> None:
    """Four-eyes: whoever started the instance never claims, decides, releases, delegates or resolves any of its
    tasks (escalations included), whatever their role: steering who decides is deciding."""
    if locked.unit.instance.initiator_id == user.pk:
        raise TaskForbidden("You started this workflow, so you cannot act on its tasks (four-eyes rule).")


def _check_may_act(user: User, locked: LockedTask) -> None:
    """The acting user's authority at this moment: active, not the initiator, a candidate now (by name or by a
    group they still belong to). Being the assignee is not enough: an assignee who left the candidate groups lost
    the task with them (docs/architecture.md, "Who may act on a task")."""
    task = locked.task
    if not user.is_active:
        raise TaskForbidden("Your account is deactivated.")
    _check_not_initiator(user, locked)
    if not locked.is_candidate:
        if task.assignee_id == user.pk:
            raise TaskForbidden("You are no longer a candidate for this task, so it is no longer yours.")
        raise TaskForbidden("You are not a candidate for this task.")


# --- the people's actions -----------------------------------------------------------------------------


def task_claim(task_id: int, user: User, *, request_meta: dict | None = None) -> HumanTask:
    """Take an open task; it leaves everyone else's queue. ``request_meta`` (ip, user_agent, path) goes into the
    audit event."""
    with transaction.atomic():
        locked = _lock_task(task_id, user, request_meta)
        task, unit = locked.task, locked.unit
        if task.state == TaskState.CLAIMED and task.assignee_id == user.pk:
            return task
        if task.state not in (TaskState.OPEN, TaskState.ESCALATED):
            who = f" by {task.assignee}" if task.assignee_id else ""
            raise TaskConflict(f"This task is already {task.get_state_display().lower()}{who}.")
        _check_may_act(user, locked)
        from_state = task.state
        task.claim(user, unit.now)
        rows.update(task, ["state", "assignee", "claimed_at"])
        unit.audit("task.claimed", "task", task.pk, from_state, task.state)
        _announce(unit, task, "task.claimed", f"{user.get_username()} claimed: {task.title}")
        unit.finish()
        return task


def task_release(task_id: int, user: User, *, request_meta: dict | None = None) -> HumanTask:
    """Give a claimed task back to the queue (the assignee or a manager, never the instance's initiator);
    ``request_meta`` goes into the audit event."""
    with transaction.atomic():
        locked = _lock_task(task_id, user, request_meta)
        task, unit = locked.task, locked.unit
        _check_not_initiator(user, locked)
        if task.state != TaskState.CLAIMED:
            raise TaskConflict("This task is not claimed.")
        if task.assignee_id != user.pk and not is_manager(user):
            raise TaskForbidden("Only the assignee or a manager can release this task.")
        previous = task.assignee_id
        task.release()
        rows.update(task, ["state", "assignee", "claimed_at"])
        unit.audit("task.released", "task", task.pk, TaskState.CLAIMED, task.state, payload={"from_user": previous})
        _announce(unit, task, "task.released", f"Back in the queue: {task.title}")
        unit.finish()
        return task


def task_delegate(
    task_id: int,
    user: User,
    to_user: User,
    *,
    note: str = "",
    request_meta: dict | None = None,
) -> HumanTask:
    """Hand a task to another candidate (by its assignee or a manager, never the instance's initiator), with a
    note; ``request_meta`` goes into the audit event.

    Raises TaskInvalid for a note with a NUL or longer than ``inputs.NOTE_MAX``, or unless ``to_user`` is an active
    candidate who is neither the delegator nor the initiator (a task parked with someone who cannot sign in, or
    handed to oneself, is no hand-over); TaskForbidden, TaskConflict, TaskNotFound as the other actions.
    """
    note = _checked_text(note, "Note", NOTE_MAX, "note")
    with transaction.atomic():
        locked = _lock_task(task_id, user, request_meta)
        task, unit = locked.task, locked.unit
        if not task.is_actionable:
            raise TaskConflict(f"This task is already {task.get_state_display().lower()}.")
        _check_not_initiator(user, locked)
        if task.assignee_id != user.pk and not is_manager(user):
            raise TaskForbidden("Only the assignee or a manager can delegate this task.")
        if to_user.pk == user.pk:
            raise TaskInvalid("Choose someone else: you cannot delegate a task to yourself.")
        if not to_user.is_active:
            raise TaskInvalid(f"{to_user.get_username()} is deactivated and cannot take this task.")
        if not is_candidate(to_user, task) or unit.instance.initiator_id == to_user.pk:
            raise TaskInvalid(f"{to_user.get_username()} is not an eligible candidate for this task.")
        from_state = task.state
        if task.state == TaskState.CLAIMED:
            task.release()
        task.claim(to_user, unit.now)
        rows.update(task, ["state", "assignee", "claimed_at"])
        unit.audit(
            "task.delegated",
            "task",
            task.pk,
            from_state,
            task.state,
            reason=note,
            payload={"to": to_user.get_username()},
        )
        _announce(unit, task, "task.delegated", f"{user.get_username()} delegated to you: {task.title}")
        notify(
            unit,
            [to_user.pk],
            "delegated",
            f"{user.get_username()} delegated to you: {task.title}" + (f" ({note})" if note else ""),
            url=_url(task),
            task=task,
        )
        unit.finish()
        return task


class _FollowFailed(Exception):
    """Entering what follows a decision raised: carries the error out of the transaction it spoilt."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def task_decide(
    task_id: int,
    user: User,
    decision: str,
    *,
    comment: str = "",
    data: dict[str, Any] | None = None,
    request_meta: dict | None = None,
) -> HumanTask:
    """Approve, reject or submit a task. Four-eyes and quorum are enforced here, whoever calls.

    Raises TaskInvalid for a comment with a NUL or longer than ``inputs.COMMENT_MAX`` (whoever calls: the limit
    is the service's, the page only shows it), a missing reject comment or form errors.

    When entering what follows the decision raises (a Decision or a Timer's ``until`` raising, a next task that
    cannot open, a value too large), that transaction is rolled back and a fresh one keeps the decision (task
    completed, decision recorded, audited) and stops the instance with the real error
    (``engine.human_step_stopped``), telling the operators; the task returned then has ``task.step.state ==
    dead`` and the error in ``task.step.error_type`` / ``task.step.error`` (docs/architecture.md, "A step whose
    outcome cannot be recorded").
    """
    comment = _checked_text(comment, "Comment", COMMENT_MAX, "comment")
    try:
        return _decide(task_id, user, decision, comment, data or {}, request_meta, stopped_by=None)
    except _FollowFailed as failed:
        logger.error(
            "task %s: entering what follows the decision raised %s; the decision is kept and the instance stopped",
            task_id,
            type(failed.error).__name__,
            exc_info=failed.error,
        )
        return _decide(task_id, user, decision, comment, data or {}, request_meta, stopped_by=failed.error)


def _decide(
    task_id: int,
    user: User,
    decision: str,
    comment: str,
    data: dict[str, Any],
    request_meta: dict | None,
    *,
    stopped_by: Exception | None,
) -> HumanTask:
    """One attempt of :func:`task_decide` in its own transaction; with ``stopped_by`` (the error a first attempt
    met entering what follows) the decision is recorded and the instance stopped instead of followed. Every check
    is made again: the first attempt's transaction was rolled back, and someone may have acted in between."""
    with transaction.atomic():
        locked = _lock_task(task_id, user, request_meta)
        task, unit = locked.task, locked.unit
        if not task.is_actionable:
            raise TaskConflict(f"This task is already {task.get_state_display().lower()}.")
        if task.state == TaskState.CLAIMED and task.assignee_id != user.pk:
            raise TaskConflict(f"{task.assignee} has claimed this task.")
        _check_may_act(user, locked)
        if engine.definition_or_none(unit.instance) is None:
            # Nothing could follow the decision; it waits until the definition is registered again.
            raise TaskConflict(
                f"This task cannot be decided now: the workflow's {engine.definition_unavailable(unit.instance)}. "
                "An operator must deploy it again (or cancel the instance)."
            )
        if task.kind == TaskKind.ESCALATION:
            try:
                _resolve_escalation(unit, task, user, decision, comment)
                unit.finish()
            except (TaskError, OperationalError, InterfaceError):
                raise
            except Exception as exc:
                # Skipping the step enters what follows it, which raised: refused with the reason (the operator
                # can fix the definition and answer again, or choose Fail instance), never a 500.
                raise TaskConflict(
                    f"This answer cannot be carried out: what follows {task.step.name} raises "
                    f"{type(exc).__name__}: {clean_text(str(exc) or repr(exc), 300)}. Fix the workflow definition "
                    "and answer again, or choose Fail instance."
                ) from exc
            return task
        if unit.instance.state not in (InstanceState.RUNNING, InstanceState.WAITING):
            # A paused or failed instance does not move; a decision now would be recorded but go nowhere.
            raise TaskConflict(
                f"The workflow is {unit.instance.get_state_display().lower()}: "
                "an operator must resume or retry it before its tasks can be decided."
            )
        cleaned = _validate_decision(unit, task, decision, comment, data)
        if locked.decided_this:
            # A quorum task keeps one decision per person; a second one (or a change of mind) is refused here
            # rather than by the unique constraint (a 500).
            raise TaskConflict("You have already decided this task; a decision cannot be changed or repeated.")
        # One person, one approval slot per instance: no approving twice at two levels.
        if task.kind == TaskKind.APPROVAL and decision == APPROVE and locked.approved_before:
            raise TaskForbidden("You already approved another step of this workflow (four-eyes rule).")
        rows.insert(
            TaskDecision(task=task, instance=unit.instance, user=user, decision=decision, comment=comment, data=cleaned)
        )
        from_state = task.state
        if decision == APPROVE and task.approvals + 1 < task.quorum:
            task.approvals += 1
            if task.state == TaskState.CLAIMED:
                task.release()
            rows.update(task, ["approvals", "state", "assignee", "claimed_at"])
            unit.audit(
                "task.approved",
                "task",
                task.pk,
                from_state,
                task.state,
                reason=comment,
                payload={"approvals": task.approvals, "quorum": task.quorum},
            )
            _announce(unit, task, "task.approved", f"{task.approvals} of {task.quorum} approvals: {task.title}")
            unit.finish()
            return task
        if decision == APPROVE:
            task.approvals += 1
        _complete(unit, task, user, decision, comment, cleaned)
        result = {"decision": decision, "by": user.get_username(), "comment": comment, **cleaned}
        merge = cleaned if task.kind == TaskKind.FORM else None
        announcement = f"{user.get_username()} {past_tense(decision)}: {task.title}"
        if stopped_by is not None:
            engine.human_step_stopped(unit, task.step, result, stopped_by, merge=merge)
            _tell_operators_stopped(unit, task)
            _announce(unit, task, "task.completed", announcement)
            unit.finish()
            return task
        try:
            # What follows the decision, up to the write of the instance row (an outcome too long for its column
            # is refused there), is the definition's and the data's doing, not the person's.
            engine.human_step_finish(unit, task.step, result, rejected=decision == REJECT, merge=merge)
            _announce(unit, task, "task.completed", announcement)
            unit.finish()
        except (OperationalError, InterfaceError):
            raise  # the database, not the definition: nothing is recorded and the person may try again
        except Exception as exc:
            raise _FollowFailed(exc) from exc
        return task


def _tell_operators_stopped(unit: Unit, task: HumanTask) -> None:
    """Notify the operators (never the initiator) that the instance stopped after ``task``'s decision."""
    instance = unit.instance
    operators = members_of([OPERATORS], exclude=[instance.initiator_id])
    url = reverse("console:instance_detail", args=[instance.pk])
    name = instance.title or f"{instance.workflow_name} #{instance.pk}"
    notify(unit, operators, "escalation", f"Stopped after a decision, needs an operator: {name}", url=url)


def _complete(unit: Unit, task: HumanTask, user: User, decision: str, comment: str, data: dict[str, Any]) -> None:
    """The task's completing transition and its audit event (the caller advances the instance)."""
    from_state = task.state
    task.complete(user, decision, comment, data, unit.now)
    completed = ["state", "approvals", "completed_by", "decision", "comment", "form_data", "completed_at"]
    rows.update(task, [*completed, "next_escalation_at"])
    payload: dict[str, Any] = {"decision": decision}
    if data:
        payload["data"] = data
    unit.audit("task.completed", "task", task.pk, from_state, task.state, reason=comment, payload=payload)


def past_tense(decision: str) -> str:
    return {APPROVE: "approved", REJECT: "rejected", SUBMIT: "submitted"}.get(decision, decision)


def _validate_decision(unit: Unit, task: HumanTask, decision: str, comment: str, data: dict) -> dict[str, Any]:
    if task.kind == TaskKind.APPROVAL:
        if decision not in (APPROVE, REJECT):
            raise TaskInvalid("Choose Approve or Reject.")
        if decision == REJECT and not comment:
            raise TaskInvalid("Say why you reject: a comment is required.", {"comment": ["Required on reject."]})
        return {}
    if decision != SUBMIT:
        raise TaskInvalid("Submit the form to complete this task.")
    node = engine.definition_of(unit.instance).node(task.step.name)
    assert isinstance(node, Human)
    form = node.form(data=data)
    if not form.is_valid():
        errors = {k: [str(e) for e in v] for k, v in form.errors.items()}
        raise TaskInvalid("The form has errors.", errors)
    return json.loads(json.dumps(form.cleaned_data, default=str))


def _resolve_escalation(unit: Unit, task: HumanTask, user: User, decision: str, comment: str) -> None:
    """An operator's answer to a failed step or compensation: retry it, skip it, mark it done, or fail."""
    if decision not in (RETRY, SKIP, FAIL, RESOLVED):
        raise TaskInvalid("Choose Retry, Skip, Mark resolved or Fail instance.")
    if not comment:
        raise TaskInvalid("Give a reason: it goes into the audit trail.", {"comment": ["Required."]})
    step = task.step
    instance = unit.instance
    workflow = engine.definition_of(instance)
    is_compensation = step.kind == StepKind.COMPENSATION
    if decision == RESOLVED and not is_compensation:
        raise TaskInvalid("Mark resolved applies to a failed compensation; use Skip for a failed step.")
    if decision == SKIP and is_compensation:
        raise TaskInvalid("Use Mark resolved once the compensation has been done by hand.")
    if is_compensation and instance.state != InstanceState.COMPENSATING:
        then = (
            "retry it to go on with its compensation"
            if instance.state == InstanceState.FAILED
            else "nothing to resolve"
        )
        raise TaskConflict(f"The workflow is {instance.get_state_display().lower()}: {then}.")
    if not is_compensation and decision in (RETRY, SKIP) and engine.saga_begun(instance):
        # The saga is undoing this instance's work: running or skipping ahead would redo what was undone.
        raise TaskConflict(
            "This workflow is being compensated: its steps cannot run again. Choose Fail instance to close this."
        )
    _complete(unit, task, user, decision, comment, {})
    if step.state != StepState.DEAD:
        return
    if decision == RETRY:
        step.max_attempts = step.attempt + 1
        step.schedule(unit.now)
        step.dispatched_at = unit.now
        rows.update(step, ["state", "due_at", "dispatched_at", "max_attempts"])
        unit.audit("step.scheduled", "step", step.pk, StepState.DEAD, step.state, reason=comment)
        unit.dispatch(step)
    elif decision == RESOLVED:
        step.skip(f"resolved by hand: {comment}", unit.now)
        rows.update(step, ["state", "error", "finished_at", "lease_expires_at"])
        unit.audit("step.skipped", "step", step.pk, StepState.DEAD, step.state, reason=comment)
        original = step.compensates
        assert original is not None
        engine.compensation_mark_done(unit, workflow, original, reason=comment)
    elif decision == SKIP:
        step.skip(f"skipped by operator: {comment}", unit.now)
        rows.update(step, ["state", "error", "finished_at", "lease_expires_at"])
        unit.audit("step.skipped", "step", step.pk, StepState.DEAD, step.state, reason=comment)
        if instance.state in (InstanceState.RUNNING, InstanceState.WAITING):
            engine.advance(unit, workflow, step)
    elif decision == FAIL:
        engine.fail_instance(
            unit,
            f"failed by operator: {comment}",
            allowed=(InstanceState.RUNNING, InstanceState.WAITING, InstanceState.COMPENSATING),
            audit_reason=comment,
        )
    engine.settle(unit)


# --- deadlines: the sweep calls this ------------------------------------------------------------------


def tasks_shift_deadlines(unit: Unit, paused_at: datetime, held: Any) -> None:
    """On resume: move the open tasks' SLA (``due_at``) and next escalation rung on by ``held``, an SQL
    expression of the time each was held (``instance_resume``). An SLA already due when the pause began stays
    where it was (it is overdue either way). Every next rung moves, one already due too: ``held`` is at most the
    time since the pause began, so a due rung stays due and fires on resume, and the time it was held is counted
    by the rungs after it (``_escalation_fire`` reads it off ``next_escalation_at``)."""
    open_tasks = HumanTask.objects.filter(instance=unit.instance, state__in=ACTIONABLE_TASK_STATES)
    open_tasks.filter(due_at__gt=paused_at).update(due_at=F("due_at") + held)
    open_tasks.filter(next_escalation_at__isnull=False).update(next_escalation_at=F("next_escalation_at") + held)


def tasks_sweep(now: datetime | None = None, *, report: engine.SweepReport | None = None) -> dict[str, int]:
    """Fire due escalation rungs (remind, reassign, escalate) with SKIP LOCKED, one task per transaction.

    Returns ``{"escalations": rungs fired}``. A task whose handling raises is logged, audited on its instance and
    skipped (``engine.isolated``), and counted in ``report.errors`` when the sweep passes its report.
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
        fired += engine.isolated(
            report, "task deadline", "task", task_id, instance_id, partial(_escalation_fire, task_id, now)
        )
    return {"escalations": fired}


def _escalation_fire(task_id: int, now: datetime) -> int:
    with transaction.atomic():
        instance_id = HumanTask.objects.filter(pk=task_id).values_list("instance_id", flat=True).first()
        if instance_id is None:
            return 0
        instance = engine.WorkflowInstance.objects.select_for_update(skip_locked=True).filter(pk=instance_id).first()
        if instance is None:
            return 0
        task = HumanTask.objects.select_related("step").get(pk=task_id)
        if not task.is_actionable or not task.next_escalation_at or task.next_escalation_at > now:
            return 0
        if instance.state == InstanceState.PAUSED:
            return 0  # paused after the query: the rung waits for the resume
        workflow = engine.definition_or_none(instance)
        if workflow is None:
            # Its ladder is in the missing definition: the instance fails with the reason, and the deadline waits.
            unit = Unit(instance, engine.SWEEPER, now=now)
            engine.fail_for_missing_definition(unit)
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
        unit = Unit(instance, engine.SWEEPER, now=now)
        from_state = task.state
        if isinstance(rung, Remind):
            task.escalation_level = level
            task.next_escalation_at = next_at
            rows.update(task, ["escalation_level", "next_escalation_at"])
            unit.audit("task.reminded", "task", task.pk, from_state, task.state, payload={"level": level})
            _announce(unit, task, "task.reminded", f"Reminder: {task.title} is waiting")
            notify(unit, _people_of(task), "reminder", f"Reminder: {task.title} is waiting", url=_url(task), task=task)
        elif isinstance(rung, Reassign):
            _hand_to_group(unit, task, rung.group, level, next_at, reassigned=True)
        elif isinstance(rung, Escalate):
            if rung.fail_instance:
                task.expire(now)
                rows.update(task, ["state", "completed_at", "next_escalation_at"])
                unit.audit("task.expired", "task", task.pk, from_state, task.state)
                engine.fail_instance(
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
    """
    from_state = task.state
    group = _groups([group_name])[0]
    task.escalate(level, next_at)
    rows.update(task, ["state", "escalation_level", "next_escalation_at", "assignee", "claimed_at"])
    _add_candidates(task, groups=[group])
    action, kind = ("task.reassigned", "reassigned") if reassigned else ("task.escalated", "escalated")
    unit.audit(action, "task", task.pk, from_state, task.state, payload={"group": group_name})
    if reassigned:
        _announce(unit, task, "task.escalated", f"Reassigned to {group_name}: {task.title}")
        message = f"Overdue, now yours: {task.title}"
    else:
        _announce(unit, task, "task.escalated", f"Escalated to {group_name}: {task.title}", level="warning")
        message = f"Escalated: {task.title}"
    members = members_of([group_name], exclude=[unit.instance.initiator_id])
    notify(unit, members, kind, message, url=_url(task), task=task)


# --- people change under a task -------------------------------------------------------------------------

# How many tasks one change of a person re-checks at once; the sweep's safety net picks up claimed ones beyond it.
RECHECK_LIMIT = 500


def tasks_people_changed(
    user_ids: Sequence[int],
    *,
    group_ids: Sequence[int] = (),
    reason: str,
    actor: Actor | None = None,
    request_meta: dict | None = None,
    now: datetime | None = None,
) -> dict[str, int]:
    """Re-check the tasks of people who were deactivated or left groups (``group_ids``: the groups they left,
    empty for a deactivation): a claimed task whose assignee may no longer act goes back to the queue, and an
    open task left with too few people able to act becomes a "nobody can act" escalation.

    Called by the account signals (approvals.signals) in the transaction of the change, and by the sweep.
    ``reason`` goes into the audit events; ``actor`` defaults to the system. Each task is its own savepoint:
    one that fails is logged and the others go on. Returns {"released": n, "escalated": n}.
    """
    claimed = HumanTask.objects.filter(state=TaskState.CLAIMED, assignee_id__in=list(user_ids))
    touched = TaskCandidate.objects.filter(Q(user_id__in=list(user_ids)) | Q(group_id__in=list(group_ids)))
    if not group_ids:
        # A deactivated person leaves every queue they were in through their groups.
        touched = TaskCandidate.objects.filter(
            Q(user_id__in=list(user_ids))
            | Q(group_id__in=User.groups.through.objects.filter(user_id__in=list(user_ids)).values("group_id"))
        )
    queued = HumanTask.objects.filter(
        state__in=[TaskState.OPEN, TaskState.ESCALATED], pk__in=touched.values("task_id")
    ).order_by("pk")
    task_ids = list(claimed.order_by("pk").values_list("pk", flat=True)[:RECHECK_LIMIT])
    task_ids += _short_of_people(list(queued.values_list("pk", flat=True)[:RECHECK_LIMIT]))
    return tasks_recheck(task_ids, reason=reason, actor=actor, request_meta=request_meta, now=now)


def _short_of_people(task_ids: list[int]) -> list[int]:
    """Those of ``task_ids`` with fewer people able to act (:func:`able_people`) than their quorum still needs, in
    one statement driven by each task's candidate rows, so a change touching a busy group's queue locks only the
    tasks that need it. Elsewhere than PostgreSQL, all of them (the re-check decides)."""
    if not task_ids or not rows.on_postgresql():
        return task_ids
    members = User.groups.through._meta.db_table
    sql = (
        f"SELECT t.id FROM {HumanTask._meta.db_table} t"
        f" JOIN {WorkflowInstance._meta.db_table} i ON i.id = t.instance_id"
        " WHERE t.id = ANY(%s) AND t.quorum - t.approvals > ("
        f"SELECT count(DISTINCT u.id) FROM {TaskCandidate._meta.db_table} c"
        f" LEFT JOIN {members} m ON m.group_id = c.group_id"
        f" JOIN {get_user_model()._meta.db_table} u ON u.id = COALESCE(c.user_id, m.user_id)"
        " WHERE c.task_id = t.id AND u.is_active AND u.id IS DISTINCT FROM i.initiator_id"
        f" AND NOT EXISTS (SELECT 1 FROM {TaskDecision._meta.db_table} d WHERE d.user_id = u.id AND (d.task_id = t.id"
        " OR (t.kind = %s AND d.instance_id = t.instance_id AND d.decision = %s)))"
        ") ORDER BY t.id"
    )
    with rows.cursor() as cursor:
        cursor.execute(sql, [task_ids, TaskKind.APPROVAL.value, APPROVE])
        return [row[0] for row in cursor.fetchall()]


def tasks_recheck(
    task_ids: Sequence[int],
    *,
    reason: str,
    actor: Actor | None = None,
    request_meta: dict | None = None,
    now: datetime | None = None,
) -> dict[str, int]:
    """Re-check each task (its own savepoint; a failure is logged and the rest goes on): release a claim whose
    assignee may no longer act, escalate a task too few people can act on. Returns {"released": n,
    "escalated": n}."""
    actor = actor or Actor.system("accounts")
    counts = {"released": 0, "escalated": 0}
    for task_id in task_ids:
        try:
            released, escalated = _task_recheck(task_id, reason, actor, request_meta or {}, now)
        except Exception:
            logger.exception("could not re-check task %s after a change of people", task_id)
            continue
        counts["released"] += released
        counts["escalated"] += escalated
    return counts


def tasks_release_unfit(now: datetime | None = None) -> dict[str, int]:
    """The sweep's safety net for :func:`tasks_people_changed`: claimed tasks whose assignee is deactivated or no
    longer a candidate (a change the signals missed: a raw SQL update, a failed re-check) go back to the queue,
    and escalate if nobody is left to act. Returns {"released": n, "escalated": n}."""
    members = User.groups.through.objects.filter(user_id=OuterRef(OuterRef("assignee_id"))).values("group_id")
    still = TaskCandidate.objects.filter(task_id=OuterRef("pk")).filter(
        Q(user_id=OuterRef("assignee_id")) | Q(group_id__in=members)
    )
    unfit = (
        HumanTask.objects.filter(state=TaskState.CLAIMED)
        .filter(Q(assignee__is_active=False) | ~Exists(still))
        .order_by("pk")
        .values_list("pk", flat=True)[:RECHECK_LIMIT]
    )
    return tasks_recheck(list(unfit), reason="found by the sweep", actor=engine.SWEEPER, now=now)


def _task_recheck(task_id: int, reason: str, actor: Actor, request_meta: dict, now: datetime | None) -> tuple[int, int]:
    """Under the instance's lock: release the task if its assignee may no longer act, then escalate it if too
    few people can act. Returns (released, escalated) as 0/1."""
    with transaction.atomic():
        instance_id = HumanTask.objects.filter(pk=task_id).values_list("instance_id", flat=True).first()
        if instance_id is None:
            return 0, 0
        instance = WorkflowInstance.objects.select_for_update().filter(pk=instance_id).first()
        if instance is None:
            return 0, 0
        task = HumanTask.objects.select_related("assignee").get(pk=task_id)
        if not task.is_actionable:
            return 0, 0
        unit = Unit(instance, actor, now=now, request_meta=request_meta)
        released = escalated = 0
        assignee = task.assignee
        if (
            task.state == TaskState.CLAIMED
            and assignee is not None
            and (not assignee.is_active or not is_candidate(assignee, task))
        ):
            task.release()
            rows.update(task, ["state", "assignee", "claimed_at"])
            why = "deactivated" if not assignee.is_active else "no longer a candidate"
            unit.audit(
                "task.released",
                "task",
                task.pk,
                TaskState.CLAIMED,
                task.state,
                reason=f"{assignee.get_username()} is {why}: {reason}",
                payload={"from_user": assignee.pk},
            )
            _announce(unit, task, "task.released", f"Back in the queue: {task.title}")
            released = 1
        need = task.quorum - task.approvals
        if task.state == TaskState.OPEN or (task.state == TaskState.ESCALATED and not _has_nobody_groups(task)):
            able = len(able_people(task, limit=need))
            if able < need:
                _escalate_nobody_can_act(unit, task, able=able)
                escalated = 1
        unit.finish()
        return released, escalated


def _has_nobody_groups(task: HumanTask) -> bool:
    """Managers and operators are both candidates already: a further "nobody can act" escalation adds nothing."""
    names = set(task.candidate_groups.filter(name__in=[MANAGERS, OPERATORS]).values_list("name", flat=True))
    return names == {MANAGERS, OPERATORS}


def _url(task: HumanTask) -> str:
    return reverse("approvals:task_detail", args=[task.pk])


def _people_of(task: HumanTask) -> list[int]:
    """Who a reminder goes to: the assignee, else every active candidate (never the initiator)."""
    if task.assignee_id:
        if task.assignee is not None and task.assignee.is_active:
            return [task.assignee_id]
        return []  # a deactivated assignee's claim is released by tasks_people_changed or the sweep
    initiator = task.instance.initiator_id
    named = [
        uid for uid in task.candidate_users.filter(is_active=True).values_list("pk", flat=True) if uid != initiator
    ]
    return named + members_of(task.candidate_groups.values_list("name", flat=True), exclude=[initiator])


@dataclass
class BulkResult:
    claimed: list[int]
    refused: dict[int, str]


def tasks_claim_bulk(task_ids: list[int], user: User, *, request_meta: dict | None = None) -> BulkResult:
    """Claim several tasks, each in its own transaction: one lost race does not undo the others."""
    result = BulkResult(claimed=[], refused={})
    for task_id in dict.fromkeys(task_ids):
        try:
            task_claim(task_id, user, request_meta=request_meta)
        except TaskError as exc:
            result.refused[task_id] = str(exc)
        else:
            result.claimed.append(task_id)
    return result


def notifications_mark_read(user: User, ids: list[int] | None = None) -> int:
    """Mark the user's notifications read (all of them, or the given ones); returns how many changed."""
    qs = Notification.objects.filter(user=user, read_at__isnull=True)
    if ids is not None:
        qs = qs.filter(pk__in=ids)
    changed = qs.update(read_at=timezone.now())
    if changed:
        transaction.on_commit(
            partial(send_now, [f"user.{user.pk}"], {"type": "notification.read", "refresh": ["counts"]})
        )
    return changed


def task_snooze(task_id: int, user: User, until: datetime, *, request_meta: dict | None = None) -> HumanTask:
    """Hide a task from the assignee's list until ``until`` (it stays claimed and keeps its deadlines);
    ``request_meta`` goes into the audit event."""
    try:
        until = check_when(until, "Snooze until")
    except ValidationError as exc:
        raise TaskInvalid(" ".join(exc.messages), {"until": exc.messages}) from None
    with transaction.atomic():
        locked = _lock_task(task_id, user, request_meta)
        task, unit = locked.task, locked.unit
        if task.assignee_id != user.pk:
            raise TaskForbidden("Claim the task before you snooze it.")
        if until <= unit.now or until > unit.now + timedelta(days=90):
            raise TaskInvalid("Snooze until a time in the next 90 days.")
        task.snoozed_until = until
        rows.update(task, ["snoozed_until"])
        unit.audit("task.snoozed", "task", task.pk, task.state, task.state, payload={"until": until.isoformat()})
        unit.finish()
        return task
