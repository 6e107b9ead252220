"""A forward step still running when the compensation starts (one parallel branch fails with on_failure=compensate
while another branch's task runs): its outcome is not dropped. The compensation waits for it; a step whose handler
returned is undone too, first (it finished last), and one that failed or lost its lease is not run again.

Deterministic in-process: the engine's own claim, run and record functions are called in the order a real worker
would interleave them.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from orchestrator.dsl import COMPENSATE, Parallel, PermanentError, Retry, StepContext, Task, Workflow
from orchestrator.models import AuditEvent, InstanceState, StepKind, StepRun, StepState, WorkflowInstance
from orchestrator.services.instances import instance_start
from orchestrator.services.steps import Outcome, _run_handler, step_claim, step_execute, step_record
from orchestrator.services.sweep import sweep

pytestmark = pytest.mark.django_db

calls: list[str] = []
ship_fails = {"on": False}


@pytest.fixture(autouse=True)
def _fresh():
    calls.clear()
    ship_fails["on"] = False


def called(name: str, result: dict | None = None):
    def handler(ctx: StepContext) -> dict:
        calls.append(name)
        if name == "ship" and ship_fails["on"]:
            raise RuntimeError("carrier refused")
        return dict(result or {})

    handler.__name__ = name
    return handler


def declined(ctx: StepContext) -> dict:
    calls.append("charge")
    raise PermanentError("card declined")


RETRYING = Retry(max_attempts=3, backoff=0.01)
FLOW = Workflow(
    "saga_running_branch",
    1,
    [
        Task("reserve", called("reserve"), compensate=called("unreserve")),
        Parallel(
            "fulfil",
            branches=[
                [Task("charge", declined, on_failure=COMPENSATE)],
                [Task("ship", called("ship", {"parcel": "P-1"}), compensate=called("unship"), retry=RETRYING)],
            ],
        ),
        Task("notify", called("notify")),
    ],
)


def step(instance: WorkflowInstance, name: str, kind: str = StepKind.TASK) -> StepRun:
    return instance.steps.get(name=name, kind=kind)


@pytest.fixture
def ship_running(register_workflow, run_steps):
    """``reserve`` succeeded; ``ship`` is claimed (its handler "running" on a worker); then ``charge`` dies and the
    compensation starts. Returns the instance and ship's claim."""
    register_workflow(FLOW)
    instance = instance_start(FLOW.name, {})
    run_steps(instance, limit=1)  # reserve, then the fan-out schedules charge and ship
    claim = step_claim(step(instance, "ship").pk)
    assert claim is not None
    assert step_execute(step(instance, "charge").pk) == "failed"
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPENSATING
    return instance, claim


def test_the_compensation_waits_for_a_running_step_then_undoes_it_first(ship_running, run_steps):
    instance, claim = ship_running
    # given: the compensation began while ship runs; nothing is undone behind its back yet
    assert step(instance, "ship").state == StepState.RUNNING
    assert not instance.steps.filter(kind=StepKind.COMPENSATION).exists()

    # when: ship's handler returns and the worker records it
    outcome = _run_handler(claim)
    recorded = step_record(claim.step_id, claim.attempt, outcome)
    run_steps(instance)

    # then: its outcome is kept, and it is undone first (it finished last), then reserve; nothing runs forward
    assert recorded == "succeeded"
    assert calls == ["reserve", "charge", "ship", "unship", "unreserve"]
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPENSATED
    assert instance.data["parcel"] == "P-1"
    assert (step(instance, "ship").state, step(instance, "reserve").state) == (
        StepState.COMPENSATED,
        StepState.COMPENSATED,
    )
    assert not instance.steps.filter(name="notify").exists()
    assert AuditEvent.objects.filter(instance=instance, action="compensation.waiting").count() == 1


def test_a_running_step_that_fails_meanwhile_is_not_retried_nor_undone(ship_running, run_steps):
    instance, claim = ship_running
    ship_fails["on"] = True

    # when: ship's handler raises (attempts remain) while the instance compensates
    outcome = _run_handler(claim)
    step_record(claim.step_id, claim.attempt, outcome)
    run_steps(instance, advance=True)

    # then: it is not run again (never a forward step once the saga began) and nothing says its effect happened
    ship = step(instance, "ship")
    assert (ship.state, ship.attempt) == (StepState.DEAD, 1)
    assert calls == ["reserve", "charge", "ship", "unreserve"]
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPENSATED


def test_a_running_step_whose_lease_expires_ends_the_wait(ship_running, run_steps):
    instance, claim = ship_running
    ship = step(instance, "ship")

    # when: its worker is lost; the sweep counts the lease out
    sweep(now=ship.lease_expires_at + timedelta(seconds=1))
    run_steps(instance, advance=True)  # what the sweep scheduled is due at its (future) clock

    # then: ship dies (no retry), the compensation goes on without it, and a late result is fenced
    ship.refresh_from_db()
    assert (ship.state, ship.error_type) == (StepState.DEAD, "LeaseExpired")
    assert calls == ["reserve", "charge", "unreserve"]
    assert step_record(claim.step_id, claim.attempt, Outcome(ok=True)) == "fenced"
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPENSATED
