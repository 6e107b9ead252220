"""Writes of the audit app: starting, running and settling a verification of the whole trail.

A run is a durable ``Verification`` row: written (queued) before its Celery message is sent, so a lost message
leaves a visible queued row, not nothing; advanced by the worker with its progress (and a heartbeat); finished
with its verdict. Progress goes to the auditors' open pages over the live socket (orchestrator/realtime.py) as a
hint to re-fetch the progress bar.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from celery import current_app
from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from audit.models import Verification, VerificationState
from orchestrator import live_names
from orchestrator.accounts import holder_ids
from orchestrator.audit import Sealed, verify_trail
from orchestrator.audit_seals import read_seals
from orchestrator.models import AuditEvent
from orchestrator.realtime import broadcast_on_commit, send_now

logger = logging.getLogger("baton.audit.verify")

# The first problems kept on the row (the command line lists every one).
BREAKS_KEPT = 100
# A run whose heartbeat is older than this lost its worker (killed, restarted): it is marked as an error.
STALE_AFTER = timedelta(minutes=10)
# Progress is written and broadcast at most this often (seconds): the bar moves, the database is not flooded.
PROGRESS_EVERY = 0.5
# The Celery task that runs a queued verification (audit/tasks.py), published by name: the services never import the
# module of Celery entry points that calls them (one way: tasks -> services).
VERIFICATION_RUN_TASK = "audit.tasks.verification_run"


class VerificationBusy(Exception):
    """A verification is already queued or running: it is the one to watch."""

    def __init__(self, running: Verification) -> None:
        super().__init__(f"verification {running.pk} is already {running.state}")
        self.running = running


def auditor_ids() -> list[int]:
    """Active users who may see the trail: superusers and holders of orchestrator.view_trail (directly or by a
    group). Their pages hear a run's progress."""
    return holder_ids("orchestrator", "view_trail")


def _tell(verification: Verification, *, now: bool = False) -> None:
    event = {"type": "audit.verification", "refresh": [live_names.AUDIT_VERIFICATION], "verification": verification.pk}
    groups = [f"user.{uid}" for uid in auditor_ids()]
    if now:
        send_now(groups, event)
    else:
        broadcast_on_commit(groups, event)


def settle_stale(now: datetime | None = None) -> int:
    """Mark runs whose worker stopped answering (no heartbeat for STALE_AFTER) as errors; returns how many."""
    now = now or timezone.now()
    stale = Verification.objects.filter(active=True).filter(
        Q(heartbeat_at__lt=now - STALE_AFTER) | Q(heartbeat_at__isnull=True, requested_at__lt=now - STALE_AFTER)
    )
    return stale.update(
        state=VerificationState.ERROR,
        active=None,
        finished_at=now,
        error="The worker stopped reporting (restarted or killed); run the verification again.",
    )


def verification_request(user: User | None, *, scheduled: bool = False) -> Verification:
    """Queue a verification of every chain and send it to a worker after commit; returns the queued row.

    ``user`` is who asked (None for the schedule). Raises ``VerificationBusy`` when one is already queued or
    running (two admins clicking at once get the same run), after settling runs whose worker died.
    """
    settle_stale()
    now = timezone.now()
    try:
        with transaction.atomic():
            verification = Verification.objects.create(
                requested_by=user,
                requested_by_label=user.get_username() if user is not None else "",
                scheduled=scheduled,
                requested_at=now,
                heartbeat_at=now,
            )
    except IntegrityError:
        running = Verification.objects.filter(active=True).first()
        if running is None:  # finished between the insert and this read: try once more
            return verification_request(user, scheduled=scheduled)
        raise VerificationBusy(running) from None
    transaction.on_commit(partial(send_verification, verification.pk))
    _tell(verification)
    return verification


def send_verification(verification_id: int) -> None:
    """Publish the Celery message that runs queued verification ``verification_id`` (after the row's commit).

    Raises what the broker raises, as the task's own ``delay`` did; a row whose message never left is settled as
    an error by :func:`settle_stale` after ``STALE_AFTER``."""
    # ignore_result as the task declares it (only a task object's own publish would have added it).
    current_app.send_task(VERIFICATION_RUN_TASK, args=(verification_id,), ignore_result=True)


def verification_execute(verification_id: int) -> Verification | None:
    """Run the queued verification ``verification_id`` (the Celery task's body): verify every chain, writing
    progress as it goes and the verdict at the end. Returns the row, or None when it is not queued any more (a
    repeated message, or settled as stale)."""
    started = timezone.now()
    claimed = Verification.objects.filter(pk=verification_id, state=VerificationState.QUEUED).update(
        state=VerificationState.RUNNING,
        started_at=started,
        heartbeat_at=started,
        events_total=AuditEvent.objects.count(),
    )
    if not claimed:
        return None
    verification = Verification.objects.get(pk=verification_id)
    _tell(verification, now=True)
    last = [time.monotonic()]

    def progress(chains: int, events: int) -> None:
        if time.monotonic() - last[0] < PROGRESS_EVERY:
            return
        last[0] = time.monotonic()
        Verification.objects.filter(pk=verification_id).update(
            chains_done=chains, events_done=events, heartbeat_at=timezone.now()
        )
        verification.chains_done, verification.events_done = chains, events
        _tell(verification, now=True)

    try:
        sealed, seal_problems, seals_note = _seals()
        report = verify_trail(sealed=sealed, progress=progress)
    except Exception as exc:
        logger.exception("audit verification %s could not finish", verification_id)
        Verification.objects.filter(pk=verification_id).update(
            state=VerificationState.ERROR,
            active=None,
            finished_at=timezone.now(),
            error=f"{type(exc).__name__}: {exc}"[:2000],
        )
        verification.refresh_from_db()
        _tell(verification, now=True)
        return verification
    # The seal file's own problems first (without it, or with lines forged, the check against it did not happen).
    found: list[dict[str, Any]] = [{"chain": "", "seq": None, "event_id": None, "problem": p} for p in seal_problems]
    found += [{"chain": b.chain, "seq": b.seq, "event_id": b.event_id, "problem": b.problem} for b in report.breaks]
    breaks = found[:BREAKS_KEPT]
    state = VerificationState.FAILED if found else VerificationState.PASSED
    Verification.objects.filter(pk=verification_id).update(
        state=state,
        active=None,
        finished_at=timezone.now(),
        heartbeat_at=timezone.now(),
        chains_done=report.chains,
        events_done=report.events,
        events_total=max(report.events, verification.events_total),
        legacy_events=report.legacy,
        breaks_count=len(found),
        breaks=breaks,
        seals=seals_note,
    )
    verification.refresh_from_db()
    if found:
        # An auditor must hear of a broken trail without opening the page: the log (alerting) and the bell.
        logger.error(
            "audit verification %s: %s broken chain(s); first: %s",
            verification_id,
            len(found),
            found[0],
        )
        _notify_broken(verification)
    _tell(verification, now=True)
    return verification


def _seals() -> tuple[Sealed, list[str], str]:
    """The heads sealed in BATON_AUDIT_SEAL_PATH, the seal file's problems, and a note of what was checked.

    Without seals, a tail deleted with its stored head moved back to the new last event verifies against the
    database alone (no key is needed for that); the file the worker writes is what tells, as ``baton_verify_audit
    --seals`` does. A file that cannot be read or holds no valid seal is a problem, as for the command: a pass
    would claim a check that did not happen. With no path (seals go to the log), the note says so."""
    path = settings.BATON_AUDIT_SEAL_PATH
    if not path:
        note = (
            "Not checked against seals: BATON_AUDIT_SEAL_PATH is not set, so seals go to the log; check a copy of "
            "them with manage.py baton_verify_audit --seals FILE."
        )
        return {}, [], note
    try:
        seals = read_seals(path)
    except OSError as exc:
        problem = f"the seal file {path} cannot be read ({exc.strerror or type(exc).__name__}): no seal was checked"
        return {}, [problem], f"Not checked against seals: {path} cannot be read."
    problems = list(seals.problems)
    if seals.lines == 0:
        problems.append(f"no valid seal in {path}: nothing to check the chains against")
    plural = "" if seals.lines == 1 else "s"
    return seals.sealed, problems, f"Chains checked against {seals.lines} seal line{plural} in {path}."


def _notify_broken(verification: Verification) -> None:
    from django.urls import reverse

    from approvals.models import Notification

    first = verification.first_break or {}
    where = f"{first.get('chain')} #{first.get('seq')}" if first.get("chain") else str(first.get("problem", ""))
    message = f"Audit verification found {verification.breaks_count} problem(s); first: {where}."
    ids = auditor_ids()
    Notification.objects.bulk_create(
        [
            Notification(user_id=uid, kind="audit_broken", message=message[:300], url=reverse("audit:chains"))
            for uid in ids
        ]
    )
    send_now(
        [f"user.{uid}" for uid in ids],
        {"type": "notification", "message": message, "level": "danger", "refresh": ["counts", "notifications"]},
    )
