"""The periodic sweep: lost messages, expired leases, pauses that end, and timers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from orchestrator.audit import Actor
from orchestrator.dsl import StepContext, Task, Timer, Workflow
from orchestrator.models import InstanceState, StepKind, StepRun, StepState
from orchestrator.services.instances import instance_pause, instance_start
from orchestrator.services.steps import step_claim, step_execute
from orchestrator.services.sweep import sweep
from tests.factories import OrderInputFactory

pytestmark = pytest.mark.django_db

OPERATOR = Actor("user:operator")


def lose_message(step: StepRun, seconds_ago: float) -> None:
    """Pretend the step's message went out ``seconds_ago`` and never arrived (setup only, not a transition)."""
    StepRun.objects.filter(pk=step.pk).update(dispatched_at=timezone.now() - timedelta(seconds=seconds_ago))


def test_sweep_redispatches_a_lost_message_but_not_a_fresh_one(settings, broker, django_capture_on_commit_callbacks):
    """A due step whose message is older than BATON_REDISPATCH_AFTER is published again; a fresh one is left alone."""
    # given
    lost = instance_start("bench_chain", {}).steps.get()
    fresh = instance_start("bench_chain", {}).steps.get()
    lose_message(lost, settings.BATON_REDISPATCH_AFTER + 5)
    fresh_dispatched_at = StepRun.objects.get(pk=fresh.pk).dispatched_at

    # when
    with django_capture_on_commit_callbacks(execute=True):
        report = sweep()

    # then
    lost.refresh_from_db()
    fresh.refresh_from_db()
    assert report.dispatched == 1
    assert broker.step_ids() == [lost.pk]
    assert lost.dispatched_at > timezone.now() - timedelta(seconds=5)
    assert fresh.dispatched_at == fresh_dispatched_at


def test_sweep_leaves_a_paused_instances_steps_alone(settings, broker, django_capture_on_commit_callbacks):
    """A lost message of a paused instance is not re-sent: resume dispatches it instead."""
    # given
    instance = instance_start("bench_chain", {})
    step = instance.steps.get()
    lose_message(step, settings.BATON_REDISPATCH_AFTER + 5)
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")

    # when
    with django_capture_on_commit_callbacks(execute=True):
        report = sweep()

    # then
    assert report.dispatched == 0
    assert broker.step_ids() == []


def test_sweep_dispatches_a_retry_once_its_back_off_is_over(run_steps, broker, django_capture_on_commit_callbacks):
    """A failed attempt is not re-sent before its due_at, and is sent by the first sweep after it."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_reserve=1))
    run_steps(instance)
    step = instance.steps.get(name="reserve_inventory")
    assert step.state == StepState.FAILED

    # when
    with django_capture_on_commit_callbacks(execute=True):
        early = sweep(now=step.due_at - timedelta(milliseconds=1))
        due = sweep(now=step.due_at)

    # then
    assert (early.dispatched, due.dispatched) == (0, 1)
    assert broker.step_ids() == [step.pk]


def test_sweep_expires_a_lost_lease_into_a_retry(settings):
    """A running step past its lease (timeout + grace) is failed by the sweeper and re-dispatched when due."""
    # given
    instance = instance_start("bench_chain", {})
    step = instance.steps.get()
    claim = step_claim(step.pk)
    step.refresh_from_db()

    # when
    before = sweep(now=step.lease_expires_at)
    after = sweep(now=step.lease_expires_at + timedelta(seconds=1))

    # then
    step.refresh_from_db()
    assert (before.leases_expired, after.leases_expired) == (0, 1)
    assert (step.state, step.attempt, step.error_type) == (StepState.FAILED, claim.attempt, "LeaseExpired")
    assert step.lease_expires_at is None
    instance.refresh_from_db()
    assert instance.state == InstanceState.RUNNING


def test_sweep_resumes_an_instance_whose_pause_has_ended(broker, django_capture_on_commit_callbacks):
    """A pause with an end time is lifted by the sweep once that time has passed, and the due work is re-sent."""
    # given
    instance = instance_start("bench_chain", {})
    ends = timezone.now() + timedelta(minutes=5)
    instance_pause(instance.pk, actor=OPERATOR, reason="short hold", until=ends)

    # when
    with django_capture_on_commit_callbacks(execute=True):
        report = sweep(now=ends)

    # then
    instance.refresh_from_db()
    assert report.resumed == 1
    assert (instance.state, instance.paused_until) == (InstanceState.RUNNING, None)
    assert broker.step_ids() == [instance.steps.get().pk]


def test_sweep_keeps_a_pause_that_has_not_ended():
    """Before its end time the pause holds."""
    # given
    instance = instance_start("bench_chain", {})
    instance_pause(instance.pk, actor=OPERATOR, reason="hold", until=timezone.now() + timedelta(hours=1))

    # when
    report = sweep()

    # then
    instance.refresh_from_db()
    assert (report.resumed, instance.state) == (0, InstanceState.PAUSED)


def test_sweep_with_a_given_clock_resumes_a_pause_due_at_that_time():
    """sweep(now=T) lifts a pause that ends before T, like every other deadline the sweep handles."""
    # given
    instance = instance_start("bench_chain", {})
    until = timezone.now() + timedelta(hours=1)
    instance_pause(instance.pk, actor=OPERATOR, reason="hold", until=until)

    # when
    report = sweep(now=until + timedelta(minutes=1))

    # then
    instance.refresh_from_db()
    assert report.resumed == 1
    assert instance.state == InstanceState.RUNNING


# --- timers ---------------------------------------------------------------------------------------------


def after_timer(ctx: StepContext) -> dict:
    return {"after": ctx.attempt}


@pytest.fixture
def timer_flow(register_workflow) -> Workflow:
    return register_workflow(
        Workflow("timer_demo", 1, [Timer("cool_off", wait=timedelta(hours=1)), Task("after", after_timer)])
    )


def test_a_timer_fires_when_due_and_not_before(timer_flow, run_steps, broker, django_capture_on_commit_callbacks):
    """A timer waits (the instance too); the sweep dispatches it at its due time, and the flow goes on."""
    # given
    instance = instance_start("timer_demo", {})
    timer = instance.steps.get()
    assert (timer.kind, timer.state, timer.dispatched_at) == (StepKind.TIMER, StepState.SCHEDULED, None)
    assert instance.state == InstanceState.WAITING

    # when
    with django_capture_on_commit_callbacks(execute=True):
        early = sweep(now=timer.due_at - timedelta(seconds=1))
        on_time = sweep(now=timer.due_at)
    run_steps(instance, advance=True)

    # then
    assert (early.dispatched, on_time.dispatched) == (0, 1)
    assert broker.step_ids() == [timer.pk]
    timer.refresh_from_db()
    instance.refresh_from_db()
    assert (timer.state, timer.result) == (StepState.SUCCEEDED, {"fired": True})
    assert instance.state == InstanceState.COMPLETED
    assert instance.data["after"] == 1


def test_a_timer_message_that_arrives_early_does_nothing(timer_flow):
    """The database, not the message, decides: an early timer message leaves the timer scheduled."""
    # given
    instance = instance_start("timer_demo", {})
    timer = instance.steps.get()

    # when
    result = step_execute(timer.pk)

    # then
    timer.refresh_from_db()
    assert result == "not runnable"
    assert (timer.state, timer.attempt) == (StepState.SCHEDULED, 0)
