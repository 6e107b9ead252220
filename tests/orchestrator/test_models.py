"""The instance and step state machines: which transitions exist, which are refused, and that they stay pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django_fsm import TransitionNotAllowed

from orchestrator.models import InstanceState as I
from orchestrator.models import StepKind, StepRun, WorkflowInstance
from orchestrator.models import StepState as S

NOW = datetime(2025, 1, 1, 12, tzinfo=UTC)

INSTANCE_CALLS = {
    "settle_busy": ("settle", (True,)),
    "settle_idle": ("settle", (False,)),
    "complete": ("complete", ("done", NOW)),
    "fail": ("fail", ("boom",)),
    "start_compensation": ("start_compensation", ("boom",)),
    "finish_compensation": ("finish_compensation", (NOW,)),
    "retry": ("retry", ()),
    "retry_compensation": ("retry_compensation", ()),
    "pause": ("pause", (None,)),
    "resume": ("resume", ()),
    "cancel": ("cancel", (NOW,)),
}


@pytest.mark.parametrize(
    ("source", "call", "target"),
    [
        (I.RUNNING, "settle_busy", I.RUNNING),
        (I.RUNNING, "settle_idle", I.WAITING),
        (I.WAITING, "settle_busy", I.RUNNING),
        (I.RUNNING, "complete", I.COMPLETED),
        (I.WAITING, "complete", I.COMPLETED),
        (I.RUNNING, "fail", I.FAILED),
        (I.COMPENSATING, "fail", I.FAILED),
        (I.WAITING, "start_compensation", I.COMPENSATING),
        (I.FAILED, "start_compensation", I.COMPENSATING),
        # a pause holds new steps; a step already running may still end, fail or compensate the instance
        (I.PAUSED, "complete", I.COMPLETED),
        (I.PAUSED, "fail", I.FAILED),
        (I.PAUSED, "start_compensation", I.COMPENSATING),
        (I.COMPENSATING, "finish_compensation", I.COMPENSATED),
        (I.FAILED, "retry", I.RUNNING),
        (I.FAILED, "retry_compensation", I.COMPENSATING),
        (I.RUNNING, "pause", I.PAUSED),
        (I.WAITING, "pause", I.PAUSED),
        (I.PAUSED, "resume", I.RUNNING),
        (I.RUNNING, "cancel", I.CANCELLED),
        (I.PAUSED, "cancel", I.CANCELLED),
        (I.FAILED, "cancel", I.CANCELLED),
        (I.COMPENSATING, "cancel", I.CANCELLED),
    ],
)
def test_instance_transition_allowed(source, call, target):
    """Each instance transition moves from its source states to its target."""
    # given
    instance = WorkflowInstance(workflow_name="w", workflow_version=1, state=source)
    method, args = INSTANCE_CALLS[call]
    # when
    getattr(instance, method)(*args)
    # then
    assert instance.state == target


@pytest.mark.parametrize(
    ("source", "call"),
    [
        (I.PAUSED, "settle_busy"),
        (I.FAILED, "settle_idle"),
        (I.COMPENSATING, "complete"),
        (I.COMPLETED, "complete"),
        (I.COMPLETED, "fail"),
        (I.COMPENSATED, "start_compensation"),
        (I.RUNNING, "finish_compensation"),
        (I.RUNNING, "retry"),
        (I.COMPLETED, "retry"),
        (I.COMPENSATED, "retry_compensation"),
        (I.RUNNING, "retry_compensation"),
        (I.FAILED, "pause"),
        (I.PAUSED, "pause"),
        (I.RUNNING, "resume"),
        (I.COMPLETED, "cancel"),
        (I.COMPENSATED, "cancel"),
        (I.CANCELLED, "cancel"),
    ],
)
def test_instance_transition_refused(source, call):
    """A transition from a state it does not list raises TransitionNotAllowed and leaves the state alone."""
    # given
    instance = WorkflowInstance(workflow_name="w", workflow_version=1, state=source)
    method, args = INSTANCE_CALLS[call]
    # when
    with pytest.raises(TransitionNotAllowed):
        getattr(instance, method)(*args)
    # then
    assert instance.state == source


STEP_CALLS = {
    "schedule": ("schedule", (NOW,)),
    "start": ("start", (NOW, NOW + timedelta(seconds=65))),
    "succeed": ("succeed", ({"ok": True}, NOW)),
    "fail_attempt": ("fail_attempt", ("Boom", "boom", NOW + timedelta(seconds=2))),
    "die": ("die", ("Boom", "boom", NOW)),
    "skip": ("skip", ("not needed", NOW)),
    "mark_compensated": ("mark_compensated", ()),
}


@pytest.mark.parametrize(
    ("source", "call", "target"),
    [
        (S.PENDING, "schedule", S.SCHEDULED),
        (S.DEAD, "schedule", S.SCHEDULED),
        (S.FAILED, "schedule", S.SCHEDULED),
        (S.SCHEDULED, "start", S.RUNNING),
        (S.FAILED, "start", S.RUNNING),
        (S.RUNNING, "succeed", S.SUCCEEDED),
        (S.SCHEDULED, "succeed", S.SUCCEEDED),
        (S.RUNNING, "fail_attempt", S.FAILED),
        (S.RUNNING, "die", S.DEAD),
        (S.PENDING, "skip", S.SKIPPED),
        (S.RUNNING, "skip", S.SKIPPED),
        (S.DEAD, "skip", S.SKIPPED),
        (S.SUCCEEDED, "mark_compensated", S.COMPENSATED),
    ],
)
def test_step_transition_allowed(source, call, target):
    """Each step transition moves from its source states to its target."""
    # given
    step = StepRun(name="s", kind=StepKind.TASK, state=source)
    method, args = STEP_CALLS[call]
    # when
    getattr(step, method)(*args)
    # then
    assert step.state == target


@pytest.mark.parametrize(
    ("source", "call"),
    [
        (S.RUNNING, "schedule"),
        (S.SUCCEEDED, "schedule"),
        (S.PENDING, "start"),
        (S.RUNNING, "start"),
        (S.SUCCEEDED, "start"),
        (S.FAILED, "succeed"),
        (S.DEAD, "succeed"),
        (S.SCHEDULED, "fail_attempt"),
        (S.FAILED, "die"),
        (S.SUCCEEDED, "skip"),
        (S.COMPENSATED, "skip"),
        (S.RUNNING, "mark_compensated"),
        (S.COMPENSATED, "mark_compensated"),
    ],
)
def test_step_transition_refused(source, call):
    """A step transition from a state it does not list raises TransitionNotAllowed."""
    # given
    step = StepRun(name="s", kind=StepKind.TASK, state=source)
    method, args = STEP_CALLS[call]
    # when
    with pytest.raises(TransitionNotAllowed):
        getattr(step, method)(*args)
    # then
    assert step.state == source


def test_step_start_counts_the_attempt_and_takes_a_lease():
    """Starting bumps the attempt and sets the lease; a failed attempt clears the lease and sets the retry time."""
    # given
    step = StepRun(name="s", kind=StepKind.TASK, state=S.SCHEDULED, attempt=1, dispatched_at=NOW)
    lease = NOW + timedelta(seconds=65)
    # when
    step.start(NOW, lease)
    started = (step.attempt, step.started_at, step.lease_expires_at)
    step.fail_attempt("Boom", "boom", NOW + timedelta(seconds=3))
    # then
    assert started == (2, NOW, lease)
    assert (step.due_at, step.lease_expires_at, step.dispatched_at) == (NOW + timedelta(seconds=3), None, None)
    assert (step.error_type, step.error) == ("Boom", "boom")


def test_state_cannot_be_assigned_directly():
    """The FSM fields are protected: only a transition method may change them."""
    # given
    instance = WorkflowInstance(workflow_name="w", workflow_version=1)
    step = StepRun(name="s", kind=StepKind.TASK)
    # when / then
    with pytest.raises(AttributeError, match="Direct state modification is not allowed"):
        instance.state = I.COMPLETED
    with pytest.raises(AttributeError, match="Direct state modification is not allowed"):
        step.state = S.SUCCEEDED
    assert (instance.state, step.state) == (I.RUNNING, S.PENDING)


@pytest.mark.django_db
def test_transitions_do_not_save():
    """A transition only changes memory: the row keeps its state until a service saves it."""
    # given
    instance = WorkflowInstance.objects.create(workflow_name="w", workflow_version=1)
    # when
    instance.pause(None)
    # then
    assert instance.state == I.PAUSED
    assert WorkflowInstance.objects.get(pk=instance.pk).state == I.RUNNING
    instance.refresh_from_db()
    assert instance.state == I.RUNNING
