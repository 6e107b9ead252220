"""Incidents lists, at once, the tasks nobody may act on (``approvals.selectors.tasks_nobody_can_act``): work that
can never move until someone adds a person, which used to show on Incidents only once past its SLA."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from approvals.models import HumanTask, TaskState
from approvals.services.people import short_of_people
from approvals.services.tasks import task_claim
from console import selectors
from console.selectors import incidents
from orchestrator.dsl import Human, Workflow
from orchestrator.models import WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.console.test_selectors import INCIDENTS_QUERIES
from tests.factories import GroupFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def night_shift(register_workflow):
    """A workflow whose one approval goes to the night shift, due in a day (its SLA far ahead)."""
    GroupFactory(name="night_shift")
    check = Human("check", candidate_groups=["night_shift"], sla=timedelta(days=1))
    return register_workflow(Workflow("night_check", 1, [check]))


def deactivate(user: User) -> None:
    user.is_active = False
    user.save()


def leave_managers_and_operators_empty(users) -> None:
    """Nobody left to fall back on: the manager and the operator deactivated (the admin, a superuser, is in no
    group and so no candidate)."""
    deactivate(users.manager)
    deactivate(users.operator)


def start(initiator: User | None = None, title: str = "Night check") -> HumanTask:
    instance = instance_start("night_check", {"title": title}, initiator=initiator)
    return HumanTask.objects.get(instance=instance)


def listed(now=None) -> list[int]:
    return [row.task.pk for row in incidents(now).nobody_can_act.rows]


def test_a_task_whose_only_group_is_deactivated_people_is_listed_before_its_due_time(users, night_shift):
    # given: the night shift's only member deactivated, Managers and Operators leaving nobody
    member = UserFactory(username="nightowl", groups=["night_shift"])
    deactivate(member)
    leave_managers_and_operators_empty(users)

    # when
    task = start()
    found = incidents()

    # then: listed at once, long before its SLA, with why and what fixes it, and counted
    assert task.state == TaskState.ESCALATED
    assert task.due_at > timezone.now() + timedelta(hours=23)
    assert [row.task.pk for row in found.nobody_can_act.rows] == [task.pk]
    row = found.nobody_can_act.rows[0]
    assert (row.able, row.needed) == (0, 1)
    assert "group night_shift: every member is deactivated" in row.reasons
    assert "group managers: every member is deactivated" in row.reasons
    assert row.fix.startswith("Add an active person who did not start this workflow")
    assert "to Managers or Operators, or to group night_shift." in row.fix
    assert found.nobody_can_act.total == 1
    assert found.overdue_total == 0
    assert found.count == 1


def test_an_escalated_task_a_manager_may_act_on_is_not_listed(users, night_shift):
    # given: the night shift is empty, but the manager is there to take the escalation
    task = start()

    # then
    assert task.state == TaskState.ESCALATED
    assert listed() == []


def test_the_initiator_alone_is_nobody(users, night_shift):
    # given: the only member of every candidate group started the instance (four-eyes bars them)
    leave_managers_and_operators_empty(users)
    clerk = UserFactory(username="clerk", groups=["night_shift", "operators"])

    # when
    task = start(initiator=clerk)
    row = incidents().nobody_can_act.rows[0]

    # then
    assert row.task.pk == task.pk
    assert "group night_shift: its only active member started this workflow" in row.reasons
    assert "group operators: its only active member started this workflow" in row.reasons


def test_a_claimed_task_whose_assignee_may_act_is_not_listed(users, night_shift):
    # given: an escalated task the manager claimed, and may decide
    task = start()
    task_claim(task.pk, users.manager)

    # then
    assert HumanTask.objects.get(pk=task.pk).state == TaskState.CLAIMED
    assert listed() == []


def test_a_task_leaves_the_list_once_a_manager_who_may_act_is_added(users, night_shift):
    # given
    leave_managers_and_operators_empty(users)
    task = start()
    assert listed() == [task.pk]

    # when
    UserFactory(username="newboss", groups=["managers"])

    # then
    assert listed() == []


def test_a_quorum_fewer_people_may_meet_than_it_needs_is_listed_with_how_many(users, register_workflow):
    # given: a quorum of 3 among the two approvers, managers and operators the only others (2 more able)
    register_workflow(Workflow("big_sign", 1, [Human("sign", candidate_groups=["approvers"], quorum=5)]))
    task = HumanTask.objects.get(instance=instance_start("big_sign", {}))

    # when
    row = incidents().nobody_can_act.rows[0]

    # then
    assert row.task.pk == task.pk
    assert (row.able, row.needed) == (4, 5)
    assert row.fix.startswith("Add an active person")


def test_the_list_and_short_of_people_read_the_same_rule(users, night_shift):
    """Both read ``able_count_sql``: a task on the list is one the re-check after a change of people escalates."""
    # given
    leave_managers_and_operators_empty(users)
    nobody = start(title="A")
    UserFactory(username="newboss", groups=["managers"])
    leave = start(title="B")
    deactivate(User.objects.get(username="newboss"))

    # then: both short again (the deactivation re-checked and re-escalated B; A never left)
    assert sorted(listed()) == sorted(short_of_people([nobody.pk, leave.pk])) == sorted([nobody.pk, leave.pk])


def test_more_than_a_page_of_such_tasks_is_capped_and_says_so(client, users, night_shift, monkeypatch):
    # given: three such tasks, two rows shown
    monkeypatch.setattr(selectors, "INCIDENT_ROWS", 2)
    leave_managers_and_operators_empty(users)
    tasks = [start(title=f"Night check {n}") for n in range(3)]

    # when
    found = incidents()
    client.force_login(users.admin)
    page = client.get(reverse("console:incidents"))

    # then
    assert [row.task.pk for row in found.nobody_can_act.rows] == [t.pk for t in tasks[:2]]
    assert found.nobody_can_act.total == 3
    assert found.nobody_can_act.more
    assert found.count == 3
    text = page.content.decode()
    assert 'id="nobody-more"' in text
    assert "…and 3 in all" in text


def test_a_task_past_its_sla_is_counted_once(users, night_shift):
    # given: such a task that is also overdue
    leave_managers_and_operators_empty(users)
    task = start()
    HumanTask.objects.filter(pk=task.pk).update(due_at=timezone.now() - timedelta(minutes=5))

    # when
    found = incidents()

    # then: listed in both parts, counted once
    assert [t.pk for t in found.overdue_tasks] == [task.pk]
    assert listed() == [task.pk]
    assert found.nobody_can_act.listed_elsewhere == 1
    assert found.count == 1


def test_the_section_shows_each_task_with_its_workflow_instance_why_and_fix(client, users, night_shift):
    # given: the operator started it, so the operators leave nobody; the operator still opens the task page
    deactivate(users.manager)
    task = start(initiator=users.operator)
    client.force_login(users.operator)

    # when
    page = client.get(reverse("console:incidents")).content.decode()

    # then
    section = page[page.index('id="nobody-can-act"') : page.index('id="stuck-title"')]
    assert f'data-task="{task.pk}"' in section
    assert reverse("approvals:task_detail", args=[task.pk]) in section
    assert client.get(reverse("approvals:task_detail", args=[task.pk])).status_code == 200
    assert reverse("console:instance_detail", args=[task.instance_id]) in section
    assert "night_check v1" in section
    assert "nobody may act" in section
    assert "group night_shift: it has no members" in section
    assert "group operators: its only active member started this workflow" in section
    assert "Add an active person who did not start this workflow and approved none of its tasks" in section
    assert task.created_at.strftime("%Y-%m-%d") in section
    assert 'id="nobody-total">1<' in section


def test_a_viewer_who_is_no_candidate_gets_the_instance_link(client, users, night_shift):
    # given: someone who may watch running work (the view permission) but is in neither candidate group
    viewer = UserFactory(username="watcher")
    viewer.user_permissions.add(*_view_permission())
    leave_managers_and_operators_empty(users)
    task = start()
    client.force_login(viewer)

    # when
    page = client.get(reverse("console:incidents")).content.decode()

    # then
    section = page[page.index('id="nobody-can-act"') : page.index('id="stuck-title"')]
    assert f'data-task="{task.pk}"' in section
    assert reverse("approvals:task_detail", args=[task.pk]) not in section
    assert reverse("console:instance_detail", args=[task.instance_id]) in section


def _view_permission():
    from django.contrib.auth.models import Permission

    return Permission.objects.filter(codename="view_workflowinstance")


def test_the_page_takes_as_many_statements_for_one_such_task_as_for_thirty(
    client, users, night_shift, django_assert_num_queries
):
    """The page's statements with nothing such (test_selectors.INCIDENTS_QUERIES), and two more for the rows and
    their candidates, whatever their number: no statement per row."""
    # given: one such task, seen by an operator who started it (four-eyes leaves the operators nobody)
    leave_managers_and_operators_empty(users)
    viewer = UserFactory(username="opsviewer", groups=["operators"])
    client.force_login(viewer)
    start(initiator=viewer)
    client.get(reverse("console:incidents"))  # the first request of a session may write it
    with CaptureQueriesContext(connection) as one:
        client.get(reverse("console:incidents"))

    # when: thirty
    for n in range(29):
        start(initiator=viewer, title=f"Night check {n}")

    # then
    with django_assert_num_queries(len(one.captured_queries)):
        response = client.get(reverse("console:incidents"))
    assert response.content.decode().count('data-incident="nobody"') == 30
    assert len(one.captured_queries) == INCIDENTS_QUERIES + 2


@pytest.mark.skipif(connection.vendor != "postgresql", reason="EXPLAIN plans are PostgreSQL's")
def test_the_search_walks_the_escalated_tasks_index_only(users, night_shift):
    """The escalated tasks are read through console_task_escalated (the escalated ones only, oldest first), never
    by a scan of every task (console/migrations/0006_escalated_task_index.py)."""
    # given
    with CaptureQueriesContext(connection) as ctx:
        incidents()
    statement = next(q["sql"] for q in ctx.captured_queries if "x.able < x.needed" in q["sql"])

    # when
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        cursor.execute(f"EXPLAIN {statement}")
        plan = "\n".join(row[0] for row in cursor.fetchall())

    # then
    assert "console_task_escalated" in plan, plan
    assert "Seq Scan on approvals_humantask" not in plan, plan


def test_an_instance_started_by_nobody_bars_nobody(users, night_shift):
    # given: a system-started instance whose only able person is a night shift member
    UserFactory(username="nightowl", groups=["night_shift"])
    task = start()
    assert WorkflowInstance.objects.get(pk=task.instance_id).initiator_id is None

    # then
    assert task.state == TaskState.OPEN
    assert short_of_people([task.pk]) == []
