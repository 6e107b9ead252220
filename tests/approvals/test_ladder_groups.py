"""An escalation rung naming a group that does not exist (renamed or deleted since the definition was written).

The rule (docs/architecture.md, "Decisions"): a rung never creates a group. The sweep gives the task to
managers and operators instead, titled with the missing name, and ``manage.py check --database default`` warns of
such a rung beforehand (approvals/checks.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core import checks

from approvals.checks import MISSING_RUNG_GROUP
from approvals.models import HumanTask, Priority, TaskState
from approvals.services.deadlines import tasks_sweep
from orchestrator.dsl import Escalate, Human, Reassign, Remind, Workflow
from orchestrator.models import AuditEvent
from orchestrator.services.instances import instance_start

pytestmark = pytest.mark.django_db


@pytest.fixture
def reviewers_flow(register_workflow) -> Workflow:
    return register_workflow(
        Workflow(
            "ladder_group_demo",
            1,
            [
                Human(
                    "approve",
                    candidate_groups=["approvers"],
                    escalation=[
                        Remind(timedelta(hours=1)),
                        Reassign(timedelta(hours=2), group="reviewers"),
                        Escalate(timedelta(hours=3), group="managers"),
                    ],
                )
            ],
        )
    )


def fire_rungs(task: HumanTask, count: int) -> None:
    """Run the sweep at each of the task's next ``count`` rungs."""
    for _ in range(count):
        task.refresh_from_db()
        assert tasks_sweep(now=task.next_escalation_at) == {"escalations": 1}


def test_a_rung_naming_a_renamed_group_goes_to_managers_and_operators_and_creates_no_group(users, reviewers_flow):
    """The reviewers group was renamed after the definition was written: the reassign rung created a new, empty
    group of the old name and gave it the task, so nobody was told and nobody new could act."""
    # given a reviewers group renamed "review board", and a task whose ladder still names "reviewers"
    Group.objects.create(name="reviewers")
    Group.objects.filter(name="reviewers").update(name="review board")
    instance = instance_start("ladder_group_demo", {})
    task = HumanTask.objects.get(instance=instance)

    # when the sweep fires the remind and then the reassign rung
    fire_rungs(task, 2)

    # then no group was created; managers and operators are candidates, told by a title naming the missing group
    task.refresh_from_db()
    assert not Group.objects.filter(name="reviewers").exists()
    assert (task.state, task.escalation_level, task.priority) == (TaskState.ESCALATED, 2, Priority.URGENT)
    assert set(task.candidate_groups.values_list("name", flat=True)) == {"approvers", "managers", "operators"}
    assert task.title.startswith("No group named reviewers to escalate to")
    event = AuditEvent.objects.filter(instance=instance, action="task.escalated").get()
    assert event.payload["missing_group"] == "reviewers"
    assert "reviewers" in event.reason
    # and the ladder goes on: its last rung fires at its time
    assert task.next_escalation_at == task.created_at + timedelta(hours=3)
    fire_rungs(task, 1)
    task.refresh_from_db()
    assert task.escalation_level == 3


def test_a_rung_naming_an_existing_group_hands_the_task_to_it(users, reviewers_flow):
    """The group is there: the rung gives it the task as before (reassigned, not the fallback)."""
    # given
    Group.objects.create(name="reviewers")
    instance = instance_start("ladder_group_demo", {})
    task = HumanTask.objects.get(instance=instance)
    title = task.title

    # when
    fire_rungs(task, 2)

    # then
    task.refresh_from_db()
    assert set(task.candidate_groups.values_list("name", flat=True)) == {"approvers", "reviewers"}
    assert task.title == title
    assert AuditEvent.objects.filter(instance=instance, action="task.reassigned").count() == 1


def test_check_warns_of_a_rung_naming_a_group_that_does_not_exist(users, reviewers_flow):
    """``manage.py check --database default`` (and ``migrate``) names the workflow, the step, the rung and the
    group; without the database it says nothing (it cannot know)."""
    # given reviewers_flow's reassign rung names "reviewers", which does not exist; "managers" does

    # when
    with_db = [m for m in checks.run_checks(databases=["default"]) if m.id == MISSING_RUNG_GROUP]
    without = [m for m in checks.run_checks() if m.id == MISSING_RUNG_GROUP]

    # then
    ours = [m for m in with_db if "ladder_group_demo" in m.msg]
    assert [(m.level, m.msg) for m in ours] == [
        (
            checks.WARNING,
            "ladder_group_demo v1, step 'approve': escalation rung 2 names group 'reviewers', which does not exist.",
        )
    ]
    assert without == []
    # and once the group exists, the warning goes
    Group.objects.create(name="reviewers")
    again = [m for m in checks.run_checks(databases=["default"]) if m.id == MISSING_RUNG_GROUP]
    assert not [m for m in again if "ladder_group_demo" in m.msg]
