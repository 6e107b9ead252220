"""Reads for the inbox pages; each returns a queryset with what its template needs joined in."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from approvals.models import ACTIONABLE_TASK_STATES, HumanTask, TaskState


def _candidate_filter(user: User) -> Q:
    groups = HumanTask.candidate_groups.through.objects.filter(humantask_id=OuterRef("pk"), group__user=user)
    users = HumanTask.candidate_users.through.objects.filter(humantask_id=OuterRef("pk"), user=user)
    return Q(Exists(groups)) | Q(Exists(users))


def _with_related(qs: QuerySet[HumanTask]) -> QuerySet[HumanTask]:
    return qs.select_related("instance", "assignee", "step")


def my_tasks(user: User) -> QuerySet[HumanTask]:
    """Tasks assigned to the user and still to do (snoozed ones hidden until they wake)."""
    now = timezone.now()
    qs = HumanTask.objects.filter(assignee=user, state__in=ACTIONABLE_TASK_STATES).filter(
        Q(snoozed_until__isnull=True) | Q(snoozed_until__lte=now)
    )
    return _with_related(qs)


def team_queue(user: User) -> QuerySet[HumanTask]:
    """Unclaimed tasks the user may claim through their groups or by name (not their own instances)."""
    qs = (
        HumanTask.objects.filter(state__in=[TaskState.OPEN, TaskState.ESCALATED], assignee__isnull=True)
        .filter(_candidate_filter(user))
        .exclude(instance__initiator=user)
    )
    return _with_related(qs)


def done_by(user: User) -> QuerySet[HumanTask]:
    """Tasks the user completed, newest first."""
    return _with_related(HumanTask.objects.filter(completed_by=user, state=TaskState.COMPLETED))


def visible_tasks(user: User) -> QuerySet[HumanTask]:
    """Every task the user may open: candidate, assignee, or manager."""
    qs = HumanTask.objects.all()
    if not (user.is_superuser or user.groups.filter(name="managers").exists()):
        qs = qs.filter(Q(assignee=user) | Q(completed_by=user) | _candidate_filter(user))
    return _with_related(qs)


def inbox_counts(user: User) -> dict[str, int]:
    """Counts for the navigation badges."""
    mine = my_tasks(user).count()
    return {"inbox": mine, "queue": team_queue(user).count(), "unread": 0}


def tasks_of_instance(instance_id: int) -> QuerySet[HumanTask]:
    return HumanTask.objects.filter(instance_id=instance_id).select_related("assignee", "completed_by").order_by("id")
