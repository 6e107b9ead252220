"""One definition of an **overdue** task (``approvals.selectors.overdue``), counted alike by Incidents, the dashboard
and /metrics' ``baton_human_tasks_overdue``.

A task's SLA counts unpaused time only (docs/architecture.md, "Deadlines and pauses"): one whose due time fell
inside its instance's pause is held while the pause lasts (its due time moves on at the resume), one already late
when the pause began stays late. A failed instance's task past its due time is overdue for the operators (Incidents
lists it beside the failure; its holder's inbox shows it on hold).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals import selectors as task_selectors
from approvals import views as approvals_views
from approvals.models import HumanTask, TaskKind, TaskState
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
# /escalations/?show=overdue: session, user, the navigation's counts and groups, the rows (with their instances and
# assignees joined), whatever their number.
OVERDUE_LIST_STATEMENTS = 8


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


# --- the dashboard's card and the list it opens ------------------------------------------------------------


def escalated_by_its_ladder_not_yet_due(now) -> None:
    # Listed by Escalations' own rule (escalated), but not overdue: the card does not count it.
    instance = expense()
    HumanTask.objects.filter(instance=instance).update(state=TaskState.ESCALATED, due_at=now + timedelta(hours=1))


def an_operators_escalation(now) -> None:
    # Listed by Escalations' own rule (a failure handed to operators, no due time), never overdue.
    instance = expense()
    HumanTask.objects.filter(instance=instance).update(kind=TaskKind.ESCALATION, due_at=None)


def card_link(dashboard) -> str:
    """The address the dashboard's "Overdue tasks" card opens."""
    before = dashboard.content.decode().split(">Overdue tasks<", 1)[0]
    return html.unescape(before.rsplit('href="', 1)[1].split('"', 1)[0])


def listed(page) -> set[int]:
    return {int(pk) for pk in re.findall(r'<tr data-task="(\d+)"', page.content.decode())}


def test_the_overdue_card_opens_a_list_of_exactly_the_tasks_it_counts(users, operator):
    # given every situation, where the inbox's "on hold" rule and the overdue rule differ (late before its pause,
    # late in a failed instance), and tasks that Escalations lists for other reasons than being overdue
    users.operator.groups.add(users.managers)  # an operator who is also a manager: the card links to Escalations
    now = timezone.now()
    for make, _ in CASES.values():
        make(now)
    escalated_by_its_ladder_not_yet_due(now)
    an_operators_escalation(now)

    # when the operator opens the dashboard, then the card's link
    dashboard = operator.get("/dashboard/")
    page = operator.get(card_link(dashboard))

    # then the rows shown are exactly the tasks counted
    assert page.status_code == 200
    counted_tasks = set(HumanTask.objects.filter(task_selectors.overdue(timezone.now())).values_list("pk", flat=True))
    assert len(listed(page)) == dashboard.context["data"].tasks["overdue"] == sum(n for _, n in CASES.values())
    assert listed(page) == counted_tasks


def test_the_overdue_list_costs_the_same_statements_with_1_or_31_rows(users, django_assert_num_queries):
    # given a manager, and first one then 31 overdue tasks
    client = Client()
    client.force_login(users.manager)
    url = f"{reverse('approvals:escalations')}?show=overdue"
    now = timezone.now()
    late(now)

    # then: session, user, the navigation's counts and groups, the rows; no more for more rows
    with django_assert_num_queries(OVERDUE_LIST_STATEMENTS):
        assert len(listed(client.get(url))) == 1
    for _ in range(30):
        late(now)
    with django_assert_num_queries(OVERDUE_LIST_STATEMENTS):
        assert len(listed(client.get(url))) == 31


def test_the_overdue_list_says_how_many_there_are_beyond_the_rows_it_shows(users, monkeypatch):
    # given a manager, three overdue tasks and a page of two rows
    monkeypatch.setattr(approvals_views, "ESCALATION_ROWS", 2)
    client = Client()
    client.force_login(users.manager)
    now = timezone.now()
    for _ in range(3):
        late(now)

    # when
    page = client.get(f"{reverse('approvals:escalations')}?show=overdue")

    # then the first two are shown, and the whole count is said
    assert len(listed(page)) == 2
    assert "The 2 most overdue of 3 are shown" in page.content.decode()


def _row(page, task: HumanTask) -> str:
    return page.content.decode().split(f'<tr data-task="{task.pk}"')[1].split("</tr>")[0]


def test_the_overdue_list_says_when_a_tasks_workflow_failed_or_is_paused(users):
    # given three overdue tasks: a running workflow's, a failed one's and one late before its workflow paused
    client = Client()
    client.force_login(users.manager)
    now = timezone.now()
    late(now)
    late_in_a_failed_instance(now)
    late_before_its_pause(now)
    running, failed, paused = HumanTask.objects.order_by("pk")

    # when
    page = client.get(f"{reverse('approvals:escalations')}?show=overdue")

    # then each row says why nobody moves it on, on the desktop's column and the phone's line alike
    assert "workflow failed" not in _row(page, running)
    assert "workflow paused" not in _row(page, running)
    assert _row(page, failed).count("workflow failed") == 2
    assert _row(page, paused).count("workflow paused") == 2
