"""Scheduled starts: schedules fired by the one sweep, once per fire time, every fire audited.

Why a start happens once per fire time, whatever runs at once: each fire locks its schedule row (SKIP LOCKED: a
second sweep leaves a schedule another is firing), reads the due time afresh under the lock, writes the
``ScheduleFire`` row whose unique (schedule, fire_time) a duplicate cannot pass, and starts the instance with the
idempotency key ``schedule:<id>:<fire time>``, all in one transaction (docs/architecture.md, "Scheduled starts").
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from automation.models import FireOutcome, MissedPolicy, Schedule, ScheduleFire, ScheduleSource
from orchestrator import audit, recurrence, registry
from orchestrator.audit import Actor
from orchestrator.audit_actions import AuditAction
from orchestrator.bidi import isolate
from orchestrator.inputs import bound_form
from orchestrator.records import record_errors, record_keys, records_set
from orchestrator.services.results import check_result, clean_text
from orchestrator.services.sweep import isolated

logger = logging.getLogger(__name__)

SCHEDULER = Actor.system("scheduler")
# The audit chain of schedule and webhook changes and of every fire (chains of instances hold their starts).
CHAIN = "automation"
# A fire time the sweep reaches within this long is on time; later, it was missed (Baton was down or stopped).
MISFIRE_GRACE = timedelta(seconds=60)
# A schedule whose fires could not start this many times in a row, the first of them at least PAUSE_AFTER before the
# latest (the sweep's clock), pauses itself, as a webhook subscription does (automation/webhooks.py, 10 attempts
# over 30 minutes; module constants there too). Both must hold: an every-minute schedule fails 5 times in 5 minutes
# while a deploy rolls out a workflow's new version process by process, which is no reason to stop it (the hour
# gives the deploy, and the owner told at the first failure, time to act), and a daily one fails 5 times in 5 days
# (an hour alone would pause it at its second failure, one day's accident). A fire for runs missed while Baton was
# down is one attempt, one failure, whatever it covers: downtime does not make a burst of them, and a run of
# failures on both sides of it spans the downtime, which nothing fixed either.
PAUSE_AFTER_FAILURES = 5
PAUSE_AFTER = timedelta(hours=1)
# The longest a notice's detail (an error) may be: a notice holds 300 characters, and one cut inside its isolate
# lost the rest of its words.
NOTICE_DETAIL = 150


class ScheduleInvalid(Exception):
    """A schedule cannot be saved as given; ``errors`` names the fields (``{field: [message]}``)."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


class ScheduleSentTwice(Exception):
    """The new-schedule form that made ``schedule`` was sent again; nothing new was made."""

    def __init__(self, schedule: Schedule) -> None:
        super().__init__(f"schedule {schedule.pk} was made by this form already")
        self.schedule = schedule


class ScheduleChanged(ScheduleInvalid):
    """Another admin changed the schedule after this form was shown; ``stamp`` is its edit stamp now (a form that
    carries it saves over their change, knowingly)."""

    def __init__(self, errors: dict[str, list[str]], stamp: str) -> None:
        super().__init__(errors)
        self.stamp = stamp


def recurrence_problem(schedule: Schedule) -> str:
    """Why the schedule's times can no longer be computed ("" when they can): its recurrence was checked when
    saved, but a tzdata upgrade can remove its zone."""
    return recurrence.check_recurrence(schedule.cron, schedule.every, schedule.timezone)


def upcoming(schedule: Schedule, count: int = 5, *, now: datetime | None = None) -> list[datetime]:
    """The next ``count`` fire times after ``now`` (aware, UTC), from the schedule's next due time on; [] when they
    cannot be computed (:func:`recurrence_problem` says why). A due time missed (:func:`missed_runs`) is not among
    them: the sweep starts one instance for all the missed runs, or none, then fires from the next time after it."""
    if recurrence_problem(schedule):
        return []
    now = now or timezone.now()
    due = schedule.next_fire_at
    start = min(now, due - timedelta(microseconds=1)) if due and now - due <= MISFIRE_GRACE else now
    times = recurrence.fire_times(schedule.cron, schedule.every, schedule.timezone, start, schedule.anchor)
    return [next(times) for _ in range(count)]


@dataclass(frozen=True)
class Missed:
    """Runs of a schedule missed while the sweep did not run: ``count`` of them (at least, when ``at_least``), the
    latest at ``latest`` (what a catch-up start is stamped with)."""

    count: int
    latest: datetime
    at_least: bool


def missed_runs(schedule: Schedule, *, now: datetime | None = None) -> Missed | None:
    """The runs of an enabled schedule that its next sweep will count as missed (due more than
    :data:`MISFIRE_GRACE` before ``now``), as :func:`fire` counts them; None when it is not late or its times cannot
    be computed."""
    now = now or timezone.now()
    due = schedule.next_fire_at
    if not schedule.enabled or due is None or now - due <= MISFIRE_GRACE or recurrence_problem(schedule):
        return None
    latest, count = recurrence.latest_fire(schedule.cron, schedule.every, schedule.timezone, due, now, schedule.anchor)
    return Missed(count=count + 1, latest=latest or due, at_least=count >= recurrence.COUNT_MAX)


def check(workflow_name: str, cron: str, interval_seconds: int | None, zone: str, data: Any) -> dict[str, list[str]]:
    """What is wrong with a schedule's fields, by field name; {} when it can be saved. The input is checked as a
    start checks it: storable JSON, no key where the workflow records what a human step or a wait did
    (``orchestrator.records``), then the start form."""
    errors: dict[str, list[str]] = {}
    try:
        workflow = registry.get(workflow_name)
    except registry.UnknownWorkflow:
        errors["workflow_name"] = [f"No workflow named {isolate(repr(workflow_name))} is registered."]
        workflow = None
    every = timedelta(seconds=interval_seconds) if interval_seconds else None
    problem = recurrence.check_recurrence(cron, every, zone)
    if problem:
        field = "timezone" if "time zone" in problem else ("cron" if cron else "interval_seconds")
        errors[field] = [problem[0].upper() + problem[1:] + "."]
    if not isinstance(data, dict):
        errors["input"] = ["The input is a JSON object."]
    elif problem := input_problem(data):
        errors["input"] = [problem]
    elif workflow is not None and (taken := records_set(record_keys(workflow), data)):
        # Each start would be refused (instances.InputSetsRecords): who approved is not the schedule's to say.
        errors["input"] = [
            f"{key}: {message}"
            for key, messages in record_errors(taken, field="", sender="a schedule's input").items()
            for message in messages
        ]
    elif workflow is not None and workflow.start_form is not None:
        form = bound_form(workflow.start_form, data)
        if not form.is_valid():
            errors["input"] = [f"{field}: {' '.join(str(e) for e in msgs)}" for field, msgs in form.errors.items()]
    return errors


def input_problem(data: dict[str, Any]) -> str:
    """What keeps ``data`` (a schedule's input) from being stored and started as it is, or "": the engine's rule
    for stored JSON (no NaN or Infinity, no NUL or lone surrogate, nesting within ``MAX_DEPTH``). PostgreSQL
    refused such an input as the schedule was saved: a 500 instead of the reason."""
    try:
        check_result(data)
    except (TypeError, ValueError) as exc:
        return "The input cannot be stored: " + str(exc).replace("result", "input", 1) + "."
    return ""


# What an admin changes on a schedule's form; the rest (enabled, fires, anchor, owner, source) is the engine's.
EDITED_FIELDS = Schedule.EDITED_FIELDS
# How a refusal names each edited field: as the form labels it.
FIELD_WORDS = {
    "name": "name",
    "workflow_name": "workflow",
    "cron": "cron expression",
    "interval_seconds": "interval",
    "timezone": "time zone",
    "missed": "missed runs",
    "input": "start input",
}


def schedule_save(
    schedule: Schedule,
    *,
    actor: Actor,
    request_meta: dict[str, Any] | None = None,
    now: datetime | None = None,
    seen: str = "",
) -> Schedule:
    """Create or change an admin's schedule (checked with :func:`check`; ScheduleInvalid if it fails) and audit
    it. A new schedule, or a change of its recurrence (cron, interval, zone), fires from the next time after now; a
    change that keeps the recurrence keeps the time it is due (runs due or missed are not dropped by an edit).

    A change writes only what the form edits (name, workflow, recurrence, zone, missed-run policy, input) and the
    owner the caller set (who changed it) under the row's lock: a pause, a resume or a fire that happened while the
    form was open stays as it is.

    ``seen`` is the schedule's :meth:`Schedule.edit_stamp` as the form was shown ("" for a new one, or not checked):
    when another admin changed what the form edits since, nothing is saved and ScheduleChanged says which fields now
    differ from what was typed. Saved as it stood, the form put back every field it showed from before their change
    (their new input, their new cron) without a word.

    A new schedule's ``form_token`` (its form's one-time token, up to 64 characters; "" for none) is stored with
    it: the same form sent again raises ScheduleSentTwice with the schedule it made and makes nothing. The second
    send came back refused for the schedule's own name, as if nothing had been made."""
    errors = check(schedule.workflow_name, schedule.cron, schedule.interval_seconds, schedule.timezone, schedule.input)
    if errors:
        raise ScheduleInvalid(errors)
    now = now or timezone.now()
    created = schedule.pk is None
    if created and schedule.form_token:
        made = Schedule.objects.filter(form_token=schedule.form_token).first()
        if made is not None:
            raise ScheduleSentTwice(made)
    with transaction.atomic():
        fields: list[str] | None = None
        current = None
        if created:
            schedule.anchor = now
        else:
            current = Schedule.objects.select_for_update().get(pk=schedule.pk)
            stamp = current.edit_stamp()
            # Stored already as typed (the same form sent twice, a double click on Save): nothing of anyone's is lost.
            if seen and seen != stamp and _differ(current, schedule):
                raise ScheduleChanged({"changed": [_changed_meanwhile(current, schedule)]}, stamp)
            schedule.enabled, schedule.retired = current.enabled, current.retired
            schedule.last_fire_at = current.last_fire_at
            # The owner too: who changes what a schedule starts becomes its starts' initiator (four-eyes).
            fields = [*EDITED_FIELDS, "owner", "next_fire_at", "updated_at"]
            if _starts_otherwise(current, schedule):
                fields += _clear_run(schedule)
            else:
                schedule.consecutive_failures, schedule.failing_since = (
                    current.consecutive_failures,
                    current.failing_since,
                )
        schedule.next_fire_at = _next_kept(schedule, current, now)
        try:
            with transaction.atomic():
                schedule.save(update_fields=fields)
        except IntegrityError:
            made = Schedule.objects.filter(form_token=schedule.form_token).first() if schedule.form_token else None
            if made is not None:  # the same form, sent at the same instant
                raise ScheduleSentTwice(made) from None
            raise ScheduleInvalid({"name": ["Another schedule has this name."]}) from None
        _audit(
            actor,
            "schedule.created" if created else "schedule.changed",
            schedule,
            payload=_describe(schedule),
            request_meta=request_meta,
        )
    return schedule


def schedule_toggle(
    schedule_id: int, *, enabled: bool, actor: Actor, request_meta: dict[str, Any] | None = None
) -> Schedule:
    """Pause (``enabled=False``) or resume a schedule; resuming fires from the next time after now whatever its
    missed-run policy (runs that fell while it was paused are not missed runs: nothing catches them up). Either
    clears its run of failed fires; resuming clears why the scheduler paused it too (audited with the resume, as
    ``was_paused``). Raises ScheduleInvalid when it cannot be resumed: retired, its times cannot be computed, or it
    cannot start what it schedules (:func:`_start_refused`: fix it first, on its form or in its workflow's code)."""
    now = timezone.now()
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update().get(pk=schedule_id)
        if schedule.enabled == enabled:
            return schedule
        if enabled and schedule.retired:
            raise ScheduleInvalid({"enabled": ["This schedule is no longer declared in code."]})
        problem = recurrence_problem(schedule) if enabled else ""
        if problem:
            raise ScheduleInvalid({"enabled": [f"It cannot be resumed: {problem}."]})
        if enabled and (refused := _start_refused(schedule)):
            raise ScheduleInvalid({"enabled": [f"It cannot be resumed: it would fail at every fire ({refused})."]})
        was_paused = schedule.paused_reason
        schedule.enabled = enabled
        schedule.next_fire_at = _next_after(schedule, now) if enabled else None
        schedule.paused_reason, schedule.paused_at = "", None if enabled else now
        fields = ["enabled", "next_fire_at", "paused_reason", "paused_at", "updated_at", *_clear_run(schedule)]
        schedule.save(update_fields=fields)
        _audit(
            actor,
            "schedule.resumed" if enabled else "schedule.paused",
            schedule,
            payload={"was_paused": was_paused} if enabled and was_paused else None,
            request_meta=request_meta,
        )
    return schedule


def _start_refused(schedule: Schedule) -> str:
    """Why ``schedule`` cannot start what it schedules as it stands ("" when the checks of a save pass): its
    workflow is not registered, or its start form refuses its input. Resumed so, a schedule the scheduler paused for
    that failed again at every fire and paused again an hour later; what the engine refuses only at the start (a
    transient refusal) is not known here, and may be resumed."""
    try:
        errors = check(
            schedule.workflow_name, schedule.cron, schedule.interval_seconds, schedule.timezone, schedule.input
        )
    except Exception as exc:  # a start form's own clean() that raises
        return clean_text(f"checking its input raised {type(exc).__name__}: {exc}", 300)
    said = "; ".join(f"{FIELD_WORDS.get(field, field)}: {' '.join(messages)}" for field, messages in errors.items())
    return clean_text(said, 300)


def _starts_otherwise(before: Schedule, after: Schedule) -> bool:
    """Whether ``after`` starts something else than ``before`` did (another workflow, another input): what its
    failed fires failed at changed, so its run of them starts again (a change of name, recurrence or policy fixes
    no start, and keeps it)."""
    return (before.workflow_name, before.input) != (after.workflow_name, after.input)


def _clear_run(schedule: Schedule) -> list[str]:
    """Clear ``schedule``'s run of failed fires (not saved); returns the fields to save."""
    schedule.consecutive_failures, schedule.failing_since = 0, None
    return ["consecutive_failures", "failing_since"]


def local_time(schedule: Schedule, when: datetime) -> str:
    """``when`` as the schedule's page writes a time, in the schedule's own zone with the zone's abbreviation
    ("2026-12-01 11:00 CET"), in UTC when that zone is gone (a tzdata upgrade removed it)."""
    try:
        zone: Any = ZoneInfo(schedule.timezone) if not recurrence_problem(schedule) else UTC
    except (ZoneInfoNotFoundError, ValueError):
        zone = UTC
    return f"{when.astimezone(zone):%Y-%m-%d %H:%M %Z}"


def _differ(stored: Schedule, typed: Schedule) -> list[str]:
    """The edited fields (as the form names them) whose stored value is not the one typed."""
    return [FIELD_WORDS[field] for field in EDITED_FIELDS if getattr(stored, field) != getattr(typed, field)]


def _changed_meanwhile(stored: Schedule, typed: Schedule) -> str:
    """The refusal of a form shown before another admin's change: which fields, as stored now, differ from what was
    typed (none: they changed it to just what was typed)."""
    differ = _differ(stored, typed)
    as_saved = f" As saved now, it differs from what you typed in: {', '.join(differ)}." if differ else ""
    return (
        f"Someone changed this schedule while you were editing it; nothing was saved.{as_saved} Your changes are "
        "below: look at the schedule's page, then save again to replace their change with yours."
    )


def _next_after(schedule: Schedule, when: datetime) -> datetime:
    return recurrence.next_fire(schedule.cron, schedule.every, schedule.timezone, when, schedule.anchor)


def _next_kept(schedule: Schedule, before: Schedule | None, now: datetime) -> datetime | None:
    """The next fire time of ``schedule`` as changed (None while disabled): the one it had (``before``, its row as
    stored) when its recurrence is unchanged, so that a change of input, name or policy while it is due, or has runs
    missed, does not drop them (the sweep fires them, with the new input); else the next time after ``now``."""
    if not schedule.enabled:
        return None
    same = before is not None and (before.cron, before.interval_seconds, before.timezone) == (
        schedule.cron,
        schedule.interval_seconds,
        schedule.timezone,
    )
    if same and before is not None and before.enabled and before.next_fire_at is not None:
        return before.next_fire_at
    return _next_after(schedule, now)


def _describe(schedule: Schedule) -> dict[str, Any]:
    return {
        "name": schedule.name,
        "workflow": schedule.workflow_name,
        "recurrence": schedule.recurrence,
        "timezone": schedule.timezone,
        "missed": schedule.missed,
        "input": schedule.input,
        "enabled": schedule.enabled,
    }


def _audit(
    actor: Actor,
    action: str,
    schedule: Schedule,
    *,
    payload: dict[str, Any] | None = None,
    reason: str = "",
    request_meta: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    audit.append_standalone(
        CHAIN,
        actor=actor,
        action=AuditAction(action),
        subject_type="schedule",
        subject_id=schedule.pk,
        reason=reason,
        payload={"schedule": schedule.name, **(payload or {})},
        request_meta=request_meta,
        now=now,
    )


# --- the sweep ----------------------------------------------------------------------------------------------


@dataclass
class Fired:
    started: int = 0
    skipped: int = 0
    failed: int = 0


def schedules_sweep(now: datetime, report: Any = None) -> dict[str, int]:
    """Fire every enabled schedule whose next time has come (one transaction each, isolated like all sweep
    work). Returns ``{"started": n, "skipped": m, "failed": k}``."""
    _sync_once()
    due = list(
        Schedule.objects.filter(enabled=True, retired=False, next_fire_at__lte=now)
        .order_by("next_fire_at")
        .values_list("pk", flat=True)[: settings.BATON_SWEEP_BATCH]
    )
    fired = Fired()
    for schedule_id in due:
        isolated(report, "scheduled start", "schedule", schedule_id, None, partial(fire, schedule_id, now, fired))
    return {"started": fired.started, "skipped": fired.skipped, "failed": fired.failed}


def fire(schedule_id: int, now: datetime, fired: Fired | None = None) -> int:
    """Fire one schedule if it is due at ``now``: start its workflow once for its due time (or, for runs missed
    while Baton was down, once for the latest of them with ``catch_up_once``, none with ``skip``), record the fire,
    audit it and move on to the next time after ``now``. Returns 1 if it fired, 0 if it was not due or another
    sweep holds it."""
    fired = fired if fired is not None else Fired()
    try:
        return _fire(schedule_id, now, fired)
    except _AlreadyFired as already:
        # This fire time was recorded already; this start was rolled back. The schedule still points at it (its
        # row is re-read under the lock, so no sweep's stale read gets here: a clock behind the worker's at a
        # resume or a sync set it): left there, every sweep would be refused again and it would never fire.
        _move_on(schedule_id, already.due, now)
        return 0


def _move_on(schedule_id: int, due: datetime, now: datetime) -> None:
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update(skip_locked=True).filter(pk=schedule_id, next_fire_at=due).first()
        if schedule is not None:
            logger.warning("schedule %s was due at %s, which had fired already; moved on", schedule_id, due)
            schedule.next_fire_at = _next_after(schedule, now)
            schedule.save(update_fields=["next_fire_at", "updated_at"])


def _fire(schedule_id: int, now: datetime, fired: Fired) -> int:
    from orchestrator.services.instances import instance_start

    with transaction.atomic():
        schedule = Schedule.objects.select_for_update(skip_locked=True).filter(pk=schedule_id).first()
        if schedule is None or not schedule.enabled or not schedule.next_fire_at or schedule.next_fire_at > now:
            return 0
        due = schedule.next_fire_at
        problem = recurrence_problem(schedule)
        if problem:
            _pause_broken(schedule, due, now, problem)
            fired.failed += 1
            return 1
        missed = missed_runs(schedule, now=now)
        covers, fire_time = (missed.count, missed.latest) if missed else (1, due)
        record = ScheduleFire(schedule=schedule, fire_time=fire_time, fired_at=now, covers=covers)
        if missed and schedule.missed == MissedPolicy.SKIP:
            record.outcome = FireOutcome.SKIPPED
        else:
            key = f"schedule:{schedule.pk}:{fire_time.isoformat()}"
            try:
                with transaction.atomic():
                    instance = instance_start(
                        schedule.workflow_name,
                        dict(schedule.input),
                        # Whoever set the schedule up chose what it starts: its initiator, so four-eyes keeps them
                        # off its tasks (started by nobody, a schedule was a way to approve one's own request).
                        initiator=schedule.owner,
                        idempotency_key=key,
                        request_meta={"schedule": schedule.name, "fire_time": fire_time.isoformat()},
                        actor=SCHEDULER,
                    )
                record.outcome, record.instance = FireOutcome.STARTED, instance
            except Exception as exc:  # the workflow is gone, its input no longer fits its form...
                record.outcome = FireOutcome.FAILED
                record.error = clean_text(f"{type(exc).__name__}: {exc}", 1000)
        try:
            with transaction.atomic():
                record.save(force_insert=True)
        except IntegrityError:
            # This fire time was recorded already (a sweep that read the schedule before its time moved on):
            # roll everything back, the start included.
            raise _AlreadyFired(due) from None
        fields = ["last_fire_at", "next_fire_at", "updated_at"]
        paused = False
        if record.outcome == FireOutcome.FAILED:
            paused = _count_failure(schedule, record.error, now)
            fields += ["consecutive_failures", "failing_since", "enabled", "paused_reason", "paused_at"]
        elif record.outcome == FireOutcome.STARTED and schedule.consecutive_failures:
            fields += _clear_run(schedule)
        schedule.last_fire_at = fire_time
        schedule.next_fire_at = None if paused else _next_after(schedule, now)
        schedule.save(update_fields=fields)
        _audit(
            SCHEDULER,
            f"schedule.{record.outcome}" if record.outcome != FireOutcome.STARTED else "schedule.fired",
            schedule,
            reason=record.error or ("missed while Baton was down" if missed else ""),
            payload={
                "fire_time": fire_time.isoformat(),
                "instance": record.instance_id,
                "covers": covers,
                "outcome": record.outcome,
            },
            now=now,
        )
        if paused:
            _audit(
                SCHEDULER,
                "schedule.paused",
                schedule,
                reason=schedule.paused_reason,
                payload={"failures": schedule.consecutive_failures, "failing_since": _iso(schedule.failing_since)},
                now=now,
            )
            logger.error("schedule %s paused: %s", schedule.pk, schedule.paused_reason)
            _tell_failing(
                schedule,
                f"Schedule {isolate(schedule.name)} paused after {schedule.consecutive_failures} failed fires in a "
                "row; the last",
                record.error,
                kind="schedule.paused",
            )
        setattr(fired, str(record.outcome), getattr(fired, str(record.outcome)) + 1)
        return 1


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def _count_failure(schedule: Schedule, error: str, now: datetime) -> bool:
    """One more fire of ``schedule`` (locked by the caller, not saved: the caller saves the run's and the pause's
    fields) that could not start, with ``error`` (cleaned); its first of a run is told to its people, once (a
    schedule that cannot start fails at each of its times, every minute perhaps; its page lists every failure).
    Past :data:`PAUSE_AFTER_FAILURES` over :data:`PAUSE_AFTER` it is paused, with why; returns whether it was.

    Counted under the row lock the fire holds, in the fire's transaction: a fire whose row a duplicate refused rolls
    back its count with it, and a second sweep skips the locked row or finds it no longer due, so two sweeps count
    a fire once and pause once."""
    if schedule.consecutive_failures == 0 or schedule.failing_since is None:
        schedule.consecutive_failures, schedule.failing_since = 0, now
        _tell_failing(schedule, f"Schedule {isolate(schedule.name)} could not start {schedule.workflow_name}", error)
    schedule.consecutive_failures += 1
    if schedule.consecutive_failures < PAUSE_AFTER_FAILURES or now - schedule.failing_since < PAUSE_AFTER:
        return False
    schedule.enabled, schedule.paused_at = False, now
    schedule.paused_reason = (
        f"Paused after {schedule.consecutive_failures} failed fires in a row (since "
        f"{local_time(schedule, schedule.failing_since)}): {isolate(error)}"
    )
    return True


def _pause_broken(schedule: Schedule, due: datetime, now: datetime, problem: str) -> None:
    """Record a failed fire saying ``problem`` and pause the schedule: its times cannot be computed, so it would
    raise in every sweep (due at the head of the queue, ahead of the others) with nothing on its page."""
    error = clean_text(f"Its times cannot be computed: {problem}", 1000)
    with transaction.atomic():
        created = ScheduleFire.objects.bulk_create(
            [ScheduleFire(schedule=schedule, fire_time=due, fired_at=now, outcome=FireOutcome.FAILED, error=error)],
            ignore_conflicts=True,
        )
    schedule.enabled, schedule.next_fire_at, schedule.paused_at, schedule.paused_reason = False, None, now, error
    fields = ["enabled", "next_fire_at", "paused_at", "paused_reason", "updated_at", *_clear_run(schedule)]
    schedule.save(update_fields=fields)
    payload = {"fire_time": due.isoformat(), "instance": None, "covers": 1, "outcome": FireOutcome.FAILED}
    if created:
        _audit(SCHEDULER, "schedule.failed", schedule, reason=error, payload=payload, now=now)
    _audit(SCHEDULER, "schedule.paused", schedule, reason=error, now=now)
    logger.error("schedule %s paused: %s", schedule.pk, error)
    _tell_failing(schedule, f"Schedule {isolate(schedule.name)} paused: its times cannot be computed")


def _tell_failing(schedule: Schedule, said: str, detail: str = "", *, kind: str = "schedule.failed") -> None:
    """Tell the schedule's owner (or, when they have left, everyone who may manage automation) that it could not
    start what it schedules, or paused because of it: ``said``, then ``: detail`` (an error; isolated, cut to
    :data:`NOTICE_DETAIL` characters so that the notice's 300 keep its end), with a link to its page. Without a
    notice a schedule whose workflow was removed, or whose input its start form now refuses, failed unseen at every
    fire."""
    from django.urls import reverse

    from automation.notices import tell_owner

    if detail:
        cut = detail if len(detail) <= NOTICE_DETAIL else detail[: NOTICE_DETAIL - 1] + "\u2026"
        said = f"{said}: {isolate(cut)}"
    url = reverse("automation:schedule_detail", args=[schedule.pk])
    tell_owner(schedule.owner_id, kind=kind, message=said, url=url)


class _AlreadyFired(Exception):
    def __init__(self, due: datetime) -> None:
        super().__init__(due.isoformat())
        self.due = due


# --- schedules declared in code ---------------------------------------------------------------------------

_synced = {"done": False}


def _sync_once() -> None:
    if not _synced["done"]:
        try:
            sync_declared()
        except Exception:
            # The sync is tried again by the next pass; the schedules in the table fire meanwhile.
            logger.exception("declared schedules not synced; schedules already in the table fire meanwhile")


@dataclass(frozen=True)
class LeftOut:
    """A schedule declared in code that is not running as declared.

    ``name`` is its name; ``declared_by`` the workflows declaring it ("nightly_report v2", more than one when the
    name is declared twice); ``kind`` one of :data:`LEFT_OUT_KINDS`; ``reason`` a sentence for the pages and the
    checks; ``schedule_id`` the table's schedule of that name (the admin's it clashes with, or the declared one as
    last synced), None when the table has none."""

    name: str
    declared_by: tuple[str, ...]
    kind: str
    reason: str
    schedule_id: int | None = None


# Why a declaration is left out: a name declared twice, a name an admin's schedule has, fields the checks of an
# admin's schedule refuse (an input the start form refuses), a declaration beside a version that is not the latest,
# or (not the declaration's fault) not synced yet.
LEFT_OUT_KINDS = ("twice", "clash", "refused", "old_version", "not_synced")


NOT_IN_TABLE = (
    "Not in the schedule table yet: declared schedules are synced on migrate and by each process's first sweep (when "
    "one has run, its log says why this one was not)."
)
NOT_SYNCED = (
    "Its declaration in code is not synced yet: this schedule runs as it was last declared (migrate syncs it; when "
    "it has run, its log says why it did not)."
)


def _declarations() -> dict[str, list[tuple[Any, Any]]]:
    """Every name declared beside the latest version of a registered workflow: ``{name: [(workflow, declared
    schedule), ...]}``, more than one pair when several workflows declare the name."""
    found: dict[str, list[tuple[Any, Any]]] = {}
    for workflow in registry.latest_all():
        for item in workflow.schedules:
            found.setdefault(item.name, []).append((workflow, item))
    return found


def _refusal(found: list[tuple[Any, Any]], admins: bool) -> tuple[str, str]:
    """``(kind, reason)`` of why the declarations ``found`` of one name cannot be applied, ``("", "")`` when they
    can: the rules an admin's schedule is saved under (one schedule per name, :func:`check`), applied to code."""
    if len(found) > 1:
        where = ", ".join(f"{workflow.name} v{workflow.version}" for workflow, _item in found)
        return "twice", (
            f"Not applied: declared {len(found)} times ({where}); only one schedule may have a name. Keep it in one."
        )
    if admins:
        return "clash", (
            "Not applied: an admin's schedule has this name. Rename one of them (the declared one in its workflow's "
            "code, or the admin's on its page)."
        )
    workflow, item = found[0]
    fields = _fields(workflow.name, item)
    errors = check(workflow.name, item.cron, fields["interval_seconds"], item.timezone, fields["input"])
    if errors:
        said = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())
        return "refused", f"Not applied: {said}"
    return "", ""


def _declared_on_older_versions(latest: dict[str, Any]) -> dict[str, list[Any]]:
    """Names declared beside a registered version of a workflow that is not its latest, and by no latest version
    (``latest``: :func:`_declarations`): ``{name: [workflow, ...]}``. Only the latest version's schedules are synced,
    so such a one never runs: added to the old version's file by mistake, or dropped by the new version."""
    found: dict[str, list[Any]] = {}
    for workflow in registry.all_definitions():
        newest = registry.get(workflow.name)
        if workflow.version == newest.version:
            continue
        for item in workflow.schedules:
            if item.name not in latest:
                found.setdefault(item.name, []).append(workflow)
    return found


def declared_twice() -> list[LeftOut]:
    """The names declared by more than one workflow, as :func:`declared_left_out` says them: what the code alone
    shows, without the database (``manage.py check`` without ``--database``)."""
    left = []
    for key, found in sorted(_declarations().items()):
        if len(found) > 1:
            by = tuple(f"{workflow.name} v{workflow.version}" for workflow, _item in found)
            left.append(LeftOut(key, by, "twice", _refusal(found, False)[1]))
    return left


def declared_left_out(name: str | None = None) -> list[LeftOut]:
    """The schedules declared in code that are not running as declared (only the one named ``name`` when given), by
    name: what the sync leaves out (:func:`_refusal`), one declared only beside a version that is not its workflow's
    latest and never synced (one that was, then dropped by a later version, is retired: the list says so), and a
    declaration not applied yet (migrate not run, or the sync failed on it: its log says why). Read by the schedules
    list, a schedule's page and the system check; one query, plus what the start forms' checks of the declared
    inputs read."""
    declared = _declarations()
    older = _declared_on_older_versions(declared)
    if name is not None:
        declared = {name: declared[name]} if name in declared else {}
        older = {name: older[name]} if name in older else {}
    if not (declared or older):
        return []
    rows = {row.name: row for row in Schedule.objects.filter(name__in=[*declared, *older])}
    left: list[LeftOut] = []
    for key, found in declared.items():
        row = rows.get(key)
        try:
            kind, reason = _refusal(found, row is not None and row.source == ScheduleSource.ADMIN)
        except Exception as exc:  # a start form's own clean() that raises: the sync leaves it out too
            kind, reason = "refused", clean_text(f"Not applied: checking its input raised {type(exc).__name__}: {exc}")
        if not kind:
            workflow, item = found[0]
            wanted = _fields(workflow.name, item)
            if row is None or row.retired:
                kind, reason = "not_synced", NOT_IN_TABLE
            elif any(getattr(row, field) != value for field, value in wanted.items()):
                kind, reason = "not_synced", NOT_SYNCED
        if kind:
            by = tuple(f"{workflow.name} v{workflow.version}" for workflow, _item in found)
            left.append(LeftOut(key, by, kind, reason, row.pk if row is not None else None))
    for key, workflows in older.items():
        if key in rows:
            continue
        newest = ", ".join(sorted({f"{w.name} v{registry.get(w.name).version}" for w in workflows}))
        reason = (
            f"Not applied: only the schedules declared beside a workflow's latest version ({newest}) are synced. "
            "Declare it there (or, if that version dropped it on purpose, remove it from the older one)."
        )
        by = tuple(f"{workflow.name} v{workflow.version}" for workflow in workflows)
        left.append(LeftOut(key, by, "old_version", reason))
    return sorted(left, key=lambda item: item.name)


def sync_declared(now: datetime | None = None) -> dict[str, int]:
    """Make the schedule table hold the schedules declared beside the registered workflows (``Workflow(schedules=
    ...)``, latest version of each): new ones are created, changed ones updated (their next time recomputed), and
    ones no longer declared retired (never fired, history kept). An admin's pause of a declared schedule stands,
    across a retirement too: retiring leaves ``enabled`` as the admin set it, so one declared again comes back
    paused if it was paused (a sync in a process missing the workflow's package retires it, the next one brings it
    back). Rows retired before this rule were disabled by the retirement: they come back paused, for an admin to
    resume.

    A declaration that cannot be applied (:func:`_refusal`: a name declared twice, a name an admin's schedule has,
    an input its start form refuses) is left out, logged, and said on the schedules pages (:func:`declared_left_out`)
    and by ``manage.py check``: the table's schedule of that name stays as it is, neither changed nor retired, and
    the other declarations are synced. Returns counts. Called on ``migrate`` and by the first sweep of each
    process."""
    now = now or timezone.now()
    declared = _declarations()
    counts = {"created": 0, "changed": 0, "retired": 0, "failed": 0, "left_out": 0}
    with transaction.atomic():
        existing = {s.name: s for s in Schedule.objects.select_for_update().filter(source=ScheduleSource.CODE)}
        admins = set(
            Schedule.objects.filter(source=ScheduleSource.ADMIN, name__in=list(declared)).values_list("name", flat=True)
        )
        for name, found in declared.items():
            try:
                # One declared schedule that cannot be applied, or that the table refuses (an input changed after
                # its check), is left out, logged; it must not keep the others, or the fires after the sync, from
                # happening.
                with transaction.atomic():
                    kind, reason = _refusal(found, name in admins)
                    if kind:
                        logger.warning("declared schedule %r left out: %s", name, reason)
                        counts["left_out"] += 1
                        continue
                    workflow, item = found[0]
                    outcome = _sync_one(name, workflow.name, item, existing.get(name), now)
            except Exception:
                logger.exception("declared schedule %r could not be synced; left out", name)
                counts["failed"] += 1
                continue
            if outcome:
                counts[outcome] += 1
        for name, schedule in existing.items():
            if name not in declared and not schedule.retired:
                schedule.retired, schedule.next_fire_at = True, None
                schedule.save(update_fields=["retired", "next_fire_at", "updated_at"])
                _audit(SCHEDULER, "schedule.retired", schedule, reason="no longer declared in code", now=now)
                counts["retired"] += 1
    _synced["done"] = True
    return counts


def _fields(workflow_name: str, item: Any) -> dict[str, Any]:
    """The table's fields of one declared schedule (``item``, an ``orchestrator.dsl.Schedule``), its input as the
    table gives it back (a tuple is a list in JSON: compared as declared, it differed at every sync, which saved and
    audited it as changed each time)."""
    data = dict(item.input)
    with contextlib.suppress(TypeError, ValueError):  # :func:`check` says why it cannot be stored
        data = json.loads(json.dumps(data, ensure_ascii=False, allow_nan=False))
    return {
        "workflow_name": workflow_name,
        "input": data,
        "cron": item.cron,
        "interval_seconds": int(item.every.total_seconds()) if item.every else None,
        "timezone": item.timezone,
        "missed": item.missed,
    }


def _sync_one(name: str, workflow_name: str, item: Any, schedule: Schedule | None, now: datetime) -> str:
    """Create or update the table's row of one declared schedule; returns "created", "changed" or ""."""
    fields = _fields(workflow_name, item)
    if schedule is None:
        if Schedule.objects.filter(name=name).exists():
            logger.error("schedule %r is declared in code but an admin's schedule has that name", name)
            return ""
        schedule = Schedule(name=name, source=ScheduleSource.CODE, anchor=now, **fields)
        schedule.next_fire_at = _next_after(schedule, now)
        schedule.save()
        _audit(SCHEDULER, "schedule.created", schedule, payload=_describe(schedule), now=now)
        return "created"
    changed = {k: v for k, v in fields.items() if getattr(schedule, k) != v}
    if not (changed or schedule.retired):
        return ""
    # The row as stored: a changed input keeps the runs due or missed (the sync runs on migrate, while the beat is
    # down), a changed recurrence or a schedule declared again fires from now.
    before = None if schedule.retired else copy.copy(schedule)
    was = copy.copy(schedule)
    for key, value in fields.items():
        setattr(schedule, key, value)
    if _starts_otherwise(was, schedule):
        _clear_run(schedule)
    # enabled stays as it was: an admin's pause outlives a retirement, and so does the scheduler's (with why, until
    # an admin resumes it): a deploy that changes the declaration may not have fixed what failed.
    schedule.retired = False
    schedule.next_fire_at = _next_kept(schedule, before, now)
    schedule.save()
    _audit(SCHEDULER, "schedule.changed", schedule, payload=_describe(schedule), now=now)
    return "changed"
