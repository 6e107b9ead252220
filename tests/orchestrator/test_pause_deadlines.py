"""Deadlines across a pause: nothing fires while an instance is paused, nothing is lost or fires twice after.

The rule (docs/architecture.md, "Deadlines and pauses"): durations (a timer's wait, a task's SLA, each escalation
rung) count unpaused time only, so resuming moves them on by the time spent paused; wall-clock times (a timer
``until`` a date, a retry's back-off, a message to re-send) keep their time and fire on resume if it fell inside
the pause.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.db.models import F
from django.utils import timezone

from approvals.models import ACTIONABLE_TASK_STATES, HumanTask, TaskState
from orchestrator.audit import Actor
from orchestrator.dsl import Escalate, Human, Parallel, Reassign, Remind, Retry, Task, Timer, Workflow
from orchestrator.models import (
    BUSY_STEP_STATES,
    AuditEvent,
    InstanceState,
    StepKind,
    StepRun,
    StepState,
    WorkflowInstance,
)
from orchestrator.services.instances import NotAllowed, instance_pause, instance_resume, instance_retry, instance_start
from orchestrator.services.locks import SWEEPER
from orchestrator.services.steps import Outcome, step_claim, step_record
from orchestrator.services.sweep import sweep
from tests.factories import UserFactory
from tests.orchestrator.flaky_steps import flaky, noop, outage

pytestmark = pytest.mark.django_db

OPERATOR = Actor("user:operator")


def pause(instance) -> datetime:
    """Pause ``instance`` now; the time the pause began, as stored."""
    instance_pause(instance.pk, actor=OPERATOR, reason="audit in progress")
    instance.refresh_from_db()
    assert instance.state == InstanceState.PAUSED
    return instance.paused_at


def events(instance, action: str) -> int:
    return AuditEvent.objects.filter(instance=instance, action=action).count()


def assert_not_stranded(instance) -> None:
    """A waiting instance has something open that someone (a person, a timer, a worker) will act on."""
    instance.refresh_from_db()
    if instance.state != InstanceState.WAITING:
        return
    tasks = HumanTask.objects.filter(instance=instance, state__in=ACTIONABLE_TASK_STATES).exists()
    steps = instance.steps.filter(state__in=BUSY_STEP_STATES).exists()
    assert tasks or steps, f"instance {instance.pk} waits with nothing open"


# --- timers -----------------------------------------------------------------------------------------------


@pytest.fixture
def wait_flow(register_workflow) -> Workflow:
    return register_workflow(
        Workflow("pause_wait_demo", 1, [Timer("cool_off", wait=timedelta(hours=1)), Task("after", noop)])
    )


def test_a_timer_wait_counts_unpaused_time_only(wait_flow, run_steps, broker, django_capture_on_commit_callbacks):
    """A one-hour wait paused for three hours does not fire during the pause and fires one hour of unpaused time
    after it began, once."""
    # given
    instance = instance_start("pause_wait_demo", {})
    timer = instance.steps.get()
    due = timer.due_at
    paused_at = pause(instance)

    # when
    with django_capture_on_commit_callbacks(execute=True):
        during = sweep(now=due + timedelta(minutes=30))
        resumed_at = paused_at + timedelta(hours=3)
        instance_resume(instance.pk, actor=OPERATOR, reason="audit done", now=resumed_at)
        timer.refresh_from_db()
        early = sweep(now=timer.due_at - timedelta(seconds=1))
        on_time = sweep(now=timer.due_at)
        again = sweep(now=timer.due_at + timedelta(seconds=1))

    # then
    assert during.dispatched == 0
    assert timer.due_at == due + (resumed_at - paused_at)
    assert (early.dispatched, on_time.dispatched, again.dispatched) == (0, 1, 0)
    assert broker.step_ids() == [timer.pk]
    run_steps(instance, advance=True)
    timer.refresh_from_db()
    instance.refresh_from_db()
    assert (timer.state, timer.attempt) == (StepState.SUCCEEDED, 1)
    assert instance.state == InstanceState.COMPLETED


def test_a_timer_until_a_date_that_passed_during_the_pause_fires_once_on_resume(
    register_workflow, run_steps, broker, django_capture_on_commit_callbacks
):
    """A date is a date: the timer keeps it, does not fire while paused, and fires on resume exactly once."""
    # given
    register_workflow(
        Workflow(
            "pause_until_demo",
            1,
            [Timer("go_live", until=lambda data: datetime.fromisoformat(data["at"])), Task("after", noop)],
        )
    )
    at = timezone.now() + timedelta(hours=1)
    instance = instance_start("pause_until_demo", {"at": at.isoformat()})
    timer = instance.steps.get()
    pause(instance)

    # when
    with django_capture_on_commit_callbacks(execute=True):
        during = sweep(now=at + timedelta(minutes=1))
        instance_resume(instance.pk, actor=OPERATOR, reason="audit done", now=at + timedelta(hours=2))
        after = sweep(now=at + timedelta(hours=2, seconds=1))

    # then
    timer.refresh_from_db()
    assert during.dispatched == 0
    assert timer.due_at == at
    assert after.dispatched == 0, "re-sent right after the resume had sent it"
    assert broker.step_ids() == [timer.pk]
    assert_not_stranded(instance)
    run_steps(instance, advance=True)
    timer.refresh_from_db()
    instance.refresh_from_db()
    assert (timer.state, timer.attempt, instance.state) == (StepState.SUCCEEDED, 1, InstanceState.COMPLETED)


# --- human tasks: SLA and the escalation ladder -----------------------------------------------------------


@pytest.fixture
def ladder_flow(register_workflow, db) -> Workflow:
    # The reassign rung's group exists with someone who may act: a rung never creates one, and one nobody in which
    # may act falls back to managers and operators (tests/approvals/test_ladder_groups.py).
    UserFactory(username="reviewer", groups=[Group.objects.create(name="reviewers")])
    return register_workflow(
        Workflow(
            "pause_ladder_demo",
            1,
            [
                Human(
                    "approve",
                    candidate_groups=["approvers"],
                    sla=timedelta(hours=4),
                    escalation=[
                        Remind(timedelta(hours=1)),
                        Reassign(timedelta(hours=2), group="reviewers"),
                        Escalate(timedelta(hours=3), group="managers"),
                    ],
                ),
                Task("after", noop),
            ],
        )
    )


def test_an_sla_and_each_escalation_rung_wait_out_a_pause_and_fire_once_after(users, ladder_flow):
    """Paused for six hours, a task's SLA and its remind, reassign and escalate rungs fire nothing; after the
    resume each rung fires once, at its time plus the pause."""
    # given
    instance = instance_start("pause_ladder_demo", {})
    task = HumanTask.objects.get(instance=instance)
    sla, first_rung = task.due_at, task.next_escalation_at
    paused_at = pause(instance)

    # when: the sweep runs through the whole ladder while paused
    during = [sweep(now=first_rung + timedelta(hours=h)).tasks for h in (0, 1, 2, 3)]
    task.refresh_from_db()
    while_paused = (task.state, task.escalation_level, task.due_at, task.next_escalation_at)
    resumed_at = paused_at + timedelta(hours=6)
    instance_resume(instance.pk, actor=OPERATOR, reason="audit done", now=resumed_at)
    task.refresh_from_db()
    held = resumed_at - paused_at
    shifted = (task.due_at, task.next_escalation_at)
    fired = []
    for rung in (first_rung + held, first_rung + held + timedelta(hours=1), first_rung + held + timedelta(hours=2)):
        fired += [sweep(now=rung - timedelta(seconds=1)).tasks["escalations"]]
        fired += [sweep(now=rung).tasks["escalations"], sweep(now=rung).tasks["escalations"]]

    # then
    assert during == [{"escalations": 0}] * 4
    assert while_paused == (TaskState.OPEN, 0, sla, first_rung)
    assert shifted == (sla + held, first_rung + held)
    assert fired == [0, 1, 0] * 3
    assert [events(instance, a) for a in ("task.reminded", "task.reassigned", "task.escalated")] == [1, 1, 1]
    task.refresh_from_db()
    assert (task.state, task.escalation_level) == (TaskState.ESCALATED, 3)


def test_a_deadline_that_fails_the_instance_waits_for_the_resume(users, register_workflow):
    """An approval deadline that fails the instance does not expire the task while paused (which left a resumed
    instance waiting with nothing open); after the resume it fails the instance at its shifted time, once."""
    # given
    register_workflow(
        Workflow(
            "pause_expiry_demo",
            1,
            [
                Human(
                    "approve",
                    candidate_groups=["approvers"],
                    escalation=[Escalate(timedelta(hours=1), fail_instance=True)],
                ),
                Task("after", noop),
            ],
        )
    )
    instance = instance_start("pause_expiry_demo", {})
    task = HumanTask.objects.get(instance=instance)
    deadline = task.next_escalation_at
    paused_at = pause(instance)

    # when
    sweep(now=deadline + timedelta(hours=1))
    task.refresh_from_db()
    while_paused = task.state
    resumed_at = paused_at + timedelta(hours=2)
    instance_resume(instance.pk, actor=OPERATOR, reason="audit done", now=resumed_at)
    assert_not_stranded(instance)
    after_resume = instance.state
    shifted = deadline + (resumed_at - paused_at)
    early = sweep(now=shifted - timedelta(seconds=1)).tasks
    on_time = sweep(now=shifted).tasks
    again = sweep(now=shifted + timedelta(minutes=1)).tasks

    # then
    assert while_paused == TaskState.OPEN
    assert after_resume == InstanceState.WAITING
    assert [early, on_time, again] == [{"escalations": n} for n in (0, 1, 0)]
    task.refresh_from_db()
    instance.refresh_from_db()
    assert (task.state, instance.state) == (TaskState.EXPIRED, InstanceState.FAILED)
    assert events(instance, "task.expired") == 1


def test_a_pause_that_ends_by_the_sweep_moves_the_ladder_on(users, ladder_flow):
    """A pause with an end time, lifted by the sweep: the reminder due during it fires once, a pause's length
    after its time."""
    # given
    instance = instance_start("pause_ladder_demo", {})
    task = HumanTask.objects.get(instance=instance)
    first_rung = task.next_escalation_at
    instance_pause(instance.pk, actor=OPERATOR, reason="hold", until=first_rung + timedelta(hours=1))
    instance.refresh_from_db()
    paused_at = instance.paused_at
    lifted_at = first_rung + timedelta(hours=1, seconds=1)

    # when
    during = sweep(now=first_rung + timedelta(minutes=30))
    lifted = sweep(now=lifted_at)
    shifted = first_rung + (lifted_at - paused_at)
    early = sweep(now=shifted - timedelta(seconds=1))
    on_time = sweep(now=shifted)

    # then
    assert (during.resumed, during.tasks) == (0, {"escalations": 0})
    assert (lifted.resumed, lifted.tasks) == (1, {"escalations": 0})
    assert (early.tasks, on_time.tasks) == ({"escalations": 0}, {"escalations": 1})
    assert events(instance, "task.reminded") == 1
    assert_not_stranded(instance)


# --- automated steps: retries, messages, work under way ---------------------------------------------------


@pytest.fixture
def flaky_flow(register_workflow) -> Workflow:
    outage["on"] = True
    yield register_workflow(
        Workflow(
            "pause_retry_demo",
            1,
            [Task("sync", flaky, retry=Retry(max_attempts=3, backoff=60, jitter=0)), Task("after", noop)],
        )
    )
    outage["on"] = False


def test_a_retry_that_fell_due_during_a_pause_is_sent_once_on_resume(
    flaky_flow, run_steps, broker, django_capture_on_commit_callbacks
):
    """A back-off that ends inside the pause is not sent while paused, is sent by the resume, and not again by
    the next sweep."""
    # given
    instance = instance_start("pause_retry_demo", {})
    run_steps(instance, limit=1)
    step = instance.steps.get(name="sync")
    assert step.state == StepState.FAILED
    pause(instance)
    broker.clear()

    # when
    with django_capture_on_commit_callbacks(execute=True):
        during = sweep(now=step.due_at + timedelta(seconds=1))
        sent_while_paused = broker.step_ids()
        instance_resume(instance.pk, actor=OPERATOR, reason="upstream is back", now=step.due_at + timedelta(seconds=10))
        after = sweep(now=step.due_at + timedelta(seconds=11))

    # then
    assert (during.dispatched, sent_while_paused) == (0, [])
    assert after.dispatched == 0
    assert broker.step_ids() == [step.pk]
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING
    outage["on"] = False
    run_steps(instance, advance=True)
    step.refresh_from_db()
    instance.refresh_from_db()
    assert (step.state, step.attempt, instance.state) == (StepState.SUCCEEDED, 2, InstanceState.COMPLETED)


def test_a_step_running_across_a_pause_keeps_the_resumed_instance_running(register_workflow):
    """Paused while its step runs and resumed before it ends: the instance is running (a worker is on it), not
    waiting; the step's result then moves it on."""
    # given
    register_workflow(Workflow("pause_busy_demo", 1, [Task("work", noop), Task("after", noop)]))
    instance = instance_start("pause_busy_demo", {})
    step = instance.steps.get()
    claim = step_claim(step.pk)
    pause(instance)

    # when
    instance_resume(instance.pk, actor=OPERATOR, reason="audit done")

    # then
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING
    step_record(step.pk, claim.attempt, Outcome(ok=True))
    assert instance.steps.get(name="after").state == StepState.SCHEDULED


def test_a_task_opened_during_a_pause_gets_its_whole_sla_after_the_resume(users, register_workflow):
    """A step that finishes while paused opens the next approval; its SLA and first rung start at the resume."""
    # given
    register_workflow(
        Workflow(
            "pause_opened_demo",
            1,
            [
                Task("prepare", noop),
                Human(
                    "approve",
                    candidate_groups=["approvers"],
                    sla=timedelta(hours=4),
                    escalation=[Remind(timedelta(hours=1))],
                ),
            ],
        )
    )
    instance = instance_start("pause_opened_demo", {})
    step = instance.steps.get()
    claim = step_claim(step.pk)
    pause(instance)
    step_record(step.pk, claim.attempt, Outcome(ok=True))
    task = HumanTask.objects.get(instance=instance)
    opened_while_paused = sweep(now=task.next_escalation_at + timedelta(hours=5)).tasks

    # when
    resumed_at = timezone.now() + timedelta(hours=8)
    instance_resume(instance.pk, actor=OPERATOR, reason="audit done", now=resumed_at)

    # then
    task.refresh_from_db()
    assert opened_while_paused == {"escalations": 0}
    assert abs(task.due_at - (resumed_at + timedelta(hours=4))) < timedelta(seconds=1)
    assert abs(task.next_escalation_at - (resumed_at + timedelta(hours=1))) < timedelta(seconds=1)
    assert_not_stranded(instance)
    assert instance.steps.get(name="approve").kind == StepKind.HUMAN


def test_steps_of_other_instances_are_not_moved_by_a_resume(wait_flow):
    """The shift touches the resumed instance's deadlines only."""
    # given
    other = instance_start("pause_wait_demo", {})
    other_due = other.steps.get().due_at
    instance = instance_start("pause_wait_demo", {})
    paused_at = pause(instance)

    # when
    instance_resume(instance.pk, actor=OPERATOR, reason="done", now=paused_at + timedelta(hours=1))

    # then
    assert StepRun.objects.get(instance=other).due_at == other_due


# --- edges: the pause instant, a stale sweep clock, a pause that ends before it began ---------------------


def test_a_rung_already_due_when_the_pause_began_fires_on_resume_and_the_next_rung_keeps_the_pause(users, ladder_flow):
    """The first rung fell due just before the pause and the sweep had not fired it yet: it fires on resume (it
    was due), and the second rung still counts unpaused time, one hour later, not at once."""
    # given: a task opened an hour ago whose first rung (1 h) is due now, not yet fired by the sweep
    instance = instance_start("pause_ladder_demo", {})
    HumanTask.objects.filter(instance=instance).update(
        created_at=F("created_at") - timedelta(hours=1),
        due_at=F("due_at") - timedelta(hours=1),
        next_escalation_at=F("next_escalation_at") - timedelta(hours=1),
    )
    task = HumanTask.objects.get(instance=instance)
    paused_at = pause(instance)
    assert task.next_escalation_at <= paused_at

    # when: paused for ten hours, then resumed; the sweep runs at the resume and just before the second rung
    resumed_at = paused_at + timedelta(hours=10)
    instance_resume(instance.pk, actor=OPERATOR, reason="audit done", now=resumed_at)
    at_resume = sweep(now=resumed_at).tasks
    second_rung = task.created_at + timedelta(hours=2) + (resumed_at - paused_at)
    early = sweep(now=second_rung - timedelta(minutes=1)).tasks
    on_time = sweep(now=second_rung + timedelta(seconds=1)).tasks

    # then
    assert at_resume == {"escalations": 1}
    assert early == {"escalations": 0}, "the second rung fired without counting the ten hours paused"
    assert on_time == {"escalations": 1}
    assert [events(instance, a) for a in ("task.reminded", "task.reassigned")] == [1, 1]


def test_a_sweep_whose_clock_was_read_before_the_pause_never_moves_deadlines_back(wait_flow):
    """The sweep read its clock, then an operator paused with an end that is already past on the sweep's clock (the
    web host's clock runs ahead of the worker's): the sweep's resume happens at a time before the pause began.
    Deadlines may only move on, never back."""
    # given
    instance = instance_start("pause_wait_demo", {})
    timer = instance.steps.get()
    due = timer.due_at
    sweep_clock = timezone.now()
    instance_pause(instance.pk, actor=OPERATOR, reason="hold", until=timezone.now() + timedelta(minutes=1))
    # The pause's end as the skewed host stored it: a pause service refuses an end in the past on its own clock.
    WorkflowInstance.objects.filter(pk=instance.pk).update(paused_until=sweep_clock - timedelta(seconds=1))

    # when
    instance_resume(instance.pk, actor=SWEEPER, reason="pause ended", only_if_due=True, now=sweep_clock)

    # then
    timer.refresh_from_db()
    instance.refresh_from_db()
    assert instance.state == InstanceState.WAITING
    assert timer.due_at >= due, f"moved back by {due - timer.due_at}"
    paused, resumed = AuditEvent.objects.filter(instance=instance, action__in=["instance.paused", "instance.resumed"])
    assert resumed.occurred_at >= paused.occurred_at


@pytest.mark.django_db(transaction=True)
def test_the_sweep_and_a_person_resuming_at_once_resume_once_and_shift_once(register_workflow):
    """A pause whose end has passed is lifted by the sweep while an operator presses Resume: one of them resumes,
    the other is told or does nothing; the timer moves on once, and the chain has one resume."""
    # given
    register_workflow(Workflow("pause_race_demo", 1, [Timer("cool_off", wait=timedelta(hours=1)), Task("after", noop)]))
    instance = instance_start("pause_race_demo", {})
    due = instance.steps.get().due_at
    instance_pause(instance.pk, actor=OPERATOR, reason="hold", until=timezone.now() + timedelta(milliseconds=50))
    instance.refresh_from_db()
    paused_at = instance.paused_at
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def by_sweep() -> None:
        try:
            start.wait()
            outcomes.append(("sweep", sweep(now=paused_at + timedelta(seconds=30)).resumed))
        except BaseException as exc:  # pragma: no cover - reported below
            outcomes.append(exc)
        finally:
            connection.close()

    def by_person() -> None:
        try:
            start.wait()
            instance_resume(instance.pk, actor=OPERATOR, reason="done", now=paused_at + timedelta(seconds=30))
            outcomes.append(("person", 1))
        except NotAllowed:
            outcomes.append(("person", 0))
        except BaseException as exc:  # pragma: no cover - reported below
            outcomes.append(exc)
        finally:
            connection.close()

    # when
    threads = [threading.Thread(target=by_sweep), threading.Thread(target=by_person)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # then
    assert all(isinstance(o, tuple) for o in outcomes), outcomes
    assert sum(o[1] for o in outcomes) == 1, outcomes
    assert events(instance, "instance.resumed") == 1
    assert instance.steps.get(name="cool_off").due_at == due + timedelta(seconds=30)
    instance.refresh_from_db()
    assert (instance.state, instance.paused_at, instance.paused_until) == (InstanceState.WAITING, None, None)


def test_a_ladder_across_two_pauses_counts_both(users, ladder_flow):
    """Paused two hours before the first rung, resumed, the reminder fires; paused three hours more before the
    second rung: the reassign fires after 2 h of unpaused time plus both pauses, the escalate one hour later."""
    # given
    instance = instance_start("pause_ladder_demo", {})
    task = HumanTask.objects.get(instance=instance)
    opened = task.next_escalation_at - timedelta(hours=1)
    first_pause = pause(instance)
    first_resume = first_pause + timedelta(hours=2)
    instance_resume(instance.pk, actor=OPERATOR, reason="one", now=first_resume)
    reminded = sweep(now=opened + timedelta(hours=3)).tasks

    # when: the second pause began at (opened + 3.5 h), as stored by a pause then (the clock cannot be set back),
    # held for three hours
    second_pause = opened + timedelta(hours=3, minutes=30)
    WorkflowInstance.objects.filter(pk=instance.pk).update(state=InstanceState.PAUSED, paused_at=second_pause)
    instance_resume(instance.pk, actor=OPERATOR, reason="two", now=second_pause + timedelta(hours=3))
    held = (first_resume - first_pause) + timedelta(hours=3)
    times = [opened + timedelta(hours=h) + held for h in (2, 3)]
    fired = []
    for at in times:
        fired += [sweep(now=at - timedelta(seconds=1)).tasks["escalations"]]
        fired += [sweep(now=at).tasks["escalations"]]

    # then
    assert reminded == {"escalations": 1}
    assert fired == [0, 1, 0, 1]
    task.refresh_from_db()
    assert abs(task.due_at - (opened + timedelta(hours=4) + held)) < timedelta(seconds=1)
    assert [events(instance, a) for a in ("task.reminded", "task.reassigned", "task.escalated")] == [1, 1, 1]


def test_a_step_failing_during_a_pause_ends_it_and_the_open_task_keeps_the_time_it_was_held(users, register_workflow):
    """A step already running when the instance was paused fails for good two hours into the pause: the instance
    fails, which ends the pause (a retry runs it, it is not paused again), so the approval open beside it has its
    SLA and first rung moved on by those two hours, as a resume would have moved them, and not cut short."""
    # given: an approval beside a step a worker holds, paused (the clock set back as if two hours ago)
    register_workflow(
        Workflow(
            "pause_fail_demo",
            1,
            [
                Parallel(
                    "both",
                    branches=[
                        [Task("sync", noop, retry=Retry(max_attempts=1))],
                        [
                            Human(
                                "approve",
                                candidate_groups=["approvers"],
                                sla=timedelta(hours=4),
                                escalation=[Remind(timedelta(hours=1))],
                            )
                        ],
                    ],
                ),
                Task("after", noop),
            ],
        )
    )
    instance = instance_start("pause_fail_demo", {})
    step = instance.steps.get(name="sync")
    claim = step_claim(step.pk)
    pause(instance)
    two_hours = timedelta(hours=2)
    WorkflowInstance.objects.filter(pk=instance.pk).update(paused_at=F("paused_at") - two_hours)
    HumanTask.objects.filter(instance=instance).update(
        created_at=F("created_at") - two_hours,
        due_at=F("due_at") - two_hours,
        next_escalation_at=F("next_escalation_at") - two_hours,
    )
    task = HumanTask.objects.get(instance=instance)
    sla, rung = task.due_at, task.next_escalation_at
    instance.refresh_from_db()
    paused_at = instance.paused_at

    # when: the worker reports a permanent failure
    before = timezone.now()
    step_record(step.pk, claim.attempt, Outcome(ok=False, error_type="ValueError", error="bad row", permanent=True))
    after = timezone.now()

    # then: failed, no longer paused, and the task's clock moved on by the time it was held
    instance.refresh_from_db()
    task.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    assert (instance.paused_at, instance.paused_until) == (None, None)
    assert task.state == TaskState.OPEN
    assert before - paused_at <= task.due_at - sla <= after - paused_at
    assert before - paused_at <= task.next_escalation_at - rung <= after - paused_at
    # and nothing fires at the times the pause had held: the first rung is an hour off, not already due
    assert sweep(now=after).tasks == {"escalations": 0}
    # and a retry runs the instance again, unpaused, the task's deadlines as they are
    instance_retry(instance.pk, actor=OPERATOR, reason="upstream fixed")
    instance.refresh_from_db()
    assert instance.state in (InstanceState.RUNNING, InstanceState.WAITING)
    assert HumanTask.objects.get(pk=task.pk).due_at == task.due_at
