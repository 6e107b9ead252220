"""Notifications: who is told what (the bell and its e-mail), and that the e-mail leaves only after commit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.core import mail

from approvals.models import HumanTask, Notification, TaskKind
from approvals.services.base import APPROVE
from approvals.services.deadlines import tasks_sweep
from approvals.services.tasks import notifications_mark_read, task_claim, task_decide, task_delegate
from orchestrator.audit import Actor
from orchestrator.bidi import isolate
from orchestrator.dsl import Human, Remind, Workflow
from orchestrator.models import InstanceState, WorkflowInstance
from orchestrator.services.instances import instance_cancel, instance_start
from tests.bidi import ESCAPE, RLO, unisolated
from tests.factories import ExpenseInputFactory, OrderInputFactory, UserFactory

pytestmark = pytest.mark.django_db


def expense(initiator=None, **overrides) -> WorkflowInstance:
    return instance_start("expense_approval", ExpenseInputFactory(**overrides), initiator=initiator)


def task_of(instance: WorkflowInstance) -> HumanTask:
    return HumanTask.objects.filter(instance=instance).order_by("-id").first()


def notices(**filters) -> list[tuple[str, str, str]]:
    """(username, kind, message) of the notifications matching ``filters``, by user then id."""
    rows = Notification.objects.filter(**filters).order_by("user__username", "id")
    return list(rows.values_list("user__username", "kind", "message"))


def recipients() -> list[str]:
    return sorted(address for message in mail.outbox for address in message.to)


# --- delegation -----------------------------------------------------------------------------------------


def test_delegating_tells_the_delegate_and_mails_them_after_commit(users, django_capture_on_commit_callbacks):
    """staff2 gets a notice at once and an e-mail with a link, but the e-mail leaves only once the work commits."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)

    # when
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        task_delegate(task.pk, users.staff, users.staff2, note="I am off tomorrow")
    outbox_before_commit = len(mail.outbox)
    for callback in callbacks:
        callback()

    # then
    message = f"staff delegated to you: {isolate(task.title)} ({isolate('I am off tomorrow')})"
    assert notices() == [("staff2", "delegated", message)]
    notice = Notification.objects.get()
    assert (notice.task, notice.instance_id, notice.url, notice.read_at) == (
        task,
        task.instance_id,
        f"/tasks/{task.pk}/",
        None,
    )
    assert outbox_before_commit == 0
    assert recipients() == ["staff2@example.com"]
    assert mail.outbox[0].subject == f"[Baton] {message}"
    assert f"{settings.BATON_BASE_URL.rstrip('/')}/tasks/{task.pk}/" in mail.outbox[0].body


def test_a_person_without_an_address_gets_the_notice_but_no_mail(users, django_capture_on_commit_callbacks):
    """No e-mail address: the bell still rings, nothing is sent."""
    # given
    users.staff2.email = ""
    users.staff2.save(update_fields=["email"])
    task = task_of(expense())
    task_claim(task.pk, users.staff)

    # when
    with django_capture_on_commit_callbacks(execute=True):
        task_delegate(task.pk, users.staff, users.staff2)

    # then
    assert [user for user, _kind, _message in notices()] == ["staff2"]
    assert mail.outbox == []


def test_a_refused_delegation_tells_nobody(users, django_capture_on_commit_callbacks):
    """Delegating to a non-candidate fails and leaves neither a notice nor an e-mail behind."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)

    # when
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(Exception, match="not an eligible"):
        task_delegate(task.pk, users.staff, users.manager)

    # then
    assert notices() == []
    assert mail.outbox == []


# --- the escalation ladder ------------------------------------------------------------------------------


def test_a_reminder_goes_to_the_assignee(users, django_capture_on_commit_callbacks):
    """expense_approval reminds after 8 hours: a claimed task's reminder goes to its assignee only."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)
    task.refresh_from_db()

    # when
    with django_capture_on_commit_callbacks(execute=True):
        tasks_sweep(now=task.created_at + timedelta(hours=8, minutes=1))

    # then
    assert notices() == [("staff", "reminder", f"Reminder: {isolate(task.title)} is waiting")]
    assert recipients() == ["staff@example.com"]


def test_an_unclaimed_reminder_goes_to_every_candidate(users, django_capture_on_commit_callbacks):
    """Nobody claimed it: every approver (the candidate group) and a named candidate are reminded."""
    # given
    task = task_of(expense())
    named = UserFactory(username="named")
    task.candidates.create(user=named)
    UserFactory(username="retired", groups=[users.approvers], is_active=False)

    # when
    with django_capture_on_commit_callbacks(execute=True):
        tasks_sweep(now=task.created_at + timedelta(hours=8, minutes=1))

    # then
    assert [user for user, kind, _message in notices() if kind == "reminder"] == ["named", "staff", "staff2"]
    assert recipients() == ["named@example.com", "staff2@example.com", "staff@example.com"]


def test_a_reminder_skips_the_initiator_who_may_not_decide(users):
    """staff started the expense: the reminder goes to staff2, not to staff, who cannot act on it."""
    # given
    task = task_of(expense(initiator=users.staff))

    # when
    tasks_sweep(now=task.created_at + timedelta(hours=8, minutes=1))

    # then
    assert [user for user, _kind, _message in notices(kind="reminder")] == ["staff2"]


def test_a_reminder_skips_people_four_eyes_keeps_from_deciding(users, register_workflow):
    """Given a two-level approval where staff approved the first level, when the second level's reminder falls,
    then it goes to staff2 only: staff may not approve it (four-eyes) and was told to act on a task they could
    neither claim nor decide."""
    # given
    register_workflow(
        Workflow(
            "two_levels",
            1,
            [
                Human("first", candidate_groups=["approvers"]),
                Human("second", candidate_groups=["approvers"], escalation=[Remind(after=timedelta(hours=1))]),
            ],
        )
    )
    instance = instance_start("two_levels", {})
    task_decide(task_of(instance).pk, users.staff, APPROVE)
    second = task_of(instance)

    # when
    tasks_sweep(now=second.created_at + timedelta(hours=1, minutes=1))

    # then
    assert [user for user, _kind, _message in notices(kind="reminder")] == ["staff2"]


def test_a_reassignment_tells_the_new_group(users):
    """After the 8-hour reminder, at one day the expense task is reassigned to managers, who are told so."""
    # given
    task = task_of(expense())
    tasks_sweep(now=task.created_at + timedelta(hours=8, minutes=1))

    # when
    tasks_sweep(now=task.created_at + timedelta(days=1, minutes=1))

    # then
    assert notices(kind="reassigned") == [("manager", "reassigned", f"Overdue, now yours: {isolate(task.title)}")]


# --- escalations of failures ----------------------------------------------------------------------------


def test_a_failed_compensation_tells_the_operators(users, run_steps, django_capture_on_commit_callbacks):
    """A refund that fails every attempt opens an escalation; every operator gets a notice and an e-mail."""
    # given
    UserFactory(username="operator2", groups=[users.operators])
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_shipping=True, fail_refund=4))

    # when
    with django_capture_on_commit_callbacks(execute=True):
        run_steps(instance, advance=True)

    # then
    escalation = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)
    expected = f"Needs an operator: {isolate(escalation.title)}"
    assert notices(kind="escalation") == [("operator", "escalation", expected), ("operator2", "escalation", expected)]
    assert Notification.objects.filter(kind="escalation", task=escalation).count() == 2
    assert {m.to[0] for m in mail.outbox if m.subject == f"[Baton] {expected}"} == {
        "operator@example.com",
        "operator2@example.com",
    }


# --- the initiator hears how their instance ended -------------------------------------------------------


def test_the_initiator_hears_that_their_expense_completed(users, run_steps):
    """staff2 approves operator's expense, payroll pays: the operator is told it completed; nobody else is."""
    # given
    instance = expense(initiator=users.operator, amount="120")
    task_decide(task_of(instance).pk, users.staff2, APPROVE)

    # when
    run_steps(instance)

    # then
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED
    assert notices() == [("operator", "instance.completed", f"{isolate(instance.title)}: completed")]
    assert Notification.objects.get().url == f"/instances/{instance.pk}/"


def test_the_initiator_hears_that_their_expense_was_rejected(users):
    """A rejection completes the instance with outcome "rejected", and the initiator is told that outcome."""
    # given
    instance = expense(initiator=users.operator)

    # when
    task_decide(task_of(instance).pk, users.staff, "reject", comment="no receipt")

    # then
    instance.refresh_from_db()
    assert notices() == [("operator", "instance.completed", f"{isolate(instance.title)}: rejected")]


def test_the_initiator_hears_that_their_order_failed(users, run_steps):
    """Reservation fails every attempt: the instance fails and its initiator is told."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_reserve=True), initiator=users.manager)

    # when
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    assert notices() == [("manager", "instance.failed", f"{isolate(instance.title)}: failed")]


def test_the_initiator_hears_that_their_order_was_compensated(users, run_steps):
    """Shipping fails for good: payment is refunded, stock released, and the initiator is told."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_shipping=True), initiator=users.manager)

    # when
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPENSATED
    assert notices() == [("manager", "instance.compensated", f"{isolate(instance.title)}: compensated")]


def test_the_initiator_hears_when_an_operator_cancels(users):
    """An operator cancels manager's order: manager is told."""
    # given
    instance = expense(initiator=users.manager)

    # when
    instance_cancel(instance.pk, actor=Actor.of(users.operator), reason="duplicate")

    # then
    instance.refresh_from_db()
    assert notices() == [("manager", "instance.cancelled", f"{isolate(instance.title)}: cancelled")]


def test_no_notice_when_the_initiator_cancels_their_own_instance(users):
    """The operator started and cancelled it themselves: nobody needs telling."""
    # given
    instance = expense(initiator=users.operator)

    # when
    instance_cancel(instance.pk, actor=Actor.of(users.operator), reason="entered twice")

    # then
    instance.refresh_from_db()
    assert instance.state == InstanceState.CANCELLED
    assert notices() == []


# --- marking read ---------------------------------------------------------------------------------------


def test_mark_read_touches_only_my_notifications(users):
    """Given another person's ids too, mark-read changes only the caller's unread notices."""
    # given
    mine = [Notification.objects.create(user=users.staff, kind="test", message=f"mine {n}") for n in range(2)]
    theirs = Notification.objects.create(user=users.staff2, kind="test", message="theirs")
    already = Notification.objects.create(user=users.staff, kind="test", message="old")
    notifications_mark_read(users.staff, [already.pk])

    # when
    changed = notifications_mark_read(users.staff, [mine[0].pk, theirs.pk, already.pk])
    everything = notifications_mark_read(users.staff)

    # then
    assert (changed, everything) == (1, 1)
    assert not Notification.objects.filter(user=users.staff, read_at__isnull=True).exists()
    theirs.refresh_from_db()
    assert theirs.read_at is None
    assert notifications_mark_read(users.staff2, []) == 0


# --- what people wrote, inside a notice -------------------------------------------------------------------


def test_a_notice_isolates_the_titles_and_notes_people_wrote(users):
    """Given an expense whose description (so its title and its task's) ends in a stray pop and a right-to-left
    override, when its task is delegated with such a note and the expense is cancelled, then in each notice (the
    bell and its e-mail) the title and the note are each isolated (FSI ... PDI): bare, the override reversed, as
    drawn, the rest of the notice ('(note)', ': cancelled'). Isolating the whole notice, as its page does, keeps it
    from the page but not from its own words."""
    # given
    instance = expense(initiator=users.manager, description=f"Taxi {ESCAPE}")
    task = task_of(instance)
    task_claim(task.pk, users.staff)

    # when
    task_delegate(task.pk, users.staff, users.staff2, note=f"back soon {ESCAPE}")
    instance_cancel(instance.pk, actor=Actor.of(users.operator), reason="duplicate")

    # then
    told = {kind: message for _user, kind, message in notices()}
    assert set(told) == {"delegated", "instance.cancelled"}
    for message in told.values():
        assert RLO in message
        assert unisolated(message) == [], message
    assert told["delegated"].endswith(f"({isolate(f'back soon {ESCAPE}')})")
    assert told["instance.cancelled"].endswith(": cancelled")
