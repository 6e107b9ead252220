"""People change under a task: delegation to active candidates only, tasks nobody can act on escalate at once,
reminders reach active people only, and a deactivated or departed assignee loses the claim."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse

from approvals.models import HumanTask, Notification, TaskCandidate, TaskState
from approvals.services.base import APPROVE, TaskError, TaskForbidden, TaskInvalid
from approvals.services.deadlines import tasks_sweep
from approvals.services.tasks import task_claim, task_decide, task_delegate
from orchestrator.dsl import Human, Remind, Workflow
from orchestrator.models import AuditEvent, WorkflowInstance
from orchestrator.services.instances import instance_start
from orchestrator.services.sweep import sweep
from tests.admin_forms import post_user_change
from tests.factories import ExpenseInputFactory, UserFactory

pytestmark = pytest.mark.django_db


def expense(initiator=None, **overrides) -> WorkflowInstance:
    return instance_start("expense_approval", ExpenseInputFactory(**overrides), initiator=initiator)


def task_of(instance: WorkflowInstance) -> HumanTask:
    return HumanTask.objects.filter(instance=instance).order_by("-id").first()


def last_event(task: HumanTask, action: str) -> AuditEvent:
    return AuditEvent.objects.filter(subject_type="task", subject_id=task.pk, action=action).latest("seq")


def admin_client(users) -> Client:
    client = Client(REMOTE_ADDR="203.0.113.9", HTTP_USER_AGENT="admin-browser/1.0")
    client.force_login(users.admin)
    return client


def deactivate(user: User) -> None:
    user.is_active = False
    user.save()


# --- delegation -----------------------------------------------------------------------------------------


def test_delegating_to_a_deactivated_candidate_is_refused(users):
    """A deactivated candidate cannot sign in, so a task is never parked with them; the task stays with its
    assignee."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    deactivate(users.staff2)

    # when / then
    with pytest.raises(TaskInvalid, match="staff2 is deactivated"):
        task_delegate(task.pk, users.staff, users.staff2)
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.CLAIMED, users.staff)


def test_delegating_to_oneself_is_refused(users):
    """A manager cannot 'delegate' an open task to themselves (a claim in disguise that skips the queue's rules)."""
    # given
    users.manager.groups.add(users.approvers)
    task = task_of(expense())

    # when / then
    with pytest.raises(TaskInvalid, match="yourself"):
        task_delegate(task.pk, users.manager, users.manager)
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.OPEN, None)


def test_a_manager_delegating_a_task_to_its_holder_is_refused(users):
    """Given a task staff holds, when a manager hands it to staff, then it is refused naming staff, and the claim
    (its time included) is as it was: a hand-over to the holder changes nothing but would reset the claim."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    task.refresh_from_db()
    claimed_at = task.claimed_at

    # when / then
    with pytest.raises(TaskInvalid, match="staff holds this task already"):
        task_delegate(task.pk, users.manager, users.staff)
    task.refresh_from_db()
    assert (task.state, task.assignee, task.claimed_at) == (TaskState.CLAIMED, users.staff, claimed_at)


def test_the_delegate_list_leaves_out_the_holder(users):
    """Given a task staff holds, when a manager opens it, then 'Delegate to' offers staff2 and not staff."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    client = Client()
    client.force_login(users.manager)

    # when
    response = client.get(reverse("approvals:task_detail", args=[task.pk]))

    # then
    assert [u.username for u in response.context["delegates"]] == ["staff2"]


def test_the_delegate_list_offers_active_candidates_only(users):
    """The task page's 'Delegate to' list leaves out deactivated candidates (and the viewer)."""
    # given
    UserFactory(username="staff3", groups=[users.approvers])
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    deactivate(users.staff2)
    client = Client()
    client.force_login(users.staff)

    # when
    response = client.get(reverse("approvals:task_detail", args=[task.pk]))

    # then
    assert [u.username for u in response.context["delegates"]] == ["staff3"]
    assert 'id="no-delegates"' not in response.content.decode()


def test_a_holder_with_nobody_to_hand_to_is_told_so_instead_of_a_form_that_vanished(users):
    """The task page says why it offers no 'Delegate to' when nobody else may take the task."""
    # given staff holds a task whose only other candidate has left
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    deactivate(users.staff2)
    client = Client()
    client.force_login(users.staff)

    # when staff opens it
    page = client.get(reverse("approvals:task_detail", args=[task.pk])).content.decode()

    # then the page says nobody else may take it, and offers no delegation
    assert 'id="no-delegates"' in page
    assert "Nobody else may take this task, so it cannot be delegated" in page
    assert reverse("approvals:task_delegate", args=[task.pk]) not in page


# --- nobody can act: escalate at once -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("groups", "named", "why"),
    [
        ((), ("nobody",), "no user named nobody"),
        (("auditors-not-yet-created",), (), "no active member in group auditors-not-yet-created"),
        (("empty-team",), ("nobody", "ghost"), "no user named nobody; no user named ghost; no active member in group"),
    ],
)
def test_a_task_nobody_can_act_on_is_an_escalation_from_the_start(users, register_workflow, groups, named, why):
    """Candidates that resolve to no active person (unknown usernames, empty or new groups) make the task a visible
    escalation for managers and operators at once, titled with the reason, instead of waiting forever."""
    # given
    Group.objects.get_or_create(name="empty-team")
    register_workflow(Workflow("nobody_flow", 1, [Human("check", candidate_groups=groups, candidate_users=named)]))

    # when
    task = task_of(instance_start("nobody_flow", {"title": "Invoice 17"}))

    # then
    assert task.state == TaskState.ESCALATED
    assert task.title.startswith("Nobody can approve: ")
    assert why in task.title
    assert {"managers", "operators"} <= set(task.candidate_groups.values_list("name", flat=True))
    assert last_event(task, "task.escalated").reason.startswith("Nobody can approve: ")
    told = set(Notification.objects.filter(task=task, kind="escalation").values_list("user__username", flat=True))
    assert told == {"manager", "operator"}
    page = Client()
    page.force_login(users.manager)
    assert task.title in page.get(reverse("approvals:escalations")).content.decode()
    assert task_decide(task.pk, users.manager, APPROVE).state == TaskState.COMPLETED


def test_a_group_of_deactivated_people_is_nobody(users):
    """Every approver deactivated: the expense's team approval escalates when it opens."""
    # given
    deactivate(users.staff)
    deactivate(users.staff2)

    # when
    task = task_of(expense())

    # then
    assert task.state == TaskState.ESCALATED
    assert "no active member in group approvers" in task.title


def test_the_initiator_alone_in_the_group_is_nobody(users):
    """The only active approver started the expense: four-eyes leaves nobody, so it escalates; the initiator,
    even as a manager, still cannot take it."""
    # given
    deactivate(users.staff2)
    users.staff.groups.add(users.managers)

    # when
    task = task_of(expense(initiator=users.staff))

    # then
    assert task.state == TaskState.ESCALATED
    assert "no one in group approvers may act" in task.title
    with pytest.raises(TaskForbidden, match="four-eyes"):
        task_claim(task.pk, users.staff)
    assert task_claim(task.pk, users.manager).assignee == users.manager


def test_a_quorum_larger_than_the_people_able_escalates(users, register_workflow):
    """A quorum of 3 in a group of 2 active approvers can never complete: it escalates, saying so."""
    # given
    register_workflow(Workflow("big_quorum", 1, [Human("sign", candidate_groups=["approvers"], quorum=3)]))

    # when
    task = task_of(instance_start("big_quorum", {}))

    # then
    assert task.state == TaskState.ESCALATED
    assert "only 2 of the 3 people needed can act" in task.title


def test_a_task_with_an_able_person_opens_normally(users, register_workflow):
    """The check costs no false alarm: one active named user is enough for a quorum of 1."""
    # given
    register_workflow(Workflow("one_able", 1, [Human("check", candidate_users=["nobody", "staff"])]))

    # when
    task = task_of(instance_start("one_able", {}))

    # then
    assert task.state == TaskState.OPEN
    assert not AuditEvent.objects.filter(subject_id=task.pk, action="task.escalated").exists()


# --- reminders ------------------------------------------------------------------------------------------


def test_reminders_go_to_active_candidates_only(users, register_workflow):
    """A reminder rung notifies the named candidates who are still active, not a deactivated one."""
    # given
    register_workflow(
        Workflow(
            "remind_named",
            1,
            [Human("check", candidate_users=["staff", "staff2"], escalation=[Remind(timedelta(hours=1))])],
        )
    )
    task = task_of(instance_start("remind_named", {}))
    deactivate(users.staff2)

    # when
    tasks_sweep(now=task.created_at + timedelta(hours=1, seconds=1))

    # then
    reminded = set(Notification.objects.filter(task=task, kind="reminder").values_list("user__username", flat=True))
    assert reminded == {"staff"}


# --- the assignee changes -------------------------------------------------------------------------------


def test_deactivating_the_assignee_in_the_admin_returns_the_task_to_the_queue(users):
    """An admin deactivates the approver who holds the task: the claim is released at once, audited with who did
    it, why and from where; the other approver can take it."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    client = admin_client(users)

    # when
    post_user_change(client, users.staff, is_active=False)

    # then
    users.staff.refresh_from_db()
    assert not users.staff.is_active
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.OPEN, None)
    event = last_event(task, "task.released")
    assert (event.actor_label, event.reason) == ("user:admin", "staff is deactivated: account deactivated")
    assert event.request_meta["ip"] == "203.0.113.9"
    assert task_claim(task.pk, users.staff2).assignee == users.staff2


@pytest.mark.parametrize("how", ["user.groups.remove", "group.user_set.remove", "user.groups.set", "user.groups.clear"])
def test_leaving_the_candidate_group_returns_the_task_to_the_queue(users, how):
    """However the membership goes (either side of the relation, set or clear), the assignee's claim goes with it."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)

    # when
    if how == "user.groups.remove":
        users.staff.groups.remove(users.approvers)
    elif how == "group.user_set.remove":
        users.approvers.user_set.remove(users.staff)
    elif how == "user.groups.set":
        users.staff.groups.set([users.managers])
    else:
        users.staff.groups.clear()

    # then
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.OPEN, None)
    event = last_event(task, "task.released")
    assert event.reason == "staff is no longer a candidate: left group approvers"
    assert event.actor_label == "system"


def test_the_last_able_assignee_leaving_escalates_the_task(users):
    """The assignee is the only active approver left; deactivating them releases the task and, nobody being able
    to act, escalates it to managers and operators."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    deactivate(users.staff2)

    # when
    deactivate(users.staff)

    # then
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.ESCALATED, None)
    assert task.title.startswith("Nobody can approve: no active member in group approvers")
    assert task_decide(task.pk, users.manager, APPROVE).state == TaskState.COMPLETED


def test_an_open_task_left_with_nobody_escalates_when_its_last_candidate_leaves(users):
    """Not only claims: an unclaimed task whose last able candidate is deactivated escalates too."""
    # given
    task = task_of(expense())
    deactivate(users.staff2)
    task.refresh_from_db()
    assert task.state == TaskState.OPEN

    # when
    deactivate(users.staff)

    # then
    task.refresh_from_db()
    assert task.state == TaskState.ESCALATED


def test_the_sweep_releases_a_claim_the_signals_never_saw(users):
    """A deactivation written without signals (a bulk update) is caught by the sweep's safety net."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    User.objects.filter(pk=users.staff.pk).update(is_active=False)

    # when
    report = sweep()

    # then
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.OPEN, None)
    assert report.unfit["unfit_released"] == 1
    assert last_event(task, "task.released").actor_label == "system:sweeper"


def test_the_sweep_releases_an_approval_parked_with_an_earlier_approver(users):
    """Given a manager approval held by the manager who gave the team approval (parked there by a delegation or a
    claim from before four-eyes refused them, written here directly), when the sweep runs, then the claim goes back
    to the queue, audited: the task waited on someone who may never approve it."""
    # given
    users.manager.groups.add(users.approvers)
    UserFactory(username="manager2", groups=[users.managers])
    instance = expense(amount="800")
    task_decide(task_of(instance).pk, users.manager, APPROVE)
    task = task_of(instance)
    HumanTask.objects.filter(pk=task.pk).update(state=TaskState.CLAIMED, assignee=users.manager)

    # when
    report = sweep()

    # then
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.OPEN, None)
    assert report.unfit["unfit_released"] == 1
    released = last_event(task, "task.released")
    assert (released.actor_label, released.reason) == (
        "system:sweeper",
        "manager approved another task of this instance: found by the sweep",
    )


def test_deciding_checks_the_deciders_authority_at_that_moment(users):
    """An assignee whose membership vanished without a signal (a raw delete) holds the claim still, but cannot
    decide: authority is read when they act, not when they claimed."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    User.groups.through.objects.filter(user_id=users.staff.pk, group_id=users.approvers.pk).delete()

    # when / then
    with pytest.raises(TaskForbidden, match="no longer a candidate"):
        task_decide(task.pk, users.staff, APPROVE)
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.CLAIMED, users.staff)


def test_deactivating_one_of_several_able_people_leaves_their_queue_alone(users):
    """The re-check touches only what needs it: with another approver still able, the queued tasks of the group
    keep their state and get no audit event (their instances are not even written)."""
    # given
    instances = [expense() for _ in range(3)]
    seqs = [i.audit_seq for i in WorkflowInstance.objects.filter(pk__in=[i.pk for i in instances]).order_by("pk")]

    # when
    deactivate(users.staff)

    # then
    after = WorkflowInstance.objects.filter(pk__in=[i.pk for i in instances]).order_by("pk")
    assert [i.audit_seq for i in after] == seqs
    assert {task_of(i).state for i in instances} == {TaskState.OPEN}


@pytest.mark.parametrize("action", ["decide", "claim", "delegate"])
def test_a_person_deactivated_after_their_request_was_read_cannot_act(users, action):
    """Given the deciding request read its user (active) and, before it took the task's lock, an administrator's
    deactivation committed; when the request acts; then it is refused: whether the account is active is read
    under the lock, like candidacy, not from the object the request loaded (two threads, made deterministic)."""
    # given
    task = task_of(expense())
    actor = users.manager if action == "delegate" else users.staff  # a manager may delegate an open task
    if action == "decide":
        task_claim(task.pk, users.staff)
    stale = User.objects.get(pk=actor.pk)  # what the request's authentication loaded
    deactivate(User.objects.get(pk=actor.pk))  # the admin's save, another object, committed first

    act = {
        "decide": lambda: task_decide(task.pk, stale, APPROVE),
        "claim": lambda: task_claim(task.pk, stale),
        "delegate": lambda: task_delegate(task.pk, stale, users.staff2),
    }[action]

    # when / then
    with pytest.raises(TaskForbidden, match="deactivated"):
        act()
    task.refresh_from_db()
    assert task.state in (TaskState.OPEN, TaskState.ESCALATED)
    assert not task.decisions.exists()


def test_deleting_the_only_named_candidate_escalates_the_task(users, register_workflow):
    """Given a task whose one candidate is a user named in the definition (who never acted, so deleting them is
    allowed); when an administrator deletes that user (their candidate row goes with them); then the task becomes
    a "nobody can act" escalation at once, instead of waiting forever with no candidate at all."""
    # given
    clerk = UserFactory(username="clerk")
    register_workflow(Workflow("named_flow", 1, [Human("check", candidate_users=["clerk"])]))
    task = task_of(instance_start("named_flow", {"title": "Invoice 18"}))
    assert task.state == TaskState.OPEN

    # when
    clerk.delete()

    # then
    task.refresh_from_db()
    assert task.state == TaskState.ESCALATED
    assert "Nobody can" in last_event(task, "task.escalated").reason


def test_deleting_a_group_rechecks_only_the_tasks_that_need_it(users, register_workflow):
    """Given open tasks whose candidates are two groups, each with an able member; when one group is deleted;
    then none of them is locked, written or audited (someone is still able), and the statements it takes do not
    grow with the number of tasks: a busy group's deletion is one request, not one lock and count per task."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    # given
    def delete_with(count: int) -> int:
        group = Group.objects.create(name=f"temp-{count}")
        flow = Workflow(f"temp_{count}", 1, [Human("check", candidate_groups=["approvers", group.name])])
        register_workflow(flow)
        group.user_set.add(UserFactory())
        instances = [instance_start(flow.name, {}) for _ in range(count)]
        seqs = sorted(WorkflowInstance.objects.filter(pk__in=[i.pk for i in instances]).values_list("audit_seq"))
        with CaptureQueriesContext(connection) as queries:
            group.delete()
        assert sorted(WorkflowInstance.objects.filter(pk__in=[i.pk for i in instances]).values_list("audit_seq")) == (
            seqs
        )
        assert {task_of(i).state for i in instances} == {TaskState.OPEN}
        return len(queries)

    # when
    few, many = delete_with(2), delete_with(12)

    # then
    assert many == few


@pytest.mark.parametrize("claimed", [False, True])
def test_deleting_the_candidate_group_after_the_task_opened_escalates_it(users, claimed):
    """Given an expense approval open (or claimed by an approver) for the approvers group; when the group is
    deleted; then the claim goes back and the task, with nobody left able, escalates in the same transaction."""
    # given
    task = task_of(expense())
    if claimed:
        task_claim(task.pk, users.staff)

    # when
    users.approvers.delete()

    # then
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.ESCALATED, None)
    if claimed:
        assert "deleted" in last_event(task, "task.released").reason


# --- a change of people at the same instant as an action --------------------------------------------------------


def _change_held_open(change, held: threading.Event, done: threading.Event, errors: list) -> None:
    """Run ``change`` (a deactivation, a group left: its signals re-check the person's tasks in its transaction)
    and keep that transaction open until ``done`` is set, as an administrator's save still writing."""
    try:
        with transaction.atomic():
            change()
            held.set()
            done.wait(timeout=10)
    except Exception as exc:  # the test asserts on it
        errors.append(exc)
        held.set()
    finally:
        connection.close()


CHANGES = {
    "deactivated": lambda user: deactivate(User.objects.get(pk=user.pk)),
    "left the group": lambda user: User.objects.get(pk=user.pk).groups.clear(),
    "removed from the group": lambda user: Group.objects.get(name="approvers").user_set.remove(user.pk),
    "group deleted": lambda user: Group.objects.get(name="approvers").delete(),
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_claim_at_the_same_instant_as_the_claimers_departure_leaves_no_claim_behind(users, change):
    """Given an administrator's change taking staff out (deactivated, out of the approvers, the group deleted) that
    has written its rows and re-checked staff's tasks (none claimed yet) but not committed, when staff claims a team
    task at that instant, then the claim is never left with someone who may no longer act on it: it waits for the
    change and is refused, where it read the account as it was before the change, claimed, and the change's
    re-check, which had looked already, never saw it (the task waited with a person who had left until the sweep's
    safety net)."""
    # given: staff2 is also named, so no change leaves the task short of people (whose re-check locks it anyway)
    task = task_of(expense())
    TaskCandidate.objects.create(task=task, user=users.staff2)
    held, done = threading.Event(), threading.Event()
    errors: list[Exception] = []
    admin = threading.Thread(target=_change_held_open, args=(lambda: CHANGES[change](users.staff), held, done, errors))
    admin.start()
    assert held.wait(timeout=10)
    outcome: list = []

    def claim() -> None:
        try:
            outcome.append(task_claim(task.pk, User.objects.get(pk=users.staff.pk)))
        except Exception as exc:
            outcome.append(exc)
        finally:
            connection.close()

    # when: staff claims while the change is still open, which then commits
    claimer = threading.Thread(target=claim)
    claimer.start()
    claimer.join(timeout=1)
    done.set()
    admin.join(timeout=10)
    claimer.join(timeout=10)

    # then
    assert not errors
    assert len(outcome) == 1
    assert isinstance(outcome[0], TaskError), outcome
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.OPEN, None)
