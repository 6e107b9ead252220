"""Every send of a step carries its time limits, and its lease outlasts them (soft < hard < lease)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from orchestrator.audit import Actor
from orchestrator.dsl import PermanentError, StepContext, Task, Workflow
from orchestrator.models import InstanceState, StepRun, StepState
from orchestrator.services.instances import instance_retry, instance_start
from orchestrator.services.steps import _run_handler, step_claim, step_record
from orchestrator.services.sweep import sweep
from orchestrator.services.unit import HARD_LIMIT_MARGIN

pytestmark = pytest.mark.django_db

OPERATOR = Actor("user:operator")
# bench_chain's one task has a 30 s timeout.
LIMITS = (30.0, 30.0 + HARD_LIMIT_MARGIN)


def fails_for_good(_ctx: StepContext) -> dict:
    raise PermanentError("no")


def test_the_first_dispatch_carries_the_limits(broker, django_capture_on_commit_callbacks):
    # when
    with django_capture_on_commit_callbacks(execute=True):
        step = instance_start("bench_chain", {}).steps.get()

    # then
    assert broker.time_limits() == {step.pk: LIMITS}


def test_the_sweeps_re_send_of_a_lost_message_carries_the_limits(settings, broker, django_capture_on_commit_callbacks):
    """The sweep used to re-send with no options: the step then ran with no time limit at all."""
    # given: a message that went out long ago and never arrived
    step = instance_start("bench_chain", {}).steps.get()
    StepRun.objects.filter(pk=step.pk).update(
        dispatched_at=timezone.now() - timedelta(seconds=settings.BATON_REDISPATCH_AFTER + 5)
    )
    broker.clear()

    # when
    with django_capture_on_commit_callbacks(execute=True):
        report = sweep()

    # then
    assert report.dispatched == 1
    assert broker.time_limits() == {step.pk: LIMITS}


def test_the_retry_after_a_lost_lease_carries_the_limits(broker, django_capture_on_commit_callbacks):
    # given: a claimed attempt whose worker vanished
    step = instance_start("bench_chain", {}).steps.get()
    step_claim(step.pk)
    step.refresh_from_db()
    broker.clear()

    # when: one pass expires the lease, a later one sends the retry once its back-off is over
    expired_at = step.lease_expires_at + timedelta(seconds=1)
    with django_capture_on_commit_callbacks(execute=True):
        report = sweep(now=expired_at)
        sweep(now=expired_at + timedelta(hours=1))

    # then
    assert report.leases_expired == 1
    assert StepRun.objects.get(pk=step.pk).state == StepState.FAILED
    assert broker.time_limits() == {step.pk: LIMITS}


def test_an_operators_retry_carries_the_limits(register_workflow, broker, django_capture_on_commit_callbacks):
    # given: an instance failed by a step that failed for good
    register_workflow(Workflow(name="limits_fail", version=1, steps=[Task("only", fails_for_good, timeout=12)]))
    instance = instance_start("limits_fail", {})
    step = instance.steps.get()
    claim = step_claim(step.pk)
    step_record(step.pk, claim.attempt, _run_handler(claim))
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    broker.clear()

    # when
    with django_capture_on_commit_callbacks(execute=True):
        instance_retry(instance.pk, actor=OPERATOR, reason="the service is back")

    # then
    assert broker.time_limits() == {step.pk: (12.0, 12.0 + HARD_LIMIT_MARGIN)}


def test_a_steps_own_queue_is_kept_on_every_send(
    register_workflow, settings, broker, django_capture_on_commit_callbacks
):
    # given
    register_workflow(
        Workflow(name="limits_queue", version=1, steps=[Task("only", fails_for_good, timeout=7, queue="slow")])
    )
    broker.client.delete("slow")
    step = instance_start("limits_queue", {}).steps.get()
    StepRun.objects.filter(pk=step.pk).update(
        dispatched_at=timezone.now() - timedelta(seconds=settings.BATON_REDISPATCH_AFTER + 5)
    )

    # when
    with django_capture_on_commit_callbacks(execute=True):
        sweep()

    # then
    assert broker.time_limits("slow") == {step.pk: (7.0, 7.0 + HARD_LIMIT_MARGIN)}
    broker.client.delete("slow")


def test_the_lease_outlasts_the_hard_time_limit(settings):
    """The lease used to equal the hard limit: after a pause the soft limit, the hard limit and the lease fired
    together, and the sweep could start attempt 2 beside an attempt 1 the pool had not yet killed."""
    # given
    step = instance_start("bench_chain", {}).steps.get()

    # when
    step_claim(step.pk)

    # then
    step.refresh_from_db()
    assert step.state == StepState.RUNNING
    soft, hard = LIMITS
    lease = (step.lease_expires_at - step.started_at).total_seconds()
    assert soft < hard < lease
    assert lease == pytest.approx(hard + settings.BATON_LEASE_GRACE)
