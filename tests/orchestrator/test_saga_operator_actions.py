"""Operator actions on an instance stopped at each point of its compensation: no forward step runs again.

The rule (docs/architecture.md, "Operator actions and the saga"): once an instance has begun compensating it
never runs forward again. Retrying an instance failed mid-compensation goes on with the compensation (the failed
compensation step is redriven, or the next step is undone); every other operator action on a compensating,
compensated or cancelled instance is refused with a reason, or moves only the compensation.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.urls import reverse

from approvals.models import HumanTask, TaskKind, TaskState
from approvals.services.base import FAIL, RESOLVED, RETRY, SKIP, TaskError
from approvals.services.tasks import task_decide
from demo.data import grant_group_permissions
from orchestrator.audit import Actor, verify_chain
from orchestrator.dsl import COMPENSATE, ESCALATE, Parallel, PermanentError, Retry, StepContext, Task, Workflow
from orchestrator.models import BUSY_STEP_STATES, AuditEvent, InstanceState, StepKind, StepState
from orchestrator.services.instances import (
    NotAllowed,
    instance_cancel,
    instance_pause,
    instance_resume,
    instance_retry,
    instance_start,
)
from orchestrator.services.steps import Outcome, step_claim, step_execute, step_record

pytestmark = pytest.mark.django_db

OPERATOR = Actor("user:operator")
ONCE = Retry(max_attempts=1)

# Every handler call, in order: (step name, "do" or "undo").
calls: list[tuple[str, str]] = []
switches = {"refund_down": False}


def doing(name: str) -> Callable[[StepContext], dict]:
    def handler(ctx: StepContext) -> dict:
        calls.append((name, "do"))
        return {name: True}

    return handler


def undoing(name: str) -> Callable[[StepContext], dict]:
    def handler(ctx: StepContext) -> dict:
        calls.append((name, "undo"))
        if name == "charge" and switches["refund_down"]:
            raise ConnectionError("the payment provider is down")
        return {f"{name}_undone": True}

    return handler


def ship(ctx: StepContext) -> None:
    calls.append(("ship", "do"))
    raise PermanentError("the carrier refused the parcel")


@pytest.fixture
def saga_flow(register_workflow) -> Workflow:
    calls.clear()
    switches["refund_down"] = False
    yield register_workflow(
        Workflow(
            "saga_ops_demo",
            1,
            [
                Task("reserve", doing("reserve"), compensate=undoing("reserve"), retry=ONCE),
                Task("charge", doing("charge"), compensate=undoing("charge"), retry=ONCE),
                Task("ship", ship, retry=ONCE, on_failure=COMPENSATE),
                Task("notify", doing("notify"), retry=ONCE),
            ],
        )
    )
    switches["refund_down"] = False


def escalation_of(instance) -> HumanTask:
    return HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION, state=TaskState.OPEN)


# --- the points at which an instance can be stopped -------------------------------------------------------


def before_first(instance, run_steps, users) -> None:
    """Shipping failed: the refund is scheduled, nothing undone yet."""
    run_steps(instance, limit=3)


def between_two(instance, run_steps, users) -> None:
    """The payment is refunded, the stock not yet released."""
    run_steps(instance, limit=4)


def after_a_failed_one(instance, run_steps, users) -> None:
    """The refund failed for good: an escalation waits for the operators."""
    switches["refund_down"] = True
    run_steps(instance, limit=4)
    escalation_of(instance)


def failed_by_an_operator(instance, run_steps, users) -> None:
    """The refund failed and an operator chose "fail instance" on its escalation."""
    after_a_failed_one(instance, run_steps, users)
    task_decide(escalation_of(instance).pk, users.operator, FAIL, comment="call the PSP first")


def after_all(instance, run_steps, users) -> None:
    """Everything is undone: the instance is compensated."""
    run_steps(instance, advance=True)


def cancelled_midway(instance, run_steps, users) -> None:
    """Cancelled between the refund and the release."""
    between_two(instance, run_steps, users)
    instance_cancel(instance.pk, actor=OPERATOR, reason="written off")


POINTS = {
    "before-first": (before_first, InstanceState.COMPENSATING),
    "between-two": (between_two, InstanceState.COMPENSATING),
    "after-a-failed-one": (after_a_failed_one, InstanceState.COMPENSATING),
    "failed-by-an-operator": (failed_by_an_operator, InstanceState.FAILED),
    "after-all": (after_all, InstanceState.COMPENSATED),
    "cancelled-midway": (cancelled_midway, InstanceState.CANCELLED),
}


# --- the operator's actions ---------------------------------------------------------------------------------


def retry(instance, users) -> None:
    instance_retry(instance.pk, actor=OPERATOR, reason="try again")


def resume(instance, users) -> None:
    instance_resume(instance.pk, actor=OPERATOR, reason="go on")


def pause(instance, users) -> None:
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")


def decide(decision: str) -> Callable:
    def action(instance, users) -> None:
        task = HumanTask.objects.filter(instance=instance, kind=TaskKind.ESCALATION).order_by("-id").first()
        if task is None:
            raise NotAllowed("no escalation")
        task_decide(task.pk, users.operator, decision, comment="operator's call")

    return action


def attempt(action: Callable, instance, users) -> str | None:
    """None if the operator's action went through, else the message it was refused with."""
    try:
        action(instance, users)
    except (NotAllowed, TaskError) as exc:
        return str(exc)
    return None


ACTIONS = {
    "retry": retry,
    "resume": resume,
    "pause": pause,
    "escalation-retry": decide(RETRY),
    "escalation-skip": decide(SKIP),
    "escalation-resolved": decide(RESOLVED),
    "escalation-fail": decide(FAIL),
}


@pytest.mark.parametrize("action", list(ACTIONS))
@pytest.mark.parametrize("point", list(POINTS))
def test_no_operator_action_runs_a_compensated_step_again(users, saga_flow, run_steps, point, action):
    """Whatever the operator does at whatever point of the compensation, and whatever runs afterwards, no forward
    step runs again: the action is refused with a reason, or it moves the compensation only."""
    # given
    stop, expected = POINTS[point]
    instance = instance_start("saga_ops_demo", {})
    stop(instance, run_steps, users)
    instance.refresh_from_db()
    assert instance.state == expected
    forward_calls = [c for c in calls if c[1] == "do"]
    switches["refund_down"] = False

    # when
    refusals = [attempt(ACTIONS[action], instance, users)]
    run_steps(instance, advance=True)
    if action == "escalation-fail":  # then the retry an operator would try next
        refusals.append(attempt(retry, instance, users))
        run_steps(instance, advance=True)

    # then
    assert "" not in refusals, "a refusal must say why"
    assert [c for c in calls if c[1] == "do"] == forward_calls, "a forward step ran again"
    instance.refresh_from_db()
    forward = instance.steps.filter(kind=StepKind.TASK)
    assert not forward.filter(state__in=BUSY_STEP_STATES).exists()
    assert instance.state not in (InstanceState.RUNNING, InstanceState.WAITING, InstanceState.COMPLETED)


def test_retry_of_an_instance_failed_mid_compensation_finishes_the_compensation(users, saga_flow, run_steps):
    """Failed by an operator after the refund failed, then retried: the refund runs again, the stock is released,
    the instance is compensated, and the failed shipment is not tried again."""
    # given
    instance = instance_start("saga_ops_demo", {})
    failed_by_an_operator(instance, run_steps, users)
    refund = instance.steps.get(kind=StepKind.COMPENSATION, name="charge")
    switches["refund_down"] = False

    # when
    instance_retry(instance.pk, actor=OPERATOR, reason="the PSP is back")
    instance.refresh_from_db()
    retried = instance.state
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    refund.refresh_from_db()
    assert retried == InstanceState.COMPENSATING
    assert instance.state == InstanceState.COMPENSATED
    assert (refund.state, refund.attempt) == (StepState.SUCCEEDED, 2)
    assert calls == [
        ("reserve", "do"),
        ("charge", "do"),
        ("ship", "do"),
        ("charge", "undo"),
        ("charge", "undo"),
        ("reserve", "undo"),
    ]
    states = dict(instance.steps.filter(kind=StepKind.TASK).values_list("name", "state"))
    assert states == {"reserve": "compensated", "charge": "compensated", "ship": "dead"}


@pytest.mark.parametrize(
    ("point", "message"),
    [
        ("between-two", "none of them runs again"),
        ("after-all", "none of them runs again"),
        ("cancelled-midway", "cancelled"),
    ],
)
def test_retry_mid_compensation_is_refused_with_a_reason_the_page_shows(
    users, saga_flow, run_steps, client, point, message
):
    """A refused retry says why on the instance page, and changes nothing."""
    # given
    instance = instance_start("saga_ops_demo", {})
    POINTS[point][0](instance, run_steps, users)
    instance.refresh_from_db()
    before = instance.state
    grant_group_permissions()
    client.force_login(users.operator)

    # when
    url = reverse("console:instance_operate", args=[instance.pk, "retry"])
    response = client.post(url, {"reason": "try again"}, follow=True)

    # then
    instance.refresh_from_db()
    assert instance.state == before
    assert message in response.content.decode()


def test_a_failed_forward_steps_escalation_closes_when_the_compensation_starts(users, register_workflow, run_steps):
    """One branch's step escalates, the other branch's failure compensates: the escalation is cancelled, so no
    operator can retry or skip that forward step behind the compensation's back."""
    # given
    calls.clear()
    register_workflow(
        Workflow(
            "saga_branch_demo",
            1,
            [
                Task("reserve", doing("reserve"), compensate=undoing("reserve"), retry=ONCE),
                Parallel(
                    "fan",
                    branches=[
                        [Task("label", ship, retry=ONCE, on_failure=ESCALATE)],
                        [Task("dispatch", ship, retry=ONCE, on_failure=COMPENSATE)],
                    ],
                ),
                Task("notify", doing("notify"), retry=ONCE),
            ],
        )
    )
    instance = instance_start("saga_branch_demo", {})
    run_steps(instance, limit=3)
    escalation = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)

    # when
    refusals = []
    for decision in (RETRY, SKIP):
        with pytest.raises(TaskError) as refused:
            task_decide(escalation.pk, users.operator, decision, comment="operator's call")
        refusals.append(str(refused.value))
    run_steps(instance, advance=True)

    # then
    escalation.refresh_from_db()
    instance.refresh_from_db()
    assert escalation.state == TaskState.CANCELLED
    assert all(refusals)
    assert instance.state == InstanceState.COMPENSATED
    assert instance.steps.get(name="label").state == StepState.DEAD
    assert ("notify", "do") not in calls


@pytest.mark.parametrize("reported", ["at-once", "after-the-rest-was-run"])
def test_a_step_that_succeeds_in_another_branch_after_the_compensation_began_is_undone_too(
    users, register_workflow, run_steps, reported
):
    """One branch charges the card while the other branch fails and starts the compensation: the compensation
    waits for the running charge (it never finishes without it, however long the rest runs), then refunds it
    first, with the charge's result at hand; nothing runs forward."""
    # given
    calls.clear()
    register_workflow(
        Workflow(
            "saga_inflight_demo",
            1,
            [
                Task("reserve", doing("reserve"), compensate=undoing("reserve"), retry=ONCE),
                Parallel(
                    "fan",
                    branches=[
                        [Task("charge", doing("charge"), compensate=undoing("charge"), retry=ONCE)],
                        [Task("dispatch", ship, retry=ONCE, on_failure=COMPENSATE)],
                    ],
                ),
            ],
        )
    )
    instance = instance_start("saga_inflight_demo", {})
    run_steps(instance, limit=1)
    charge = instance.steps.get(name="charge")
    claim = step_claim(charge.pk)
    step_execute(instance.steps.get(name="dispatch").pk)

    if reported == "after-the-rest-was-run":
        run_steps(instance, advance=True)
        instance.refresh_from_db()
        assert instance.state == InstanceState.COMPENSATING, "the compensation waits for the running charge"

    # when: the charge's worker reports its success after the compensation began
    calls.append(("charge", "do"))
    recorded = step_record(charge.pk, claim.attempt, Outcome(ok=True, result={"charge_id": "ch_1"}))
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    charge.refresh_from_db()
    assert recorded == "succeeded"
    assert sorted(calls) == sorted([("reserve", "do"), ("ship", "do"), ("charge", "do"), *UNDONE]), calls
    assert (instance.state, charge.state) == (InstanceState.COMPENSATED, StepState.COMPENSATED)
    assert instance.data["charge_id"] == "ch_1"
    assert not instance.steps.filter(kind=StepKind.TASK, state__in=BUSY_STEP_STATES).exists()
    assert verify_chain(list(AuditEvent.objects.filter(instance=instance).order_by("seq"))) is None


UNDONE = [("charge", "undo"), ("reserve", "undo")]
