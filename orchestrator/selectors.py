"""Reads for the engine's pages: instance lists, an instance's steps and audit trail, the catalog."""

from __future__ import annotations

import re

from django.contrib.auth.models import User
from django.db.models import Count, QuerySet

from orchestrator.models import AuditEvent, ReceivedSignal, StepRun, WorkflowInstance
from orchestrator.ports import human_tasks_or_none


def can_view_all_instances(user: User) -> bool:
    return user.has_perm("orchestrator.view_workflowinstance")


def can_operate(user: User) -> bool:
    return user.has_perm("orchestrator.operate_workflowinstance")


def instances_for_user(user: User) -> QuerySet[WorkflowInstance]:
    """Operators and admins see every instance; anyone else the ones they started."""
    qs = WorkflowInstance.objects.select_related("initiator").order_by("-created_at", "-id")
    if not can_view_all_instances(user):
        qs = qs.filter(initiator=user)
    return qs


def instance_for_user(user: User, instance_id: int) -> WorkflowInstance | None:
    """The instance if the user may see it: operators, its initiator, or a person with one of its tasks (asked of
    the human side through the engine's port, when an app registered one); else None."""
    instance = WorkflowInstance.objects.select_related("initiator").filter(pk=instance_id).first()
    if instance is None:
        return None
    if can_view_all_instances(user) or instance.initiator_id == user.pk:
        return instance
    people = human_tasks_or_none()
    if people is not None and people.sees_instance(user, instance_id):
        return instance
    return None


def steps_of(instance: WorkflowInstance) -> list[StepRun]:
    return list(instance.steps.order_by("id"))


# Kept signals an instance page lists (an instance may keep up to signals.KEPT_MAX; the rest are counted).
KEPT_SHOWN = 20


def kept_signals_of(instance: WorkflowInstance) -> tuple[list[ReceivedSignal], int]:
    """The instance's signals kept for a wait it has not reached (neither consumed nor rejected: the partial index
    ``signal_kept``), oldest first, at most :data:`KEPT_SHOWN` of them, and how many it keeps."""
    kept = ReceivedSignal.objects.filter(instance=instance, consumed_at__isnull=True, rejected_at__isnull=True)
    shown = list(kept.order_by("received_at", "id")[:KEPT_SHOWN])
    return shown, (len(shown) if len(shown) < KEPT_SHOWN else kept.count())


def audit_of(instance: WorkflowInstance) -> QuerySet[AuditEvent]:
    return instance.audit_events.select_related("actor").order_by("seq")


def recent_audit_of(instance: WorkflowInstance, limit: int) -> tuple[list[AuditEvent], int]:
    """The latest ``limit`` events of ``instance``'s history, oldest first, and how many it has in all. An
    instance's history has no bound (a loop gone round many times, thousands of consumed signals, retries), so a
    page reads only the tail: by the (instance, seq) index, newest first, then a count only when the tail is full."""
    events = list(instance.audit_events.order_by("-seq")[:limit])
    total = len(events) if len(events) < limit else instance.audit_events.count()
    events.reverse()
    return events, total


def state_counts(qs: QuerySet[WorkflowInstance]) -> dict[str, int]:
    return dict(qs.order_by().values_list("state").annotate(n=Count("id")).values_list("state", "n"))


# A traceback line naming a file on the server: operators see it whole, everyone else only the file's name.
SERVER_PATH = re.compile(r'File "(?:[^"]*/)?([^"/]+)"')


def hide_paths(text: str) -> str:
    """``text`` with every traceback file path cut to its file name (``File "/srv/app/x.py"`` -> ``File "x.py"``):
    what a step's error shows anyone who may see the instance but not operate it (the page and the API alike)."""
    return SERVER_PATH.sub(r'File "\1"', text)
