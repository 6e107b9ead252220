"""One definition of an **overdue** task (``approvals.selectors.overdue``), counted alike by Incidents, the dashboard
and /metrics' ``baton_human_tasks_overdue``.

A task's SLA counts unpaused time only (docs/architecture.md, "Deadlines and pauses"): one whose due time fell
inside its instance's pause is held while the pause lasts (its due time moves on at the resume), one already late
when the pause began stays late. A failed instance's task past its due time is overdue for the operators (Incidents
lists it beside the failure; its holder's inbox shows it on hold).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from approvals.models import HumanTask
from console.selectors import incidents
from demo.data import grant_group_permissions
from orchestrator.audit import Actor
from orchestrator.models import InstanceState, WorkflowInstance
from orchestrator.services.instances import instance_pause, instance_start
from tests.factories import ExpenseInputFactory
from tests.orchestrator.test_metrics import AUTH, scrape, value

pytestmark = pytest.mark.django_db

# The statements each read takes now, whatever the number of tasks or instances (pinned, not to grow with the rule):
# /metrics: the roll-ups (2), open and overdue tasks (1), the sweep's time, the roll-up position, the newest event.
METRICS_STATEMENTS = 6
# /dashboard/: session, user, two permission reads, the navigation's counts (3), and the six roll-up reads.
DASHBOARD_STATEMENTS = 12


def expense() -> WorkflowInstance:
    """An expense approval waiting on its one team task."""
    return instance_start("expense_approval", ExpenseInputFactory())


def due(instance: WorkflowInstance, at) -> None:
    HumanTask.objects.filter(instance=instance).update(due_at=at)


def paused_since(instance: WorkflowInstance, since) -> None:
    instance_pause(instance.pk, actor=Actor.system("test"), reason="supplier audit")
    WorkflowInstance.objects.filter(pk=instance.pk).update(paused_at=since)


def on_time(now) -> None:
    due(expense(), now + timedelta(hours=1))


def late(now) -> None:
    due(expense(), now - timedelta(hours=1))


def due_inside_its_pause(now) -> None:
    instance = expense()
    paused_since(instance, now - timedelta(hours=1))
    due(instance, now - timedelta(minutes=30))


def late_before_its_pause(now) -> None:
    instance = expense()
    paused_since(instance, now - timedelta(hours=1))
    due(instance, now - timedelta(hours=2))


def due_after_its_pause_would_end(now) -> None:
    instance = expense()
    paused_since(instance, now - timedelta(hours=1))
    due(instance, now + timedelta(hours=1))


def late_in_a_failed_instance(now) -> None:
    # A failed instance keeps its open tasks (they wait for an operator's retry or cancel); set as the engine
    # leaves it when a step dies beside a waiting approval.
    instance = expense()
    WorkflowInstance.objects.filter(pk=instance.pk).update(state=InstanceState.FAILED, error="payment declined")
    due(instance, now - timedelta(hours=1))


CASES: dict[str, tuple[Callable[..., None], int]] = {
    "on time": (on_time, 0),
    "late": (late, 1),
    "due inside its instance's pause": (due_inside_its_pause, 0),
    "late before its instance's pause": (late_before_its_pause, 1),
    "due after now, its instance paused": (due_after_its_pause_would_end, 0),
    "late, its instance failed": (late_in_a_failed_instance, 1),
}


@pytest.fixture
def operator(users) -> Client:
    grant_group_permissions()  # the demo's permissions: operators see the dashboard
    client = Client()
    client.force_login(users.operator)
    return client


def counted(operator: Client) -> dict[str, float]:
    """The overdue figure each place shows for the same data, and the open figure beside it."""
    dashboard = operator.get("/dashboard/")
    assert dashboard.status_code == 200
    samples = scrape(Client())
    return {
        "incidents": incidents().overdue_total,
        "dashboard": dashboard.context["data"].tasks["overdue"],
        "metrics": value(samples, "baton_human_tasks_overdue"),
        "open (dashboard)": dashboard.context["data"].tasks["open"],
        "open (metrics)": value(samples, "baton_human_tasks_open"),
    }


@pytest.mark.parametrize("case", list(CASES))
def test_each_place_counts_a_task_overdue_by_the_same_rule(users, operator, case):
    # given one open task in this situation
    make, overdue = CASES[case]
    make(timezone.now())

    # when
    figures = counted(operator)

    # then Incidents, the dashboard and /metrics agree on whether it is overdue, and it is still open
    assert figures == {
        "incidents": overdue,
        "dashboard": overdue,
        "metrics": overdue,
        "open (dashboard)": 1,
        "open (metrics)": 1,
    }


def test_incidents_dashboard_and_metrics_give_the_same_numbers_for_the_same_tasks(users, operator):
    # given every situation at once, twice over
    now = timezone.now()
    for make, _ in [*CASES.values(), *CASES.values()]:
        make(now)
    expected = 2 * sum(overdue for _, overdue in CASES.values())

    # when
    figures = counted(operator)

    # then
    assert figures == {
        "incidents": expected,
        "dashboard": expected,
        "metrics": expected,
        "open (dashboard)": 2 * len(CASES),
        "open (metrics)": 2 * len(CASES),
    }


def test_metrics_and_the_dashboard_keep_their_statement_counts(
    users, operator, django_assert_num_queries, django_assert_max_num_queries
):
    # given tasks in every situation
    now = timezone.now()
    for make, _ in CASES.values():
        make(now)

    # then: the same statements as before the rule read the instances of late tasks, whatever their number
    with django_assert_num_queries(METRICS_STATEMENTS):
        assert Client().get("/metrics", **AUTH).status_code == 200
    with django_assert_num_queries(DASHBOARD_STATEMENTS):
        assert operator.get("/dashboard/").status_code == 200
