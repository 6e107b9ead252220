"""Four-eyes has no side door: the initiator steers none of their instance's tasks, whatever their role, and a
quorum task takes one decision per person with a clear conflict, never a 500."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals.models import HumanTask, Notification, TaskDecision, TaskKind, TaskState
from approvals.services.base import APPROVE, REJECT, RESOLVED, TaskConflict, TaskForbidden, able_people
from approvals.services.tasks import task_claim, task_decide, task_delegate, task_release
from orchestrator.audit_actions import AuditAction
from orchestrator.dsl import Human, Parallel, Workflow
from orchestrator.models import AuditEvent, InstanceState, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.concurrency import race
from tests.factories import ExpenseInputFactory, GroupFactory, OrderInputFactory, UserFactory

pytestmark = pytest.mark.django_db


def expense(initiator=None, **overrides) -> WorkflowInstance:
    return instance_start("expense_approval", ExpenseInputFactory(**overrides), initiator=initiator)


def task_of(instance: WorkflowInstance) -> HumanTask:
    return HumanTask.objects.filter(instance=instance).order_by("-id").first()


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page_text(response) -> str:
    return " ".join(response.content.decode().split())


@pytest.fixture(params=["manager", "admin"])
def steering_initiator(request, users):
    """An initiator with the power to delegate and release anyone's task: a manager, or a superuser."""
    return getattr(users, request.param)


# --- the initiator steers nothing -----------------------------------------------------------------------


def test_the_initiator_cannot_delegate_their_instances_task(users, steering_initiator):
    """A manager (or admin) who started the expense cannot hand its claimed task to the approver they prefer."""
    # given
    task = task_of(expense(initiator=steering_initiator))
    task_claim(task.pk, users.staff)

    # when / then
    with pytest.raises(TaskForbidden, match="four-eyes"):
        task_delegate(task.pk, steering_initiator, users.staff2)
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.CLAIMED, users.staff)


def test_the_initiator_cannot_delegate_an_open_task_of_their_instance(users, steering_initiator):
    """Nor assign an unclaimed one."""
    # given
    task = task_of(expense(initiator=steering_initiator))

    # when / then
    with pytest.raises(TaskForbidden, match="four-eyes"):
        task_delegate(task.pk, steering_initiator, users.staff2)
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.OPEN, None)


def test_the_initiator_cannot_release_their_instances_task(users, steering_initiator):
    """Releasing the approver they dislike (to let another take it) is steering too."""
    # given
    task = task_of(expense(initiator=steering_initiator))
    task_claim(task.pk, users.staff)

    # when / then
    with pytest.raises(TaskForbidden, match="four-eyes"):
        task_release(task.pk, steering_initiator)
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.CLAIMED, users.staff)


def test_a_manager_who_did_not_start_it_still_delegates_and_releases(users):
    """The rule removes the initiator's side door only: another manager keeps both powers."""
    # given
    task = task_of(expense(initiator=users.admin))
    task_claim(task.pk, users.staff)

    # when
    task_delegate(task.pk, users.manager, users.staff2)
    released = task_release(task.pk, users.manager)

    # then
    assert (released.state, released.assignee) == (TaskState.OPEN, None)


def test_the_initiator_cannot_resolve_their_instances_escalation(users, run_steps):
    """An operator who started the order cannot retry, skip or resolve its failed refund; another operator can."""
    # given
    other = UserFactory(username="operator2", groups=[users.operators])
    instance = instance_start(
        "order_fulfilment", OrderInputFactory(fail_shipping=True, fail_refund=4), initiator=users.operator
    )
    run_steps(instance, advance=True)
    escalation = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)

    # when / then
    with pytest.raises(TaskForbidden, match="four-eyes"):
        task_decide(escalation.pk, users.operator, RESOLVED, comment="refunded by hand")
    with pytest.raises(TaskForbidden, match="four-eyes"):
        task_claim(escalation.pk, users.operator)
    escalation.refresh_from_db()
    assert escalation.state == TaskState.OPEN
    assert task_decide(escalation.pk, other, RESOLVED, comment="refunded by hand").state == TaskState.COMPLETED


@pytest.mark.parametrize("action", ["task_delegate", "task_release"])
def test_the_initiators_side_door_is_a_403_with_a_message_on_the_page(users, action):
    """Through the pages: 403, the task page saying why, and the task unchanged."""
    # given
    task = task_of(expense(initiator=users.manager))
    task_claim(task.pk, users.staff)

    # when
    response = login(users.manager).post(reverse(f"approvals:{action}", args=[task.pk]), {"to_user": users.staff2.pk})

    # then
    assert response.status_code == 403
    assert "You started this workflow, so you cannot act on its tasks (four-eyes rule)." in page_text(response)
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.CLAIMED, users.staff)


def refusals_of(user) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=AuditAction.ACCESS_REFUSED, actor_id=user.pk).order_by("id"))


@pytest.mark.parametrize("door", ["task page", "bulk claim"])
def test_the_initiators_claim_is_refused_and_recorded_through_every_door(users, door):
    """Given an expense staff started (staff is an approver: a candidate of its task), when staff claims it from
    its task page or ticks it in a bulk claim of the team queue, then the claim is refused saying why, the task
    stays open, and the refusal is an ``access.refused`` event naming the task: the page's 403 was recorded, the
    bulk claim's refusal of the same claim was not (a side door that left no trace)."""
    # given
    task = task_of(expense(initiator=users.staff))
    other = task_of(expense())
    client = login(users.staff)

    # when
    if door == "task page":
        response = client.post(reverse("approvals:task_claim", args=[task.pk]), follow=True)
    else:
        response = client.post(reverse("approvals:tasks_claim_bulk"), {"task": [task.pk, other.pk]}, follow=True)

    # then
    assert "You started this workflow, so you cannot act on its tasks (four-eyes rule)." in page_text(response)
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.OPEN, None)
    recorded = refusals_of(users.staff)
    assert [(e.subject_type, e.subject_id, e.payload["status"]) for e in recorded] == [("task", task.pk, 403)]
    assert recorded[0].payload["method"] == "POST"


def test_a_bulk_claim_of_a_task_not_mine_to_see_is_recorded_as_a_hidden_refusal(users, register_workflow):
    """Given a task of the operators' (staff2 is no candidate: they may not know it exists), when staff2 posts its
    id in a bulk claim, twice, then it is refused without its title and recorded once as a hidden refusal (status
    404), as the single claim's 404 is; an id that names no task is recorded as nothing."""
    # given
    register_workflow(
        Workflow("secret", 1, [Human("check", candidate_groups=["operators"], task_title="Secret merger")])
    )
    hidden = task_of(instance_start("secret", {}))
    client = login(users.staff2)

    # when
    response = client.post(reverse("approvals:tasks_claim_bulk"), {"task": [hidden.pk, 2**62]}, follow=True)
    client.post(reverse("approvals:tasks_claim_bulk"), {"task": [hidden.pk]})

    # then
    assert "Secret merger" not in page_text(response)
    recorded = refusals_of(users.staff2)
    assert [(e.subject_type, e.subject_id, e.payload["status"], e.payload["hidden"]) for e in recorded] == [
        ("task", hidden.pk, 404, True)
    ]


def test_the_initiators_task_page_offers_no_steering(users):
    """The initiator-manager's task page shows the four-eyes notice and neither a delegate nor a release form."""
    # given
    task = task_of(expense(initiator=users.manager))
    task_claim(task.pk, users.staff)

    # when
    content = login(users.manager).get(reverse("approvals:task_detail", args=[task.pk])).content.decode()

    # then
    assert "someone else must decide its tasks, and you cannot claim, delegate, release or resolve them" in content
    assert reverse("approvals:task_delegate", args=[task.pk]) not in content
    assert reverse("approvals:task_release", args=[task.pk]) not in content


# --- whoever approved an earlier step steers nothing of the later ones ------------------------------------


@pytest.fixture
def approved_earlier(users) -> tuple[HumanTask, object, object]:
    """An 800 EUR expense whose team approval was given by the manager (also an approver): its manager approval
    is open, claimed by manager2; manager3 is another manager. Returns (task, manager2, manager3)."""
    users.manager.groups.add(users.approvers)
    manager2 = UserFactory(username="manager2", groups=[users.managers])
    manager3 = UserFactory(username="manager3", groups=[users.managers])
    instance = expense(amount="800")
    task_decide(task_of(instance).pk, users.manager, APPROVE)
    task = task_of(instance)
    assert task.step.name == "manager_approval"
    task_claim(task.pk, manager2)
    return task, manager2, manager3


def test_who_approved_an_earlier_step_cannot_delegate_the_later_one(users, approved_earlier):
    """Given the manager who gave the team approval, when they hand the manager approval (held by manager2) to
    manager3, then four-eyes refuses it: they may not decide it, so they may not choose who does."""
    # given
    task, manager2, manager3 = approved_earlier

    # when / then
    with pytest.raises(TaskForbidden, match="four-eyes"):
        task_delegate(task.pk, users.manager, manager3)
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.CLAIMED, manager2)


def test_who_approved_an_earlier_step_cannot_assign_the_later_one_while_it_is_open(users, approved_earlier):
    """Nor hand it out while nobody holds it."""
    # given
    task, manager2, manager3 = approved_earlier
    task_release(task.pk, manager2)

    # when / then
    with pytest.raises(TaskForbidden, match="four-eyes"):
        task_delegate(task.pk, users.manager, manager3)
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.OPEN, None)


def test_who_approved_an_earlier_step_cannot_release_someone_elses_claim_on_the_later_one(users, approved_earlier):
    """Taking the task from the approver they dislike, for another to claim, is steering too."""
    # given
    task, manager2, _ = approved_earlier

    # when / then
    with pytest.raises(TaskForbidden, match="four-eyes"):
        task_release(task.pk, users.manager)
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.CLAIMED, manager2)


def test_a_quorum_voter_cannot_choose_who_casts_the_next_vote(users, quorum_task):
    """A manager among the approvers votes on a quorum-3 task, then hands the waiting task to a colleague: refused,
    saying they approved this task (not "another step"), their vote stands and the task stays open for anyone;
    their task page says the same instead of offering forms."""
    # given
    users.staff.groups.add(users.managers)
    task_decide(quorum_task.pk, users.staff, APPROVE)

    # when / then
    with pytest.raises(TaskForbidden, match=r"You already approved this task .* \(four-eyes rule\)"):
        task_delegate(quorum_task.pk, users.staff, users.staff2)
    quorum_task.refresh_from_db()
    assert (quorum_task.state, quorum_task.assignee, quorum_task.approvals) == (TaskState.OPEN, None, 1)
    page = login(users.staff).get(reverse("approvals:task_detail", args=[quorum_task.pk]))
    assert "You already approved this task (one of the approvals it needs)" in page_text(page)


def test_the_refused_delegation_is_a_403_with_the_reason_and_the_note_kept(users, approved_earlier):
    """Through the task page: 403, the reason said, the note as typed shown (not sent), and the task unchanged;
    the page offers them neither a delegate nor a release form."""
    # given
    task, manager2, manager3 = approved_earlier

    # when
    response = login(users.manager).post(
        reverse("approvals:task_delegate", args=[task.pk]), {"to_user": manager3.pk, "note": "over to you, Ann"}
    )

    # then
    assert response.status_code == 403
    text = page_text(response)
    assert "You already approved another step of this workflow, so you cannot decide this task or choose who" in text
    assert "over to you, Ann" in text
    content = response.content.decode()
    assert f'action="{reverse("approvals:task_delegate", args=[task.pk])}"' not in content
    assert f'action="{reverse("approvals:task_release", args=[task.pk])}"' not in content
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.CLAIMED, manager2)


@pytest.fixture
def two_reviews(register_workflow) -> tuple[HumanTask, HumanTask]:
    """An instance of two parallel approvals by the approvers (legal, finance), both open."""
    register_workflow(
        Workflow(
            "two_reviews",
            1,
            [
                Parallel(
                    "both",
                    branches=[
                        [Human("legal", candidate_groups=["approvers"])],
                        [Human("finance", candidate_groups=["approvers"])],
                    ],
                )
            ],
        )
    )
    legal, finance = HumanTask.objects.filter(instance=instance_start("two_reviews", {})).order_by("id")
    return legal, finance


def test_approving_one_branch_gives_back_the_other_branchs_approval_one_holds(users, two_reviews):
    """Given staff holding both parallel approvals of one instance, when staff approves one, then the other goes
    back to the queue at once, audited, and staff2 can take it: held by staff, whom four-eyes now refuses, it waited
    for nobody (out of everyone's queue) until the sweep's safety net."""
    # given
    legal, finance = two_reviews
    task_claim(legal.pk, users.staff)
    task_claim(finance.pk, users.staff)

    # when
    task_decide(legal.pk, users.staff, APPROVE)

    # then
    finance.refresh_from_db()
    assert (finance.state, finance.assignee) == (TaskState.OPEN, None)
    released = AuditEvent.objects.get(subject_type="task", subject_id=finance.pk, action=AuditAction.TASK_RELEASED)
    assert "approved another task of this instance" in released.reason
    assert task_claim(finance.pk, users.staff2).assignee == users.staff2


def test_approving_a_branch_leaves_others_claims_and_ones_other_instances_alone(users, two_reviews):
    """Only the approver's own claims on approvals of the same instance go back: a colleague's claim on the other
    branch and the approver's claims elsewhere stay."""
    # given
    legal, finance = two_reviews
    elsewhere = task_of(expense())
    task_claim(legal.pk, users.staff)
    task_claim(finance.pk, users.staff2)
    task_claim(elsewhere.pk, users.staff)

    # when
    task_decide(legal.pk, users.staff, APPROVE)

    # then
    finance.refresh_from_db()
    elsewhere.refresh_from_db()
    assert (finance.assignee, elsewhere.assignee) == (users.staff2, users.staff)


def test_a_holder_barred_after_approving_a_parallel_branch_can_still_give_the_task_back(users, two_reviews):
    """Given staff holding one branch's approval after approving the other (a claim from before the approval gave
    it back, written here directly), when staff opens it, then the page says four-eyes bars them and still offers
    Release, which gives it back (it chooses nobody)."""
    # given
    legal, finance = two_reviews
    task_decide(legal.pk, users.staff, APPROVE)
    HumanTask.objects.filter(pk=finance.pk).update(
        state=TaskState.CLAIMED, assignee=users.staff, claimed_at=timezone.now()
    )
    client = login(users.staff)

    # when
    page = client.get(reverse("approvals:task_detail", args=[finance.pk]))
    released = client.post(reverse("approvals:task_release", args=[finance.pk]))

    # then
    assert "You already approved another step of this workflow" in page_text(page)
    assert f'action="{reverse("approvals:task_release", args=[finance.pk])}"' in page.content.decode()
    assert released.status_code == 302
    finance.refresh_from_db()
    assert (finance.state, finance.assignee) == (TaskState.OPEN, None)


@pytest.fixture
def two_reviews_by_one(register_workflow, users) -> tuple[HumanTask, HumanTask]:
    """An instance of two parallel approvals (legal, finance) that only staff may decide: group reviewers has no
    one else, so four-eyes leaves the second one with nobody once staff approves the first."""
    GroupFactory(name="reviewers").user_set.add(users.staff)
    register_workflow(
        Workflow(
            "two_reviews_by_one",
            1,
            [
                Parallel(
                    "both",
                    branches=[
                        [Human("legal", candidate_groups=["reviewers"])],
                        [Human("finance", candidate_groups=["reviewers"])],
                    ],
                )
            ],
        )
    )
    legal, finance = HumanTask.objects.filter(instance=instance_start("two_reviews_by_one", {})).order_by("id")
    return legal, finance


@pytest.mark.parametrize("held", [False, True], ids=["open", "held-by-the-approver"])
def test_approving_one_branch_escalates_the_other_when_the_approver_was_the_last_able(users, two_reviews_by_one, held):
    """Given two parallel approvals only staff may decide (the second open, or held by staff), when staff approves
    the first, then the second escalates at once to managers and operators, titled with why, and managers and
    operators may decide it: four-eyes bars staff from it now, and open it waited for nobody until its SLA passed."""
    # given
    legal, finance = two_reviews_by_one
    if held:
        task_claim(finance.pk, users.staff)

    # when
    task_decide(legal.pk, users.staff, APPROVE)

    # then
    finance.refresh_from_db()
    assert finance.state == TaskState.ESCALATED
    assert finance.title.startswith("Nobody can approve")
    escalated = AuditEvent.objects.get(subject_type="task", subject_id=finance.pk, action=AuditAction.TASK_ESCALATED)
    assert escalated.payload["nobody_can_act"] is True
    assert set(able_people(finance)) == {users.manager.pk, users.operator.pk}


def test_approving_one_branch_leaves_the_other_open_while_someone_else_may_decide_it(users, two_reviews):
    """Given two parallel approvals the approvers (staff, staff2) may decide, when staff approves the first, then
    the second stays open for staff2: nothing escalates while someone is left."""
    # given
    legal, finance = two_reviews

    # when
    task_decide(legal.pk, users.staff, APPROVE)

    # then
    finance.refresh_from_db()
    assert finance.state == TaskState.OPEN
    assert not AuditEvent.objects.filter(subject_type="task", subject_id=finance.pk, action=AuditAction.TASK_ESCALATED)


# --- quorum: one decision per person --------------------------------------------------------------------


@pytest.fixture
def quorum_task(register_workflow) -> HumanTask:
    """A quorum-3 sign-off by the approvers (staff, staff2, staff3)."""
    register_workflow(Workflow("quorum_three", 1, [Human("sign_off", candidate_groups=["approvers"], quorum=3)]))
    UserFactory(username="staff3", groups=["approvers"])
    return task_of(instance_start("quorum_three", {}))


@pytest.mark.parametrize(("second", "comment"), [(APPROVE, ""), (REJECT, "changed my mind")])
def test_a_second_decision_on_a_quorum_task_is_a_conflict(users, quorum_task, second, comment):
    """Approving then rejecting (or approving twice) is refused with a clear conflict; the first decision stands."""
    # given
    task_decide(quorum_task.pk, users.staff, APPROVE)

    # when / then
    with pytest.raises(TaskConflict, match="already decided this task"):
        task_decide(quorum_task.pk, users.staff, second, comment=comment)
    quorum_task.refresh_from_db()
    assert (quorum_task.state, quorum_task.approvals) == (TaskState.OPEN, 1)
    assert list(TaskDecision.objects.filter(task=quorum_task).values_list("decision", flat=True)) == [APPROVE]


def test_a_second_decision_through_the_page_is_a_message_not_a_500(users, quorum_task):
    """The same through the task page: a conflict (409) re-showing the page with the reason, instead of HTTP 500."""
    # given
    client = login(users.staff)
    client.post(reverse("approvals:task_decide", args=[quorum_task.pk]), {"decision": APPROVE})

    # when
    response = client.post(
        reverse("approvals:task_decide", args=[quorum_task.pk]), {"decision": REJECT, "comment": "no"}, follow=True
    )

    # then
    assert response.status_code == 409
    assert "You have already decided this task" in page_text(response)
    assert TaskDecision.objects.filter(task=quorum_task).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(3))
def test_the_same_person_deciding_twice_at_once_counts_once(users, quorum_task, round_):
    """A double-click race: approve and reject from one person at the same instant; one counts, the other is a
    conflict (never an IntegrityError)."""
    # when
    results = race(
        lambda: task_decide(quorum_task.pk, users.staff, APPROVE),
        lambda: task_decide(quorum_task.pk, users.staff, REJECT, comment="oops"),
    )

    # then
    assert sorted(type(r).__name__ for r in results) == ["HumanTask", "TaskConflict"], results
    assert TaskDecision.objects.filter(task=quorum_task).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(3))
def test_two_people_approving_a_quorum_task_at_once_both_count(users, quorum_task, round_):
    """Two approvers at the same instant on a quorum-3 task: both approvals are recorded, the task waits for the
    third, and the third completes it."""
    # when
    results = race(
        lambda: task_decide(quorum_task.pk, users.staff, APPROVE),
        lambda: task_decide(quorum_task.pk, users.staff2, APPROVE),
    )

    # then
    assert all(isinstance(r, HumanTask) for r in results), results
    quorum_task.refresh_from_db()
    assert (quorum_task.state, quorum_task.approvals) == (TaskState.OPEN, 2)
    staff3 = UserFactory(username="staff3")
    assert task_decide(quorum_task.pk, staff3, APPROVE).state == TaskState.COMPLETED
    quorum_task.instance.refresh_from_db()
    assert quorum_task.instance.state == InstanceState.COMPLETED


def test_an_escalation_only_its_initiator_could_resolve_goes_to_managers_too(users, run_steps):
    """The only operator started the order: its failed refund's escalation says nobody can resolve it, reaches the
    managers, and the initiator is not told to act on it."""
    # given
    instance = instance_start(
        "order_fulfilment", OrderInputFactory(fail_shipping=True, fail_refund=4), initiator=users.operator
    )

    # when
    run_steps(instance, advance=True)

    # then
    escalation = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)
    assert escalation.state == TaskState.ESCALATED
    assert escalation.title.startswith("Nobody can resolve: no one in group operators may act")
    told = set(Notification.objects.filter(task=escalation).values_list("user__username", flat=True))
    assert told == {"manager"}
    assert task_decide(escalation.pk, users.manager, RESOLVED, comment="refunded by hand").state == TaskState.COMPLETED
