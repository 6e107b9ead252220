"""Section "bad input": each kind of bad value gets a message on the page that shows the form again with what
was typed; nothing reaches the database that it (or Python) cannot hold; stored bad data breaks no page."""

from __future__ import annotations

import base64
import html
import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals.models import HumanTask, SavedView, TaskState
from approvals.services.base import TaskInvalid
from approvals.services.tasks import task_claim, task_decide, task_delegate, task_snooze
from demo.data import grant_group_permissions
from orchestrator.audit import Actor
from orchestrator.inputs import COMMENT_MAX, REASON_MAX
from orchestrator.models import InstanceState, WorkflowInstance
from orchestrator.services.instances import InvalidInput, instance_pause, instance_start
from tests.factories import ExpenseInputFactory

pytestmark = pytest.mark.django_db

ALERT = re.compile(r'<div class="alert alert-(\w+)[^"]*"[^>]*>\s*(.*?)\s*<button', re.S)
YEAR_10000 = "9999-12-31T23:59:59-23:59"  # its UTC value is 10000-01-01T23:58:59


def shown(response) -> list[tuple[str, str]]:
    content = response.content.decode()
    if 'id="messages"' not in content:
        return []
    block = content.split('id="messages"', 1)[1].split("<main", 1)[0]
    return [(level, html.unescape(" ".join(text.split()))) for level, text in ALERT.findall(block)]


@pytest.fixture
def roles(users):
    grant_group_permissions()
    return users


def client_of(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def expense(initiator=None) -> WorkflowInstance:
    return instance_start("expense_approval", ExpenseInputFactory(), initiator=initiator)


def task_of(instance: WorkflowInstance) -> HumanTask:
    return HumanTask.objects.filter(instance=instance).order_by("-id").first()


# --- query strings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/instances/", "/inbox/"])
def test_a_nul_in_the_search_is_a_message_not_a_500(roles, path):
    """``?q=%00`` (and a NUL inside a word) answers the page with a message; the other filters still apply."""
    # given
    expense(initiator=roles.staff)

    # when
    nul_only = client_of(roles.operator).get(f"{path}?q=%00")
    in_a_word = client_of(roles.operator).get(f"{path}?q=Sa%00m&state=nonsense")

    # then
    assert nul_only.status_code == 200
    assert in_a_word.status_code == 200
    assert any("NUL" in text or "Null" in text for _level, text in shown(in_a_word))
    assert any("state" in text.lower() for _level, text in shown(in_a_word))


def test_junk_in_the_instance_list_is_named_and_the_good_filters_kept(roles):
    """A page link that is not ours, an unknown state and an over-long search each get a message; a valid
    workflow filter still applies and the search box still holds what was typed. (The list pages by a cursor,
    ``after``, since issue 10's keyset pagination; ``page`` numbers are gone.)"""
    # given
    expense(initiator=roles.staff)

    # when
    response = client_of(roles.operator).get(
        "/instances/", {"after": "abc", "state": "sideways", "workflow": "expense_approval", "q": "x" * 150}
    )

    # then
    assert response.status_code == 200
    texts = " ".join(text for _level, text in shown(response))
    for name in ("Page:", "State:", "Title or business key:"):  # each named as its box is labelled
        assert name in texts
    assert response.context["workflow"] == "expense_approval"
    assert response.context["q"] == "x" * 150


@pytest.mark.parametrize(
    ("path", "repeated", "label"),
    [
        ("/instances/", "state=running&state=failed", "State:"),
        ("/instances/", "workflow=a&workflow=expense_approval", "Workflow:"),
        ("/inbox/", "state=open&state=claimed", "State:"),
        ("/inbox/", "sort=due&sort=-priority", "Sort:"),
    ],
)
def test_a_filter_given_twice_is_named_not_silently_narrowed_to_the_last(roles, path, repeated, label):
    """``?state=running&state=failed`` asks for two states; a one-value filter used to take the last and show
    only failed instances with no word, so the person believed nothing was running."""
    # given
    expense(initiator=roles.staff)

    # when
    response = client_of(roles.operator).get(f"{path}?{repeated}&q=keep")

    # then: a message names the parameter and says it was left out; the other filters still apply
    assert response.status_code == 200
    texts = [text for _level, text in shown(response)]
    assert any(text.startswith(label) and "given 2 times" in text for text in texts), texts
    query = response.context.get("query")
    assert (query.q if query is not None else response.context["q"]) == "keep"


# --- posted forms -------------------------------------------------------------------------------------------


def test_pause_until_year_10000_is_refused_before_it_is_stored(roles):
    """The issue's input: refused with a message naming the range; the reason typed is still in the form."""
    # given
    instance = expense(initiator=roles.staff)

    # when
    response = client_of(roles.operator).post(
        f"/instances/{instance.pk}/pause/", {"reason": "month end close", "until": YEAR_10000}
    )

    # then
    assert response.status_code == 400
    assert any(text.startswith("Resume at: enter a date between 2000-01-01") for _l, text in shown(response))
    assert 'value="month end close"' in response.content.decode()
    instance.refresh_from_db()
    assert (instance.state, instance.paused_until) == (InstanceState.WAITING, None)


@pytest.mark.parametrize("until", ["1999-12-31T23:00", "2199-01-01T00:00", "0001-01-01T00:00+01:00"])
def test_the_pause_service_refuses_dates_out_of_range(roles, until):
    """Whoever calls it (a script, another service), the service refuses a date the pages cannot show."""
    # given
    instance = expense(initiator=roles.staff)
    value = datetime.fromisoformat(until)

    # when / then
    with pytest.raises(ValidationError, match="Resume at: enter a date between"):
        instance_pause(instance.pk, actor=Actor.system("test"), reason="r", until=value)


def test_a_stored_year_10000_breaks_no_page_and_can_be_resumed(roles):
    """Data stored before the check (year 10000, which Python cannot read): the list and the instance page
    answer, and the operator resumes it through the page."""
    # given
    instance = expense(initiator=roles.staff)
    instance_pause(instance.pk, actor=Actor.system("test"), reason="hold")
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE orchestrator_workflowinstance SET paused_until = '10000-01-01T23:58:59+00' WHERE id = %s",
            [instance.pk],
        )
    operator = client_of(roles.operator)

    # when
    listing = operator.get("/instances/")
    detail = operator.get(f"/instances/{instance.pk}/")
    resumed = operator.post(f"/instances/{instance.pk}/resume/", {"reason": "bad date fixed"})

    # then
    assert (listing.status_code, detail.status_code, resumed.status_code) == (200, 200, 302)
    instance.refresh_from_db()
    assert (instance.state, instance.paused_until) == (InstanceState.WAITING, None)


def test_an_idempotency_key_of_300_characters_is_a_message_with_the_form_as_typed(roles):
    """The start form says what is wrong and keeps the values; nothing is started; a fresh key is issued."""
    # when
    response = client_of(roles.staff).post(
        "/workflows/expense_approval/start/",
        {
            "employee": "Kim Typed",
            "amount": "12.30",
            "category": "meals",
            "description": "Lunch",
            "baton-idempotency_key": "k" * 300,
        },
    )

    # then
    assert response.status_code == 400
    content = response.content.decode()
    assert "submission key is not valid" in content
    assert 'value="Kim Typed"' in content
    assert "Lunch</textarea>" in content
    assert "k" * 300 not in content
    assert not WorkflowInstance.objects.exists()


def test_the_start_service_refuses_an_over_long_key(roles):
    with pytest.raises(InvalidInput, match="idempotency key has at most 200"):
        instance_start("expense_approval", ExpenseInputFactory(), idempotency_key="k" * 300)


def test_a_nul_in_a_start_field_is_a_field_error(roles):
    response = client_of(roles.staff).post(
        "/workflows/expense_approval/start/",
        {"employee": "Kim\x00", "amount": "12.30", "category": "meals", "description": "Lunch"},
    )
    assert response.status_code == 400
    assert "Null characters are not allowed." in response.content.decode()
    assert not WorkflowInstance.objects.exists()


def test_a_nul_or_an_over_long_comment_is_refused_with_the_comment_kept(roles):
    """A comment with a NUL, or past the limit, gets a message; the task stays open; the page shows the limit."""
    # given
    task = task_of(expense(initiator=roles.manager))
    staff = client_of(roles.staff)
    long_comment = "y" * (COMMENT_MAX + 1)

    # when
    nul = staff.post(
        reverse("approvals:task_decide", args=[task.pk]), {"decision": "approve", "comment": "fine\x00 by me"}
    )
    long = staff.post(
        reverse("approvals:task_decide", args=[task.pk]), {"decision": "approve", "comment": long_comment}
    )
    page = staff.get(reverse("approvals:task_detail", args=[task.pk]))

    # then
    assert (nul.status_code, long.status_code) == (400, 400)
    assert "fine" in nul.content.decode()
    assert long_comment in html.unescape(long.content.decode())
    assert f'maxlength="{COMMENT_MAX}"' in page.content.decode()
    assert f"Up to {COMMENT_MAX} characters" in page.content.decode()
    task.refresh_from_db()
    assert task.state == TaskState.OPEN


def test_text_of_exactly_the_limit_with_line_breaks_is_accepted_as_the_browser_counted_it(roles):
    """A textarea's maxlength and the page's counter count a line break as one character, but the browser sends
    it as CR LF (HTML's form submission rule): a comment the counter showed at exactly the limit was refused."""
    # given: lines as typed, at exactly the limit counting each break once, and one over
    task = task_of(expense(initiator=roles.manager))
    lines = ("ok 🙂 مرحبا\n" * COMMENT_MAX)[: COMMENT_MAX - 1] + "z"
    assert len(lines) == COMMENT_MAX
    assert lines.count("\n") > 100
    staff = client_of(roles.staff)

    # when: sent as a browser sends a textarea
    over = staff.post(
        reverse("approvals:task_decide", args=[task.pk]),
        {"decision": "approve", "comment": (lines + "!").replace("\n", "\r\n")},
    )
    exact = staff.post(
        reverse("approvals:task_decide", args=[task.pk]),
        {"decision": "approve", "comment": lines.replace("\n", "\r\n")},
    )

    # then: one over is refused naming the count the person saw; the exact one is kept with its breaks as typed
    assert over.status_code == 400
    refusal = " ".join(text for _level, text in shown(over))
    assert f"{COMMENT_MAX + 1}" in refusal, refusal
    assert exact.status_code == 302
    assert task.decisions.get().comment == lines


def test_the_services_enforce_the_limits_for_every_caller(roles):
    """The limits hold when the services are called by code, not only through the pages."""
    # given
    task = task_of(expense(initiator=roles.manager))
    task_claim(task.pk, roles.staff)

    # when / then
    with pytest.raises(TaskInvalid, match=f"at most {COMMENT_MAX}"):
        task_decide(task.pk, roles.staff, "approve", comment="c" * (COMMENT_MAX + 1))
    with pytest.raises(TaskInvalid, match="NUL"):
        task_delegate(task.pk, roles.staff, roles.staff2, note="hand\x00over")
    with pytest.raises(TaskInvalid, match="enter a date between"):
        task_snooze(task.pk, roles.staff, datetime(9999, 12, 31, 23, 59, tzinfo=UTC))
    with pytest.raises(ValidationError, match=f"at most {REASON_MAX}"):
        instance_pause(task.instance_id, actor=Actor.system("test"), reason="r" * (REASON_MAX + 1))
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.CLAIMED, roles.staff)


@pytest.mark.parametrize("to_user", ["abc", "", "99999999999999999999999", "1\x00"])
def test_delegate_to_something_that_is_not_a_user_keeps_the_note(roles, to_user):
    """``to_user=abc`` and its kind: a message, the task page again, the note as typed, the task unchanged."""
    # given
    task = task_of(expense(initiator=roles.manager))
    task_claim(task.pk, roles.staff)

    # when
    response = client_of(roles.staff).post(
        reverse("approvals:task_delegate", args=[task.pk]), {"to_user": to_user, "note": "please check the VAT"}
    )

    # then
    assert response.status_code == 400
    assert shown(response)[0][1] in {
        "Choose who to delegate to.",
        "Choose who to delegate to from the list.",
        "Null characters are not allowed.",
    }
    assert 'value="please check the VAT"' in response.content.decode()
    task.refresh_from_db()
    assert task.assignee == roles.staff


def test_a_nul_in_a_view_name_is_a_message(roles):
    response = client_of(roles.staff).post(
        reverse("approvals:saved_view_create"), {"name": "Mine\x00", "tab": "mine"}, follow=True
    )
    assert response.status_code == 200
    assert shown(response) == [("danger", "Null characters are not allowed.")]
    assert 'value="Mine"' in response.content.decode()  # the save form is open again with the name typed
    assert not SavedView.objects.exists()


def test_approve_after_someone_else_claimed_keeps_the_comment(roles):
    """staff2 claims while staff types: staff's Approve is refused with who has it, and the comment typed is
    still on the page (in a read-only box, since the form is no longer staff's to send)."""
    # given
    task = task_of(expense(initiator=roles.manager))
    staff = client_of(roles.staff)
    staff.get(reverse("approvals:task_detail", args=[task.pk]))
    task_claim(task.pk, roles.staff2)

    # when
    response = staff.post(
        reverse("approvals:task_decide", args=[task.pk]), {"decision": "approve", "comment": "Checked the receipts, OK"}
    )

    # then
    assert response.status_code == 409
    assert shown(response) == [("warning", "staff2 has claimed this task.")]
    content = response.content.decode()
    assert "<bdi>staff2</bdi> is working on this task." in content
    assert "Checked the receipts, OK</textarea>" in content
    task.refresh_from_db()
    assert (task.state, task.assignee) == (TaskState.CLAIMED, roles.staff2)


def test_snooze_far_ahead_is_refused_with_the_time_kept(roles):
    task = task_of(expense(initiator=roles.manager))
    task_claim(task.pk, roles.staff)
    response = client_of(roles.staff).post(reverse("approvals:task_snooze", args=[task.pk]), {"until": YEAR_10000})
    assert response.status_code == 400
    assert f'value="{YEAR_10000}"' in response.content.decode()
    task.refresh_from_db()
    assert task.snoozed_until is None


def test_a_bulk_claim_with_junk_ids_is_a_message(roles):
    task = task_of(expense(initiator=roles.manager))
    response = client_of(roles.staff).post(
        reverse("approvals:tasks_claim_bulk"), {"task": [str(task.pk), "99999999999999999999999"]}, follow=True
    )
    assert response.status_code == 200
    assert shown(response) == [("danger", "The selection holds something that is not a task.")]
    task.refresh_from_db()
    assert task.assignee is None


def test_far_future_is_ten_years(roles):
    """The horizon is about ten years: nine years ahead passes, eleven does not."""
    from orchestrator.inputs import check_when

    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert check_when(now + timedelta(days=365 * 9), "When", now=now)
    with pytest.raises(ValidationError):
        check_when(now + timedelta(days=365 * 11), "When", now=now)


@pytest.mark.parametrize(
    "values",
    [
        ["9999-12-31T23:59:59-23:59", 1, 1],  # an offset PostgreSQL refuses
        ["0001-01-01T00:00:00+14:00", 1, 1],  # before year 1 in UTC
        [None, 2**70, 2**70],  # past bigint
    ],
)
def test_a_forged_page_link_is_a_message(roles, values):
    """The inbox's keyset cursor is base64 JSON in the URL: a forged one shows the first page with a message."""
    # given
    task_of(expense(initiator=roles.manager))
    cursor = base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")

    # when
    responses = [client_of(roles.staff).get("/inbox/", {"tab": tab, "after": cursor}) for tab in ("mine", "queue")]

    # then
    assert [r.status_code for r in responses] == [200, 200]
    if values[0] is not None:  # past bigint is only a link beyond the last row: an empty page, no error
        for response in responses:
            assert ("warning", "That page link is no longer valid; showing the first page.") in shown(response)


@pytest.mark.parametrize("ago", [timedelta(0), timedelta(minutes=5), timedelta(days=400)])
def test_a_pause_or_snooze_ending_in_the_past_is_refused(roles, ago):
    """A pause that "ends" now or earlier would be lifted by the next sweep, and a snooze would hide nothing:
    both are refused, naming the field, and nothing is stored."""
    # given
    instance = expense(initiator=roles.staff)
    when = timezone.now() - ago

    # when / then
    with pytest.raises(ValidationError, match="Resume at: enter a time in the future"):
        instance_pause(instance.pk, actor=Actor.system("test"), reason="r", until=when)
    instance.refresh_from_db()
    assert instance.state != InstanceState.PAUSED
