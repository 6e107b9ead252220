"""What the human side's services share: their errors and answers, who may act on a task, how people are told."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.urls import reverse

from approvals.models import (
    HOLDER_FIELDS,
    HumanTask,
    Priority,
    TaskCandidate,
    TaskDecision,
    TaskKind,
    TaskState,
)
from approvals.notifications import members_of, notify
from approvals.selectors import group_unable_words
from orchestrator import live_names, rows
from orchestrator.audit_actions import AuditAction
from orchestrator.bidi import isolate
from orchestrator.inputs import check_text
from orchestrator.models import StepKind, WorkflowInstance
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


class HolderChanged(TaskConflict):
    """The task changed hands since the person saw its holder (HTTP 409); ``holder`` is the username of whoever holds
    it now ("" when nobody does), ``how`` how it got there in a few words ("staff claimed it"), for a caller that
    words its own message (the API's says what a client does next; the message is the page's)."""

    def __init__(self, message: str, *, holder: str, how: str = "") -> None:
        super().__init__(message)
        self.holder = holder
        self.how = how


class TaskInvalid(TaskError):
    """The decision's input is not valid (a reject without a comment, a form with errors)."""

    def __init__(self, message: str, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or {}


def decisions_taken(task: HumanTask) -> tuple[str, ...]:
    """The decisions ``task`` takes (the values the API's ``decision`` and the page's buttons send): an approval
    approve or reject, a form task submit, an escalation retry, fail, and skip for a failed step or resolved for a
    failed compensation (reads ``task.step`` for an escalation). Raises nothing."""
    if task.kind == TaskKind.APPROVAL:
        return (APPROVE, REJECT)
    if task.kind == TaskKind.FORM:
        return (SUBMIT,)
    return (RETRY, RESOLVED, FAIL) if task.step.kind == StepKind.COMPENSATION else (RETRY, SKIP, FAIL)


def decision_not_taken(task: HumanTask, decision: object) -> str:
    """What to tell whoever sent ``task`` a decision it does not take (a typo, "aprove", or another kind's, "approve"
    for a form task): the decisions it takes, by name, and what was sent. Raises nothing."""
    taken = [f'"{value}"' for value in decisions_taken(task)]
    listed = taken[0] if len(taken) == 1 else f"{', '.join(taken[:-1])} or {taken[-1]}"
    if task.kind == TaskKind.APPROVAL:
        what, how = "An approval takes the decision", " (a reject with a comment saying why)"
    elif task.kind == TaskKind.FORM:
        what, how = "A form task takes one decision:", " (with the form's fields)"
    else:
        failed = "compensation" if RESOLVED in decisions_taken(task) else "step"
        what, how = f"An escalation of a failed {failed} takes the decision", " (with a reason)"
    sent = json.dumps(decision, default=str)  # as JSON: a typo is shown "aprove", a number 12, a list [...]
    sent = sent if len(sent) <= 40 else f"{sent[:39]}…"
    return f"{what} {listed}{how}, not {sent}."


class FormInvalid(TaskInvalid):
    """A form task's data fails its form: ``errors`` by the form's field names (``__all__`` for the form as a whole),
    as the page shows them beside its fields; the API names them by their place in its body (``data.cost_centre``)."""


# Four-eyes (docs/architecture.md, "Who may act on a task"): who started an instance acts on none of its tasks, and
# one person gives one approval per instance.
INITIATOR_BARRED = "You started this workflow, so you cannot act on its tasks (four-eyes rule)."
APPROVED_BEFORE = (
    "You already approved another step of this workflow, so you cannot decide this task or choose who does "
    "(four-eyes rule)."
)
APPROVED_THIS = (
    "You already approved this task (one of the approvals it needs), so you cannot decide it again or choose who "
    "does (four-eyes rule)."
)


def four_eyes_bar(
    kind: str, initiator_id: int | None, user_id: int, *, approved_before: bool, decided_this: bool = False
) -> str:
    """Why four-eyes keeps the user ``user_id`` from deciding a task of kind ``kind`` (a ``TaskKind``) of the
    instance started by ``initiator_id`` and so from steering who does (claim, delegate, release, resolve);
    ``approved_before``: they approved a task of that instance (this one included, a quorum vote);
    ``decided_this``: their decision of this task is in (a quorum task still open: their approval), said as such.
    Returns the reason to show, or "" when nothing bars them.

    The one statement of the rule: the task services refuse with it, the task page says it instead of offering
    the forms. Raises nothing.
    """
    if initiator_id is not None and initiator_id == user_id:
        return INITIATOR_BARRED
    if kind == TaskKind.APPROVAL and approved_before:
        return APPROVED_THIS if decided_this else APPROVED_BEFORE
    return ""


def data_digest(data: dict[str, Any]) -> str:
    """A short fingerprint of an instance's business data (a JSON object), the same for the same content whatever
    its keys' order: the task page sends the one of the data it showed with a decision, so a decision on data that
    changed since (an operator's edit, a signal's payload) is refused rather than applied to what nobody read.

    Raises TypeError only for data that is not JSON (never stored so).
    """
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def checked_text(value: str, what: str, max_length: int, field: str) -> str:
    """``inputs.check_text`` with its refusal as a TaskInvalid naming ``field``.

    Raises TaskInvalid naming ``field`` for a NUL or a text longer than ``max_length``.
    """
    try:
        return check_text(value, what, max_length)
    except ValidationError as exc:
        raise TaskInvalid(" ".join(exc.messages), {field: exc.messages}) from None


def groups_named(names: list[str] | tuple[str, ...]) -> list[Group]:
    """The groups named ``names``, created when missing. Raises nothing of its own."""
    existing = {g.name: g for g in Group.objects.filter(name__in=names)}
    # A definition naming a group nobody created yet still gets a visible queue, not a lost task.
    return [existing.get(name) or Group.objects.get_or_create(name=name)[0] for name in names]


def add_candidates(task: HumanTask, *, groups: Sequence[Group] = (), users: Sequence[User] = ()) -> None:
    """Add ``groups`` and ``users`` as candidates of ``task`` (existing ones are kept). Raises nothing of its
    own."""
    TaskCandidate.objects.bulk_create(
        [TaskCandidate(task=task, group=g) for g in groups] + [TaskCandidate(task=task, user=u) for u in users],
        ignore_conflicts=True,
    )


def candidates_sql(kind: str, names: Sequence[str], task_id: str, task_from: str) -> str:
    """INSERT ... SELECT of the candidate groups (``kind`` "group", by name) or users (by username) found among
    ``names``, for the task whose id is the SQL ``task_id`` (read from ``task_from``); returns their ids.

    Raises nothing.
    """
    if kind == "group":
        table, key, group_id, user_id = Group._meta.db_table, "name", "x.id", "NULL"
    else:
        table, key, group_id, user_id = get_user_model()._meta.db_table, "username", "NULL", "x.id"
    return (
        f"INSERT INTO {TaskCandidate._meta.db_table} (task_id, group_id, user_id)"
        f" SELECT {task_id}, {group_id}, {user_id} FROM {task_from}{table} x"
        f" WHERE x.{key} IN ({', '.join(['%s'] * len(names))}) RETURNING {kind}_id"
    )


def able_people(task: HumanTask, *, limit: int | None = None, group: Group | None = None) -> list[int]:
    """Ids of the people who could decide ``task`` now: active, a candidate (by name or by a group they belong
    to), not the instance's initiator, not someone who already decided this task, and for an approval not
    someone who approved another task of the instance (four-eyes). At most ``limit`` ids. With ``group``, the
    members of that group who would be able once it is a candidate (an escalation rung about to hand it the task),
    whatever the task's candidates are now.

    The rule is written down in docs/architecture.md ("Who may act on a task").

    Raises nothing of its own.
    """
    people = get_user_model().objects.filter(is_active=True)
    if group is not None:
        people = people.filter(groups=group)
    else:
        candidates = TaskCandidate.objects.filter(task_id=task.pk)
        people = people.filter(
            Q(pk__in=candidates.filter(user__isnull=False).values("user_id"))
            | Q(groups__in=candidates.filter(group__isnull=False).values("group_id"))
        )
    people = people.exclude(pk__in=TaskDecision.objects.filter(task_id=task.pk).values("user_id"))
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


def group_unable_why(group: Group, initiator_id: int | None) -> str:
    """Why nobody in ``group`` may act on a task of the instance started by ``initiator_id``, in a manager's words:
    it has no members, every member is deactivated (or left), its only active members started the instance, or
    the rest already decided the task or approved another of the instance (four-eyes); worded by
    ``approvals.selectors.group_unable_words``, as Incidents words it. Raises nothing of its own."""
    active = set(group.user_set.filter(is_active=True).values_list("pk", flat=True))
    return group_unable_words(
        has_members=bool(active) or group.user_set.exists(),
        has_active=bool(active),
        has_active_other=bool(active - {initiator_id}),
    )


def escalate_nobody_can_act(
    unit: Unit,
    task: HumanTask,
    *,
    able: int = 0,
    named: Sequence[str] = (),
    missing_group: str = "",
    unable_group: str = "",
    unable_why: str = "",
) -> None:
    """Too few active people can act on ``task`` (unknown names, empty groups, everyone deactivated, only the
    initiator), or its ladder's rung names ``missing_group``, a group that does not exist (renamed or deleted since
    the definition was written), or ``unable_group``, a group with no active member who may act (``unable_why``
    says why: :func:`group_unable_why`); for a rung, the task's ``escalation_level`` and ``next_escalation_at``
    are the rung's, set by the caller. It becomes a visible escalation for managers and operators at once, titled
    with the reason, instead of waiting forever or going to nobody. Managers and operators join the candidates
    (four-eyes still applies to them). When even they leave nobody who may act, the audit event says so
    (``nobody_left``) and it is logged as an error; the task stays escalated, on the Escalations page (which
    admins see too) and at once on Incidents ("Nobody may act": ``approvals.selectors.tasks_nobody_can_act``,
    with why and what fixes it), until someone who may act is added. A quorum task left with fewer able people
    than it still needs is listed there the same way.

    Raises ``django_fsm.TransitionNotAllowed`` when the task is no longer open.
    """
    verb = {TaskKind.APPROVAL: "approve", TaskKind.FORM: "complete"}.get(TaskKind(task.kind), "resolve")
    payload: dict[str, Any] = {"groups": [MANAGERS, OPERATORS], "nobody_can_act": True}
    if missing_group:
        headline = f"No group named {missing_group} to escalate to (renamed or deleted?)"
        payload = {"groups": [MANAGERS, OPERATORS], "missing_group": missing_group}
    elif unable_group:
        headline = f"Group {unable_group} has no active member who may act ({unable_why})"
        payload = {"groups": [MANAGERS, OPERATORS], "unable_group": unable_group}
    else:
        headline = f"Nobody can {verb}: {_nobody_why(task, unit.instance.initiator_id, able, named)}"
    from_state, holder = task.state, task.assignee_id
    task.title = f"{headline} ({task.title})"[:200]
    task.priority = Priority.URGENT
    task.escalate(task.escalation_level, task.next_escalation_at)
    rows.update(task, ["title", "priority", "state", "escalation_level", "next_escalation_at", *HOLDER_FIELDS])
    groups = groups_named([MANAGERS, OPERATORS])
    add_candidates(task, groups=groups)
    if not able_people(task, limit=1):
        # Nobody is told below (nobody may act): the event and the log say so, for whoever watches either.
        payload["nobody_left"] = True
        logger.error("task %s of instance %s: nobody at all may act on it (%s)", task.pk, task.instance_id, headline)
    unit.audit(
        "task",
        task.pk,
        from_state,
        task.state,
        reason=headline,
        payload=payload,
        action=AuditAction.TASK_ESCALATED,
    )
    announce(unit, task, "task.escalated", f"Escalation: {task.title}", level="danger", former_holder=holder)
    members = members_of([MANAGERS, OPERATORS], exclude=[unit.instance.initiator_id])
    notify(
        unit,
        members,
        "escalation",
        f"Needs a manager or an operator: {isolate(task.title)}",
        url=task_url(task),
        task=task,
    )


def has_nobody_groups(task: HumanTask) -> bool:
    """Managers and operators are both candidates of ``task`` already: a further "nobody can act" escalation adds
    nobody. One statement. Raises nothing."""
    names = set(task.candidate_groups.filter(name__in=[MANAGERS, OPERATORS]).values_list("name", flat=True))
    return names == {MANAGERS, OPERATORS}


def escalate_if_short(unit: Unit, task: HumanTask) -> bool:
    """Escalate ``task`` (:func:`escalate_nobody_can_act`) when fewer people may act on it (:func:`able_people`)
    than it still needs (its quorum less the approvals in), unless it is escalated to managers and operators
    already. The re-check after a change of people (``services.people``) and after an approval that bars its
    approver from the instance's other approvals (``services.tasks``) both ask it; the caller holds the instance's
    lock (``unit``). Returns whether it escalated. Raises ``django_fsm.TransitionNotAllowed`` when the task is no
    longer open (as :func:`escalate_nobody_can_act`)."""
    if task.state == TaskState.ESCALATED and has_nobody_groups(task):
        return False
    if task.state not in (TaskState.OPEN, TaskState.ESCALATED):
        return False
    need = task.quorum - task.approvals
    able = len(able_people(task, limit=need))
    if able >= need:
        return False
    escalate_nobody_can_act(unit, task, able=able)
    return True


# Events whose news reaches the one person it concerns as a notification (bell and toast): the candidates' and
# the assignee's pages only refresh, so nobody sees a second toast, and nobody else reads "delegated to you".
QUIET_ANNOUNCEMENTS = frozenset({"task.delegated"})


def announce(
    unit: Unit,
    task: HumanTask,
    kind: str,
    message: str,
    *,
    groups: list[int] | None = None,
    users: list[int] | None = None,
    level: str = "info",
    former_holder: int | None = None,
) -> None:
    """Tell the task's candidates and assignee (ids given by a caller that just wrote them, else read), and
    ``former_holder``, the person the change just took the task from: a holder who is no candidate (a manager
    answering an operators' escalation) listens to none of the candidates' groups, and their list and count would
    keep the task until the next resync.

    Raises nothing of its own (the events go out after commit).
    """
    if groups is None or users is None:
        with rows.cursor() as cursor:
            cursor.execute(
                f"SELECT group_id, user_id FROM {TaskCandidate._meta.db_table} WHERE task_id = %s", [task.pk]
            )
            pairs = cursor.fetchall()
        groups = [g for g, _ in pairs if g is not None]
        users = [u for _, u in pairs if u is not None]
    targets = [live_names.people_group(g) for g in groups]
    if task.assignee_id:
        targets.append(live_names.user_group(task.assignee_id))
    if former_holder is not None and former_holder != task.assignee_id:
        targets.append(live_names.user_group(former_holder))
    targets += [live_names.user_group(u) for u in users]
    event: dict[str, Any] = {
        "type": kind,
        "task": task.pk,
        "refresh": [live_names.INBOX, live_names.COUNTS, live_names.task_refresh(task.pk)],
    }
    if message and kind not in QUIET_ANNOUNCEMENTS:
        event.update(message=message, level=level)
    unit.notify(targets, event)


def release_audited(unit: Unit, task: HumanTask, holder: int | None, reason: str = "") -> None:
    """Give ``task``, claimed by the user whose id is ``holder``, back to the queue inside ``unit`` (the caller holds
    the instance's lock and checked who may do it): the release, its ``task.released`` audit event (``reason``, the
    former holder in the payload) and its news to the candidates and to the former holder, whose list must drop it.

    The one statement of a release: the person's own, four-eyes after an approval, a holder who may no longer act.
    Raises ``django_fsm.TransitionNotAllowed`` when the task is not claimed.
    """
    task.release()
    rows.update(task, ["state", *HOLDER_FIELDS])
    unit.audit(
        "task",
        task.pk,
        TaskState.CLAIMED,
        task.state,
        reason=reason,
        payload={"from_user": holder},
        action=AuditAction.TASK_RELEASED,
    )
    announce(unit, task, "task.released", f"Back in the queue: {task.title}", former_holder=holder)


# "Is this user a candidate of task t?" as one EXISTS over the candidates table, for a task aliased ``t``.
CANDIDATE_EXISTS = (
    f"EXISTS (SELECT 1 FROM {TaskCandidate._meta.db_table} c WHERE c.task_id = t.id AND (c.user_id = %s"
    f" OR c.group_id IN (SELECT m.group_id FROM {User.groups.through._meta.db_table} m WHERE m.user_id = %s)))"
)


def is_candidate(user: User, task: HumanTask) -> bool:
    """A candidate by name or by one of their groups. Raises nothing of its own."""
    # A permission check reads the user's groups afresh (not the per-request cache the lists use).
    with rows.cursor() as cursor:
        cursor.execute(
            f"SELECT {CANDIDATE_EXISTS} FROM {HumanTask._meta.db_table} t WHERE t.id = %s", [user.pk, user.pk, task.pk]
        )
        row = cursor.fetchone()
        return bool(row and row[0])


def task_complete(unit: Unit, task: HumanTask, user: User, decision: str, comment: str, data: dict[str, Any]) -> None:
    """The task's completing transition and its audit event (the caller advances the instance).

    Raises ``django_fsm.TransitionNotAllowed`` when the task is not actionable.
    """
    from_state = task.state
    task.complete(user, decision, comment, data, unit.now)
    completed = ["state", "approvals", "completed_by", "decision", "comment", "form_data", "completed_at"]
    rows.update(task, [*completed, "next_escalation_at"])
    payload: dict[str, Any] = {"decision": decision}
    if data:
        payload["data"] = data
    unit.audit(
        "task", task.pk, from_state, task.state, reason=comment, payload=payload, action=AuditAction.TASK_COMPLETED
    )


def past_tense(decision: str) -> str:
    """``decision`` in the past tense for messages ("approved"); an unknown one as it is. Raises nothing."""
    return {APPROVE: "approved", REJECT: "rejected", SUBMIT: "submitted"}.get(decision, decision)


def task_url(task: HumanTask) -> str:
    """The task page's path. Raises ``NoReverseMatch`` only when the URL is not configured."""
    return reverse("approvals:task_detail", args=[task.pk])


def people_of(task: HumanTask) -> list[int]:
    """Who a reminder goes to: the assignee, else the people who could decide the task now (:func:`able_people`:
    active candidates, never the initiator, nobody who decided it or, for an approval, approved another task of
    the instance; a reminder to them asked for what four-eyes refuses).

    Raises nothing of its own.
    """
    if task.assignee_id:
        if task.assignee is not None and task.assignee.is_active:
            return [task.assignee_id]
        return []  # a deactivated assignee's claim is released by tasks_people_changed or the sweep
    return able_people(task)
