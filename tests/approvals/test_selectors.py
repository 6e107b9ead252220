"""Inbox reads: who sees which task, filters, keyset pagination, capped counts, saved views, escalations."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from functools import cmp_to_key
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from approvals.models import (
    HumanTask,
    Notification,
    Priority,
    SavedView,
    TaskCandidate,
    TaskDecision,
    TaskKind,
    TaskState,
)
from approvals.selectors import (
    COUNT_CAP,
    SORTS,
    InboxQuery,
    apply_filters,
    done_by,
    escalations,
    inbox_counts,
    my_tasks,
    page_of,
    saved_views_for,
    team_queue,
)
from approvals.services.base import APPROVE, TaskForbidden
from approvals.services.tasks import task_claim, task_decide, task_snooze
from orchestrator.dsl import Human, Workflow
from orchestrator.models import StepKind, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory, OrderInputFactory, UserFactory

pytestmark = pytest.mark.django_db


def expense(initiator=None, business_key: str = "", **overrides) -> WorkflowInstance:
    return instance_start(
        "expense_approval", ExpenseInputFactory(**overrides), initiator=initiator, business_key=business_key
    )


def task_of(instance: WorkflowInstance) -> HumanTask:
    return HumanTask.objects.filter(instance=instance).order_by("-id").first()


def ids(tasks) -> list[int]:
    return [t.pk for t in tasks]


def add_tasks(
    instance: WorkflowInstance,
    rows: list[dict[str, Any]],
    *,
    group: Group | None = None,
) -> list[HumanTask]:
    """Many tasks on one real instance and its human step, in two statements (setup for lists and counts)."""
    step = instance.steps.filter(kind=StepKind.HUMAN).order_by("id").first()
    tasks = HumanTask.objects.bulk_create(
        [
            HumanTask(instance=instance, step=step, **{"kind": TaskKind.APPROVAL, "title": f"Bulk task {n}", **row})
            for n, row in enumerate(rows)
        ]
    )
    if group is not None:
        TaskCandidate.objects.bulk_create([TaskCandidate(task=task, group=group) for task in tasks])
    return tasks


# --- who sees what --------------------------------------------------------------------------------------


def test_group_candidates_find_the_task_in_their_queue(users):
    """An approvers' task is in every approver's team queue, and in nobody else's."""
    # given
    task = task_of(expense())

    # when
    queues = {name: ids(team_queue(getattr(users, name))) for name in ("staff", "staff2", "manager", "operator")}

    # then
    assert queues == {"staff": [task.pk], "staff2": [task.pk], "manager": [], "operator": []}


def test_user_candidates_find_the_task_in_their_queue(users, register_workflow):
    """A task for a named user is in that user's queue only, whatever their groups."""
    # given
    register_workflow(Workflow("named_review", 1, [Human("review", candidate_users=["operator"])]))
    task = task_of(instance_start("named_review", {}))

    # when / then
    assert ids(team_queue(users.operator)) == [task.pk]
    assert ids(team_queue(users.staff)) == []


def test_the_initiator_never_finds_their_own_instance_in_their_queue(users):
    """Four-eyes in the list too: staff started the expense, so only staff2 sees its task."""
    # given
    task = task_of(expense(initiator=users.staff))

    # when / then
    assert ids(team_queue(users.staff)) == []
    assert ids(team_queue(users.staff2)) == [task.pk]


def failed_refund(run_steps, initiator) -> HumanTask:
    """An order whose refund failed every attempt: an escalation task for the operators."""
    instance = instance_start(
        "order_fulfilment", OrderInputFactory(fail_shipping=True, fail_refund=4), initiator=initiator
    )
    run_steps(instance, advance=True)
    return HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)


def test_an_escalation_is_in_the_operators_queue(users, run_steps):
    """A failed compensation's escalation task is queued for operators only."""
    # given
    escalation = failed_refund(run_steps, initiator=users.staff)

    # when / then
    assert ids(team_queue(users.operator)) == [escalation.pk]
    assert ids(team_queue(users.staff)) == ids(team_queue(users.manager)) == []


def test_an_operator_does_not_find_the_escalation_of_an_order_they_started(users, run_steps):
    """Four-eyes covers escalations too: the operator who started the order neither finds nor takes its escalation;
    another operator does."""
    # given
    users.operator2 = UserFactory(username="operator2", groups=[users.operators])
    escalation = failed_refund(run_steps, initiator=users.operator)

    # when
    queue = ids(team_queue(users.operator))

    # then
    assert queue == []
    with pytest.raises(TaskForbidden, match="four-eyes"):
        task_claim(escalation.pk, users.operator)
    assert ids(team_queue(users.operator2)) == [escalation.pk]


def test_a_claimed_task_leaves_the_queue_for_my_tasks_then_done(users):
    """Claimed: out of every queue and into the claimer's tasks; decided: in their done list only."""
    # given
    task = task_of(expense())

    # when
    task_claim(task.pk, users.staff)
    after_claim = (ids(team_queue(users.staff)), ids(team_queue(users.staff2)), ids(my_tasks(users.staff)))
    task_decide(task.pk, users.staff, APPROVE)

    # then
    assert after_claim == ([], [], [task.pk])
    assert (ids(my_tasks(users.staff)), ids(done_by(users.staff)), ids(done_by(users.staff2))) == ([], [task.pk], [])


def test_a_quorum_task_i_approved_is_in_my_done_list_while_it_waits_for_the_others(users, register_workflow):
    """A 2-of-M task staff approved first is in staff's done list (not in their tasks or queue: four-eyes), still
    open, and stays there once staff2's approval completes it; staff2 finds it in theirs too."""
    # given
    register_workflow(Workflow("quorum_two", 1, [Human("sign_off", candidate_groups=["approvers"], quorum=2)]))
    task = task_of(instance_start("quorum_two", {}))

    # when
    task_decide(task.pk, users.staff, APPROVE)
    waiting = (ids(my_tasks(users.staff)), ids(team_queue(users.staff)), ids(done_by(users.staff)))
    state_while_waiting = done_by(users.staff).get().state
    task_decide(task.pk, users.staff2, APPROVE)

    # then
    assert waiting == ([], [], [task.pk])
    assert state_while_waiting == TaskState.OPEN
    assert (ids(done_by(users.staff)), ids(done_by(users.staff2))) == ([task.pk], [task.pk])


def test_a_snoozed_task_hides_from_my_tasks_until_it_wakes(users):
    """Snoozed: hidden from My tasks, listed with include_snoozed, back once the snooze time has passed."""
    # given
    task = task_of(expense())
    task_claim(task.pk, users.staff)

    # when
    task_snooze(task.pk, users.staff, timezone.now() + timedelta(hours=1))
    hidden, listed = ids(my_tasks(users.staff)), ids(my_tasks(users.staff, include_snoozed=True))
    # The clock moves past the snooze time (setup only: the service never accepts a time in the past).
    HumanTask.objects.filter(pk=task.pk).update(snoozed_until=timezone.now() - timedelta(seconds=1))

    # then
    assert (hidden, listed) == ([], [task.pk])
    assert ids(my_tasks(users.staff)) == [task.pk]


# --- parsing the query string ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field", "expected", "error"),
    [
        ({"priority": "abc"}, "priority", None, "Unknown priority; showing all priorities."),
        ({"priority": "7"}, "priority", None, "Unknown priority; showing all priorities."),
        ({"due": "never"}, "due", "", "Unknown due filter; showing all."),
        ({"state": "lost"}, "state", "", "Unknown state; showing all."),
    ],
)
def test_parse_drops_bad_values_with_a_message(params, field, expected, error):
    """An unknown priority, due bucket or state is dropped and said so, never fatal."""
    # when
    query = InboxQuery.parse(params, "queue")

    # then
    assert getattr(query, field) == expected
    assert query.errors == [error]


def test_parse_keeps_good_values_without_a_message():
    """Valid filters come through as they are."""
    # when
    query = InboxQuery.parse(
        {"priority": "3", "due": "today", "state": "open", "q": "  lyon ", "sort": "age", "size": "50"}, "mine"
    )

    # then
    assert (query.priority, query.due, query.state, query.q, query.sort_key, query.size) == (
        Priority.URGENT,
        "today",
        "open",
        "lyon",
        "age",
        50,
    )
    assert query.errors == []


@pytest.mark.parametrize(("raw", "size"), [("-5", 5), ("0", 5), ("1000", 100), ("25", 25)])
def test_parse_clamps_the_page_size(raw, size):
    """A page holds between 5 and 100 rows, whatever the query string asks."""
    assert InboxQuery.parse({"size": raw}, "mine").size == size


def test_parse_reports_a_size_that_is_not_a_number():
    """A size that is not a number falls back to 25, with a message like every other bad value."""
    # when
    query = InboxQuery.parse({"size": "lots"}, "mine")

    # then
    assert query.size == 25
    assert len(query.errors) == 1


@pytest.mark.parametrize("cursor", ["!!!", "bm90IGpzb24", "WzEsMiwzLDRd", "WyJ4IiwxLDJd"])
def test_a_garbage_cursor_shows_the_first_page_with_a_message(users, cursor):
    """A cursor that is not base64 JSON of the sort's keys (or of another length or type) restarts at page one."""
    # given
    instance = expense()
    add_tasks(instance, [{"due_at": timezone.now() + timedelta(hours=n)} for n in range(8)], group=users.approvers)
    first = page_of(team_queue(users.staff), InboxQuery.parse({}, "queue"), size=5)

    # when
    query = InboxQuery.parse({"after": cursor}, "queue")
    page = page_of(team_queue(users.staff), query, size=5)

    # then
    assert ids(page.tasks) == ids(first.tasks)
    assert not page.has_previous
    assert query.errors == ["That page link is no longer valid; showing the first page."]


# --- filters --------------------------------------------------------------------------------------------


@pytest.fixture
def filter_rows(users, run_steps) -> dict[str, Any]:
    """Tasks in staff's queue: a hotel expense (key EXP-7) with four due buckets, and a benchmark approval."""
    now = timezone.now()
    end_of_day = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    hotel = expense(description="Hotel in Lyon", business_key="EXP-7")
    bench = instance_start("bench_approval", {}, business_key="BENCH-1")
    run_steps(bench)
    hotel_task, bench_task = task_of(hotel), task_of(bench)  # their own SLAs: due in a day, and none
    overdue, today, later, undated = add_tasks(
        hotel,
        [
            {"due_at": now - timedelta(hours=1), "priority": Priority.HIGH},
            {"due_at": now + (end_of_day - now) / 2, "priority": Priority.NORMAL},
            {"due_at": end_of_day + timedelta(hours=2), "priority": Priority.URGENT},
            {"due_at": None, "priority": Priority.LOW},
        ],
        group=users.approvers,
    )
    return {
        "hotel": hotel_task,
        "bench": bench_task,
        "overdue": overdue,
        "today": today,
        "later": later,
        "undated": undated,
    }


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"workflow": "bench_approval"}, {"bench"}),
        ({"workflow": "expense_approval"}, {"hotel", "overdue", "today", "later", "undated"}),
        ({"priority": "3"}, {"later"}),
        ({"priority": "0"}, {"undated"}),
        ({"due": "overdue"}, {"overdue"}),
        ({"due": "today"}, {"today"}),
        ({"due": "later"}, {"later", "hotel"}),
        ({"due": "none"}, {"undated", "bench"}),
        ({"q": "lyon"}, {"hotel", "overdue", "today", "later", "undated"}),
        ({"q": "EXP-7"}, {"hotel", "overdue", "today", "later", "undated"}),
        ({"q": "EXP-"}, set()),
        ({"q": "BENCH-1"}, {"bench"}),
        ({"q": "lyon", "due": "overdue", "priority": "2"}, {"overdue"}),
    ],
)
def test_filters_narrow_the_queue(users, filter_rows, params, expected):
    """Workflow, priority, due bucket and search (title contains, business key exact) each narrow the list."""
    # given
    names = {task.pk: name for name, task in filter_rows.items()}

    # when
    found = apply_filters(team_queue(users.staff), InboxQuery.parse(params, "queue"))

    # then
    assert {names[pk] for pk in found.values_list("pk", flat=True)} == expected


# --- keyset pagination ----------------------------------------------------------------------------------


def python_order(tasks: list[HumanTask], sort: list[tuple[str, bool]]) -> list[int]:
    """The same order as ``InboxQuery.order``, computed in Python: each key ascending or descending, empty values
    last."""

    def compare(a: HumanTask, b: HumanTask) -> int:
        for name, descending in sort:
            x, y = getattr(a, name), getattr(b, name)
            if x == y:
                continue
            if x is None or y is None:
                return 1 if x is None else -1
            result = -1 if x < y else 1
            return -result if descending else result
        return 0

    return ids(sorted(tasks, key=cmp_to_key(compare)))


def walk(qs_of: Callable[[], Any], tab: str, sort: str) -> tuple[list[int], int]:
    """Every page of seven, following next_cursor as the "Next page" link does; returns ids and page count."""
    seen: list[int] = []
    cursor, pages = "", 0
    while True:
        query = InboxQuery.parse({"sort": sort, "after": cursor}, tab)
        page = page_of(qs_of(), query, size=7)
        assert query.errors == []
        assert page.has_previous == bool(cursor)
        seen += ids(page.tasks)
        pages += 1
        if not page.next_cursor:
            return seen, pages
        cursor = page.next_cursor


@pytest.fixture
def crowded(users) -> None:
    """60 queued tasks and 40 done ones (30 completed, 10 quorum votes still waiting), full of ties: shared due
    dates, empty ones, equal priorities, ages and done times."""
    rng = random.Random(20240611)
    base = timezone.now().replace(microsecond=0) + timedelta(hours=1)
    dues = [base, base, base + timedelta(hours=1), base - timedelta(days=1), None]
    instance = expense()
    queued = add_tasks(
        instance,
        [{"due_at": rng.choice(dues), "priority": rng.choice(Priority.values)} for _ in range(60)],
        group=users.approvers,
    )
    # Equal creation times for a third of the rows (bulk_create stamps each row with its own instant).
    HumanTask.objects.filter(pk__in=ids(queued[::3])).update(created_at=base - timedelta(days=2))
    HumanTask.objects.filter(pk__in=ids(queued[1::7])).update(created_at=base - timedelta(days=3))
    completed = [base - timedelta(hours=1), base - timedelta(hours=2), None]
    add_tasks(
        instance,
        [
            {
                "state": TaskState.COMPLETED,
                "completed_by": users.staff,
                "completed_at": rng.choice(completed),
                "decision": APPROVE,
                "priority": rng.choice(Priority.values),
            }
            for _ in range(30)
        ],
    )
    # Ten votes of staff's on 2-of-M tasks still waiting (no completion time), cast at times that tie with the
    # completed ones' and between them: Done by me places each by when staff voted. On an instance of their own:
    # an approval on the first would bar staff from its queued tasks (four-eyes).
    voting = expense()
    voted = add_tasks(voting, [{"quorum": 2, "approvals": 1} for _ in range(10)])
    cast = [base - timedelta(hours=1), base - timedelta(minutes=90), base - timedelta(hours=2)]
    decisions = TaskDecision.objects.bulk_create(
        [TaskDecision(task=task, instance=voting, user=users.staff, decision=APPROVE) for task in voted]
    )
    for decision in decisions:
        TaskDecision.objects.filter(pk=decision.pk).update(created_at=rng.choice(cast))
    # Not the viewer's: another person's done task and a claimed one must never show up.
    add_tasks(instance, [{"state": TaskState.COMPLETED, "completed_by": users.staff2, "completed_at": base}])
    add_tasks(instance, [{"state": TaskState.CLAIMED, "assignee": users.staff2}], group=users.approvers)


@pytest.mark.parametrize(
    ("sort", "tab"), [("due", "queue"), ("priority", "queue"), ("age", "queue"), ("recent", "done")]
)
def test_keyset_pages_cover_the_list_exactly_once(users, crowded, sort, tab):
    """Walking every page of seven gives the whole list in the sort's order: no duplicate, no gap."""
    # given
    qs_of = (lambda: team_queue(users.staff)) if tab == "queue" else (lambda: done_by(users.staff))
    rows = list(qs_of())
    expected = python_order(rows, InboxQuery.parse({"sort": sort}, tab).order)

    # when
    seen, pages = walk(qs_of, tab, sort)

    # then
    assert len(rows) == (61 if tab == "queue" else 40)
    assert len(seen) == len(set(seen))
    assert seen == expected
    assert pages == -(-len(rows) // 7)


def test_a_page_in_the_middle_filters_too(users, crowded):
    """Pages of a filtered list are the filtered slice of the full order (the cursor and the filter combine)."""
    # given
    rows = [t for t in team_queue(users.staff) if t.priority == Priority.HIGH]
    expected = python_order(rows, SORTS["due"])

    # when
    seen: list[int] = []
    cursor = ""
    while True:
        query = InboxQuery.parse({"priority": str(Priority.HIGH), "after": cursor}, "queue")
        page = page_of(team_queue(users.staff), query, size=5)
        seen += ids(page.tasks)
        if not page.next_cursor:
            break
        cursor = page.next_cursor

    # then
    assert seen == expected


# --- capped counts --------------------------------------------------------------------------------------


def test_counts_stop_at_the_cap(users, client):
    """With COUNT_CAP + 5 tasks queued and as many unread notices, the counts say COUNT_CAP and the badge "99+"."""
    # given
    instance = expense()
    add_tasks(instance, [{"due_at": None} for _ in range(COUNT_CAP + 5)], group=users.approvers)
    Notification.objects.bulk_create(
        [Notification(user=users.staff, kind="test", message=f"n{n}") for n in range(COUNT_CAP + 5)]
    )

    # when
    counts = inbox_counts(users.staff, fresh=True)
    client.force_login(users.staff)
    page = client.get("/inbox/?tab=queue")

    # then
    assert counts == {"inbox": 0, "queue": COUNT_CAP, "unread": COUNT_CAP, "cap": COUNT_CAP}
    assert team_queue(users.staff).count() == COUNT_CAP + 6
    assert f'data-count="queue">{COUNT_CAP - 1}+</span>' in page.content.decode()
    assert f'data-count="unread">{COUNT_CAP - 1}+</span>' in page.content.decode()


# --- saved views ----------------------------------------------------------------------------------------


def test_saved_views_are_own_or_shared_with_one_of_my_groups(users):
    """staff sees their own views and views shared with approvers; not others' private or other groups' views."""
    # given
    SavedView.objects.create(owner=users.staff, name="Mine", params={"priority": "3"})
    SavedView.objects.create(owner=users.staff2, name="Team", shared_with=users.approvers)
    SavedView.objects.create(owner=users.staff2, name="Private")
    SavedView.objects.create(owner=users.manager, name="Managers", shared_with=users.managers)

    # when
    names = {user: [v.name for v in saved_views_for(getattr(users, user))] for user in ("staff", "manager")}

    # then
    assert names == {"staff": ["Mine", "Team"], "manager": ["Managers"]}


# --- escalations ----------------------------------------------------------------------------------------


def test_escalations_list_overdue_escalated_and_operator_tasks_most_urgent_first(users):
    """Overdue, escalated and kind=escalation tasks that are still open; fresh and closed tasks stay out."""
    # given
    now = timezone.now()
    instance = expense()
    fresh = task_of(instance)  # due in a day
    late, escalated, operator, _done, _undated = add_tasks(
        instance,
        [
            {"due_at": now - timedelta(hours=2), "priority": Priority.NORMAL},
            {"state": TaskState.ESCALATED, "due_at": now + timedelta(hours=3), "escalation_level": 2},
            {"kind": TaskKind.ESCALATION, "priority": Priority.URGENT},
            {"state": TaskState.COMPLETED, "due_at": now - timedelta(days=1)},
            {"due_at": None},
        ],
        group=users.approvers,
    )

    # when
    listed = ids(escalations(users.manager))

    # then
    assert fresh.pk not in listed
    assert listed == [late.pk, escalated.pk, operator.pk]


# --- cost: the inbox page in a constant number of queries -----------------------------------------------


def fill_inbox(users, tab: str, count: int) -> None:
    """``count`` more tasks in staff's queue (unclaimed, for approvers), in their own list (claimed by them) or in
    their done list (half completed by them, half open quorum tasks they cast one vote of)."""
    mine = {"state": TaskState.CLAIMED, "assignee": users.staff} if tab == "mine" else {}
    instance = expense()
    task_claim(task_of(instance).pk, users.staff2)  # the instance's own task leaves the queue: only added rows count
    if tab != "done":
        add_tasks(instance, [{"due_at": None, **mine} for _ in range(count)], group=users.approvers)
        return
    completed = {"state": TaskState.COMPLETED, "completed_by": users.staff, "completed_at": timezone.now()}
    add_tasks(instance, [{"decision": APPROVE, **completed} for _ in range(count // 2)], group=users.approvers)
    voted = add_tasks(instance, [{"quorum": 2, "approvals": 1} for _ in range(count - count // 2)])
    TaskDecision.objects.bulk_create(
        [TaskDecision(task=task, instance=instance, user=users.staff, decision=APPROVE) for task in voted]
    )


# Session, user, the three capped counts (My tasks, queue, unread: one statement), the user's groups (ids for the
# candidate filter, names for "share with" and the manager check), the page of tasks, saved views and the two
# permission reads of the template's ``perms``.
INBOX_QUERIES = 8


@pytest.mark.parametrize("tab", ["queue", "mine", "done"])
def test_inbox_page_queries_do_not_grow_with_tasks_or_page_size(users, client, django_assert_num_queries, tab):
    """The inbox costs the same 8 queries with 3 or 40 tasks, and with pages of 10 or 100 rows."""
    # given
    client.force_login(users.staff)
    fill_inbox(users, tab, 3)
    with django_assert_num_queries(INBOX_QUERIES):
        small = client.get(f"/inbox/?tab={tab}")

    # when
    fill_inbox(users, tab, 37)
    responses = []
    for size in (10, 100):
        with django_assert_num_queries(INBOX_QUERIES):
            responses.append(client.get(f"/inbox/?tab={tab}&size={size}"))

    # then
    rows = [r.content.decode().count("<tr data-task=") for r in (small, *responses)]
    assert rows == [3, 10, 40]


def test_inbox_page_queries_do_not_grow_with_saved_views(users, client, django_assert_num_queries):
    """Shared saved views, listed above the filters, cost no query each."""
    # given
    client.force_login(users.staff)
    fill_inbox(users, "queue", 3)
    for n in range(5):
        SavedView.objects.create(owner=users.staff2, name=f"Team {n}", shared_with=users.approvers)

    # when
    with django_assert_num_queries(INBOX_QUERIES):
        page = client.get("/inbox/?tab=queue")

    # then
    assert page.content.decode().count('aria-label="shared with approvers"') == 5


def test_the_search_finds_a_business_key_typed_in_the_other_unicode_form(users):
    """A key stored as NFC ("Café" with é as one code point) is found by the same key typed with e + accent."""
    # given
    task = task_of(expense(business_key="Caf\u00e9-3"))

    # when
    found = apply_filters(team_queue(users.staff), InboxQuery.parse({"q": "Cafe\u0301-3"}, "queue"))

    # then
    assert ids(found) == [task.pk]
