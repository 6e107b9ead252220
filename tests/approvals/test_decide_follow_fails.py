"""What follows a human decision raises: the decision is kept, the instance stops as an automated step would.

Entering the node after a decided human step can raise (a Decision reading data the instance lacks, a Timer
``until`` raising or naive, a next human task that cannot open, a value too large for its column). The person's
decision is recorded, completed and audited; the step ends dead naming the real error, the instance fails, the
operators are told, the page answers without a 500, and an operator's retry takes it up once the definition is
fixed, without asking the person again.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from django.test import Client
from django.urls import reverse

from approvals.models import HumanTask, Notification, TaskDecision, TaskKind, TaskState
from approvals.services.base import APPROVE, SKIP, TaskConflict
from approvals.services.tasks import task_decide
from orchestrator.audit import Actor
from orchestrator.bidi import isolate
from orchestrator.dsl import ESCALATE, Decision, Human, Retry, StepContext, Task, Timer, Workflow
from orchestrator.models import AuditEvent, InstanceState, StepKind, StepState, WorkflowInstance
from orchestrator.services.instances import NotAllowed, instance_retry, instance_start
from orchestrator.services.steps import step_execute
from tests.approvals.test_views import shown

pytestmark = pytest.mark.django_db

# The definition "deployed again, fixed": the raising functions below read this switch.
fixed = {"on": False}


@pytest.fixture(autouse=True)
def _broken_definitions():
    fixed["on"] = False
    yield
    fixed["on"] = False


def route(data: dict) -> str:
    return "done" if fixed["on"] else data["region"]  # the instance has no region: KeyError


def naive_until(data: dict) -> datetime:
    return datetime(2030, 1, 1, 12, 0) if not fixed["on"] else datetime.fromisoformat("2030-01-01T12:00:00+00:00")


def raising_until(data: dict) -> datetime:
    if fixed["on"]:
        return datetime.fromisoformat("2030-01-01T12:00:00+00:00")
    raise ValueError(f"no deadline in {sorted(data)}")


def noop(ctx: StepContext) -> dict:
    return {}


CHECK = Human("check", candidate_groups=["approvers"])
# What follows the decision (its nodes), the start data, and the error type and message the step must name.
BROKEN = {
    "decision": ([Decision("route", route, choices=["done"])], {}, "KeyError", "'region'"),
    "naive timer": ([Timer("wait", until=naive_until)], {}, "EngineError", "must return an aware datetime"),
    "raising timer": ([Timer("wait", until=raising_until)], {}, "ValueError", "no deadline in"),
    "task that cannot open": (
        [Human("second", candidate_groups=["approvers"], task_title="Second look at {order_id}")],
        {},
        "KeyError",
        "'order_id'",
    ),
    # The decision ends the flow, whose outcome is longer than its column: PostgreSQL refuses the completion.
    "value too large": ([], {"outcome": "x" * 41}, "DataError", "value too long"),
}


def flow(register_workflow, name: str) -> tuple[Workflow, dict]:
    nodes, data, _, _ = BROKEN[name]
    tail = [Task("done", noop)] if nodes else []
    workflow = Workflow(f"follow_fails_{name.replace(' ', '_')}", 1, [CHECK, *nodes, *tail], title="Follow fails")
    return register_workflow(workflow), data


def check_task(instance: WorkflowInstance) -> HumanTask:
    return HumanTask.objects.get(instance=instance, step__name="check")


@pytest.mark.parametrize("name", list(BROKEN))
def test_the_decision_is_kept_and_the_instance_stops_naming_the_error(register_workflow, users, name):
    # given
    workflow, data = flow(register_workflow, name)
    _, _, error_type, message = BROKEN[name]
    instance = instance_start(workflow.name, data)
    task = check_task(instance)

    # when
    decided = task_decide(task.pk, users.staff, APPROVE, comment="fine by me")

    # then: the person's decision is kept
    task.refresh_from_db()
    assert (task.state, task.decision, task.completed_by_id, task.comment) == (
        TaskState.COMPLETED,
        APPROVE,
        users.staff.pk,
        "fine by me",
    )
    assert list(TaskDecision.objects.filter(task=task).values_list("user_id", "decision")) == [
        (users.staff.pk, APPROVE)
    ]
    assert decided.step.state == StepState.DEAD
    # the step is dead with the real error, the instance failed with it, nothing after the decision was entered
    step = task.step
    step.refresh_from_db()
    assert (step.state, step.error_type) == (StepState.DEAD, error_type)
    assert message in step.error.splitlines()[0]
    assert step.result["decision"] == APPROVE
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    assert instance.error == f"check failed: {step.error.splitlines()[0]}"
    assert instance.data["check"]["decision"] == APPROVE
    assert list(instance.steps.values_list("name", flat=True)) == ["check"]
    # audited: the decision, the dead step (with its error type) and the failure
    actions = list(AuditEvent.objects.filter(instance=instance).order_by("seq").values_list("action", flat=True))
    assert actions[-3:] == ["task.completed", "step.dead", "instance.failed"]
    dead = AuditEvent.objects.get(instance=instance, action="step.dead")
    assert dead.payload["error_type"] == error_type
    # the operators are told, with a link to the instance
    told = Notification.objects.filter(user=users.operator, instance=instance)
    assert [n.url for n in told] == [reverse("console:instance_detail", args=[instance.pk])]


@pytest.mark.parametrize("name", ["decision", "naive timer", "raising timer"])
def test_an_operators_retry_enters_what_follows_the_kept_decision_once_fixed(register_workflow, users, name):
    # given: a decision kept on a stopped instance
    workflow, data = flow(register_workflow, name)
    instance = instance_start(workflow.name, data)
    task_decide(check_task(instance).pk, users.staff, APPROVE)
    operator = Actor.of(users.operator)

    # when: retried while the definition still raises
    with pytest.raises(NotAllowed, match="still raises"):
        instance_retry(instance.pk, actor=operator, reason="try again")

    # then nothing moved
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED

    # when: the definition is fixed and the operator retries
    fixed["on"] = True
    instance_retry(instance.pk, actor=operator, reason="fixed and deployed")

    # then the flow goes on from the decision; the person is not asked again
    instance.refresh_from_db()
    assert instance.state in (InstanceState.RUNNING, InstanceState.WAITING)
    check = instance.steps.get(name="check")
    assert (check.state, check.result["decision"]) == (StepState.SUCCEEDED, APPROVE)
    assert "decision_kept" not in check.result
    assert HumanTask.objects.filter(instance=instance, step__name="check").count() == 1
    assert instance.steps.exclude(name="check").exclude(kind=StepKind.DECISION).exists()


@pytest.mark.parametrize("name", ["decision", "naive timer"])
def test_the_page_keeps_the_decision_and_says_the_workflow_stopped(register_workflow, users, name):
    # given
    workflow, data = flow(register_workflow, name)
    instance = instance_start(workflow.name, data)
    task = check_task(instance)
    client = Client()
    client.force_login(users.staff)

    # when
    response = client.post(
        reverse("approvals:task_decide", args=[task.pk]), {"decision": APPROVE, "comment": "ok"}, follow=True
    )

    # then: no 500, the decision is kept, and the person reads that the workflow stopped and operators know
    assert response.status_code == 200
    task.refresh_from_db()
    assert (task.state, task.decision) == (TaskState.COMPLETED, APPROVE)
    messages = shown(response)
    assert ("success", f"Approved “{isolate(task.title)}”. Your decision is kept.") in messages
    warning = [text for level, text in messages if level == "warning"]
    assert len(warning) == 1
    assert "workflow stopped after your decision" in warning[0]
    assert "operators have been told" in warning[0]
    # and the instance page shows the operators why
    page = Client()
    page.force_login(users.admin)
    detail = page.get(reverse("console:instance_detail", args=[instance.pk]))
    assert detail.status_code == 200
    instance.refresh_from_db()
    assert instance.error.split(":")[0] == "check failed"
    assert BROKEN[name][2] in detail.content.decode()


def test_a_decision_that_follows_cleanly_is_unchanged(register_workflow, users):
    # given: the same flow, fixed
    fixed["on"] = True
    workflow, _ = flow(register_workflow, "decision")
    instance = instance_start(workflow.name, {})

    # when
    decided = task_decide(check_task(instance).pk, users.staff, APPROVE)

    # then
    assert decided.step.state == StepState.SUCCEEDED
    assert not Notification.objects.filter(instance=instance, user=users.operator).exists()


def fails(ctx: StepContext) -> dict:
    raise RuntimeError("payroll API down")


def test_an_operators_skip_into_a_raising_decision_is_refused_with_the_reason(register_workflow, users):
    # given: a failed step escalated to the operators, followed by a decision that raises
    workflow = register_workflow(
        Workflow(
            "follow_fails_skip",
            1,
            [
                Task("pay", fails, on_failure=ESCALATE, retry=Retry(max_attempts=1)),
                Decision("route", route, choices=["done"]),
                Task("done", noop),
            ],
        )
    )
    instance = instance_start(workflow.name, {})
    step_execute(instance.steps.get(name="pay").pk)
    escalation = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)

    # when / then: skipping would enter the raising decision: refused with the reason, nothing changed
    with pytest.raises(TaskConflict, match="raises KeyError: 'region'"):
        task_decide(escalation.pk, users.operator, SKIP, comment="paid by hand")
    escalation.refresh_from_db()
    assert escalation.state == TaskState.OPEN
    assert instance.steps.get(name="pay").state == StepState.DEAD
