"""An escalation rung naming a group that does not exist (renamed or deleted since the definition was written), or
one that exists but has no active member who may act (empty, everyone deactivated, only the instance's initiator).

The rule (docs/architecture.md, "Decisions"): a rung never creates a group, and never hands a task to nobody new.
The sweep gives the task to managers and operators instead, titled with the missing name or with the group and why,
and ``manage.py check --database default`` warns of such a rung beforehand (approvals/checks.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.core import checks

from approvals.checks import EMPTY_RUNG_GROUP, MISSING_RUNG_GROUP
from approvals.models import HumanTask, Notification, Priority, TaskState
from approvals.services.base import APPROVE
from approvals.services.deadlines import tasks_sweep
from approvals.services.tasks import task_decide
from orchestrator import live_names
from orchestrator.dsl import Escalate, Human, Reassign, Remind, Workflow
from orchestrator.models import AuditEvent
from orchestrator.services.instances import instance_start
from tests.concurrency import race
from tests.factories import UserFactory

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
    """The group is there with someone who may act: the rung gives it the task as before (reassigned, not the
    fallback)."""
    # given
    UserFactory(username="reviewer", groups=[Group.objects.create(name="reviewers")])
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


# --- a group that exists but has nobody who may act -----------------------------------------------------------


def reviewers_task(initiator=None) -> HumanTask:
    """An instance of reviewers_flow and its task, the sweep run up to its reassign rung (the remind fired)."""
    instance = instance_start("ladder_group_demo", {}, initiator=initiator)
    task = HumanTask.objects.get(instance=instance)
    fire_rungs(task, 1)
    return task


def escalated_event(task: HumanTask) -> AuditEvent:
    return AuditEvent.objects.filter(subject_type="task", subject_id=task.pk, action="task.escalated").get()


def deactivated(username: str, groups: list[Group]) -> None:
    UserFactory(username=username, groups=groups, is_active=False)


@pytest.mark.parametrize(
    ("members", "why"),
    [
        ("none", "it has no members"),
        ("inactive", "every member is deactivated"),
        ("initiator", "its only active member started this workflow"),
    ],
)
def test_a_rung_naming_a_group_nobody_in_which_may_act_goes_to_managers_and_operators(
    users, reviewers_flow, members, why
):
    """The reviewers group exists but has no active member who may act: the reassign rung gave it the task and
    nobody new could act, and nothing said so. The initiator counts as nobody: four-eyes never lets them decide
    their own instance (docs/architecture.md, "Who may act on a task")."""
    # given a reviewers group that is empty, all deactivated, or only the instance's initiator
    reviewers = Group.objects.create(name="reviewers")
    initiator = None
    if members == "inactive":
        deactivated("gone1", [reviewers])
        deactivated("gone2", [reviewers])
    elif members == "initiator":
        initiator = UserFactory(username="reviewer", groups=[reviewers])
    task = reviewers_task(initiator)

    # when the reassign rung fires
    fire_rungs(task, 1)

    # then managers and operators have it, urgent, and the title and the audit say which group and why
    task.refresh_from_db()
    assert (task.state, task.escalation_level, task.priority) == (TaskState.ESCALATED, 2, Priority.URGENT)
    assert task.title.startswith(f"Group reviewers has no active member who may act ({why}) (")
    assert set(task.candidate_groups.values_list("name", flat=True)) == {
        "approvers",
        "reviewers",
        "managers",
        "operators",
    }
    event = escalated_event(task)
    assert event.payload == {"groups": ["managers", "operators"], "unable_group": "reviewers"}
    assert event.reason == f"Group reviewers has no active member who may act ({why})"
    assert not AuditEvent.objects.filter(subject_id=task.pk, action="task.reassigned").exists()
    told = set(Notification.objects.filter(task=task, kind="escalation").values_list("user__username", flat=True))
    assert told == {"manager", "operator"}
    # and the ladder goes on: its last rung fires at its time
    assert task.next_escalation_at == task.created_at + timedelta(hours=3)


def test_the_fallback_is_told_live_as_the_missing_groups_is(
    users, reviewers_flow, monkeypatch, django_capture_on_commit_callbacks
):
    """Managers' and operators' pages hear of it at once (a danger toast), as for a missing group."""
    # given an empty reviewers group, and the live news of the rung captured
    Group.objects.create(name="reviewers")
    task = reviewers_task()
    sent: list = []
    monkeypatch.setattr("orchestrator.services.unit.send_all_now", lambda news: sent.extend(news))

    # when
    with django_capture_on_commit_callbacks(execute=True):
        fire_rungs(task, 1)

    # then
    escalated = [(groups, event) for groups, event in sent if event["type"] == "task.escalated"]
    assert len(escalated) == 1
    groups, event = escalated[0]
    assert {live_names.people_group(users.managers.pk), live_names.people_group(users.operators.pk)} <= set(groups)
    assert event["level"] == "danger"
    assert event["message"].startswith("Escalation: Group reviewers has no active member who may act")


def test_a_member_of_the_group_who_may_act_takes_it_as_before(users, reviewers_flow):
    """One able reviewer among a deactivated one and the initiator: the rung hands the task to the group."""
    # given
    reviewers = Group.objects.create(name="reviewers")
    deactivated("gone", [reviewers])
    initiator = UserFactory(username="starter", groups=[reviewers])
    able = UserFactory(username="reviewer", groups=[reviewers])
    task = reviewers_task(initiator)

    # when
    fire_rungs(task, 1)

    # then
    task.refresh_from_db()
    assert set(task.candidate_groups.values_list("name", flat=True)) == {"approvers", "reviewers"}
    assert AuditEvent.objects.filter(subject_id=task.pk, action="task.reassigned").count() == 1
    assert not AuditEvent.objects.filter(subject_id=task.pk, action="task.escalated").exists()
    assert set(Notification.objects.filter(task=task).values_list("user__username", flat=True)) >= {able.username}
    assert not Notification.objects.filter(task=task, user=initiator).exists()


def test_a_member_who_joined_after_the_check_warned_is_counted_when_the_rung_fires(users, reviewers_flow):
    """``check`` warned of the empty group; someone joined it before the rung fired. The rung reads the group in its
    own transaction, so the newcomer gets the task, not the fallback."""
    # given the check's warning of an empty reviewers group
    reviewers = Group.objects.create(name="reviewers")
    task = reviewers_task()
    warned = [m for m in checks.run_checks(databases=["default"]) if m.id == EMPTY_RUNG_GROUP]
    assert [m for m in warned if "ladder_group_demo" in m.msg]

    # when a reviewer joins, then the rung fires
    newcomer = UserFactory(username="newcomer", groups=[reviewers])
    fire_rungs(task, 1)

    # then the group has it, and the newcomer is told and may decide
    task.refresh_from_db()
    assert AuditEvent.objects.filter(subject_id=task.pk, action="task.reassigned").count() == 1
    assert Notification.objects.filter(task=task, user=newcomer).exists()
    assert task_decide(task.pk, newcomer, APPROVE).state == TaskState.COMPLETED


def test_a_member_added_after_the_fallback_finds_the_task_in_their_queue(users, reviewers_flow):
    """The empty group stays a candidate: whoever is added to it later may act on the task."""
    # given
    reviewers = Group.objects.create(name="reviewers")
    task = reviewers_task()
    fire_rungs(task, 1)

    # when
    late = UserFactory(username="late", groups=[reviewers])

    # then
    assert task_decide(task.pk, late, APPROVE).state == TaskState.COMPLETED


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(3))
def test_two_sweeps_at_once_hand_the_task_on_once(users, reviewers_flow, round_):
    """Two beat processes sweep at the same instant: the instance's lock (SKIP LOCKED) lets one fire the rung;
    the other skips it, and the task is handed to managers and operators once."""
    # given an empty reviewers group and a task at its reassign rung
    Group.objects.create(name="reviewers")
    task = reviewers_task()
    task.refresh_from_db()
    due = task.next_escalation_at

    # when
    results = race(lambda: tasks_sweep(now=due), lambda: tasks_sweep(now=due))

    # then
    assert sorted(r["escalations"] for r in results) == [0, 1], results
    task.refresh_from_db()
    assert task.escalation_level == 2
    assert AuditEvent.objects.filter(subject_id=task.pk, action="task.escalated").count() == 1
    assert Notification.objects.filter(task=task, kind="escalation").count() == 2  # manager and operator, once


def test_with_nobody_anywhere_who_may_act_the_rung_neither_crashes_nor_loops(users, reviewers_flow):
    """Nobody at all may act: the reviewers group is empty, and the only approver, manager and operator is the
    initiator. The rung fires once, the task keeps its ladder, the event says nobody is left (nobody is told), and
    no sweep re-escalates it in between."""
    # given
    Group.objects.create(name="reviewers")
    boss = UserFactory(username="boss", groups=[users.approvers, users.managers, users.operators])
    for person in (users.staff, users.staff2, users.manager, users.operator):
        person.groups.clear()
    task = reviewers_task(initiator=boss)

    # when the reassign rung fires, and the sweep runs again before the next rung
    fire_rungs(task, 1)
    task.refresh_from_db()
    again = tasks_sweep(now=task.next_escalation_at - timedelta(minutes=1))

    # then
    assert again == {"escalations": 0}
    task.refresh_from_db()
    assert (task.state, task.escalation_level) == (TaskState.ESCALATED, 2)
    event = AuditEvent.objects.filter(subject_id=task.pk, action="task.escalated").latest("seq")
    assert event.payload["unable_group"] == "reviewers"
    assert event.payload["nobody_left"] is True
    assert not Notification.objects.filter(task=task, kind="escalation").exists()
    # and the last rung, naming managers (only the initiator in it), fires at its time and falls back once more
    fire_rungs(task, 1)
    task.refresh_from_db()
    assert task.escalation_level == 3
    assert task.title.startswith("Group managers has no active member who may act")
    assert task.next_escalation_at is None


def test_check_warns_of_a_rung_naming_a_group_with_no_active_member(users, reviewers_flow):
    """W002 names the workflow, the step, the rung and the group; a group with an active member is not named."""
    # given a reviewers group whose only member is deactivated
    reviewers = Group.objects.create(name="reviewers")
    deactivated("gone", [reviewers])

    # when
    ours = [
        m for m in checks.run_checks(databases=["default"]) if m.id == EMPTY_RUNG_GROUP and "ladder_group_demo" in m.msg
    ]

    # then
    assert [(m.level, m.msg) for m in ours] == [
        (
            checks.WARNING,
            "ladder_group_demo v1, step 'approve': escalation rung 2 names group 'reviewers', which has no active "
            "member.",
        )
    ]
    # and once someone active is in it, the warning goes
    UserFactory(username="reviewer", groups=[reviewers])
    again = [m for m in checks.run_checks(databases=["default"]) if m.id == EMPTY_RUNG_GROUP]
    assert not [m for m in again if "ladder_group_demo" in m.msg]
