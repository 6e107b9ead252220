"""Inbox and task pages through HTTP, as people use them: access, CSRF, claiming, deciding, snoozing, views."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
from django.template import Context, Template
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals.models import HumanTask, Notification, Priority, SavedView, TaskDecision, TaskKind, TaskState
from approvals.services.base import APPROVE, REJECT
from approvals.services.tasks import task_claim, task_decide, task_snooze
from orchestrator.bidi import balanced, isolate
from orchestrator.dsl import Human, Workflow
from orchestrator.models import WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.bidi import ESCAPE, RLO, unisolated
from tests.factories import ExpenseInputFactory

pytestmark = pytest.mark.django_db

ALERT = re.compile(r'<div class="alert alert-(\w+)[^"]*"[^>]*>\s*(.*?)\s*<button', re.S)


def expense(initiator=None, **overrides) -> WorkflowInstance:
    return instance_start("expense_approval", ExpenseInputFactory(**overrides), initiator=initiator)


def task_of(instance: WorkflowInstance) -> HumanTask:
    return HumanTask.objects.filter(instance=instance).order_by("-id").first()


def shown(response) -> list[tuple[str, str]]:
    """The flash messages on the page, as (level, text): what the person reads above the content."""
    content = response.content.decode()
    if 'id="messages"' not in content:
        return []
    block = content.split('id="messages"', 1)[1].split("<main", 1)[0]
    return [(level, html.unescape(" ".join(text.split()))) for level, text in ALERT.findall(block)]


def badge(response, name: str) -> str:
    """The text of a navigation badge ("inbox", "queue", "unread"), and "" when it is hidden."""
    match = re.search(
        rf'<span class="badge[^"]*?( d-none)?\s*" data-count="{name}">([^<]*)</span>', response.content.decode()
    )
    assert match is not None, f"no {name} badge on the page"
    return "" if match.group(1) else match.group(2)


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def task(users) -> HumanTask:
    """An open team approval of an expense nobody in particular started."""
    return task_of(expense())


# --- access ---------------------------------------------------------------------------------------------

PAGES = ["inbox", "escalations", "notifications", "task_detail"]
ACTIONS = ["task_claim", "task_release", "task_delegate", "task_snooze", "task_decide", "tasks_claim_bulk"]


def url_of(name: str, task: HumanTask) -> str:
    name = f"approvals:{name}"
    return reverse(name, args=[task.pk]) if name.startswith("approvals:task_") else reverse(name)


@pytest.mark.parametrize(
    ("method", "name"),
    [("get", name) for name in PAGES]
    + [("post", name) for name in [*ACTIONS, "saved_view_create"]]
    + [("post", "saved_view_delete")],
)
def test_anonymous_people_are_sent_to_sign_in(client, task, method, name):
    """Every inbox page and action asks an anonymous visitor to sign in first, and changes nothing."""
    # given
    url = reverse("approvals:saved_view_delete", args=[1]) if name == "saved_view_delete" else url_of(name, task)

    # when
    response = getattr(client, method)(url)

    # then
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"
    task.refresh_from_db()
    assert task.state == TaskState.OPEN


@pytest.mark.parametrize("name", ACTIONS)
def test_actions_refuse_get(users, task, name):
    """Actions change state, so they answer GET with 405."""
    # when
    response = login(users.staff).get(url_of(name, task))

    # then
    assert response.status_code == 405
    task.refresh_from_db()
    assert task.state == TaskState.OPEN


def test_csrf_is_enforced_on_actions(users, task):
    """A POST without the CSRF token is refused with 403 and claims nothing; with the token it goes through."""
    # given
    client = Client(enforce_csrf_checks=True)
    client.force_login(users.staff)

    # when
    refused = client.post(reverse("approvals:task_claim", args=[task.pk]))
    task.refresh_from_db()
    after_refusal = (task.state, task.assignee)
    client.get(reverse("approvals:task_detail", args=[task.pk]))  # the page sets the CSRF cookie its forms carry
    accepted = client.post(
        reverse("approvals:task_claim", args=[task.pk]), {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    )

    # then
    assert refused.status_code == 403
    assert after_refusal == (TaskState.OPEN, None)
    assert accepted.status_code == 302
    task.refresh_from_db()
    assert task.assignee == users.staff


@pytest.mark.parametrize(
    ("method", "name", "data"),
    [
        ("get", "task_detail", {}),
        ("post", "task_claim", {}),
        ("post", "task_decide", {"decision": "approve"}),
    ],
)
def test_a_non_candidate_gets_404(users, task, method, name, data):
    """The operator is no candidate of a team approval: the task does not exist for them."""
    # when
    response = getattr(login(users.operator), method)(reverse(f"approvals:{name}", args=[task.pk]), data)

    # then
    assert response.status_code == 404
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.OPEN, None)


def test_a_404_leaves_no_stale_message_behind(users, task):
    """After a refused claim (404), the next page carries no leftover error."""
    # given
    client = login(users.operator)
    assert client.post(reverse("approvals:task_claim", args=[task.pk])).status_code == 404

    # when
    response = client.get(reverse("approvals:inbox"))

    # then
    assert shown(response) == []


# --- claiming and deciding ------------------------------------------------------------------------------


def test_claim_then_approve_through_the_pages(users, task):
    """staff opens the task, claims it, approves it: the task is done and each step says so."""
    # given
    client = login(users.staff)
    page = client.get(reverse("approvals:task_detail", args=[task.pk]))

    # when
    claimed = client.post(reverse("approvals:task_claim", args=[task.pk]), follow=True)
    approved = client.post(
        reverse("approvals:task_decide", args=[task.pk]), {"decision": "approve", "comment": "fine"}, follow=True
    )

    # then
    assert page.status_code == 200
    assert 'value="approve"' in page.content.decode()
    assert claimed.redirect_chain == [(reverse("approvals:task_detail", args=[task.pk]), 302)]
    assert shown(claimed) == [("success", "Claimed. The task is yours.")]
    assert approved.redirect_chain == [(reverse("approvals:inbox"), 302)]
    assert shown(approved) == [("success", f"Approved “{isolate(task.title)}”.")]
    task.refresh_from_db()
    assert (task.state, task.decision, task.completed_by) == (TaskState.COMPLETED, "approve", users.staff)


def test_after_a_decision_the_next_task_of_the_queue_opens(users):
    """With another task waiting, approving one opens the next; approving the last goes back to the inbox."""
    # given
    first, second = task_of(expense()), task_of(expense())
    client = login(users.staff)

    # when
    to_next = client.post(reverse("approvals:task_decide", args=[first.pk]), {"decision": "approve"})
    to_inbox = client.post(reverse("approvals:task_decide", args=[second.pk]), {"decision": "approve"})

    # then
    assert (to_next.status_code, to_next["Location"]) == (302, reverse("approvals:task_detail", args=[second.pk]))
    assert (to_inbox.status_code, to_inbox["Location"]) == (302, reverse("approvals:inbox"))


def test_a_lost_claim_race_explains_who_won(users, task):
    """staff claimed first: staff2's claim is redirected back to the task with a warning, not a 500."""
    # given
    task_claim(task.pk, users.staff)

    # when
    response = login(users.staff2).post(reverse("approvals:task_claim", args=[task.pk]), follow=True)

    # then
    assert response.redirect_chain == [(reverse("approvals:task_detail", args=[task.pk]), 303)]
    assert response.status_code == 200
    assert shown(response) == [("warning", "This task is already claimed by staff.")]
    assert "<bdi>staff</bdi> is working on this task." in response.content.decode()
    task.refresh_from_db()
    assert task.assignee == users.staff


def test_reject_without_a_comment_is_refused_with_a_reason(users, task):
    """A rejection needs a comment: the page says so and the task stays open."""
    # when
    response = login(users.staff).post(
        reverse("approvals:task_decide", args=[task.pk]), {"decision": "reject", "comment": "  "}, follow=True
    )

    # then
    assert response.status_code == 400
    assert shown(response) == [("danger", "Say why you reject: a comment is required.")]
    task.refresh_from_db()
    assert task.state == TaskState.OPEN


# --- bulk claim -----------------------------------------------------------------------------------------


@pytest.fixture
def three_tasks(users) -> list[HumanTask]:
    """Three queued expenses; staff2 already holds the middle one."""
    tasks = [task_of(expense()) for _ in range(3)]
    task_claim(tasks[1].pk, users.staff2)
    return tasks


def test_bulk_claim_takes_what_it_can_and_warns_about_the_rest(users, three_tasks):
    """Claiming three where one is taken: two are claimed, a warning tells who holds the third."""
    # when
    response = login(users.staff).post(
        reverse("approvals:tasks_claim_bulk"), {"task": [str(t.pk) for t in three_tasks]}, follow=True
    )

    # then
    assert response.redirect_chain == [(f"{reverse('approvals:inbox')}?tab=mine", 302)]
    (success, warning) = shown(response)
    assert success == ("success", "Claimed 2 tasks.")
    assert warning[0] == "warning"
    assert warning[1].startswith("1 could not be claimed.")
    assert warning[1].endswith("This task is already claimed by staff2.")
    assignees = list(HumanTask.objects.filter(pk__in=[t.pk for t in three_tasks]).order_by("id"))
    assert [t.assignee for t in assignees] == [users.staff, users.staff2, users.staff]


def test_bulk_claim_warning_names_the_refused_task(users, three_tasks):
    """The warning names the task that could not be claimed, so the person knows which one it was."""
    # when
    response = login(users.staff).post(
        reverse("approvals:tasks_claim_bulk"), {"task": [str(t.pk) for t in three_tasks]}, follow=True
    )

    # then
    warnings = [text for level, text in shown(response) if level == "warning"]
    assert len(warnings) == 1
    assert " ".join(three_tasks[1].title.split()) in warnings[0]  # shown() folds white space as a reader sees it


def test_bulk_claim_never_names_a_task_the_person_may_not_see(users, task):
    """An operator posting the id of an approvers' task learns no more than "no such task": not its title."""
    # when
    response = login(users.operator).post(reverse("approvals:tasks_claim_bulk"), {"task": [str(task.pk)]}, follow=True)

    # then
    assert shown(response) == [("warning", f"1 could not be claimed. task {task.pk}: No such task.")]
    assert task.instance.data["employee"] not in response.content.decode()
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.OPEN, None)


def test_bulk_claim_with_nothing_selected_asks_for_a_selection(users):
    """Submitting the queue without ticking a task says what to do."""
    # when
    response = login(users.staff).post(reverse("approvals:tasks_claim_bulk"), {}, follow=True)

    # then
    assert shown(response) == [("warning", "Select the tasks to claim first.")]


# --- snooze ---------------------------------------------------------------------------------------------


@pytest.fixture
def claimed(users, task) -> HumanTask:
    task_claim(task.pk, users.staff)
    return task


def test_snooze_hides_the_task_until_the_time(users, claimed):
    """A valid time snoozes the task: success message, and My tasks no longer lists it."""
    # given
    until = timezone.localtime() + timedelta(days=1)

    # when
    response = login(users.staff).post(
        reverse("approvals:task_snooze", args=[claimed.pk]), {"until": until.strftime("%Y-%m-%dT%H:%M")}, follow=True
    )

    # then
    assert response.redirect_chain[-1][0] == reverse("approvals:inbox")
    assert shown(response) == [("success", f"Snoozed until {until:%Y-%m-%d %H:%M %Z}.")]
    mine = login(users.staff).get(f"{reverse('approvals:inbox')}?tab=mine")
    assert f'data-task="{claimed.pk}"' not in mine.content.decode()
    claimed.refresh_from_db()
    assert claimed.snoozed_until is not None


@pytest.mark.parametrize(
    ("until", "message"),
    [
        ("", "Snooze until: pick a date and time."),
        ("next tuesday", "Snooze until: enter a real date and time, like 2026-12-01 09:00."),
        ("2001-01-01T09:00", "Snooze until a time in the next 90 days."),
    ],
)
def test_snooze_with_a_bad_time_explains_itself(users, claimed, until, message):
    """No date, a date that is not one, or a time in the past: an error on the task page, nothing snoozed."""
    # when
    response = login(users.staff).post(
        reverse("approvals:task_snooze", args=[claimed.pk]), {"until": until}, follow=True
    )

    # then: the task page again (not a redirect), with the message and the time as typed
    assert (response.redirect_chain, response.status_code) == ([], 400)
    assert shown(response) == [("danger", message)]
    assert f'value="{until}"' in response.content.decode()
    claimed.refresh_from_db()
    assert claimed.snoozed_until is None


def test_a_snooze_time_the_service_refuses_is_marked_at_the_field_too(users, claimed):
    """A time the form reads but the service refuses (in the past) is marked on the snooze field, as a time the
    form cannot read is, not only said at the top of the page."""
    # when
    response = login(users.staff).post(
        reverse("approvals:task_snooze", args=[claimed.pk]), {"until": "2001-01-01T09:00"}
    )

    # then: the field is invalid and says why beside itself
    content = response.content.decode()
    field = re.search(r'<input[^>]*id="snooze-until"[^>]*>', content)
    assert field is not None
    assert "is-invalid" in field[0]
    assert '<div class="invalid-feedback">Within 90 days.</div>' in content


def test_snooze_with_an_impossible_date_is_an_error_not_a_500(users, claimed):
    """30 February looks like a date but is none: the person gets the error message, not a server error."""
    # given
    client = Client(raise_request_exception=False)
    client.force_login(users.staff)

    # when
    response = client.post(reverse("approvals:task_snooze", args=[claimed.pk]), {"until": "2030-02-30T09:00"})

    # then
    assert response.status_code == 400
    claimed.refresh_from_db()
    assert claimed.snoozed_until is None


# --- saved views ----------------------------------------------------------------------------------------


def test_save_a_private_view(users):
    """A named view keeps the inbox's filters (not the tab parameter) and is shared with nobody."""
    # when
    response = login(users.staff).post(
        reverse("approvals:saved_view_create"),
        {"name": "Urgent", "tab": "queue", "priority": "3", "sort": "age", "shared_with": ""},
        follow=True,
    )

    # then
    view = SavedView.objects.get(owner=users.staff)
    assert (view.name, view.tab, view.params, view.shared_with) == (
        "Urgent",
        "queue",
        {"priority": "3", "sort": "age"},
        None,
    )
    assert shown(response) == [("success", "Saved view “Urgent”.")]
    assert response.redirect_chain == [(f"{reverse('approvals:inbox')}?tab=queue&priority=3&sort=age", 302)]


def test_save_a_view_shared_with_my_team(users):
    """Shared with approvers, the view shows up in staff2's inbox too."""
    # when
    response = login(users.staff).post(
        reverse("approvals:saved_view_create"),
        {"name": "Late ones", "tab": "queue", "due": "overdue", "shared_with": str(users.approvers.pk)},
        follow=True,
    )

    # then
    assert shown(response) == [("success", "Saved view “Late ones”, shared with approvers.")]
    assert SavedView.objects.get(name="Late ones").shared_with == users.approvers
    assert "Late ones" in login(users.staff2).get(reverse("approvals:inbox")).content.decode()
    assert "Late ones" not in login(users.manager).get(reverse("approvals:inbox")).content.decode()


def test_a_view_cannot_be_shared_with_a_group_i_am_not_in(users):
    """Sharing with a group the owner does not belong to keeps the view private."""
    # when
    login(users.staff).post(
        reverse("approvals:saved_view_create"), {"name": "Sneaky", "shared_with": str(users.managers.pk)}, follow=True
    )

    # then
    assert SavedView.objects.get(name="Sneaky").shared_with is None


def test_a_view_needs_a_name(users):
    """Without a name nothing is saved and the page says why."""
    # when
    response = login(users.staff).post(reverse("approvals:saved_view_create"), {"name": " "}, follow=True)

    # then
    assert shown(response) == [("danger", "Give the view a name.")]
    assert not SavedView.objects.exists()


def test_a_garbage_group_id_is_not_a_500(users):
    """A tampered shared_with value saves a private view instead of failing."""
    # given
    client = Client(raise_request_exception=False)
    client.force_login(users.staff)

    # when
    response = client.post(reverse("approvals:saved_view_create"), {"name": "Odd", "shared_with": "abc"})

    # then
    assert response.status_code == 302
    assert SavedView.objects.get(name="Odd").shared_with is None


def test_only_the_owner_deletes_a_view(users):
    """staff2's delete attempt leaves staff's shared view with an error; staff's own delete removes it."""
    # given
    view = SavedView.objects.create(owner=users.staff, name="Team", shared_with=users.approvers)

    # when
    refused = login(users.staff2).post(reverse("approvals:saved_view_delete", args=[view.pk]), follow=True)
    kept = SavedView.objects.filter(pk=view.pk).exists()
    deleted = login(users.staff).post(reverse("approvals:saved_view_delete", args=[view.pk]), follow=True)

    # then
    assert kept
    assert shown(refused) == [("danger", "Only the owner can delete a saved view.")]
    assert shown(deleted) == [("info", "Saved view deleted.")]
    assert not SavedView.objects.filter(pk=view.pk).exists()


# --- escalations and notifications ----------------------------------------------------------------------


def test_escalations_page_is_for_managers(users, task):
    """staff gets 404; a manager sees the overdue task."""
    # given
    HumanTask.objects.filter(pk=task.pk).update(due_at=timezone.now() - timedelta(hours=3))  # setup: an hour past

    # when
    staff = login(users.staff).get(reverse("approvals:escalations"))
    manager = login(users.manager).get(reverse("approvals:escalations"))

    # then
    assert staff.status_code == 404
    assert manager.status_code == 200
    assert f'data-task="{task.pk}"' in manager.content.decode()
    assert "overdue" in manager.content.decode()


def test_notifications_page_lists_and_marks_read(users, task):
    """The bell's page lists the person's notices; afterwards the unread badge is gone."""
    # given
    Notification.objects.create(user=users.staff, kind="reminder", message="Reminder: it waits", task=task)
    Notification.objects.create(user=users.staff, kind="delegated", message="staff2 delegated to you")
    Notification.objects.create(user=users.staff2, kind="reminder", message="Not for staff")
    client = login(users.staff)
    before = client.get(reverse("approvals:inbox"))

    # when
    page = client.get(reverse("approvals:notifications"))
    after = client.get(reverse("approvals:inbox"))

    # then
    assert badge(before, "unread") == "2"
    content = page.content.decode()
    assert "Reminder: it waits" in content
    assert "staff2 delegated to you" in content
    assert "Not for staff" not in content
    assert content.count("<strong>new</strong>") == 2
    assert badge(after, "unread") == ""
    assert not Notification.objects.filter(user=users.staff, read_at__isnull=True).exists()
    assert Notification.objects.get(user=users.staff2).read_at is None


# --- a robust inbox -------------------------------------------------------------------------------------


def test_inbox_with_garbage_parameters_renders_with_warnings(users, task):
    """Unknown filters and a broken page link render the first page with a warning each, not an error."""
    # when
    response = login(users.staff).get(
        reverse("approvals:inbox"), {"tab": "queue", "priority": "abc", "due": "never", "after": "!!!", "size": "-5"}
    )

    # then
    assert response.status_code == 200
    assert shown(response) == [
        ("warning", "Unknown priority; showing all priorities."),
        ("warning", "Unknown due filter; showing all."),
        ("warning", "That page link is no longer valid; showing the first page."),
    ]
    assert f'data-task="{task.pk}"' in response.content.decode()


# --- what a row shows -----------------------------------------------------------------------------------


def short_date(value) -> str:
    """A time as the inbox rows print it with Django's date filter (current time zone): "Nov 27, 14:05 CET"."""
    return Template('{{ value|date:"M j, H:i T" }}').render(Context({"value": value}))


def row_of(response, task: HumanTask) -> str:
    """The task's row in the inbox table, white space folded as a reader sees it."""
    content = response.content.decode()
    start = content.index(f'<tr data-task="{task.pk}">')
    return " ".join(content[start : content.index("</tr>", start)].split())


def test_a_queue_row_shows_the_task_at_a_glance(users, task):
    """A queued row links to its task, claims through its own button, and shows priority, state, workflow,
    business key, quorum, escalation, the overdue due time in the viewer's time zone and how long it waits."""
    # given
    now = timezone.now()
    due = now - timedelta(hours=2)
    WorkflowInstance.objects.filter(pk=task.instance_id).update(business_key="EXP-7")
    HumanTask.objects.filter(pk=task.pk).update(  # setup: a late, urgent quorum escalation waiting for 3 hours
        due_at=due,
        priority=Priority.URGENT,
        quorum=3,
        approvals=1,
        kind=TaskKind.ESCALATION,
        created_at=now - timedelta(hours=3),
    )

    # when
    with timezone.override("Asia/Tokyo"):
        row = row_of(login(users.staff).get(f"{reverse('approvals:inbox')}?tab=queue"), task)
        due_text = short_date(due)

    # then
    title = html.escape(task.title)
    assert (
        f'<a href="{reverse("approvals:task_detail", args=[task.pk])}" class="fw-semibold"><bdi>{title}</bdi></a>'
        in row
    )
    assert f'formaction="{reverse("approvals:task_claim", args=[task.pk])}"' in row
    assert f'id="pick-{task.pk}" aria-label="Select {title}"' in row
    assert (
        '<span class="badge text-bg-danger">Urgent</span> <span class="badge state-open">Open</span> · Expense'
        ' approval · <bdi>EXP-7</bdi> · <span class="text-danger">escalation</span> · 1/3 approvals'
    ) in row
    assert f'<span class="d-sm-none text-danger fw-semibold"> · due {due_text}</span>' in row
    assert f'aria-hidden="true"></i> overdue · {due_text}</span>' in row
    assert "3.0 h" in row


def test_my_row_shows_its_snooze_and_a_done_row_its_decision(users, task):
    """A snoozed task of mine says until when; a task I decided shows the decision, when, and who held it."""
    # given
    second = task_of(expense())
    until = timezone.now() + timedelta(days=1)
    task_claim(task.pk, users.staff)
    task_snooze(task.pk, users.staff, until)
    task_claim(second.pk, users.staff)
    task_decide(second.pk, users.staff, APPROVE)
    second.refresh_from_db()
    client = login(users.staff)

    # when
    mine = row_of(client.get(f"{reverse('approvals:inbox')}?tab=mine&snoozed=1"), task)
    done = row_of(client.get(f"{reverse('approvals:inbox')}?tab=done"), second)

    # then
    assert f"snoozed until {short_date(until)}" in mine
    assert (
        f'<a class="btn btn-sm btn-primary" href="{reverse("approvals:task_detail", args=[task.pk])}">Open</a>' in mine
    )
    assert "formaction" not in mine
    assert '<span class="badge state-completed">Completed</span> <bdi>staff</bdi> · Expense approval' in done
    assert f"approve · {short_date(second.completed_at)}" in done


def test_a_done_row_of_my_quorum_vote_says_it_waits_for_the_others(users, register_workflow):
    """A 2-of-M task I approved first is in my done tab, open, saying my approval is in and how many more it needs."""
    # given
    register_workflow(Workflow("quorum_two_row", 1, [Human("sign_off", candidate_groups=["approvers"], quorum=2)]))
    task = HumanTask.objects.get(instance=instance_start("quorum_two_row", {}))
    task_decide(task.pk, users.staff, APPROVE)
    client = login(users.staff)

    # when
    done = row_of(client.get(f"{reverse('approvals:inbox')}?tab=done"), task)

    # then
    assert '<span class="badge state-open">Open</span>' in done
    assert "1/2 approvals" in done
    assert "you approved " in done
    assert " · waits for 1 more" in done


def test_done_by_me_places_a_waiting_quorum_vote_by_when_i_voted(users, register_workflow):
    """Given three things staff did (an approval 3 h ago, a vote on a 2-of-M task 2 h ago that still waits, an
    approval 1 h ago), when staff opens Done by me (most recent first), then the vote sits between the two approvals
    and its row says when staff voted; it sorted last, having no completion time."""
    # given
    register_workflow(Workflow("quorum_two_when", 1, [Human("sign_off", candidate_groups=["approvers"], quorum=2)]))
    older, newer = task_of(expense()), task_of(expense())
    voted = HumanTask.objects.get(instance=instance_start("quorum_two_when", {}))
    now = timezone.now()
    for task, hours in ((older, 3), (voted, 2), (newer, 1)):
        task_decide(task.pk, users.staff, APPROVE)
        # The clock: each was done that long ago (setup only; the services stamp the present).
        TaskDecision.objects.filter(task=task).update(created_at=now - timedelta(hours=hours))
        HumanTask.objects.filter(pk=task.pk, completed_at__isnull=False).update(
            completed_at=now - timedelta(hours=hours)
        )
    client = login(users.staff)

    # when
    response = client.get(f"{reverse('approvals:inbox')}?tab=done")

    # then
    order = [int(pk) for pk in re.findall(r'<tr data-task="(\d+)">', response.content.decode())]
    assert order == [newer.pk, voted.pk, older.pk]
    assert f"you approved {short_date(now - timedelta(hours=2))} · waits for 1 more" in row_of(response, voted)


def test_a_done_row_of_a_quorum_task_another_rejected_says_what_i_did_and_when(users, register_workflow):
    """Given staff approved a 2-of-M task 2 h ago and staff2 rejected it 1 h ago (which completed it), when staff
    opens Done by me, then the row says staff approved, at the time staff voted: not "reject" (staff2's decision,
    the task's outcome) at the time it completed, which told staff they had rejected it."""
    # given
    register_workflow(Workflow("quorum_two_outvoted", 1, [Human("sign_off", candidate_groups=["approvers"], quorum=2)]))
    task = HumanTask.objects.get(instance=instance_start("quorum_two_outvoted", {}))
    now = timezone.now()
    task_decide(task.pk, users.staff, APPROVE)
    TaskDecision.objects.filter(task=task, user=users.staff).update(created_at=now - timedelta(hours=2))
    task_decide(task.pk, users.staff2, REJECT, comment="Not this quarter")
    HumanTask.objects.filter(pk=task.pk).update(completed_at=now - timedelta(hours=1))

    # when
    done = row_of(login(users.staff).get(f"{reverse('approvals:inbox')}?tab=done"), task)

    # then
    assert f"<span data-done>approve · {short_date(now - timedelta(hours=2))}</span>" in done
    assert "reject ·" not in done


def test_next_page_links_walk_the_queue_once_in_order(users):
    """Following "Next page" with pages of 5 shows each of 12 queued tasks exactly once, in the list order."""
    # given
    tasks = [task_of(expense()) for _ in range(12)]
    client = login(users.staff)
    url, seen, pages = f"{reverse('approvals:inbox')}?tab=queue&size=5", [], 0

    # when
    while url:
        content = client.get(url).content.decode()
        seen += [int(pk) for pk in re.findall(r'<tr data-task="(\d+)">', content)]
        pages += 1
        link = re.search(r'href="(\?[^"]*)">Next page</a>', content)
        url = f"{reverse('approvals:inbox')}{html.unescape(link.group(1))}" if link else ""

    # then
    assert pages == 3
    assert seen == [t.pk for t in tasks]  # same due time and priority: by id


# --- dates say which clock they are on ------------------------------------------------------------------


def test_every_date_and_time_input_names_its_time_zone(users, task, settings):
    """A person in another zone reads "due 22:25" and types "18:00" in a datetime-local field: both are in the
    site's zone (BATON_TIME_ZONE), so the page must say which, or the reader is hours off."""
    # given: a site on Kolkata time, a task with a due time and a note on the instance's timeline
    settings.TIME_ZONE = "Asia/Kolkata"
    HumanTask.objects.filter(pk=task.pk).update(due_at=timezone.now() + timedelta(hours=3))
    task_claim(task.pk, users.staff)  # the snooze field is the assignee's

    # when
    task_page = login(users.staff).get(reverse("approvals:task_detail", args=[task.pk])).content.decode()
    instance_page = login(users.admin).get(reverse("console:instance_detail", args=[task.instance_id])).content.decode()
    rows = login(users.admin).get(reverse("console:instance_list")).content.decode()

    # then: every shown time carries the zone, and both time inputs say which zone they are read in
    stamp = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}(?::\d{2})?(?![:\d])(?! IST)")
    for page in (task_page, instance_page, rows):
        assert not stamp.findall(page), stamp.findall(page)
    assert re.search(r"due \d{4}-\d{2}-\d{2} \d{2}:\d{2} IST", task_page)
    assert re.search(r'for="snooze-until">[^<]*Asia/Kolkata', task_page)
    assert re.search(r'for="pause-until">[^<]*Asia/Kolkata', instance_page)
    assert re.search(r'scope="col">When \(IST\)', instance_page)


# --- deciding on the data one saw -------------------------------------------------------------------------

SEEN = re.compile(r'<input type="hidden" name="seen" form="task-decide" value="([0-9a-f]+)">')


def test_a_decision_on_data_an_operator_changed_since_the_page_was_read_is_refused_with_the_comment_kept(users):
    """Given staff reading an expense of 38.60 on its task page, when an operator edits the amount to 3,860.00
    before staff presses Approve, then the approval is refused (409) and nothing is decided: the page shows the new
    amount and the comment as typed; approving again from that page goes through. (The task page's details do not
    refresh live, so without this staff approved an amount they never saw.)"""
    from orchestrator.audit import Actor
    from orchestrator.services.operations import instance_data_edit

    # given
    instance = expense(amount="38.60")
    task = task_of(instance)
    client = login(users.staff)
    page = client.get(reverse("approvals:task_detail", args=[task.pk])).content.decode()
    seen = SEEN.search(page)
    assert seen is not None, "the task page sends what it showed with the decision"

    # when
    instance.refresh_from_db()
    instance_data_edit(
        instance.pk, {**instance.data, "amount": "3860.00"}, actor=Actor.of(users.operator), reason="typo in amount"
    )
    url = reverse("approvals:task_decide", args=[task.pk])
    refused = client.post(url, {"decision": "approve", "comment": "fine by me", "seen": seen.group(1)})

    # then
    assert refused.status_code == 409
    task.refresh_from_db()
    assert (task.state, task.decisions.count()) == (TaskState.OPEN, 0)
    assert any("changed" in text for _level, text in shown(refused)), shown(refused)
    body = refused.content.decode()
    assert "3860.00" in body
    assert "fine by me" in body
    fresh = SEEN.search(body)
    assert fresh is not None
    assert fresh.group(1) != seen.group(1)
    again = client.post(url, {"decision": "approve", "comment": "fine by me", "seen": fresh.group(1)})
    assert again.status_code == 302
    task.refresh_from_db()
    assert task.state == TaskState.COMPLETED


# --- what a page costs ------------------------------------------------------------------------------------

# Session, user, the manager check of visible_tasks, the user's groups, the task (with its instance, assignee and
# step), the steps so far, the decisions, the candidate EXISTS and the manager check of the decision card, the
# delegates, the navigation's counts (one statement) and the template's two permission reads: a fixed number
# whatever the task has collected.
TASK_PAGE_QUERIES = 13
# Session, user, the page's rows in one statement (tasks with instance and assignee), the navigation's counts and
# groups, the manager check and the template's permission reads.
ESCALATIONS_QUERIES = 8
# Session, user, the notifications, marking them read, the navigation's counts and groups and permission reads.
NOTIFICATIONS_QUERIES = 8


def _queries(client: Client, url: str) -> tuple[int, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    return response.status_code, len(queries.captured_queries)


def test_the_task_page_costs_the_same_queries_with_many_decisions_steps_and_delegates(users):
    """Given a task its holder opens, when it has gathered 1 and then 21 comments, steps and possible delegates,
    then the page costs the same fixed number of queries (none per decision, step or person listed)."""
    from approvals.models import TaskDecision
    from orchestrator.models import StepRun
    from tests.factories import UserFactory

    # given
    instance = expense()
    task = task_of(instance)
    task_claim(task.pk, users.staff)
    client = login(users.staff)
    url = reverse("approvals:task_detail", args=[task.pk])
    step = instance.steps.first()

    # when
    costs = []
    for batch in (1, 20):
        people = [UserFactory(groups=[users.approvers]) for _ in range(batch)]
        TaskDecision.objects.bulk_create(
            [TaskDecision(task=task, instance=instance, user=u, decision="comment") for u in people]
        )
        StepRun.objects.bulk_create(
            [StepRun(instance=instance, name=f"s{batch}-{n}", kind=step.kind, state="succeeded") for n in range(batch)]
        )
        costs.append(_queries(client, url))

    # then
    assert costs == [(200, TASK_PAGE_QUERIES), (200, TASK_PAGE_QUERIES)]


def test_the_escalations_and_notifications_pages_cost_the_same_queries_with_1_or_31_rows(users):
    """Given a manager with overdue tasks and notifications, when there are 1 and then 31 of each, then each page
    costs its fixed number of queries."""
    from approvals.models import TaskCandidate
    from orchestrator.models import StepKind

    # given
    instance = expense()
    step = instance.steps.filter(kind=StepKind.HUMAN).first()
    client = login(users.manager)

    # when
    costs = []
    for batch in (1, 30):
        late = timezone.now() - timedelta(hours=1)
        tasks = HumanTask.objects.bulk_create(
            [
                HumanTask(instance=instance, step=step, kind=TaskKind.APPROVAL, title=f"Late {n}", due_at=late)
                for n in range(batch)
            ]
        )
        TaskCandidate.objects.bulk_create([TaskCandidate(task=t, group=users.approvers) for t in tasks])
        Notification.objects.bulk_create(
            [Notification(user=users.manager, kind="reminder", message=f"Reminder {n}") for n in range(batch)]
        )
        costs.append((_queries(client, reverse("approvals:escalations")), _queries(client, "/notifications/")))

    # then
    expected = ((200, ESCALATIONS_QUERIES), (200, NOTIFICATIONS_QUERIES))
    assert costs == [expected, expected]


# --- a task whose workflow is on hold ---------------------------------------------------------------------


def test_a_task_whose_workflow_is_paused_past_its_due_time_is_on_hold_not_overdue(users):
    """Given an expense approval whose SLA fell due while an operator had paused the workflow, when staff opens
    the team queue and the task, and a manager the Escalations page, then the row says the workflow is paused
    instead of "overdue" (its SLA counts unpaused time only: the resume moves it on by the pause), the task page says
    why it cannot be decided yet, and the managers have nothing to chase."""
    from orchestrator.audit import Actor
    from orchestrator.services.instances import instance_pause

    # given
    instance = expense()
    task = task_of(instance)
    instance_pause(instance.pk, actor=Actor.of(users.operator), reason="waiting for the auditors")
    HumanTask.objects.filter(pk=task.pk).update(due_at=timezone.now() - timedelta(minutes=5))

    # when
    queue = login(users.staff).get(f"{reverse('approvals:inbox')}?tab=queue").content.decode()
    page = login(users.staff).get(reverse("approvals:task_detail", args=[task.pk])).content.decode()
    chased = login(users.manager).get(reverse("approvals:escalations")).content.decode()

    # then
    row = queue.split(f'data-task="{task.pk}"', 1)[1].split("</tr>", 1)[0]
    assert "overdue" not in row
    assert "workflow paused" in row
    assert 'id="instance-on-hold"' in page
    assert "paused" in page.split('id="instance-on-hold"', 1)[1].split("</div>", 1)[0]
    assert f'data-task="{task.pk}"' not in chased


def test_a_delegation_from_a_page_drawn_before_someone_claimed_is_refused_with_the_note_kept(users):
    """Given the manager's task page drawn while the task was open, when staff claims it and the manager then hands
    it to staff2, then the page comes back (409) saying it changed hands, with the note as typed, and staff keeps
    it."""
    # given
    task = task_of(expense())
    users.manager.groups.add(users.approvers)
    client = login(users.manager)
    page = client.get(reverse("approvals:task_detail", args=[task.pk])).content.decode()
    assert '<input type="hidden" name="holder" value="0">' in page
    task_claim(task.pk, users.staff)

    # when
    response = client.post(
        reverse("approvals:task_delegate", args=[task.pk]),
        {"to_user": users.staff2.pk, "note": "urgent, the client calls at 3", "holder": "0"},
    )

    # then
    assert response.status_code == 409
    text = " ".join(html.unescape(response.content.decode()).split())
    assert "This task changed hands after you opened it (staff claimed it)" in text
    assert 'data-kept-for="note">urgent, the client calls at 3</textarea>' in response.content.decode()
    task.refresh_from_db()
    assert task.assignee == users.staff


def test_the_overdue_filter_lists_exactly_the_rows_that_say_overdue(users):
    """Given two expense approvals past their due time, one of a workflow an operator paused before it fell due and
    one of a workflow that failed, and a third merely late, when staff filters the team queue to "Overdue", then only
    the late one is listed: the rows of the other two say their workflow is on hold, not overdue (nobody can act on
    them; the paused one's due time moves on by the pause at the resume), and the filter listed them as overdue. A
    task staff decided past its due time is no overdue row of Done by me either."""
    from orchestrator.audit import Actor
    from orchestrator.models import InstanceState
    from orchestrator.services.instances import instance_pause

    # given
    late, paused, failed = (task_of(expense()) for _ in range(3))
    instance_pause(paused.instance_id, actor=Actor.of(users.operator), reason="waiting for the auditors")
    WorkflowInstance.objects.filter(pk=failed.instance_id).update(state=InstanceState.FAILED)
    decided = task_of(expense())
    task_decide(decided.pk, users.staff, APPROVE)
    HumanTask.objects.filter(pk__in=[late.pk, paused.pk, failed.pk, decided.pk]).update(
        due_at=timezone.now() - timedelta(minutes=5)
    )
    client = login(users.staff)

    # when
    everything = client.get(reverse("approvals:inbox"), {"tab": "queue"}).content.decode()
    overdue = client.get(reverse("approvals:inbox"), {"tab": "queue", "due": "overdue"}).content.decode()
    done_overdue = client.get(reverse("approvals:inbox"), {"tab": "done", "due": "overdue"}).content.decode()

    # then
    said_overdue = {
        int(row.split('"', 1)[0])
        for row in everything.split('data-task="')[1:]
        if "overdue" in row.split("</tr>", 1)[0]
    }
    listed = {int(row.split('"', 1)[0]) for row in overdue.split('data-task="')[1:]}
    assert said_overdue == {late.pk}
    assert listed == said_overdue
    assert 'data-task="' not in done_overdue  # decided: nothing is overdue any more


@pytest.mark.parametrize("tail", [RLO, ESCAPE], ids=["override", "pop-then-override"])
def test_text_holding_a_right_to_left_override_cannot_reorder_what_the_page_says_after_it(users, tail):
    """Given an expense whose description (so its title and its task's) and business key end in a right-to-left
    override, with a comment ending in one too, when staff reads the queue and a manager the task page, then each
    of those texts is isolated (a ``<bdi>`` of its own): not isolated, the override reversed the rest of its line as
    drawn: "started by ..." on the task page, the row's state, escalation and due date, the decision's date. A
    POP DIRECTIONAL ISOLATE before the override (``pop-then-override``) closed the ``<bdi>`` itself, in Chromium:
    the text's stray pop is dropped from what is drawn."""
    # given
    spoof = f"Taxi {tail}"
    instance = instance_start(
        "expense_approval", ExpenseInputFactory(description=spoof), business_key=f"EXP-7{tail}", initiator=users.staff
    )
    decided = task_of(instance)
    task_claim(decided.pk, users.staff2)

    # when
    queue = login(users.staff2).get(reverse("approvals:inbox"), {"tab": "mine"}).content.decode()
    page = login(users.manager).get(reverse("approvals:task_detail", args=[decided.pk])).content.decode()
    task_decide(decided.pk, users.staff2, REJECT, comment=f"no receipt {tail}")
    after = login(users.manager).get(reverse("approvals:task_detail", args=[decided.pk])).content.decode()

    other = task_of(expense())
    task_claim(other.pk, users.staff)
    refused = login(users.staff2).post(
        reverse("approvals:tasks_claim_bulk"), {"task": [decided.pk, other.pk]}, follow=True
    )

    # then
    assert all(RLO in shown_page for shown_page in (queue, page, after))
    assert unisolated(queue) == []
    assert unisolated(page) == []
    assert unisolated(after) == []
    # A message is plain text: the title goes between FIRST STRONG ISOLATE and POP DIRECTIONAL ISOLATE, or the
    # override reversed the reasons of the tasks named after it.
    (warning,) = [text for level, text in shown(refused) if level == "warning"]
    assert f"\u2068{balanced(decided.title)}\u2069" in warning
