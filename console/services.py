"""Bulk actions over a filter: a dry run that lists the instances, a confirmation that starts a durable job on
exactly that list, and the work itself, one instance at a time, each with the same service a single action uses.

The life of a job (``console.models.BulkJob``):

1. :func:`bulk_dry_run` evaluates the filter once and writes one ``BulkJobItem`` per matching instance that the
   action applies to, in one ``INSERT ... SELECT``. The page shows that count and a sample.
2. :func:`bulk_confirm` (the same person, with a reason, within ``DRY_RUN_TTL``) queues the job, audits it as one
   operation on the ``operations`` chain with its reason, its filter and the list of instance ids, and sends
   ``console.tasks.bulk_job_work`` after commit.
3. :func:`bulk_work` takes pending items in order, each in its own transaction, and calls the instance service
   (retry, cancel, pause, resume) with the job's actor and reason. One that no longer applies (retried meanwhile,
   completed) is skipped with the service's own words; one that raises something else is recorded as an error
   and logged. The periodic ``console.tasks.bulk_jobs_resume`` sends the work again for a job no worker touched
   for ``STALE_AFTER`` (a worker died, the broker lost the message).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from celery import current_app
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone

from console.models import BulkAction, BulkItemState, BulkJob, BulkJobItem, BulkJobState
from console.selectors import InstanceFilter, filtered
from orchestrator import audit, live_names
from orchestrator import selectors as engine_selectors
from orchestrator.audit import Actor
from orchestrator.audit_actions import AuditAction
from orchestrator.inputs import REASON_MAX, check_text, check_when
from orchestrator.models import OPEN_INSTANCE_STATES, InstanceState, WorkflowInstance
from orchestrator.realtime import send_now
from orchestrator.services import instances as instance_services
from orchestrator.services.operations import pause_horizon

logger = logging.getLogger(__name__)

# The chain of the audit trail that records bulk operations (they belong to no one instance).
OPERATIONS_CHAIN = "operations"
# More than this is not one operator decision but a migration: narrow the filter.
BULK_LIMIT = 50_000
# A dry run older than this is counted again before it is confirmed (the operator saw a count from then).
DRY_RUN_TTL = timedelta(minutes=30)
# Items one transaction-free pass takes before it reports progress.
BATCH = 50
# A queued or running job no worker touched for this long is sent again.
STALE_AFTER = timedelta(seconds=60)
# The Celery task that works a bulk job (console/tasks.py), published by name: the services never import the module
# of Celery entry points that calls them (one way: tasks -> services).
BULK_JOB_WORK_TASK = "console.tasks.bulk_job_work"

# The instance states each action applies to (the dry run lists only these).
APPLIES_TO: dict[str, tuple[str, ...]] = {
    BulkAction.RETRY: (InstanceState.FAILED,),
    BulkAction.CANCEL: tuple(OPEN_INSTANCE_STATES),
    BulkAction.PAUSE: (InstanceState.RUNNING, InstanceState.WAITING),
    BulkAction.RESUME: (InstanceState.PAUSED,),
}


class BulkError(Exception):
    """A bulk request that cannot go ahead; the message says why and what to do."""


class BulkNotFound(BulkError):
    """No such job, or not this person's to confirm."""


def bulk_dry_run(user: User, action: str, flt: InstanceFilter) -> BulkJob:
    """Count and list, once, the instances ``user`` may see that match ``flt`` and that ``action`` applies to.

    Returns the new job (state ``dry_run``) with ``total`` set; its items are the list. Raises ValidationError
    for an unknown action, for no match, or for more than ``BULK_LIMIT`` matches (naming the limit).
    """
    if action not in APPLIES_TO:
        raise ValidationError(f"Choose one of: {', '.join(a.label.lower() for a in BulkAction)}.")
    qs = filtered(user, flt).filter(state__in=APPLIES_TO[action])
    with transaction.atomic():
        job = BulkJob.objects.create(action=action, filters=flt.as_params(), created_by=user)
        ids_sql, params = qs.order_by("created_at", "id").values("id")[: BULK_LIMIT + 1].query.sql_with_params()
        items = BulkJobItem._meta.db_table
        # Django's own SQL for the filter, its parameters kept apart: nothing typed is pasted in.
        insert = f"INSERT INTO {items} (job_id, instance_id, state, detail) SELECT %s, m.id, %s, '' FROM ({ids_sql}) m"  # noqa: S608
        with connection.cursor() as cursor:
            cursor.execute(insert, [job.pk, BulkItemState.PENDING, *params])
            total = cursor.rowcount
        if total > BULK_LIMIT:
            raise ValidationError(
                f"More than {BULK_LIMIT:,} instances match: narrow the filter (by workflow, state, date or error)."
            )
        if total == 0:
            raise ValidationError(f"No instance that can be {past_tense(action)} matches this filter.")
        job.total = total
        job.save(update_fields=["total"])
    return job


def past_tense(action: str) -> str:
    """``retry`` -> ``retried``: what a page says was done to an instance."""
    return {"retry": "retried", "cancel": "cancelled", "pause": "paused", "resume": "resumed"}[action]


def bulk_confirm(
    job_id: int,
    user: User,
    *,
    reason: str,
    until: datetime | None = None,
    now: datetime | None = None,
    request_meta: dict[str, Any] | None = None,
) -> BulkJob:
    """Start the job a dry run listed: the same person, with a reason, within ``DRY_RUN_TTL`` of the dry run.

    ``until`` is a pause's planned end (in the future, within the pause horizon); ignored for other actions.
    Audited on the ``operations`` chain as ``bulk.started`` with the reason, the action, the filter and every
    instance id; the work is sent after commit. Raises BulkNotFound (not theirs, or no such job), BulkError
    (already started, or the dry run is too old), ValidationError (reason missing or too long, ``until`` refused).
    """
    reason = check_text(reason, "Reason", REASON_MAX)
    if not reason:
        raise ValidationError("Give a reason: it goes into the audit trail with the list of instances.")
    now = now or timezone.now()
    with transaction.atomic():
        job = BulkJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None:
            raise BulkNotFound("No such dry run.")
        if job.state != BulkJobState.DRY_RUN:
            raise BulkError(f"This bulk {job.action} was already started ({job.get_state_display().lower()}).")
        if job.created_by_id != user.pk:
            raise BulkNotFound("No such dry run (a dry run is confirmed by whoever ran it).")
        if now - job.created_at > DRY_RUN_TTL:
            minutes = int((now - job.created_at).total_seconds() // 60)
            raise BulkError(f"This dry run is {minutes} minutes old: run it again so that its count is current.")
        if job.action != BulkAction.PAUSE:
            until = None  # only a pause has a planned end (a form posting one for another action is ignored)
        elif until is not None:
            until = check_when(until, "Resume at", now=now, future=True)
            if until - now > pause_horizon():
                raise ValidationError(f"Resume at: a pause ends within {pause_horizon().days} days.")
        ids = list(job.items.order_by("id").values_list("instance_id", flat=True))
        job.state, job.reason, job.until, job.confirmed_at = BulkJobState.QUEUED, reason, until, now
        job.save(update_fields=["state", "reason", "until", "confirmed_at"])
        audit.append_standalone(
            OPERATIONS_CHAIN,
            actor=Actor.of(user),
            action=AuditAction.BULK_STARTED,
            subject_type="bulk_job",
            subject_id=job.pk,
            from_state=BulkJobState.DRY_RUN,
            to_state=BulkJobState.QUEUED,
            reason=reason,
            payload={
                "action": job.action,
                "filters": job.filters,
                "count": len(ids),
                "instances": ids,
                "until": until.isoformat() if until else None,
            },
            request_meta=request_meta,
            now=now,
        )
        transaction.on_commit(partial(send_work, job.pk))
        transaction.on_commit(partial(_tell_progress, job.pk))
    return job


def send_work(job_id: int) -> None:
    """Publish the Celery message that works ``job_id``; a broker outage is logged, and the periodic resume sends
    it again (the job's rows say what is left)."""
    try:
        # ignore_result as the task declares it (only a task object's own publish would have added it).
        current_app.send_task(BULK_JOB_WORK_TASK, args=(job_id,), ignore_result=True)
    except Exception:
        logger.exception("could not publish bulk job %s; bulk_jobs_resume will send it again", job_id)


def _tell_progress(job_id: int) -> None:
    # Operators' pages re-fetch the job's progress bar (a hint, never state: the bar reads the rows).
    send_now(["ops"], {"type": "bulk.progress", "job": job_id, "refresh": [live_names.bulk_refresh(job_id)]})


def bulk_work(job_id: int, *, batch: int = BATCH, now: datetime | None = None) -> int:
    """Work up to ``batch`` pending items of a queued or running job, each in its own transaction; returns how
    many were worked (0: nothing left, or the job is not open). The job is done when no item is pending."""
    job = BulkJob.objects.select_related("created_by").filter(pk=job_id).first()
    if job is None or not job.is_open:
        return 0
    if not engine_selectors.can_operate(job.created_by):
        # A job acts with its creator's authority at every batch, not only at the confirmation: who lost the operator
        # role since (or left: an inactive user holds no permission) no longer retries or cancels through it.
        name = job.created_by.get_username()
        _stop(
            job.pk,
            Actor.system("bulk"),
            reason=f"{name} may no longer operate instances",
            detail=f"stopped: {name} may no longer operate instances",
        )
        return 0
    if job.state == BulkJobState.QUEUED:
        BulkJob.objects.filter(pk=job.pk, state=BulkJobState.QUEUED).update(state=BulkJobState.RUNNING)
    pending = list(
        BulkJobItem.objects.filter(job_id=job.pk, state=BulkItemState.PENDING)
        .order_by("id")
        .values_list("pk", flat=True)[:batch]
    )
    worked = sum(_work_item(job, item_id) for item_id in pending)
    BulkJob.objects.filter(pk=job.pk).update(worked_at=timezone.now())
    if len(pending) < batch:
        _finish_if_done(job.pk)
    _tell_progress(job.pk)
    return worked


def _work_item(job: BulkJob, item_id: int) -> int:
    """Act on one item; 1 if this call worked it, 0 if another worker had it or it was no longer pending."""
    actor = Actor.of(job.created_by)
    reason = item_reason(job)
    meta = {"bulk_job": job.pk}
    with transaction.atomic():
        item = BulkJobItem.objects.select_for_update(skip_locked=True).filter(pk=item_id).first()
        if item is None or item.state != BulkItemState.PENDING:
            return 0
        try:
            with transaction.atomic():
                _act(job, item.instance_id, actor, reason, meta)
        except (instance_services.NotAllowed, ValidationError, WorkflowInstance.DoesNotExist) as exc:
            item.state, item.detail = BulkItemState.SKIPPED, _why(exc)
        except Exception as exc:
            logger.exception("bulk job %s: instance %s raised", job.pk, item.instance_id)
            item.state, item.detail = BulkItemState.ERROR, f"{type(exc).__name__}: {exc}"[:300]
        else:
            item.state, item.detail = BulkItemState.DONE, ""
        item.acted_at = timezone.now()
        item.save(update_fields=["state", "detail", "acted_at"])
    return 1


def item_reason(job: BulkJob) -> str:
    """The reason each instance's own event records: the job's, labelled with the job, within ``REASON_MAX``.

    The reason typed may already be the longest allowed, and the label would take it past the limit the instance
    services enforce (every item then refused): the typed part is shortened to fit, marked with an ellipsis; the
    whole is on the job's ``bulk.started`` event, which the label and the event's ``bulk_job`` meta point to."""
    label = f" (bulk {job.action} #{job.pk})"
    typed = job.reason
    if len(typed) + len(label) > REASON_MAX:
        typed = typed[: REASON_MAX - len(label) - 1].rstrip() + "…"
    return typed + label


def _why(exc: Exception) -> str:
    if isinstance(exc, WorkflowInstance.DoesNotExist):
        return "The instance no longer exists."
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)[:300]
    return str(exc)[:300]


def _act(job: BulkJob, instance_id: int, actor: Actor, reason: str, meta: dict[str, Any]) -> None:
    if job.action == BulkAction.RETRY:
        instance_services.instance_retry(instance_id, actor=actor, reason=reason, request_meta=meta)
    elif job.action == BulkAction.CANCEL:
        instance_services.instance_cancel(instance_id, actor=actor, reason=reason, request_meta=meta)
    elif job.action == BulkAction.PAUSE:
        until = job.until if job.until is None or job.until > timezone.now() else None
        if job.until is not None and until is None:
            raise instance_services.NotAllowed("The planned end of the pause has passed: not paused.")
        instance_services.instance_pause(instance_id, actor=actor, reason=reason, until=until, request_meta=meta)
    else:
        instance_services.instance_resume(instance_id, actor=actor, reason=reason, request_meta=meta)


def _finish_if_done(job_id: int) -> None:
    """Close the job once no item is pending, and audit its counts (once: the state moves under the row lock)."""
    with transaction.atomic():
        job = BulkJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or not job.is_open or job.items.filter(state=BulkItemState.PENDING).exists():
            return
        counts = dict(job.items.order_by().values_list("state").annotate(n=Count("id")).values_list("state", "n"))
        from_state = job.state
        job.state, job.finished_at = BulkJobState.DONE, timezone.now()
        job.save(update_fields=["state", "finished_at"])
        audit.append_standalone(
            OPERATIONS_CHAIN,
            actor=Actor.system("bulk"),
            action=AuditAction.BULK_FINISHED,
            subject_type="bulk_job",
            subject_id=job.pk,
            from_state=from_state,
            to_state=BulkJobState.DONE,
            reason=job.reason,
            payload={"action": job.action, "counts": counts},
        )


def bulk_stop(job_id: int, user: User, *, reason: str, request_meta: dict[str, Any] | None = None) -> int:
    """Stop an open job: its pending items are skipped ("stopped by ..."), what was done stays done. Returns how
    many items were left undone. Raises BulkNotFound, BulkError (not open), ValidationError (reason)."""
    reason = check_text(reason, "Reason", REASON_MAX)
    if not reason:
        raise ValidationError("Give a reason: it goes into the audit trail.")
    return _stop(
        job_id,
        Actor.of(user),
        reason=reason,
        detail=f"stopped by {user.get_username()}: {reason}",
        request_meta=request_meta,
    )


def _stop(job_id: int, actor: Actor, *, reason: str, detail: str, request_meta: dict[str, Any] | None = None) -> int:
    """Skip an open job's pending items with ``detail``, mark it stopped and audit it as ``actor`` did it; returns
    how many items were left. Raises BulkNotFound, BulkError (not open)."""
    with transaction.atomic():
        job = BulkJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None:
            raise BulkNotFound("No such bulk job.")
        if not job.is_open:
            raise BulkError(f"This bulk {job.action} is {job.get_state_display().lower()}: nothing to stop.")
        left = job.items.filter(state=BulkItemState.PENDING).update(state=BulkItemState.SKIPPED, detail=detail[:300])
        # Queued (no worker took it yet) or running: the trail records the state the job really left.
        from_state = job.state
        job.state, job.finished_at = BulkJobState.STOPPED, timezone.now()
        job.save(update_fields=["state", "finished_at"])
        audit.append_standalone(
            OPERATIONS_CHAIN,
            actor=actor,
            action=AuditAction.BULK_STOPPED,
            subject_type="bulk_job",
            subject_id=job.pk,
            from_state=from_state,
            to_state=BulkJobState.STOPPED,
            reason=reason,
            payload={"left": left},
            request_meta=request_meta,
        )
        transaction.on_commit(partial(_tell_progress, job.pk))
    return left


def bulk_jobs_stale(now: datetime | None = None) -> list[int]:
    """Open jobs no worker touched for ``STALE_AFTER`` (or never, since a confirmation that long ago)."""
    now = now or timezone.now()
    cutoff = now - STALE_AFTER
    return list(
        BulkJob.objects.filter(state__in=[BulkJobState.QUEUED, BulkJobState.RUNNING])
        .filter(Q(worked_at__lt=cutoff) | Q(worked_at__isnull=True, confirmed_at__lt=cutoff))
        .values_list("pk", flat=True)
    )
