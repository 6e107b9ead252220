"""The people's actions on tasks: claim, release, delegate, decide, snooze, mark notifications read.

Each locks the instance row first (the engine's lock order), then the task, checks who may act, runs the
transition, writes audit and advances the instance, all in one transaction; live events go out after commit. A
lost race raises :class:`~approvals.services.base.TaskConflict` (HTTP 409 / a message on the page), never a 500.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import InterfaceError, OperationalError, transaction
from django.urls import reverse
from django.utils import timezone

from approvals.models import (
    ACTIONABLE_TASK_STATES,
    HOLDER_FIELDS,
    HumanTask,
    Notification,
    TaskDecision,
    TaskKind,
    TaskState,
)
from approvals.notifications import members_of, notify
from approvals.selectors import is_manager
from approvals.services.base import (
    APPROVE,
    APPROVED_BEFORE,
    CANDIDATE_EXISTS,
    INITIATOR_BARRED,
    OPERATORS,
    REJECT,
    FormInvalid,
    HolderChanged,
    TaskConflict,
    TaskError,
    TaskForbidden,
    TaskInvalid,
    TaskNotFound,
    announce,
    checked_text,
    data_digest,
    decision_not_taken,
    decisions_taken,
    escalate_if_short,
    four_eyes_bar,
    is_candidate,
    past_tense,
    release_audited,
    task_complete,
    task_url,
)
from approvals.services.escalations import escalation_resolve
from orchestrator import live_names, rows
from orchestrator.audit import Actor
from orchestrator.audit_actions import AuditAction
from orchestrator.bidi import isolate
from orchestrator.dsl import FORM, DefinitionError, Human
from orchestrator.inputs import COMMENT_MAX, NOTE_MAX, bound_form, check_when, form_json_default
from orchestrator.models import AuditEvent, InstanceState, StepRun, WorkflowInstance
from orchestrator.realtime import send_now
from orchestrator.services.flow import human_step_finish, human_step_stopped
from orchestrator.services.locks import definition_of, definition_or_none, definition_unavailable
from orchestrator.services.results import clean_text
from orchestrator.services.steps import step_node
from orchestrator.services.unit import Unit

logger = logging.getLogger(__name__)


@dataclass
class LockedTask:
    """A task read under its instance's lock, with the unit that writes it and the acting user's permission
    answers, read in the same statement: a candidate now, approved another task of this instance before, already
    decided this task (a quorum task collects one decision per person), and whether the instance has another
    approval their approval of this one bears on: one they hold (which they could no longer decide) or one open to
    the queue or escalated (which they may have been the last person able to decide)."""

    task: HumanTask
    unit: Unit
    is_candidate: bool
    approved_before: bool
    decided_this: bool = False
    other_approvals_pending: bool = False


def _lock_task(task_id: int, user: User, request_meta: dict | None = None) -> LockedTask:
    tasks, steps, instances = HumanTask._meta.db_table, StepRun._meta.db_table, WorkflowInstance._meta.db_table
    # The acting person's account row is held (FOR SHARE) until the action commits, taken before the instance's lock
    # (an uncorrelated EXISTS: evaluated once, before the instance row is read). A change taking the person out (a
    # deactivation, a group left or deleted: approvals.signals locks their row first) and this action then run one
    # after the other, never interleaved: a change being written makes the action wait and read the account and
    # groups as the change left them; an action under way makes the change wait, and its re-check of the person's
    # tasks (people.tasks_people_changed) then sees the claim. Interleaved, the action read the account from before
    # the change and the re-check looked before the claim committed: a person who had left kept the claim until the
    # sweep's safety net. Where rows are not locked (SQLite serialises writers), nothing to hold.
    account = (
        f" AND EXISTS (SELECT 1 FROM {User._meta.db_table} a WHERE a.id = %s FOR SHARE)" if rows.lock_clause() else ""
    )
    locked = rows.select(
        [(WorkflowInstance, "i")],
        f"FROM {instances} i WHERE i.id = (SELECT t.instance_id FROM {tasks} t WHERE t.id = %s)"
        f"{account}{rows.lock_clause()}",
        [task_id, user.pk] if account else [task_id],
    )
    if not locked:
        raise TaskNotFound("No such task.")
    instance = locked[0][0]
    # Read after the lock: every write to a task, its step or its decisions happens under the instance's lock.
    # The two permission questions ride along: is the user a candidate, and did they approve this instance before.
    # Whether the account is still active rides along too: the user object the request loaded may predate a
    # deactivation that committed while the request waited for this lock.
    task, step, candidate, approved_before, decided_this, active, others_pending = rows.select(
        [(HumanTask, "t"), (StepRun, "s")],
        f"FROM {tasks} t JOIN {steps} s ON s.id = t.step_id WHERE t.id = %s",
        [
            user.pk,
            user.pk,
            user.pk,
            APPROVE,
            user.pk,
            user.pk,
            TaskKind.APPROVAL.value,
            TaskState.OPEN.value,
            TaskState.ESCALATED.value,
            TaskState.CLAIMED.value,
            user.pk,
            task_id,
        ],
        extra=[
            CANDIDATE_EXISTS,
            f"EXISTS (SELECT 1 FROM {TaskDecision._meta.db_table} d WHERE d.instance_id = t.instance_id"
            " AND d.user_id = %s AND d.decision = %s)",
            f"EXISTS (SELECT 1 FROM {TaskDecision._meta.db_table} d WHERE d.task_id = t.id AND d.user_id = %s)",
            f"EXISTS (SELECT 1 FROM {User._meta.db_table} u WHERE u.id = %s AND u.is_active)",
            f"EXISTS (SELECT 1 FROM {tasks} o WHERE o.instance_id = t.instance_id AND o.id <> t.id AND o.kind = %s"
            " AND (o.state IN (%s, %s) OR (o.state = %s AND o.assignee_id = %s)))",
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
    return LockedTask(task, unit, bool(candidate), bool(approved_before), bool(decided_this), bool(others_pending))


def _check_not_initiator(user: User, locked: LockedTask) -> None:
    """Four-eyes: whoever started the instance never claims, decides, releases, delegates or resolves any of its
    tasks (escalations included), whatever their role: steering who decides is deciding."""
    if locked.unit.instance.initiator_id == user.pk:
        raise TaskForbidden(INITIATOR_BARRED)


def _check_may_steer(user: User, locked: LockedTask) -> None:
    """Whoever may not decide a task may not steer who does (hand it to someone, or take it from its holder):
    everyone ``base.four_eyes_bar`` bars, the initiator and, for an approval, whoever approved a task of the
    instance (an earlier step, or this quorum task's vote), whatever their role."""
    task = locked.task
    reason = four_eyes_bar(
        task.kind,
        locked.unit.instance.initiator_id,
        user.pk,
        approved_before=locked.approved_before,
        decided_this=locked.decided_this,
    )
    if reason:
        raise TaskForbidden(reason)


def _check_may_act(user: User, locked: LockedTask) -> None:
    """The acting user's authority at this moment: active, not the initiator, a candidate now (by name or by a
    group they still belong to). Being the assignee is not enough: an assignee who left the candidate groups lost
    the task with them (docs/architecture.md, "Who may act on a task")."""
    task = locked.task
    if not user.is_active:
        raise TaskForbidden("Your account is deactivated.")
    _check_not_initiator(user, locked)
    if not locked.is_candidate and task.kind == TaskKind.ESCALATION and is_manager(user):
        return  # managers answer for escalations as operators do (issue 10: resolve them from Incidents)
    if not locked.is_candidate:
        if task.assignee_id == user.pk:
            raise TaskForbidden("You are no longer a candidate for this task, so it is no longer yours.")
        raise TaskForbidden("You are not a candidate for this task.")


def task_claim(task_id: int, user: User, *, request_meta: dict | None = None) -> HumanTask:
    """Take an open task; it leaves everyone else's queue. ``request_meta`` (ip, user_agent, path) goes into the
    audit event.

    Raises TaskNotFound (no such task, or not visible to ``user``), TaskForbidden (deactivated, the initiator,
    not a candidate, or for an approval someone who approved another task of the instance), TaskConflict
    (claimed by someone else, no longer open, or a quorum task ``user`` decided).
    """
    with transaction.atomic():
        locked = _lock_task(task_id, user, request_meta)
        task, unit = locked.task, locked.unit
        if task.state == TaskState.CLAIMED and task.assignee_id == user.pk:
            return task
        if task.state not in (TaskState.OPEN, TaskState.ESCALATED):
            who = f" by {task.assignee}" if task.assignee_id else ""
            raise TaskConflict(f"This task is already {task.get_state_display().lower()}{who}.")
        _check_may_act(user, locked)
        if locked.decided_this:
            # A quorum task waiting for others' decisions: held by someone who cannot decide it again, it would
            # wait for nobody until they let go.
            raise TaskConflict("You have already decided this task; it waits for the others' decisions.")
        if task.kind == TaskKind.APPROVAL and locked.approved_before:
            # Four-eyes would refuse their approval: held by them, the task would wait for a decision never coming.
            raise TaskForbidden(APPROVED_BEFORE)
        from_state = task.state
        task.claim(user, unit.now)
        rows.update(task, ["state", *HOLDER_FIELDS])
        unit.audit("task", task.pk, from_state, task.state, action=AuditAction.TASK_CLAIMED)
        announce(unit, task, "task.claimed", f"{user.get_username()} claimed: {task.title}")
        unit.finish()
        return task


def task_release(task_id: int, user: User, *, request_meta: dict | None = None) -> HumanTask:
    """Give a claimed task back to the queue (the assignee, or a manager four-eyes does not bar from deciding it:
    never the instance's initiator, nor for an approval whoever approved a task of the instance); ``request_meta``
    goes into the audit event.

    Raises TaskNotFound, TaskForbidden (the initiator, someone else's claim released by someone four-eyes bars, or
    neither the assignee nor a manager), TaskConflict (not claimed).
    """
    with transaction.atomic():
        locked = _lock_task(task_id, user, request_meta)
        task, unit = locked.task, locked.unit
        _check_not_initiator(user, locked)
        if task.state != TaskState.CLAIMED:
            raise TaskConflict("This task is not claimed.")
        if task.assignee_id != user.pk:
            # Giving back one's own claim chooses nobody; taking someone else's away is steering.
            _check_may_steer(user, locked)
        if task.assignee_id != user.pk and not is_manager(user):
            # Named: the person may have held it when their page was drawn (a delegation took it since).
            raise TaskForbidden(f"{task.assignee} holds this task now: only they or a manager can release it.")
        release_audited(unit, task, task.assignee_id)
        unit.finish()
        return task


def task_delegate(
    task_id: int,
    user: User,
    to_user: User,
    *,
    note: str = "",
    seen_holder: int | None = None,
    request_meta: dict | None = None,
) -> HumanTask:
    """Hand a task to another candidate (by its assignee or a manager, never anyone four-eyes bars from deciding
    it: the instance's initiator, or for an approval whoever approved a task of the instance), with a note;
    ``request_meta`` goes into the audit event.

    Raises TaskInvalid for a note with a NUL or longer than ``inputs.NOTE_MAX``, or unless ``to_user`` is an active
    candidate who is neither the delegator, its holder nor the initiator, has not decided this (quorum) task already
    and, for an approval, has not approved another step of the instance (a task parked with someone who cannot sign
    in or cannot decide it, or handed to oneself or its holder, is no hand-over), naming ``to_user``; TaskForbidden,
    TaskConflict, TaskNotFound as the other actions.

    ``seen_holder`` is the id of the task's holder as the delegating person was shown it (0: unclaimed; the task
    page and Incidents send it, the API's ``expected_holder`` too); when it has changed since (someone claimed it,
    was handed it, or released it), the delegation is refused with a HolderChanged (a TaskConflict) saying how and
    naming who holds it now: it would silently take the task from whoever had just been given it. None: not checked.
    """
    note = checked_text(note, "Note", NOTE_MAX, "note")
    with transaction.atomic():
        locked = _lock_task(task_id, user, request_meta)
        task, unit = locked.task, locked.unit
        if not task.is_actionable:
            raise TaskConflict(f"This task is already {task.get_state_display().lower()}.")
        _check_may_steer(user, locked)
        if seen_holder is not None and (task.assignee_id or 0) != seen_holder:
            # Read under the instance's lock: a claim that committed while this request waited is seen here. Before
            # the holder's check: an operator whose escalation a manager handed on since is told so, not "only the
            # assignee".
            how = _how_it_changed_hands(task)
            raise HolderChanged(
                f"This task changed hands after you opened it ({how}): check who holds it now, then hand it on "
                "again. What you wrote is kept.",
                holder=task.assignee.get_username() if task.assignee is not None else "",
                how=how,
            )
        if task.assignee_id != user.pk and not is_manager(user):
            raise TaskForbidden("Only the assignee or a manager can delegate this task.")
        name = to_user.get_username()
        refusal = ""
        if to_user.pk == user.pk:
            refusal = "Choose someone else: you cannot delegate a task to yourself."
        elif to_user.pk == task.assignee_id:
            # A hand-over to whoever holds it changes nothing but their claim's time (and tells them of nothing).
            refusal = f"{name} holds this task already: choose someone else."
        elif not to_user.is_active:
            refusal = f"{name} is deactivated and cannot take this task."
        elif not is_candidate(to_user, task) or unit.instance.initiator_id == to_user.pk:
            refusal = f"{name} is not an eligible candidate for this task."
        elif TaskDecision.objects.filter(task=task, user=to_user).exists():
            refusal = f"{name} has already decided this task; it waits for someone else's decision."
        elif (
            task.kind == TaskKind.APPROVAL
            and TaskDecision.objects.filter(instance=unit.instance, user=to_user, decision=APPROVE).exists()
        ):
            # Four-eyes: they could hold the task but never approve it (docs/architecture.md, "Who may act").
            refusal = f"{name} has already approved another step of this workflow (four-eyes rule)."
        if refusal:
            raise TaskInvalid(refusal, {"to_user": [refusal]})
        from_state, previous = task.state, task.assignee_id
        if task.state == TaskState.CLAIMED:
            task.release()
        task.claim(to_user, unit.now)
        rows.update(task, ["state", *HOLDER_FIELDS])
        unit.audit(
            "task",
            task.pk,
            from_state,
            task.state,
            reason=note,
            payload={"to": to_user.get_username()},
            action=AuditAction.TASK_DELEGATED,
        )
        announce(
            unit,
            task,
            "task.delegated",
            f"{user.get_username()} delegated to you: {task.title}",
            former_holder=previous,
        )
        notify(
            unit,
            [to_user.pk],
            "delegated",
            f"{user.get_username()} delegated to you: {isolate(task.title)}" + (f" ({isolate(note)})" if note else ""),
            url=task_url(task),
            task=task,
        )
        unit.finish()
        return task


def _how_it_changed_hands(task: HumanTask) -> str:
    """How ``task`` reached its holder now, in a few words for a refused delegation: "staff claimed it", "manager
    delegated it to staff" (a hand-over is no claim: the new holder may not even know of it yet), "manager
    reassigned it to operator" (an escalation, handed on from Incidents), or "it went back to the queue". Read from
    the task's latest claim or delegation in the audit trail (the task keeps no column of how it got its holder)."""
    if task.assignee is None:
        return "it went back to the queue"
    holder = task.assignee.get_username()
    latest = (
        AuditEvent.objects.filter(
            subject_type="task",
            subject_id=task.pk,
            action__in=[AuditAction.TASK_CLAIMED, AuditAction.TASK_DELEGATED],
        )
        .order_by("-occurred_at", "-id")
        .first()
    )
    if latest is None or latest.action == AuditAction.TASK_CLAIMED:
        return f"{holder} claimed it"
    verb = "reassigned" if task.kind == TaskKind.ESCALATION else "delegated"
    who = latest.actor_username or "someone"
    return f"{who} {verb} it to {holder}"


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
    seen: str | None = None,
    request_meta: dict | None = None,
) -> HumanTask:
    """Approve, reject or submit a task. Four-eyes and quorum are enforced here, whoever calls.

    ``seen`` is ``base.data_digest`` of the instance's data as the deciding person was shown it (the task page sends
    it); when the data has changed since, the decision is refused with a TaskConflict saying so. None: not checked
    (a caller that showed no data).

    Raises TaskInvalid for a comment with a NUL or longer than ``inputs.COMMENT_MAX`` (whoever calls: the limit
    is the service's, the page only shows it), a missing reject comment or form errors.

    When entering what follows the decision raises (a Decision or a Timer's ``until`` raising, a next task that
    cannot open, a value too large), that transaction is rolled back and a fresh one keeps the decision (task
    completed, decision recorded, audited) and stops the instance with the real error
    (``orchestrator.services.flow.human_step_stopped``), telling the operators; the task returned then has
    ``task.step.state == dead`` and the error in ``task.step.error_type`` / ``task.step.error``
    (docs/architecture.md, "A step whose outcome cannot be recorded"). TaskNotFound, TaskForbidden and
    TaskConflict as the other actions.
    """
    comment = checked_text(comment, "Comment", COMMENT_MAX, "comment")
    try:
        return _decide(task_id, user, decision, comment, data or {}, request_meta, seen=seen, stopped_by=None)
    except _FollowFailed as failed:
        logger.error(
            "task %s: entering what follows the decision raised %s; the decision is kept and the instance stopped",
            task_id,
            type(failed.error).__name__,
            exc_info=failed.error,
        )
        return _decide(task_id, user, decision, comment, data or {}, request_meta, seen=seen, stopped_by=failed.error)


def _decide(
    task_id: int,
    user: User,
    decision: str,
    comment: str,
    data: dict[str, Any],
    request_meta: dict | None,
    *,
    seen: str | None,
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
        undecidable = why_undecidable(unit.instance, task)
        if undecidable:
            # Nothing could follow the decision (nor check a form's fields); it waits until the definition the
            # instance ran is deployed again.
            raise TaskConflict(f"This task cannot be decided now: {undecidable}. {REDEPLOY}")
        if seen is not None and seen != data_digest(unit.instance.data):
            # Read under the instance's lock: an edit that committed while this request waited is seen here.
            raise TaskConflict(
                "The workflow's data changed after you opened this task (an operator's edit or news from another "
                "system): check it again below, then decide. Your comment is kept."
            )
        if task.kind == TaskKind.ESCALATION:
            try:
                escalation_resolve(unit, task, user, decision, comment)
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
        # One person, one approval slot per instance: whoever approved one level decides no other, either way
        # (a rejection decides the instance's outcome as much as an approval does).
        if task.kind == TaskKind.APPROVAL and locked.approved_before:
            raise TaskForbidden(APPROVED_BEFORE)
        rows.insert(
            TaskDecision(task=task, instance=unit.instance, user=user, decision=decision, comment=comment, data=cleaned)
        )
        if decision == APPROVE and locked.other_approvals_pending:
            _after_approval_others(unit, task, user)
        from_state = task.state
        if decision == APPROVE and task.approvals + 1 < task.quorum:
            holder = task.assignee_id
            task.approvals += 1
            if task.state == TaskState.CLAIMED:
                task.release()
            rows.update(task, ["approvals", "state", *HOLDER_FIELDS])
            unit.audit(
                "task",
                task.pk,
                from_state,
                task.state,
                reason=comment,
                payload={"approvals": task.approvals, "quorum": task.quorum},
                action=AuditAction.TASK_APPROVED,
            )
            announce(
                unit,
                task,
                "task.approved",
                f"{task.approvals} of {task.quorum} approvals: {task.title}",
                former_holder=holder,
            )
            unit.finish()
            return task
        if decision == APPROVE:
            task.approvals += 1
        task_complete(unit, task, user, decision, comment, cleaned)
        # The engine's keys last: a form's own fields named "by", "decision" or "comment" (they join the data, and
        # task.form_data keeps them) must not write who decided into the step's record (orchestrator.records).
        result = {**cleaned, "decision": decision, "by": user.get_username(), "comment": comment}
        merge = cleaned if task.kind == TaskKind.FORM else None
        announcement = f"{user.get_username()} {past_tense(decision)}: {task.title}"
        if stopped_by is not None:
            human_step_stopped(unit, task.step, result, stopped_by, merge=merge)
            _tell_operators_stopped(unit, task)
            announce(unit, task, "task.completed", announcement)
            unit.finish()
            return task
        try:
            # What follows the decision, up to the write of the instance row (an outcome too long for its column
            # is refused there), is the definition's and the data's doing, not the person's.
            human_step_finish(unit, task.step, result, rejected=decision == REJECT, merge=merge)
            announce(unit, task, "task.completed", announcement)
            unit.finish()
        except (OperationalError, InterfaceError):
            raise  # the database, not the definition: nothing is recorded and the person may try again
        except Exception as exc:
            raise _FollowFailed(exc) from exc
        return task


# What the task page and a refused decision tell a person about a task :func:`why_undecidable` names a reason for.
REDEPLOY = "An operator must deploy the version this instance ran again (or cancel the instance)."


def why_undecidable(instance: WorkflowInstance, task: HumanTask) -> str:
    """Why no decision of ``task`` (of ``instance``, its step read) could be carried out now, in a person's words, or
    "" when it can: the definition ``instance`` is pinned to is not registered (its module is not deployed), or it
    was deployed again under the same version without the task's node or with another kind of node there
    (``steps.step_node``), so neither a form's fields could be checked nor what follows entered. An escalation is
    answered whatever its step's node (Fail instance is the way out; ``escalation_resolve`` checks what a retry
    needs). The task page says it; :func:`task_decide` refuses with it.

    Raises nothing of its own.
    """
    definition = definition_or_none(instance)
    if definition is None:
        return f"the workflow's {definition_unavailable(instance)}"
    if task.kind == TaskKind.ESCALATION:
        return ""
    try:
        node = step_node(definition, task.step)
    except DefinitionError as exc:
        return f"the workflow was deployed again under its version with another shape ({exc})"
    if isinstance(node, Human) and node.kind_of_task != task.kind:
        # A form where an approval was (or the reverse): the decision the task takes is not the one its node reads.
        now, this = ("a form" if kind == FORM else "an approval" for kind in (node.kind_of_task, task.kind))
        return (
            f"the workflow was deployed again under its version with another shape (its step {task.step.name!r} is "
            f"now {now}, this task {this})"
        )
    return ""


def _after_approval_others(unit: Unit, task: HumanTask, user: User) -> None:
    """Having approved ``task``, ``user`` may decide no other approval of its instance (four-eyes). The ones they
    hold (claimed on a parallel branch before) go back to the queue now, audited and announced: held, each waited
    for a decision never coming, out of everyone else's queue, until the sweep's safety net
    (``people.tasks_release_unfit``) found it. Then each open or escalated one, those given back included, is
    checked for who is left to decide it: when ``user`` was the last person able to, it escalates at once
    (``base.escalate_if_short``), instead of waiting, open, until its SLA passed (docs/architecture.md, "A task
    never waits on nobody"). Raises nothing of its own."""
    others = HumanTask.objects.filter(
        instance_id=unit.instance.pk, kind=TaskKind.APPROVAL, state__in=ACTIONABLE_TASK_STATES
    ).exclude(pk=task.pk)
    for other in others.order_by("pk"):
        if other.state == TaskState.CLAIMED:
            if other.assignee_id != user.pk:
                continue  # someone else holds it, and may still decide it
            release_audited(
                unit, other, user.pk, f"{user.get_username()} approved another task of this instance (four-eyes)"
            )
        escalate_if_short(unit, other)


def _tell_operators_stopped(unit: Unit, task: HumanTask) -> None:
    """Notify the operators (never the initiator) that the instance stopped after ``task``'s decision."""
    instance = unit.instance
    operators = members_of([OPERATORS], exclude=[instance.initiator_id])
    url = reverse("console:instance_detail", args=[instance.pk])
    name = instance.title or f"{instance.workflow_name} #{instance.pk}"
    notify(unit, operators, "escalation", f"Stopped after a decision, needs an operator: {isolate(name)}", url=url)


def _validate_decision(unit: Unit, task: HumanTask, decision: str, comment: str, data: dict) -> dict[str, Any]:
    if decision not in decisions_taken(task):
        message = decision_not_taken(task, decision)
        raise TaskInvalid(message, {"decision": [message]})
    if task.kind == TaskKind.APPROVAL:
        if decision == REJECT and not comment:
            raise TaskInvalid("Say why you reject: a comment is required.", {"comment": ["Required on reject."]})
        return {}
    node = definition_of(unit.instance).node(task.step.name)
    assert isinstance(node, Human)
    form = bound_form(node.form, data)
    if not form.is_valid():
        errors = {k: [str(e) for e in v] for k, v in form.errors.items()}
        raise FormInvalid("The form has errors.", errors)
    return json.loads(json.dumps(form.cleaned_data, default=form_json_default))


@dataclass
class BulkResult:
    """What a bulk claim did: the ids claimed, the refusals' messages by id, and which of those refused ids a single
    claim would have answered 403 (``forbidden``: who the person is) or 404 (``hidden``: not theirs to see), the
    refusals the trail records."""

    claimed: list[int]
    refused: dict[int, str]
    forbidden: list[int] = field(default_factory=list)
    hidden: list[int] = field(default_factory=list)


def tasks_claim_bulk(task_ids: list[int], user: User, *, request_meta: dict | None = None) -> BulkResult:
    """Claim several tasks, each in its own transaction: one lost race does not undo the others.

    Raises nothing of its own: each refusal (a TaskError) is kept in ``refused`` with its message.
    """
    result = BulkResult(claimed=[], refused={})
    for task_id in dict.fromkeys(task_ids):
        try:
            task_claim(task_id, user, request_meta=request_meta)
        except TaskError as exc:
            result.refused[task_id] = str(exc)
            if isinstance(exc, TaskForbidden):
                result.forbidden.append(task_id)
            elif isinstance(exc, TaskNotFound):
                result.hidden.append(task_id)
        else:
            result.claimed.append(task_id)
    return result


def notifications_mark_read(user: User, ids: list[int] | None = None) -> int:
    """Mark the user's notifications read (all of them, or the given ones); returns how many changed.

    Raises nothing of its own.
    """
    qs = Notification.objects.filter(user=user, read_at__isnull=True)
    if ids is not None:
        qs = qs.filter(pk__in=ids)
    changed = qs.update(read_at=timezone.now())
    if changed:
        transaction.on_commit(
            partial(
                send_now,
                [live_names.user_group(user.pk)],
                {"type": live_names.NOTIFICATION_READ, "refresh": [live_names.COUNTS]},
            )
        )
    return changed


def task_snooze(task_id: int, user: User, until: datetime, *, request_meta: dict | None = None) -> HumanTask:
    """Hide a task from the assignee's list until ``until`` (it stays claimed and keeps its deadlines);
    ``request_meta`` goes into the audit event.

    Raises TaskInvalid for an ``until`` that is naive, out of range or not within the next 90 days;
    TaskConflict when the task is no longer to do; TaskForbidden unless ``user`` holds the task; TaskNotFound.
    """
    try:
        until = check_when(until, "Snooze until")
    except ValidationError as exc:
        raise TaskInvalid(" ".join(exc.messages), {"until": exc.messages}) from None
    with transaction.atomic():
        locked = _lock_task(task_id, user, request_meta)
        task, unit = locked.task, locked.unit
        if not task.is_actionable:
            # A decided task keeps its last assignee: there is nothing left to put aside.
            raise TaskConflict(f"This task is already {task.get_state_display().lower()}.")
        if task.assignee_id is None:
            raise TaskForbidden("Claim the task before you snooze it.")
        if task.assignee_id != user.pk:
            # Named: the person may have held it when their page was drawn (a delegation took it since).
            raise TaskForbidden(f"{task.assignee} holds this task now: only they can snooze it.")
        if until <= unit.now or until > unit.now + timedelta(days=90):
            raise TaskInvalid("Snooze until a time in the next 90 days.", {"until": ["Within 90 days."]})
        task.snoozed_until = until
        rows.update(task, ["snoozed_until"])
        unit.audit(
            "task",
            task.pk,
            task.state,
            task.state,
            payload={"until": until.isoformat()},
            action=AuditAction.TASK_SNOOZED,
        )
        unit.finish()
        return task
