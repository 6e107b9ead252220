"""The operator's services: retry a failed instance, pause and resume it, cancel it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError

from approvals.models import HumanTask, TaskKind, TaskState
from approvals.services.base import APPROVE, RESOLVED, TaskConflict
from approvals.services.deadlines import tasks_sweep
from approvals.services.tasks import task_decide
from orchestrator.audit import Actor
from orchestrator.dsl import Escalate, Human, Retry, Task, Workflow
from orchestrator.models import AuditEvent, InstanceState, StepState
from orchestrator.services.instances import (
    NotAllowed,
    instance_cancel,
    instance_pause,
    instance_resume,
    instance_retry,
    instance_start,
)
from orchestrator.services.steps import Outcome, step_claim, step_execute, step_record
from tests.factories import OrderInputFactory
from tests.orchestrator.flaky_steps import flaky, noop, outage

pytestmark = pytest.mark.django_db

OPERATOR = Actor("user:operator")


@pytest.fixture
def flaky_flow(register_workflow) -> Workflow:
    outage["on"] = True
    yield register_workflow(
        Workflow("flaky_demo", 1, [Task("sync", flaky, retry=Retry(max_attempts=2, backoff=0)), Task("after", noop)])
    )
    outage["on"] = False


@pytest.fixture
def failed_instance(flaky_flow, run_steps):
    instance = instance_start("flaky_demo", {})
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    return instance


def test_retry_reschedules_dead_steps_and_completes(failed_instance, run_steps):
    """Once the outage is over, retrying a failed instance re-runs its dead step with fresh attempts."""
    # given
    outage["on"] = False
    step = failed_instance.steps.get(name="sync")
    assert (step.state, step.attempt) == (StepState.DEAD, 2)

    # when
    instance_retry(failed_instance.pk, actor=OPERATOR, reason="upstream is back")
    run_steps(failed_instance)

    # then
    failed_instance.refresh_from_db()
    step.refresh_from_db()
    assert failed_instance.state == InstanceState.COMPLETED
    assert failed_instance.error == ""
    assert (step.state, step.attempt, step.max_attempts) == (StepState.SUCCEEDED, 3, 4)
    retried = AuditEvent.objects.get(instance=failed_instance, action="instance.retried")
    assert (retried.actor_label, retried.reason) == ("user:operator", "upstream is back")


def test_retry_of_an_instance_failed_by_an_expired_approval_leaves_something_to_do(users, register_workflow):
    """Retrying an instance failed by its approval deadline reopens the approval, or is refused outright."""
    # given
    register_workflow(
        Workflow(
            "deadline_demo",
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
    instance = instance_start("deadline_demo", {})
    task = HumanTask.objects.get(instance=instance)
    tasks_sweep(now=task.created_at + timedelta(hours=1, seconds=1))
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED

    # when
    try:
        instance_retry(instance.pk, actor=OPERATOR, reason="the approver is back")
    except NotAllowed:
        return  # refusing a retry that cannot do anything is a fine answer too

    # then
    instance.refresh_from_db()
    actionable = HumanTask.objects.filter(instance=instance, state__in=[TaskState.OPEN, TaskState.CLAIMED])
    assert instance.state == InstanceState.RUNNING or actionable.exists(), "retried into a dead end"


@pytest.mark.parametrize("reason", ["", "   "])
def test_retry_requires_a_reason(failed_instance, reason):
    """Without a reason (it goes into the audit trail) a retry is refused and nothing changes."""
    # given: a failed instance
    # when
    with pytest.raises(ValidationError):
        instance_retry(failed_instance.pk, actor=OPERATOR, reason=reason)
    # then
    failed_instance.refresh_from_db()
    assert failed_instance.state == InstanceState.FAILED


def test_only_failed_instances_can_be_retried(flaky_flow):
    """Retrying an instance that has not failed is NotAllowed."""
    # given
    outage["on"] = False
    instance = instance_start("flaky_demo", {})
    # when / then
    with pytest.raises(NotAllowed, match="Only failed instances"):
        instance_retry(instance.pk, actor=OPERATOR, reason="why not")


def test_pause_blocks_claims_and_resume_dispatches(run_steps, broker, django_capture_on_commit_callbacks):
    """A paused instance's due step cannot be claimed; resuming publishes it again and it runs."""
    # given
    instance = instance_start("bench_chain", {})
    step = instance.steps.get()
    instance_pause(instance.pk, actor=OPERATOR, reason="maintenance window")

    # when
    claim_while_paused = step_claim(step.pk)
    with django_capture_on_commit_callbacks(execute=True):
        instance_resume(instance.pk, actor=OPERATOR, reason="window over")

    # then
    step.refresh_from_db()
    assert claim_while_paused is None
    assert (step.state, step.attempt) == (StepState.SCHEDULED, 0)
    assert broker.step_ids() == [step.pk]
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED


def test_pause_and_resume_guard_their_states(flaky_flow, failed_instance):
    """Only running or waiting instances pause, only paused ones resume, and a pause needs a reason."""
    # given: a failed instance
    # when / then
    with pytest.raises(NotAllowed):
        instance_pause(failed_instance.pk, actor=OPERATOR, reason="hold")
    with pytest.raises(NotAllowed):
        instance_resume(failed_instance.pk, actor=OPERATOR, reason="go")
    running = instance_start("bench_chain", {})
    with pytest.raises(ValidationError):
        instance_pause(running.pk, actor=OPERATOR, reason="")


def test_cancel_skips_open_steps_and_cancels_open_tasks(users, run_steps):
    """Cancelling an order waiting for approval skips the human step, cancels its task and ends the instance."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(amount="1500"))
    run_steps(instance)
    task = HumanTask.objects.get(instance=instance)

    # when
    instance_cancel(instance.pk, actor=OPERATOR, reason="customer withdrew")

    # then
    instance.refresh_from_db()
    task.refresh_from_db()
    assert (instance.state, instance.outcome) == (InstanceState.CANCELLED, "cancelled")
    assert instance.finished_at is not None
    assert task.state == TaskState.CANCELLED
    approval = instance.steps.get(name="manager_approval")
    assert (approval.state, approval.error) == (StepState.SKIPPED, "cancelled: customer withdrew")
    with pytest.raises(TaskConflict):
        task_decide(task.pk, users.manager, APPROVE)


def test_a_cancelled_instance_ignores_its_pending_messages(run_steps):
    """A scheduled step is skipped on cancel; its message, when it arrives, finds nothing to do."""
    # given
    instance = instance_start("bench_chain", {})
    step = instance.steps.get()

    # when
    instance_cancel(instance.pk, actor=OPERATOR, reason="duplicate order")
    result = step_execute(step.pk)

    # then
    step.refresh_from_db()
    assert result == "not runnable"
    assert (step.state, step.attempt) == (StepState.SKIPPED, 0)
    with pytest.raises(NotAllowed, match="already cancelled"):
        instance_cancel(instance.pk, actor=OPERATOR, reason="again")


def test_cancel_also_cancels_an_open_escalation(users, run_steps):
    """An escalation of a failed compensation leaves the operators' inbox when its instance is cancelled."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_shipping=True, fail_refund=True))
    run_steps(instance, advance=True)
    escalation = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)

    # when
    instance_cancel(instance.pk, actor=OPERATOR, reason="written off")

    # then
    escalation.refresh_from_db()
    assert escalation.state == TaskState.CANCELLED
    with pytest.raises(TaskConflict):
        task_decide(escalation.pk, users.operator, RESOLVED, comment="done by hand")


# --- work that finishes while the instance is paused ------------------------------------------------------


@pytest.fixture
def single_step_flow(register_workflow) -> Workflow:
    return register_workflow(Workflow("single_demo", 1, [Task("only", noop, retry=Retry(max_attempts=1))]))


def finish_last_step(instance, step):
    claim = step_claim(step.pk)
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")
    step_record(step.pk, claim.attempt, Outcome(ok=True))


def kill_last_step(instance, step):
    claim = step_claim(step.pk)
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")
    step_record(step.pk, claim.attempt, Outcome(ok=False, error_type="Boom", error="boom"))


@pytest.mark.parametrize(
    ("finish", "expected"),
    [(finish_last_step, InstanceState.COMPLETED), (kill_last_step, InstanceState.FAILED)],
    ids=["last-step-succeeded", "last-step-died"],
)
def test_a_step_that_finishes_during_a_pause_takes_effect_at_once(single_step_flow, run_steps, finish, expected):
    """A pause holds new steps, not running ones: the last step finishing (or dying) while paused completes (or
    fails) the instance right away, and there is nothing left to resume."""
    # given
    instance = instance_start("single_demo", {})

    # when
    finish(instance, instance.steps.get())

    # then
    instance.refresh_from_db()
    assert instance.state == expected
    with pytest.raises(NotAllowed, match="Only paused instances"):
        instance_resume(instance.pk, actor=OPERATOR, reason="go on")


def test_a_decision_during_a_pause_is_refused_until_resumed(users, register_workflow, run_steps):
    """Deciding while the instance is paused is a TaskConflict that leaves the task open; after resume it counts."""
    # given
    register_workflow(
        Workflow("paused_decision_demo", 1, [Human("approve", candidate_groups=["approvers"]), Task("after", noop)])
    )
    instance = instance_start("paused_decision_demo", {})
    task = HumanTask.objects.get(instance=instance)
    instance_pause(instance.pk, actor=OPERATOR, reason="audit in progress")

    # when
    with pytest.raises(TaskConflict, match="paused"):
        task_decide(task.pk, users.staff, APPROVE)
    task.refresh_from_db()
    refused = (task.state, task.decisions.count())
    instance_resume(instance.pk, actor=OPERATOR, reason="audit done")
    task_decide(task.pk, users.staff, APPROVE)
    run_steps(instance)

    # then
    instance.refresh_from_db()
    assert refused == (TaskState.OPEN, 0)
    assert instance.state == InstanceState.COMPLETED


def test_retry_after_the_definition_came_back_with_another_shape_is_refused_with_the_reason(
    users, register_workflow, run_steps
):
    """Given a failed instance with a dead step; when the same name and version is deployed again without that
    step (edited instead of bumped) and an operator retries from the page; then the retry is refused with a
    message naming the missing step (409, the reason kept), never a 500, and the instance stays failed; its page
    still renders."""
    from django.test import Client

    from orchestrator import registry

    # given
    outage["on"] = True
    register_workflow(Workflow("reshaped", 1, [Task("sync", flaky, retry=Retry(max_attempts=1, backoff=0))]))
    instance = instance_start("reshaped", {})
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    registry.unregister("reshaped", 1)
    register_workflow(Workflow("reshaped", 1, [Task("renamed", noop)]))
    outage["on"] = False
    client = Client()
    client.force_login(users.admin)

    # when
    response = client.post(f"/instances/{instance.pk}/retry/", {"reason": "deployed again"})

    # then
    instance.refresh_from_db()
    assert response.status_code == 409
    page = response.content.decode().replace("&#x27;", "'")
    assert "has no node 'sync'" in page
    assert "deployed again" in page
    assert instance.state == InstanceState.FAILED
    assert client.get(f"/instances/{instance.pk}/").status_code == 200
