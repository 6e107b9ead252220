"""Human task services: claim, release, decide, delegate, escalate, resolve; permissions and races."""

from __future__ import annotations

import importlib
from datetime import timedelta

import pytest
from django.apps import apps as django_apps
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals.models import HumanTask, TaskDecision, TaskKind, TaskState
from approvals.selectors import inbox_counts, my_tasks, team_queue
from approvals.services.base import (
    APPROVE,
    FAIL,
    REJECT,
    RESOLVED,
    RETRY,
    SKIP,
    TaskConflict,
    TaskForbidden,
    TaskInvalid,
    TaskNotFound,
)
from approvals.services.deadlines import tasks_sweep
from approvals.services.tasks import (
    task_claim,
    task_decide,
    task_delegate,
    task_release,
    task_snooze,
    tasks_claim_bulk,
)
from orchestrator import registry
from orchestrator.audit import Actor
from orchestrator.dsl import ESCALATE, Human, Retry, StepContext, Task, Workflow
from orchestrator.models import AuditEvent, InstanceState, StepKind, StepState, WorkflowInstance
from orchestrator.selectors import hide_paths
from orchestrator.services.instances import instance_pause, instance_resume, instance_start
from tests.concurrency import race
from tests.factories import ExpenseInputFactory, OrderInputFactory, UserFactory

pytestmark = pytest.mark.django_db


def expense(initiator=None, **overrides) -> WorkflowInstance:
    return instance_start("expense_approval", ExpenseInputFactory(**overrides), initiator=initiator)


def task_of(instance: WorkflowInstance, step: str | None = None) -> HumanTask:
    tasks = HumanTask.objects.filter(instance=instance).order_by("-id")
    return (tasks.filter(step__name=step) if step else tasks).first()


def task_events(task: HumanTask) -> list[tuple[str, str]]:
    events = AuditEvent.objects.filter(subject_type="task", subject_id=task.pk).order_by("seq")
    return list(events.values_list("action", "actor_label"))


# --- claim and release ----------------------------------------------------------------------------------


def test_claim_takes_an_open_task(users):
    """A candidate claims an open task; claiming again is a no-op, anyone else gets a conflict naming the holder."""
    # given
    task = task_of(expense())

    # when
    claimed = task_claim(task.pk, users.staff)
    again = task_claim(task.pk, users.staff)

    # then
    task.refresh_from_db()
    assert (claimed.state, again.state, task.state, task.assignee) == (
        TaskState.CLAIMED,
        TaskState.CLAIMED,
        TaskState.CLAIMED,
        users.staff,
    )
    assert task_events(task) == [("task.opened", "system:api"), ("task.claimed", "user:staff")]
    with pytest.raises(TaskConflict, match="already claimed by staff"):
        task_claim(task.pk, users.staff2)


def test_release_puts_the_task_back_in_the_queue(users):
    """The assignee (or a manager) releases a claimed task; another candidate cannot release it for them."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)

    # when
    with pytest.raises(TaskForbidden):
        task_release(task.pk, users.staff2)
    released = task_release(task.pk, users.staff)

    # then
    assert (released.state, released.assignee_id, released.claimed_at) == (TaskState.OPEN, None, None)
    task_claim(task.pk, users.staff2)
    assert task_release(task.pk, users.manager).state == TaskState.OPEN
    with pytest.raises(TaskConflict, match="not claimed"):
        task_release(task.pk, users.manager)


def test_release_audited_gives_a_claim_back_audited_and_announced(users):
    """The one way a service gives back someone's claim (four-eyes after approving, a person who may no longer act):
    given staff holding a task, when it is released for a reason, then it is open, the audit event says who held it
    and why, and the news reaches the candidates and staff (no longer a holder, their list must drop it)."""
    from django.db import transaction

    from approvals.services.base import release_audited
    from orchestrator import live_names
    from orchestrator.services.unit import Unit

    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)

    # when
    with transaction.atomic():
        instance = WorkflowInstance.objects.select_for_update().get(pk=task.instance_id)
        unit = Unit(instance, Actor.system("tests"))
        held = HumanTask.objects.get(pk=task.pk)
        release_audited(unit, held, users.staff.pk, "staff is on leave")
        notes = list(unit.notes)
        unit.finish()

    # then
    task.refresh_from_db()
    assert (task.state, task.assignee_id, task.claimed_at) == (TaskState.OPEN, None, None)
    event = AuditEvent.objects.filter(subject_type="task", subject_id=task.pk).latest("seq")
    assert (event.action, event.from_state, event.to_state, event.reason, event.payload) == (
        "task.released",
        TaskState.CLAIMED,
        TaskState.OPEN,
        "staff is on leave",
        {"from_user": users.staff.pk},
    )
    [note] = notes
    assert note["event"]["type"] == "task.released"
    assert note["event"]["message"] == f"Back in the queue: {task.title}"
    assert live_names.user_group(users.staff.pk) in note["groups"]
    assert live_names.people_group(users.approvers.pk) in note["groups"]


def test_only_candidates_act_and_others_do_not_even_see_the_task(users):
    """A non-candidate without a manager role gets TaskNotFound; a manager who is no candidate gets TaskForbidden."""
    # given
    task = task_of(expense())

    # when / then
    with pytest.raises(TaskNotFound):
        task_claim(task.pk, users.operator)
    with pytest.raises(TaskForbidden, match="not a candidate"):
        task_decide(task.pk, users.manager, APPROVE)
    task.refresh_from_db()
    assert (task.state, task.assignee_id) == (TaskState.OPEN, None)


# --- deciding -------------------------------------------------------------------------------------------


def test_approval_moves_the_instance_on(users, run_steps):
    """Approving a small expense at team level pays it out and completes the instance."""
    # given
    instance = expense(amount="120")
    task = task_of(instance)
    task_claim(task.pk, users.staff)

    # when
    task_decide(task.pk, users.staff, APPROVE, comment="receipt attached")
    run_steps(instance)

    # then
    instance.refresh_from_db()
    task.refresh_from_db()
    assert (task.state, task.decision, task.completed_by) == (TaskState.COMPLETED, APPROVE, users.staff)
    assert instance.state == InstanceState.COMPLETED
    assert instance.data["team_approval"] == {"decision": APPROVE, "by": "staff", "comment": "receipt attached"}
    work = instance.steps.filter(kind__in=[StepKind.HUMAN, StepKind.TASK]).order_by("id")
    assert list(work.values_list("name", "state")) == [
        ("team_approval", StepState.SUCCEEDED),
        ("payout", StepState.SUCCEEDED),
    ]


def test_reject_requires_a_comment(users):
    """A rejection without a reason is TaskInvalid (with a field error) and leaves the task open."""
    # given
    task = task_of(expense())

    # when
    with pytest.raises(TaskInvalid) as invalid:
        task_decide(task.pk, users.staff, REJECT, comment="   ")

    # then
    assert invalid.value.errors == {"comment": ["Required on reject."]}
    task.refresh_from_db()
    assert task.state == TaskState.OPEN
    assert not TaskDecision.objects.exists()


def test_a_rejection_with_a_reason_ends_the_expense(users, run_steps):
    """A rejected expense (on_reject="end") completes with outcome "rejected" and pays nothing."""
    # given
    instance = expense()
    task = task_of(instance)

    # when
    task_decide(task.pk, users.staff, REJECT, comment="no receipt")
    run_steps(instance)

    # then
    instance.refresh_from_db()
    assert (instance.state, instance.outcome) == (InstanceState.COMPLETED, "rejected")
    assert not instance.steps.filter(name="payout").exists()


def test_an_unknown_decision_is_invalid(users):
    """An approval task takes approve or reject, nothing else."""
    # given
    task = task_of(expense())
    # when / then
    with pytest.raises(TaskInvalid, match=r"takes the decision \"approve\" or \"reject\".*not \"maybe\""):
        task_decide(task.pk, users.staff, "maybe")


# --- four-eyes ------------------------------------------------------------------------------------------


def test_the_initiator_cannot_decide_their_own_instance(users):
    """A candidate who started the instance can neither claim nor decide its task."""
    # given
    task = task_of(expense(initiator=users.staff))

    # when / then
    with pytest.raises(TaskForbidden, match="four-eyes"):
        task_claim(task.pk, users.staff)
    with pytest.raises(TaskForbidden, match="four-eyes"):
        task_decide(task.pk, users.staff, APPROVE)
    task.refresh_from_db()
    assert task.state == TaskState.OPEN


def test_not_even_a_superuser_approves_what_they_started(users):
    """The four-eyes rule holds for an admin who is also a candidate."""
    # given
    users.admin.groups.add(users.approvers)
    task = task_of(expense(initiator=users.admin))

    # when / then
    with pytest.raises(TaskForbidden, match="four-eyes"):
        task_decide(task.pk, users.admin, APPROVE)
    assert task_decide(task.pk, users.staff, APPROVE).state == TaskState.COMPLETED


def test_one_person_cannot_approve_two_levels(users, run_steps):
    """Having approved at team level, a person who then joins managers still cannot sign the manager level."""
    # given
    instance = expense(initiator=users.operator, amount="800")
    task_decide(task_of(instance, "team_approval").pk, users.staff, APPROVE)
    manager_task = task_of(instance, "manager_approval")
    users.staff.groups.add(users.managers)

    # when
    with pytest.raises(TaskForbidden, match="already approved another step"):
        task_decide(manager_task.pk, users.staff, APPROVE)

    # then
    manager_task.refresh_from_db()
    assert manager_task.state == TaskState.OPEN
    task_decide(manager_task.pk, users.manager, APPROVE)
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED


@pytest.mark.parametrize("decision", [REJECT, APPROVE])
def test_who_approved_an_earlier_step_decides_no_later_approval_either_way(users, run_steps, decision):
    """Four-eyes bars a second approver from deciding the later approval at all, as the task page and
    docs/architecture.md ("Who may act on a task") say: a rejection chooses the instance's outcome too (it ends it
    or routes it to compensation), and the page already hides the forms from them."""
    # given
    instance = expense(initiator=users.operator, amount="800")
    task_decide(task_of(instance, "team_approval").pk, users.staff, APPROVE)
    manager_task = task_of(instance, "manager_approval")
    users.staff.groups.add(users.managers)

    # when
    with pytest.raises(TaskForbidden, match="already approved another step"):
        task_decide(manager_task.pk, users.staff, decision, comment="Not within the budget.")

    # then
    manager_task.refresh_from_db()
    assert manager_task.state == TaskState.OPEN
    assert not manager_task.decisions.exists()


# --- opening: who the candidates are ---------------------------------------------------------------------


def test_a_task_for_named_users_and_a_group_nobody_created_yet_reaches_all_of_them(users, register_workflow):
    """Candidates named in the definition are resolved when the task opens: named users directly, and a group
    that does not exist yet is created (an empty but visible queue) rather than leaving the task with no one."""
    # given
    register_workflow(
        Workflow(
            "named_candidates",
            1,
            [Human("check", candidate_groups=["approvers", "auditors-not-yet-created"], candidate_users=["manager"])],
        )
    )

    # when
    task = task_of(instance_start("named_candidates", {}))

    # then
    assert sorted(task.candidate_groups.values_list("name", flat=True)) == ["approvers", "auditors-not-yet-created"]
    assert list(task.candidate_users.values_list("username", flat=True)) == ["manager"]
    assert task_claim(task.pk, users.manager).assignee == users.manager


# --- quorum ---------------------------------------------------------------------------------------------


def noop(ctx: StepContext) -> None:
    return None


@pytest.fixture
def quorum_flow(register_workflow) -> Workflow:
    return register_workflow(
        Workflow(
            "quorum_demo",
            1,
            [Human("sign_off", candidate_groups=["approvers"], quorum=2), Task("after", noop)],
        )
    )


def test_quorum_needs_two_distinct_approvers(users, quorum_flow, run_steps):
    """A quorum-2 task stays open after one approval, refuses the same person twice, and completes on the second."""
    # given
    instance = instance_start("quorum_demo", {})
    task = task_of(instance)
    task_claim(task.pk, users.staff)

    # when
    first = task_decide(task.pk, users.staff, APPROVE)
    with pytest.raises(TaskConflict, match="already decided this task"):
        task_decide(task.pk, users.staff, APPROVE)
    instance.refresh_from_db()
    state_after_one = (first.state, first.approvals, first.assignee_id, instance.state)
    task_decide(task.pk, users.staff2, APPROVE)
    run_steps(instance)

    # then
    assert state_after_one == (TaskState.OPEN, 1, None, InstanceState.WAITING)
    task.refresh_from_db()
    instance.refresh_from_db()
    assert (task.state, task.approvals) == (TaskState.COMPLETED, 2)
    assert set(TaskDecision.objects.filter(task=task).values_list("user__username", flat=True)) == {"staff", "staff2"}
    assert instance.state == InstanceState.COMPLETED


# --- delegation -----------------------------------------------------------------------------------------


def test_delegation_goes_only_to_eligible_candidates(users):
    """A task can be handed to another candidate, not to a non-candidate nor to the initiator."""
    # given
    users.staff2.groups.add(users.approvers)
    initiator = users.operator
    initiator.groups.add(users.approvers)
    task = task_of(expense(initiator=initiator))
    task_claim(task.pk, users.staff)

    # when / then
    with pytest.raises(TaskInvalid, match="manager is not an eligible candidate"):
        task_delegate(task.pk, users.staff, users.manager)
    with pytest.raises(TaskInvalid, match="operator is not an eligible candidate"):
        task_delegate(task.pk, users.staff, initiator)
    with pytest.raises(TaskForbidden):
        task_delegate(task.pk, users.staff2, users.staff2)
    delegated = task_delegate(task.pk, users.staff, users.staff2, note="I am off tomorrow")
    assert (delegated.state, delegated.assignee) == (TaskState.CLAIMED, users.staff2)
    assert task_decide(task.pk, users.staff2, APPROVE).state == TaskState.COMPLETED


def test_delegation_never_goes_to_someone_who_approved_an_earlier_step(users):
    """Given an expense whose team approval was given by a manager who is also an approver, when another manager
    holding the manager approval hands it to them, then it is refused naming them and the task stays put (it was
    handed over, and parked with someone four-eyes forbids to approve it); the page's list leaves them out too."""
    # given
    users.manager.groups.add(users.approvers)
    other_manager = UserFactory(username="manager2", groups=[users.managers])
    third_manager = UserFactory(username="manager3", groups=[users.managers])
    instance = expense(amount="800")
    task_decide(task_of(instance, "team_approval").pk, users.manager, APPROVE)
    task = task_of(instance, "manager_approval")
    task_claim(task.pk, other_manager)

    # when / then
    with pytest.raises(TaskInvalid, match="manager has already approved another step") as refused:
        task_delegate(task.pk, other_manager, users.manager)
    assert refused.value.errors == {"to_user": [str(refused.value)]}
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.CLAIMED, other_manager)
    client = Client()
    client.force_login(other_manager)
    page = client.get(reverse("approvals:task_detail", args=[task.pk])).content.decode()
    assert f'<option value="{third_manager.pk}">manager3</option>' in page
    assert f'<option value="{users.manager.pk}">manager</option>' not in page


def test_someone_who_approved_an_earlier_step_can_neither_see_nor_claim_the_next_one(users):
    """Given a manager who is also an approver and gave the team approval, when the manager approval opens, then it
    is not in their team queue and their claim (one or in bulk) is refused with the four-eyes reason: they could
    hold it but never approve it, so it sat claimed by nobody able to decide it."""
    # given
    users.manager.groups.add(users.approvers)
    UserFactory(username="manager2", groups=[users.managers])
    instance = expense(amount="800")
    task_decide(task_of(instance, "team_approval").pk, users.manager, APPROVE)
    task = task_of(instance, "manager_approval")

    # when / then
    assert task.pk not in set(team_queue(users.manager).values_list("pk", flat=True))
    with pytest.raises(TaskForbidden, match="already approved another step"):
        task_claim(task.pk, users.manager)
    assert tasks_claim_bulk([task.pk], users.manager).refused == {
        task.pk: "You already approved another step of this workflow, so you cannot decide this task or choose who "
        "does (four-eyes rule)."
    }
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.OPEN, None)


# --- escalation ladder ----------------------------------------------------------------------------------


def test_escalation_ladder_reminds_then_reassigns(users):
    """expense_approval's team task: nothing before 8 h, a reminder at 8 h, reassigned to managers at 1 day."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    task.refresh_from_db()
    opened = task.created_at

    # when
    too_early = tasks_sweep(now=opened + timedelta(hours=7, minutes=59))
    reminded = tasks_sweep(now=opened + timedelta(hours=8, minutes=1))
    task.refresh_from_db()
    after_reminder = (task.state, task.escalation_level, task.next_escalation_at, task.assignee)
    repeated = tasks_sweep(now=opened + timedelta(hours=8, minutes=2))
    reassigned = tasks_sweep(now=opened + timedelta(days=1, minutes=1))

    # then
    assert [too_early, reminded, repeated, reassigned] == [{"escalations": n} for n in (0, 1, 0, 1)]
    assert after_reminder == (TaskState.CLAIMED, 1, opened + timedelta(days=1), users.staff)
    task.refresh_from_db()
    assert (task.state, task.escalation_level, task.next_escalation_at, task.assignee) == (
        TaskState.ESCALATED,
        2,
        None,
        None,
    )
    assert set(task.candidate_groups.values_list("name", flat=True)) == {"approvers", "managers"}
    assert [action for action, _actor in task_events(task)][-2:] == ["task.reminded", "task.reassigned"]
    assert task_claim(task.pk, users.manager).assignee == users.manager


def test_an_unanswered_order_approval_escalates_to_operators(users, run_steps):
    """order_fulfilment's manager approval: a reminder at 2 h, escalated to operators at 4 h."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(amount="1500"))
    run_steps(instance)
    task = task_of(instance)

    # when
    tasks_sweep(now=task.created_at + timedelta(hours=2, seconds=1))
    tasks_sweep(now=task.created_at + timedelta(hours=4, seconds=1))

    # then
    task.refresh_from_db()
    assert (task.state, task.escalation_level) == (TaskState.ESCALATED, 2)
    assert set(task.candidate_groups.values_list("name", flat=True)) == {"managers", "operators"}
    assert task_decide(task.pk, users.operator, APPROVE).state == TaskState.COMPLETED


# --- resolving escalations ------------------------------------------------------------------------------


@pytest.fixture
def failed_refund(run_steps):
    """An order whose refund failed every attempt (fail_refund: 4), waiting on an operators' escalation."""
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_shipping=True, fail_refund=4))
    run_steps(instance, advance=True)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPENSATING
    return instance, HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)


def test_an_escalations_description_names_files_not_the_servers_paths(users, failed_refund):
    """Given a refund that failed every attempt with a traceback, then its escalation (which managers see, as every
    task) describes the error with file names only; the step's own error, which operators read on the instance
    page, keeps the paths."""
    # given
    instance, escalation = failed_refund
    refund = instance.steps.get(kind=StepKind.COMPENSATION, name="charge_payment")

    # then
    assert 'File "/' in refund.error
    assert 'File "' in escalation.description
    assert 'File "/' not in escalation.description
    assert escalation.description == hide_paths(refund.error)


def test_the_migration_cuts_the_paths_from_escalations_written_before(users, failed_refund, run_steps):
    """Given an escalation written before (its description the error with the server's paths) and an approval
    whose description quotes a path, when the migration runs, then the escalation names files only and the
    approval is left as it was."""
    # given
    instance, escalation = failed_refund
    refund = instance.steps.get(kind=StepKind.COMPENSATION, name="charge_payment")
    HumanTask.objects.filter(pk=escalation.pk).update(description=refund.error)
    large = instance_start("order_fulfilment", OrderInputFactory(amount="1500"))
    run_steps(large)
    approval = task_of(large)
    quoted = 'See File "/srv/docs/policy.txt"'
    HumanTask.objects.filter(pk=approval.pk).update(description=quoted)
    migration = importlib.import_module("approvals.migrations.0005_escalation_description_without_paths")

    # when
    migration.forwards(django_apps, None)

    # then
    escalation.refresh_from_db()
    approval.refresh_from_db()
    assert 'File "/' not in escalation.description
    assert escalation.description == hide_paths(refund.error)
    assert (approval.kind, approval.description) == (TaskKind.APPROVAL, quoted)


def test_resolved_by_hand_finishes_the_compensation(users, failed_refund, run_steps):
    """Marking a failed refund as done by hand moves the saga on: the stock is released, the order compensated."""
    # given
    instance, escalation = failed_refund

    # when
    task_decide(escalation.pk, users.operator, RESOLVED, comment="refunded in the PSP console")
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPENSATED
    refund = instance.steps.get(kind=StepKind.COMPENSATION, name="charge_payment")
    assert (refund.state, refund.error) == (StepState.SKIPPED, "resolved by hand: refunded in the PSP console")
    assert instance.steps.get(kind=StepKind.TASK, name="charge_payment").state == StepState.COMPENSATED
    assert instance.steps.get(kind=StepKind.COMPENSATION, name="reserve_inventory").state == StepState.SUCCEEDED


def test_retry_runs_the_failed_compensation_again(users, failed_refund, run_steps):
    """Retrying the escalated refund gives it a fresh attempt budget (the one rule for a step retried by a person:
    its node's max_attempts again, as an instance retry gives); it succeeds and the saga completes."""
    # given
    instance, escalation = failed_refund

    # when
    task_decide(escalation.pk, users.operator, RETRY, comment="PSP is back")
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    refund = instance.steps.get(kind=StepKind.COMPENSATION, name="charge_payment")
    budget = registry.get("order_fulfilment").node("charge_payment").retry.max_attempts
    assert (refund.state, refund.attempt, refund.max_attempts) == (StepState.SUCCEEDED, 5, 4 + budget)
    assert instance.state == InstanceState.COMPENSATED


@pytest.mark.parametrize(
    ("decision", "comment", "message"),
    [
        (RESOLVED, "", "Give a reason"),
        (SKIP, "skip it", "Mark resolved"),
        (APPROVE, "ok", r"takes the decision \"retry\", \"resolved\" or \"fail\""),
    ],
)
def test_escalation_answers_are_checked(users, failed_refund, decision, comment, message):
    """An escalation needs a reason and an answer that fits a failed compensation."""
    # given
    _instance, escalation = failed_refund
    # when / then
    with pytest.raises(TaskInvalid, match=message):
        task_decide(escalation.pk, users.operator, decision, comment=comment)
    escalation.refresh_from_db()
    assert escalation.state == TaskState.OPEN


def always_down(ctx: StepContext) -> dict:
    raise ConnectionError("the ledger is down")


@pytest.mark.parametrize("answer", [SKIP, FAIL])
def test_a_paused_instances_escalation_cannot_be_skipped_or_failed(users, register_workflow, run_steps, answer):
    """Given a step escalated to operators and its instance paused, when an operator answers Skip or Fail instance,
    then it is refused with the reason and nothing changes: recorded while the instance was held, the skip entered
    nothing after the step and the fail failed nothing, and once resumed the instance waited on nobody forever."""
    # given
    register_workflow(
        Workflow(
            "ledger_sync",
            1,
            [Task("post", always_down, retry=Retry(max_attempts=1), on_failure=ESCALATE), Task("notify", noop)],
        )
    )
    instance = instance_start("ledger_sync", {})
    run_steps(instance, advance=True)
    escalation = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)
    instance_pause(instance.pk, actor=Actor.of(users.operator), reason="month-end freeze")

    # when / then
    with pytest.raises(TaskConflict, match="paused"):
        task_decide(escalation.pk, users.operator, answer, comment="move on")
    escalation.refresh_from_db()
    assert escalation.state == TaskState.OPEN
    assert instance.steps.get(name="post").state == StepState.DEAD

    # and once resumed, the same answer carries the instance on
    instance_resume(instance.pk, actor=Actor.of(users.operator), reason="freeze over")
    task_decide(escalation.pk, users.operator, answer, comment="move on")
    run_steps(instance, advance=True)
    instance.refresh_from_db()
    assert instance.state == (InstanceState.COMPLETED if answer == SKIP else InstanceState.FAILED)


def test_escalations_are_for_operators(users, failed_refund):
    """Staff do not even see an operators' escalation."""
    # given
    _instance, escalation = failed_refund
    # when / then
    with pytest.raises(TaskNotFound):
        task_decide(escalation.pk, users.staff, RESOLVED, comment="done")


# --- cost -----------------------------------------------------------------------------------------------


def test_deciding_costs_a_fixed_number_of_queries(users, run_steps, django_assert_num_queries):
    """Approving bench_approval's task (which completes the instance) costs a fixed 9 statements."""
    # given
    instance = instance_start("bench_approval", {})
    run_steps(instance)
    task = task_of(instance)

    # when / then: 7 statements of work (lock; task, step and both permission questions in one read; decision;
    # task; step; the audience of the live event; audit with instance) plus SAVEPOINT/RELEASE inside the test's
    # transaction
    with django_assert_num_queries(9):
        task_decide(task.pk, users.staff, APPROVE)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED


# --- races ----------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(3))
def test_two_people_claiming_at_once_one_wins(users, round_):
    """Two candidates claim the same task at the same instant: one gets it, the other a TaskConflict."""
    # given
    task = task_of(expense())

    # when
    results = race(lambda: task_claim(task.pk, users.staff), lambda: task_claim(task.pk, users.staff2))

    # then
    winners = [r for r in results if isinstance(r, HumanTask)]
    losers = [r for r in results if isinstance(r, TaskConflict)]
    assert (len(winners), len(losers)) == (1, 1), results
    task.refresh_from_db()
    assert (task.state, task.assignee_id) == (TaskState.CLAIMED, winners[0].assignee_id)
    assert [action for action, _actor in task_events(task)].count("task.claimed") == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("round_", range(3))
def test_two_people_deciding_at_once_one_wins(users, round_):
    """Two candidates approve the same task at the same instant: one decision counts, the other is a conflict."""
    # given
    instance = expense(amount="100")
    task = task_of(instance)

    # when
    results = race(
        lambda: task_decide(task.pk, users.staff, APPROVE),
        lambda: task_decide(task.pk, users.staff2, REJECT, comment="duplicate claim"),
    )

    # then
    winners = [r for r in results if isinstance(r, HumanTask)]
    losers = [r for r in results if isinstance(r, TaskConflict)]
    assert (len(winners), len(losers)) == (1, 1), results
    assert TaskDecision.objects.filter(task=task).count() == 1
    task.refresh_from_db()
    assert (task.state, task.decision) == (TaskState.COMPLETED, winners[0].decision)
    instance.refresh_from_db()
    expected = InstanceState.RUNNING if task.decision == APPROVE else InstanceState.COMPLETED
    assert instance.state == expected
    assert instance.steps.filter(name="payout").count() == (1 if task.decision == APPROVE else 0)


# --- a snooze belongs to whoever set it -------------------------------------------------------------------


def _snoozed_by_staff(users) -> HumanTask:
    """An expense approval claimed by staff and snoozed by them for a day."""
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    task_snooze(task.pk, users.staff, timezone.now() + timedelta(days=1))
    return task


@pytest.mark.parametrize("hand_over", ["delegate", "release_then_claim", "manager_release_then_claim"])
def test_a_snoozed_task_handed_to_someone_else_is_in_their_list(users, hand_over):
    """Given a task staff claimed and snoozed for a day, when it reaches staff2 (delegated, or released and claimed
    again), then it is in staff2's My tasks at once, not hidden until staff's snooze ends: the snooze was staff's
    way of putting it aside, and the new holder never chose it (their count said 1 and their list showed none)."""
    # given
    task = _snoozed_by_staff(users)

    # when
    if hand_over == "delegate":
        task_delegate(task.pk, users.staff, users.staff2)
    else:
        task_release(task.pk, users.staff if hand_over == "release_then_claim" else users.manager)
        task_claim(task.pk, users.staff2)

    # then
    task.refresh_from_db()
    assert (task.assignee, task.snoozed_until) == (users.staff2, None)
    assert [t.pk for t in my_tasks(users.staff2)] == [task.pk]
    assert inbox_counts(users.staff2, fresh=True)["inbox"] == 1


def test_a_snoozed_task_whose_holder_leaves_the_group_comes_back_unsnoozed(users):
    """Given a task staff claimed and snoozed, when staff leaves the approvers (the claim goes back to the queue)
    and staff2 claims it, then staff2 sees it in My tasks."""
    # given
    task = _snoozed_by_staff(users)

    # when
    users.staff.groups.remove(users.approvers)
    task_claim(task.pk, users.staff2)

    # then
    task.refresh_from_db()
    assert task.snoozed_until is None
    assert [t.pk for t in my_tasks(users.staff2)] == [task.pk]


def test_a_snoozed_task_that_escalates_is_not_snoozed_for_the_escalation_group(users):
    """Given a task staff claimed and snoozed, when its ladder's reassign rung hands it to the managers (the claim
    is dropped) and a manager claims it, then it is in the manager's My tasks."""
    # given: the expense's team approval, its reminder already sent, its reassign rung (to managers) due
    task = _snoozed_by_staff(users)
    HumanTask.objects.filter(pk=task.pk).update(escalation_level=1, next_escalation_at=timezone.now())

    # when
    tasks_sweep(timezone.now() + timedelta(seconds=1))
    task.refresh_from_db()
    task_claim(task.pk, users.manager)

    # then
    task.refresh_from_db()
    assert (task.state, task.assignee, task.snoozed_until) == (TaskState.CLAIMED, users.manager, None)
    assert [t.pk for t in my_tasks(users.manager)] == [task.pk]


def test_a_decided_task_cannot_be_snoozed(users):
    """Given a task staff claimed and approved (it keeps staff as its assignee), when staff snoozes it, then it is
    refused as a conflict and nothing is recorded: there is nothing left to put aside."""
    # given
    task = task_of(expense(amount="100"))
    task_claim(task.pk, users.staff)
    task_decide(task.pk, users.staff, APPROVE)

    # when / then
    with pytest.raises(TaskConflict, match="already completed"):
        task_snooze(task.pk, users.staff, timezone.now() + timedelta(hours=1))
    task.refresh_from_db()
    assert task.snoozed_until is None
    assert "task.snoozed" not in [action for action, _actor in task_events(task)]


# --- a holder whose task moved on meanwhile ---------------------------------------------------------------


@pytest.mark.parametrize("action", ["snooze", "release"])
def test_snoozing_or_releasing_a_task_delegated_away_meanwhile_says_who_holds_it(users, action):
    """Given a task staff held and a manager handed to staff2 meanwhile, when staff snoozes or releases it from the
    page still open, then the refusal names staff2 (the task moved on), not "Claim the task first" or "only the
    assignee" as if staff had never held it; staff2 keeps it."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    task_delegate(task.pk, users.manager, users.staff2)

    act = {
        "snooze": lambda: task_snooze(task.pk, users.staff, timezone.now() + timedelta(hours=2)),
        "release": lambda: task_release(task.pk, users.staff),
    }[action]

    # when / then
    with pytest.raises(TaskForbidden, match="staff2 holds this task now"):
        act()
    task.refresh_from_db()
    assert (task.state, task.assignee, task.snoozed_until) == (TaskState.CLAIMED, users.staff2, None)


def test_snoozing_an_open_task_still_says_claim_it_first(users):
    """An unclaimed task: still 403 with "Claim the task before you snooze it"."""
    # given
    task = task_of(expense())

    # when / then
    with pytest.raises(TaskForbidden, match="Claim the task before you snooze it"):
        task_snooze(task.pk, users.staff, timezone.now() + timedelta(hours=2))


# --- a delegation is of the holder the person saw ---------------------------------------------------------


@pytest.mark.parametrize("seen", ["open", "staff"])
def test_a_delegation_after_the_task_changed_hands_is_a_conflict(users, seen):
    """Given a manager who saw the task open (or held by staff), when staff claimed it (or released it) meanwhile and
    the manager hands it to staff2, then it is a conflict saying so and the task stays as it is now: the delegation
    silently took the task from the person who had just claimed it."""
    # given
    task = task_of(expense())
    if seen == "open":
        seen_holder = 0
        task_claim(task.pk, users.staff)
    else:
        task_claim(task.pk, users.staff)
        seen_holder = users.staff.pk
        task_release(task.pk, users.staff)

    # when / then
    with pytest.raises(TaskConflict, match="changed hands after you opened it"):
        task_delegate(task.pk, users.manager, users.staff2, seen_holder=seen_holder)
    task.refresh_from_db()
    assert task.assignee == (users.staff if seen == "open" else None)


def test_a_delegation_after_someone_delegated_the_task_says_it_was_delegated(users):
    """Given a manager who saw staff holding the task, when staff delegated it to staff2 meanwhile and the manager then
    hands it on, then the conflict says staff delegated it to staff2: it said "staff2 claimed it", which nobody did."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    task_delegate(task.pk, users.staff, users.staff2)

    # when / then
    with pytest.raises(TaskConflict) as refused:
        task_delegate(task.pk, users.manager, users.staff, seen_holder=users.staff.pk)
    assert "(staff delegated it to staff2)" in str(refused.value)
    assert "claimed" not in str(refused.value)
    task.refresh_from_db()
    assert task.assignee == users.staff2


def test_a_delegation_of_the_holder_seen_goes_ahead(users):
    """The holder is still the one the manager saw: the delegation goes ahead."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)

    # when
    delegated = task_delegate(task.pk, users.manager, users.staff2, seen_holder=users.staff.pk)

    # then
    assert delegated.assignee == users.staff2
