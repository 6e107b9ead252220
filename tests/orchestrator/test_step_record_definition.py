"""A step whose definition goes away, or is deployed again with another shape, while its handler runs: the outcome
that happened is recorded (a success as a success, a failure as a failure), the instance fails naming the
definition problem, and an operator's retry, once the definition is back, goes on without running a succeeded step
again. The handlers here change the registry themselves, so the change lands between the claim and the record."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from orchestrator import registry
from orchestrator.audit import Actor
from orchestrator.dsl import COMPENSATE, Retry, Signal, StepContext, Task, Timer, Workflow
from orchestrator.models import AuditEvent, InstanceState, StepKind, StepState, WorkflowInstance
from orchestrator.services.instances import NotAllowed, instance_retry, instance_start
from orchestrator.services.locks import definition_unavailable
from orchestrator.services.steps import StepResult, step_execute

pytestmark = pytest.mark.django_db

OPERATOR = Actor("user:operator")
NAME = "record_def"

calls: dict[str, int] = {}
# What the running handler does to the registry before it returns (the deployment changing under it).
meanwhile: list[Callable[[], None]] = []


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    calls.clear()
    meanwhile.clear()
    yield
    meanwhile.clear()
    registry.unregister(NAME, 1)


def pay(ctx: StepContext) -> dict:
    calls["pay"] = calls.get("pay", 0) + 1
    for change in meanwhile:
        change()
    return {"paid": 120, "payment_ref": f"P-{ctx.instance_id}"}


def refuse(ctx: StepContext) -> dict:
    calls["pay"] = calls.get("pay", 0) + 1
    for change in meanwhile:
        change()
    raise RuntimeError("card declined by the bank")


def refund(ctx: StepContext) -> dict:
    calls["refund"] = calls.get("refund", 0) + 1
    for change in meanwhile:
        change()
    return {"refunded": ctx.data["paid"]}


def ship(ctx: StepContext) -> dict:
    calls["ship"] = calls.get("ship", 0) + 1
    return {"shipped": ctx.data["payment_ref"]}


def flow(handler=pay) -> Workflow:
    return Workflow(NAME, 1, [Task("pay", handler, retry=Retry(max_attempts=3, backoff=0)), Task("ship", ship)])


# The same name and version deployed again with another shape: no node "pay", or "pay" as another kind of node.
RESHAPED = [
    pytest.param(Workflow(NAME, 1, [Task("charge", pay), Task("ship", ship)]), "has no node 'pay'", id="node-gone"),
    pytest.param(Workflow(NAME, 1, [Signal("pay"), Task("ship", ship)]), "node 'pay' is a signal", id="other-kind"),
    pytest.param(Workflow(NAME, 1, [Timer("pay", wait=1), Task("ship", ship)]), "node 'pay' is a timer", id="timer"),
]


def gone() -> None:
    registry.unregister(NAME, 1)


def replaced_by(other: Workflow) -> Callable[[], None]:
    def change() -> None:
        registry.unregister(NAME, 1)
        registry.register(other)

    return change


def pay_step(instance: WorkflowInstance):
    return instance.steps.get(name="pay", kind=StepKind.TASK)


def test_a_success_reported_after_the_definition_went_away_is_recorded_and_fails_the_instance():
    """Given pay running; when its definition leaves the deployment before pay returns; then pay is recorded as
    succeeded with its result (audited, in the data), not as an UnknownWorkflow failure, and the instance fails
    naming the missing definition; nothing follows pay."""
    # given
    registry.register(flow())
    instance = instance_start(NAME, {})
    meanwhile.append(gone)

    # when
    answer = step_execute(pay_step(instance).pk)

    # then
    instance.refresh_from_db()
    step = pay_step(instance)
    assert calls == {"pay": 1}
    assert answer == StepResult.SUCCEEDED
    assert step.state == StepState.SUCCEEDED
    assert step.result.items() >= {"paid": 120, "payment_ref": f"P-{instance.pk}"}.items()
    assert instance.data["payment_ref"] == f"P-{instance.pk}"
    assert instance.state == InstanceState.FAILED
    assert definition_unavailable(instance) in instance.error
    assert "pay succeeded" in instance.error
    succeeded = AuditEvent.objects.get(instance=instance, action="step.succeeded", subject_id=step.pk)
    assert succeeded.payload["result"]["payment_ref"] == f"P-{instance.pk}"
    assert not instance.steps.filter(name="ship").exists()


def test_retry_after_the_definition_is_deployed_again_goes_on_after_the_recorded_success():
    """Given pay's success recorded after its definition went away; when the definition is deployed again and an
    operator retries; then ship is entered and runs with pay's result, pay never runs again, and the instance
    completes."""
    # given
    registry.register(flow())
    instance = instance_start(NAME, {})
    meanwhile.append(gone)
    step_execute(pay_step(instance).pk)
    meanwhile.clear()

    # when
    registry.register(flow())
    instance_retry(instance.pk, actor=OPERATOR, reason="deployed again")
    step_execute(instance.steps.get(name="ship").pk)

    # then
    instance.refresh_from_db()
    assert calls == {"pay": 1, "ship": 1}
    assert instance.state == InstanceState.COMPLETED
    assert instance.data["shipped"] == f"P-{instance.pk}"
    assert pay_step(instance).result == {"paid": 120, "payment_ref": f"P-{instance.pk}"}


def test_retry_is_refused_while_the_definition_is_still_missing():
    """The recorded success waits: a retry before the definition is back is refused with the reason."""
    # given
    registry.register(flow())
    instance = instance_start(NAME, {})
    meanwhile.append(gone)
    step_execute(pay_step(instance).pk)

    # when / then
    with pytest.raises(NotAllowed, match="is not available"):
        instance_retry(instance.pk, actor=OPERATOR, reason="too early")
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED


@pytest.mark.parametrize(("reshaped", "problem"), RESHAPED)
def test_a_success_reported_after_a_reshaped_deployment_is_recorded_and_fails_the_instance(reshaped, problem):
    """Given pay running; when the same version is deployed again without a task named pay; then pay's success is
    recorded (it took effect) and the instance fails naming the shape problem, the step never left running for its
    lease to expire and its handler to run again."""
    # given
    registry.register(flow())
    instance = instance_start(NAME, {})
    meanwhile.append(replaced_by(reshaped))

    # when
    answer = step_execute(pay_step(instance).pk)

    # then
    instance.refresh_from_db()
    step = pay_step(instance)
    assert calls == {"pay": 1}
    assert answer == StepResult.SUCCEEDED
    assert step.state == StepState.SUCCEEDED
    assert instance.data["payment_ref"] == f"P-{instance.pk}"
    assert instance.state == InstanceState.FAILED
    assert problem in instance.error
    assert not instance.steps.filter(name="ship").exists()


@pytest.mark.parametrize(("reshaped", "problem"), RESHAPED)
def test_retry_after_a_reshaped_deployment_is_refused_then_goes_on_once_the_version_is_back(reshaped, problem):
    """While the reshaped version is deployed a retry is refused naming pay; with the instance's own version back,
    the retry enters ship and pay never runs again."""
    # given
    registry.register(flow())
    instance = instance_start(NAME, {})
    meanwhile.append(replaced_by(reshaped))
    step_execute(pay_step(instance).pk)
    meanwhile.clear()

    # when / then
    with pytest.raises(NotAllowed, match="'pay'"):
        instance_retry(instance.pk, actor=OPERATOR, reason="still reshaped")
    replaced_by(flow())()
    instance_retry(instance.pk, actor=OPERATOR, reason="the right version is back")
    step_execute(instance.steps.get(name="ship").pk)

    # then
    instance.refresh_from_db()
    assert calls == {"pay": 1, "ship": 1}
    assert instance.state == InstanceState.COMPLETED


@pytest.mark.parametrize("change", [gone, replaced_by(RESHAPED[0].values[0])], ids=["definition-gone", "reshaped"])
def test_a_failure_reported_after_the_definition_went_away_is_recorded_as_the_handlers_failure(change):
    """Given pay running; when the definition changes under it and pay raises; then the step is dead with pay's own
    error (not the definition's), the instance fails naming the definition problem, and a retry with the
    definition back runs pay again."""
    # given
    registry.register(flow(refuse))
    instance = instance_start(NAME, {})
    meanwhile.append(change)

    # when
    answer = step_execute(pay_step(instance).pk)

    # then
    instance.refresh_from_db()
    step = pay_step(instance)
    assert answer == StepResult.FAILED
    assert (step.state, step.error_type) == (StepState.DEAD, "RuntimeError")
    assert "card declined by the bank" in step.error
    assert instance.state == InstanceState.FAILED
    assert "pay failed" in instance.error

    # when: the definition is back and an operator retries
    meanwhile.clear()
    replaced_by(flow(refuse))()
    instance_retry(instance.pk, actor=OPERATOR, reason="deployed again")
    step_execute(pay_step(instance).pk)

    # then
    assert calls == {"pay": 2}


def test_a_compensation_that_succeeded_after_the_definition_went_away_is_recorded_and_the_retry_goes_on():
    """Given an instance compensating, its refund running; when the definition goes away before refund returns;
    then the refund is recorded as succeeded and pay as compensated (no escalation saying it failed), the instance
    fails naming the definition, and a retry with it back finishes the compensation without refunding again."""

    # given
    def broken_ship(ctx: StepContext) -> dict:
        raise RuntimeError("warehouse closed")

    saga = Workflow(
        NAME,
        1,
        [
            Task("pay", pay, compensate=refund),
            Task("ship", broken_ship, retry=Retry(max_attempts=1, backoff=0), on_failure=COMPENSATE),
        ],
    )
    registry.register(saga)
    instance = instance_start(NAME, {})
    step_execute(pay_step(instance).pk)
    step_execute(instance.steps.get(name="ship").pk)
    undo = instance.steps.get(kind=StepKind.COMPENSATION)
    meanwhile.append(gone)

    # when
    answer = step_execute(undo.pk)

    # then
    instance.refresh_from_db()
    undo.refresh_from_db()
    assert answer == StepResult.SUCCEEDED
    assert calls == {"pay": 1, "refund": 1}
    assert undo.state == StepState.SUCCEEDED
    assert pay_step(instance).state == StepState.COMPENSATED
    assert instance.state == InstanceState.FAILED
    assert definition_unavailable(instance) in instance.error

    # when: deployed again and retried
    meanwhile.clear()
    registry.register(saga)
    instance_retry(instance.pk, actor=OPERATOR, reason="deployed again")

    # then
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPENSATED
    assert calls == {"pay": 1, "refund": 1}


@pytest.mark.parametrize(("reshaped", "problem"), RESHAPED[1:])
def test_a_step_claimed_at_a_node_of_another_kind_fails_at_its_claim_without_running(reshaped, problem):
    """Given pay due; when the same version is deployed again with pay as a wait or a timer; then the claim fails
    the step naming the shape problem and the handler never runs (before, the claim handed the wait to the worker,
    whose handler call failed an assertion out of the task, the step left running until its lease expired)."""
    # given
    registry.register(flow())
    instance = instance_start(NAME, {})
    replaced_by(reshaped)()

    # when
    answer = step_execute(pay_step(instance).pk)

    # then
    instance.refresh_from_db()
    step = pay_step(instance)
    assert answer == StepResult.NOT_RUNNABLE
    assert calls == {}
    assert (step.state, step.error_type) == (StepState.DEAD, "DefinitionError")
    assert problem in step.error
    assert instance.state == InstanceState.FAILED
