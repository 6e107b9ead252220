"""The record is whole: replaying an instance's events through the state machines rebuilds the stored state of the
instance, its steps and its tasks, for every path of both demo workflows; each transition wrote one event."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from django_fsm import RETURN_VALUE

from approvals.models import HumanTask, TaskState
from approvals.services.base import APPROVE, REJECT
from approvals.services.tasks import task_decide
from orchestrator.models import AuditEvent, StepRun, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory, OrderInputFactory

pytestmark = pytest.mark.django_db

MODELS = {"instance": WorkflowInstance, "step": StepRun, "task": HumanTask}


def _targets(model: Any) -> dict[str, set[str]]:
    """Every state each of ``model``'s transitions may lead to, by source state ("*" and "+" included)."""
    field = model._meta.get_field("state")
    allowed: dict[str, set[str]] = defaultdict(set)
    for transition in field.get_all_transitions(model):
        target = transition.target
        targets = set(target.allowed_states) if isinstance(target, RETURN_VALUE) else {target}
        allowed[transition.source] |= {str(t) for t in targets if t is not None}
    return allowed


def replay(instance: WorkflowInstance) -> dict[tuple[str, int], str]:
    """Each subject's state, rebuilt from the instance's events alone: a subject starts where its first event puts
    it, and every later event must be a transition its model declares from the state reached so far."""
    machines = {name: _targets(model) for name, model in MODELS.items()}
    state: dict[tuple[str, int], str] = {}
    for event in AuditEvent.objects.filter(instance=instance).order_by("seq"):
        if event.subject_type not in MODELS or not event.to_state:
            continue
        key = (event.subject_type, event.subject_id)
        if key not in state:
            assert event.from_state == "", f"{event}: a subject's first event creates it"
            state[key] = event.to_state
            continue
        current = state[key]
        assert event.from_state == current, f"{event}: starts from {event.from_state}, the replay is at {current}"
        allowed = machines[event.subject_type]
        possible = allowed.get(current, set()) | allowed.get("*", set()) | allowed.get("+", set())
        assert event.to_state in possible, f"{event}: {current} -> {event.to_state} is no transition of the model"
        state[key] = event.to_state
    return state


def stored(instance: WorkflowInstance) -> dict[tuple[str, int], str]:
    instance.refresh_from_db()
    found = {("instance", instance.pk): instance.state}
    found |= {("step", s.pk): s.state for s in StepRun.objects.filter(instance=instance)}
    found |= {("task", t.pk): t.state for t in HumanTask.objects.filter(instance=instance)}
    return found


def _decide_all(instance, run_steps, decision: str, people) -> None:
    """Decide every open task of ``instance`` as someone allowed to, until none is left."""
    for _ in range(5):
        run_steps(instance, advance=True)
        tasks = HumanTask.objects.filter(instance=instance, state__in=[TaskState.OPEN, TaskState.CLAIMED])
        if not tasks:
            return
        for task in tasks:
            group = task.candidate_groups.values_list("name", flat=True).first()
            who = {"approvers": people.staff2, "managers": people.manager, "operators": people.operator}[group]
            extra = {"decision": "resolved"} if task.kind == "escalation" else {}
            task_decide(task.pk, who, extra.get("decision", decision), comment="replay test")
    run_steps(instance, advance=True)


@pytest.mark.parametrize(
    ("workflow", "data", "decision"),
    [
        pytest.param("order_fulfilment", OrderInputFactory, APPROVE, id="order-completed"),
        pytest.param("order_fulfilment", lambda: OrderInputFactory(amount="5000.00"), APPROVE, id="order-approved"),
        pytest.param("order_fulfilment", lambda: OrderInputFactory(amount="5000.00"), REJECT, id="order-rejected"),
        pytest.param("order_fulfilment", lambda: OrderInputFactory(fail_payment=2), APPROVE, id="order-retried"),
        pytest.param(
            "order_fulfilment", lambda: OrderInputFactory(fail_shipping=True), APPROVE, id="order-compensated"
        ),
        pytest.param("expense_approval", ExpenseInputFactory, APPROVE, id="expense-approved"),
        pytest.param(
            "expense_approval", lambda: ExpenseInputFactory(amount="4000.00"), APPROVE, id="expense-two-levels"
        ),
        pytest.param("expense_approval", ExpenseInputFactory, REJECT, id="expense-rejected"),
    ],
)
def test_replaying_the_events_rebuilds_the_stored_state(users, run_steps, workflow, data, decision):
    # given
    instance = instance_start(workflow, data(), initiator=users.staff)

    # when
    _decide_all(instance, run_steps, decision, users)

    # then
    assert replay(instance) == stored(instance)
