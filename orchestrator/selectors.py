"""Reads for the engine's pages: instance lists, an instance's steps and audit trail, the catalog."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from django.contrib.auth.models import User
from django.db.models import Count, F, Func, Model, Q, QuerySet, Subquery

from orchestrator.models import AuditEvent, ReceivedSignal, StepRun, WorkflowInstance
from orchestrator.ports import human_tasks_or_none


def can_view_all_instances(user: User) -> bool:
    return user.has_perm("orchestrator.view_workflowinstance")


def can_operate(user: User) -> bool:
    return user.has_perm("orchestrator.operate_workflowinstance")


def instances_for_user(user: User) -> QuerySet[WorkflowInstance]:
    """The instances ``user`` may see, by :func:`instance_for_user`'s rule: operators and admins (and whoever has
    ``view_workflowinstance``) every one; anyone else those they started and those they see through one of their
    tasks (asked of the human side, when an app registered one). The lists (the API's, the console's) showed only
    the first kind, while the instance page opened the second."""
    qs = WorkflowInstance.objects.select_related("initiator").order_by("-created_at", "-id")
    if not can_view_all_instances(user):
        people = human_tasks_or_none()
        seen = Q(initiator=user)
        if people is not None:
            seen |= Q(pk__in=people.instance_ids_seen(user))
        qs = qs.filter(seen)
    return qs


def instance_for_user(user: User, instance_id: int, *, with_data: bool = True) -> WorkflowInstance | None:
    """The instance if the user may see it: operators, its initiator, or a person with one of its tasks (asked of
    the human side through the engine's port, when an app registered one); else None.

    Without ``with_data`` the business data (``data``, a JSON object of up to megabytes) is left in PostgreSQL
    (``defer``): for a caller that only checks access, or answers without the data (the API's
    ``included_data=metadata``). Reading ``instance.data`` then costs a statement of its own."""
    qs = WorkflowInstance.objects.select_related("initiator")
    instance = (qs if with_data else qs.defer("data")).filter(pk=instance_id).first()
    if instance is None:
        return None
    if can_view_all_instances(user) or instance.initiator_id == user.pk:
        return instance
    people = human_tasks_or_none()
    if people is not None and people.sees_instance(user, instance_id):
        return instance
    return None


def instance_read(instance_id: int) -> WorkflowInstance:
    """Instance ``instance_id`` with its initiator, whoever asks: for an answer after an action whose checks the
    caller passed. Raises WorkflowInstance.DoesNotExist."""
    return WorkflowInstance.objects.select_related("initiator").get(pk=instance_id)


def steps_of(instance: WorkflowInstance) -> list[StepRun]:
    return list(instance.steps.order_by("id"))


M = TypeVar("M", bound=Model)


def latest_with_total(qs: QuerySet[M], limit: int) -> tuple[list[M], int]:
    """The latest ``limit`` rows of ``qs`` by id (``limit`` >= 1), returned in id order, and how many rows ``qs``
    has in all; ``([], 0)`` for none.

    One statement whatever the count: the total is a scalar subquery that does not depend on the row, which
    PostgreSQL runs once (an InitPlan: a count over the ``(instance, id)`` index of an instance's step runs or
    tasks), so an answer about an instance costs the same statements at 1 row as at 10,000. A count only when the
    tail is full (as :func:`recent_audit_of`) would be one statement more past ``limit``."""
    # COUNT as a plain function, not Count(): an aggregate would make Django group the subquery by every column.
    count = qs.order_by().annotate(listed_total=Func(F("pk"), function="COUNT")).values("listed_total")
    rows = list(qs.annotate(listed_total=Subquery(count)).order_by("-id")[:limit])
    rows.reverse()
    total: Any = rows[0] if rows else None
    return rows, (total.listed_total if total is not None else 0)


# A step run's payload columns: what its handler returned (``result``, up to BATON_MAX_RESULT_BYTES, 1 MiB by
# default: orchestrator/services/results.py) and its last error with the whole traceback (``error``, unbounded: an
# exception's text is the handler's). What a metadata read (the API's ``included_data=metadata``) leaves in
# PostgreSQL; ``error_type`` stays (a short name that says whether and how it failed).
STEP_PAYLOADS = ("result", "error")


def step_runs_of(instance_id: int, *, payloads: bool = True) -> QuerySet[StepRun]:
    """Every step run of instance ``instance_id`` (attempts, errors, results), in id order (the order they were
    made): what the API pages through at ``/api/instances/{id}/steps/``. No visibility check: the caller has
    checked the instance (:func:`instance_for_user`).

    Without ``payloads`` the columns of :data:`STEP_PAYLOADS` are not read (``defer``): a page of 100 runs with
    results of a megabyte each is 100 MB out of PostgreSQL otherwise. Reading one of them on a row then costs a
    statement per row: the caller must not."""
    qs = StepRun.objects.filter(instance_id=instance_id).order_by("id")
    return qs if payloads else qs.defer(*STEP_PAYLOADS)


def latest_steps_of(instance_id: int, limit: int, *, payloads: bool = True) -> tuple[list[StepRun], int]:
    """The latest ``limit`` step runs of instance ``instance_id`` in id order, and how many it has, in one
    statement (:func:`latest_with_total`): an instance that looped or retried has runs without bound, and its
    detail lists only the tail (the API's ``GET /api/instances/{id}/``; the rest at its ``steps/``). ``payloads``
    as for :func:`step_runs_of`."""
    return latest_with_total(step_runs_of(instance_id, payloads=payloads), limit)


def step_run_of(instance_id: int, step_id: int) -> StepRun | None:
    """Step run ``step_id`` if it is one of instance ``instance_id``'s, whole (its result and error in full); else
    None (no such run, or another instance's: the caller cannot tell which). No visibility check: the caller has
    checked the instance (:func:`instance_for_user`)."""
    return StepRun.objects.filter(instance_id=instance_id, pk=step_id).first()


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
