"""The engine's port to the human side, its "instance finished" signal and its operations on one step."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import transaction

from approvals.services.port import ApprovalsHumanTasks
from orchestrator import ports, stats
from orchestrator.audit import Actor
from orchestrator.audit_actions import AuditAction
from orchestrator.dsl import ESCALATE, Human, PermanentError, Retry, StepContext, Task, Workflow
from orchestrator.models import AuditEvent, InstanceState, StepState
from orchestrator.services.instances import instance_cancel, instance_start
from orchestrator.services.lifecycle import settle
from orchestrator.services.locks import definition_of, lock_step
from orchestrator.services.steps import StepResult, step_skip
from orchestrator.services.unit import Unit
from orchestrator.signals import instance_finished

OPERATOR = Actor.system("test-operator")


def _done(ctx: StepContext) -> dict:
    return {"done": True}


def _declines(ctx: StepContext) -> dict:
    raise PermanentError("card declined")


def _needs_price(ctx: StepContext) -> dict:
    return {"charged": ctx.data["price"]}


@pytest.fixture
def no_human_side() -> Iterator[None]:
    """The engine as in a deployment without the approvals app: nothing registered on its port."""
    registered = ports.human_tasks_or_none()
    ports.register_human_tasks(None)  # type: ignore[arg-type]
    yield
    ports.register_human_tasks(registered)  # type: ignore[arg-type]


def test_approvals_registers_the_human_side_when_it_is_ready():
    """Given the installed apps, when the engine asks for its human side, then it is the approvals app's."""
    # given / when
    people = ports.human_tasks()

    # then
    assert isinstance(people, ApprovalsHumanTasks)


@pytest.mark.django_db
def test_the_dashboards_task_counts_come_through_the_port_and_are_zero_without_a_human_side(no_human_side, users):
    """The engine counts open tasks by asking the human side (HumanTasks.tasks_open_counts), never by naming its
    model: with nothing registered there is nothing to count."""
    # given: no human side (the fixture)

    # when
    counts = stats.human_tasks_open()

    # then
    assert counts == {"open": 0, "overdue": 0}
    engine = Path(stats.__file__).parent
    assert not [f.name for f in engine.rglob("*.py") if 'get_model("approvals"' in f.read_text()]


@pytest.mark.django_db
def test_without_a_human_side_a_human_step_says_what_to_install(no_human_side, register_workflow):
    """Given no app registered on the port, when an instance reaches a human step, then the start is refused with
    an error naming what to add to INSTALLED_APPS, and nothing is written."""
    # given
    register_workflow(Workflow("port_human", 1, [Human("review", candidate_groups=["approvers"])]))

    # when / then
    with pytest.raises(ports.HumanTasksMissing, match="add 'approvals' to INSTALLED_APPS"):
        instance_start("port_human", {})
    assert not AuditEvent.objects.filter(action=AuditAction.INSTANCE_STARTED).exists()


@pytest.mark.django_db
def test_without_a_human_side_automated_work_runs_and_cancels(no_human_side, register_workflow, run_steps):
    """Given no app registered on the port, when a workflow of automated steps runs, and another is cancelled,
    then both end as usual: only a human step needs the human side."""
    # given
    register_workflow(Workflow("port_tasks", 1, [Task("a", _done), Task("b", _done)]))
    finished = instance_start("port_tasks", {})
    stopped = instance_start("port_tasks", {})

    # when
    run_steps(finished)
    instance_cancel(stopped.pk, actor=OPERATOR, reason="not needed")

    # then
    finished.refresh_from_db()
    stopped.refresh_from_db()
    assert (finished.state, stopped.state) == (InstanceState.COMPLETED, InstanceState.CANCELLED)


@pytest.mark.django_db
def test_instance_finished_is_sent_once_with_the_unit_when_an_instance_ends(register_workflow, run_steps):
    """Given a listener on instance_finished, when an instance runs to its end, then the listener hears it once,
    with the unit that ended it (still open: what it adds commits with the outcome)."""
    # given
    register_workflow(Workflow("port_signal", 1, [Task("a", _done)]))
    heard: list[tuple[int, str, bool]] = []

    def listener(sender: object, *, unit: Unit, instance: object, **kwargs: object) -> None:
        heard.append((unit.instance.pk, unit.instance.state, transaction.get_connection().in_atomic_block))

    instance_finished.connect(listener, dispatch_uid="test-port-signal")
    try:
        instance = instance_start("port_signal", {})

        # when
        run_steps(instance)
    finally:
        instance_finished.disconnect(dispatch_uid="test-port-signal")

    # then
    assert heard == [(instance.pk, InstanceState.COMPLETED, True)]


@pytest.mark.django_db
def test_skipping_a_dead_step_records_the_given_output_and_goes_on(users, register_workflow, run_steps):
    """Given a step that died and waits on an escalation, when an operator skips it with the output it would have
    returned, then the step is skipped with that result, the output joins the instance data, and the next step
    reads it and completes the instance."""
    # given
    register_workflow(
        Workflow(
            "port_skip",
            1,
            [
                Task("price", _declines, retry=Retry(max_attempts=1), on_failure=ESCALATE),
                Task("charge", _needs_price),
            ],
        )
    )
    instance = instance_start("port_skip", {})
    ran = run_steps(instance)
    assert [r.result for r in ran] == [StepResult.FAILED]
    dead = instance.steps.get(name="price")

    # when
    with transaction.atomic():
        locked, step = lock_step(dead.pk)
        unit = Unit(locked, OPERATOR)
        step_skip(unit, definition_of(locked), step, "priced by hand", output={"price": 42})
        settle(unit)
        unit.finish()
    run_steps(instance)

    # then
    instance.refresh_from_db()
    dead.refresh_from_db()
    assert (dead.state, dead.result, dead.error) == (
        StepState.SKIPPED,
        {"price": 42},
        "skipped by operator: priced by hand",
    )
    assert instance.state == InstanceState.COMPLETED
    assert instance.data["charged"] == 42
    skipped = AuditEvent.objects.get(instance=instance, action=AuditAction.STEP_SKIPPED)
    assert (skipped.reason, skipped.payload) == ("priced by hand", {"result": {"price": 42}})
