"""People change under a task: claims of people who may no longer act go back, tasks too few can act on escalate."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Exists, OuterRef, Q

from approvals.models import (
    HumanTask,
    TaskCandidate,
    TaskDecision,
    TaskKind,
    TaskState,
)
from approvals.selectors import able_count_sql
from approvals.services.base import (
    APPROVE,
    escalate_if_short,
    is_candidate,
    release_audited,
)
from orchestrator import rows
from orchestrator.audit import Actor
from orchestrator.models import WorkflowInstance
from orchestrator.services.locks import SWEEPER
from orchestrator.services.unit import Unit

logger = logging.getLogger(__name__)


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

    Raises nothing of its own: a task whose re-check fails is logged and skipped.
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
    task_ids += short_of_people(list(queued.values_list("pk", flat=True)[:RECHECK_LIMIT]))
    return tasks_recheck(task_ids, reason=reason, actor=actor, request_meta=request_meta, now=now)


def short_of_people(task_ids: list[int]) -> list[int]:
    """Those of ``task_ids`` with fewer people able to act (:func:`able_people`, as SQL:
    ``approvals.selectors.able_count_sql``) than their quorum still needs, in one statement driven by each task's
    candidate rows, so a change touching a busy group's queue locks only the tasks that need it. Elsewhere than
    PostgreSQL, all of them (the re-check decides).

    Raises nothing of its own.
    """
    if not task_ids or not rows.on_postgresql():
        return task_ids
    able, params = able_count_sql("t", "i")
    sql = (
        f"SELECT t.id FROM {HumanTask._meta.db_table} t"
        f" JOIN {WorkflowInstance._meta.db_table} i ON i.id = t.instance_id"
        f" WHERE t.id = ANY(%s) AND t.quorum - t.approvals > {able} ORDER BY t.id"
    )
    with rows.cursor() as cursor:
        cursor.execute(sql, [task_ids, *params])
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
    "escalated": n}.

    Raises nothing of its own: a failing task is logged and skipped.
    """
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
    """The sweep's safety net for :func:`tasks_people_changed`: claimed tasks whose assignee is deactivated, no
    longer a candidate (a change the signals missed: a raw SQL update, a failed re-check) or, for an approval,
    approved another task of the instance (four-eyes refuses their decision) go back to the queue, and escalate if
    nobody is left to act. Returns {"released": n, "escalated": n}.

    Raises nothing of its own (as :func:`tasks_recheck`).
    """
    members = User.groups.through.objects.filter(user_id=OuterRef(OuterRef("assignee_id"))).values("group_id")
    still = TaskCandidate.objects.filter(task_id=OuterRef("pk")).filter(
        Q(user_id=OuterRef("assignee_id")) | Q(group_id__in=members)
    )
    # An approval held by someone who approved another task of its instance: four-eyes refuses their decision.
    approved = TaskDecision.objects.filter(
        instance_id=OuterRef("instance_id"), user_id=OuterRef("assignee_id"), decision=APPROVE
    )
    unfit = (
        HumanTask.objects.filter(state=TaskState.CLAIMED)
        .filter(Q(assignee__is_active=False) | ~Exists(still) | (Q(kind=TaskKind.APPROVAL) & Exists(approved)))
        .order_by("pk")
        .values_list("pk", flat=True)[:RECHECK_LIMIT]
    )
    return tasks_recheck(list(unfit), reason="found by the sweep", actor=SWEEPER, now=now)


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
        why = ""
        if task.state == TaskState.CLAIMED and assignee is not None:
            if not assignee.is_active:
                why = "is deactivated"
            elif not is_candidate(assignee, task):
                why = "is no longer a candidate"
            elif (
                task.kind == TaskKind.APPROVAL
                and TaskDecision.objects.filter(instance=instance, user=assignee, decision=APPROVE).exists()
            ):
                why = "approved another task of this instance"
        if why:
            assert assignee is not None
            release_audited(unit, task, assignee.pk, f"{assignee.get_username()} {why}: {reason}")
            released = 1
        escalated = int(escalate_if_short(unit, task))
        unit.finish()
        return released, escalated
