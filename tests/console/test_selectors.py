"""The console's reads: filters, keyset pages, capped counts, incidents and attempts."""

from __future__ import annotations

import html
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from approvals.models import HumanTask, TaskKind
from console import selectors
from console.selectors import (
    InstanceFilter,
    attempts_by_step,
    capped_counts,
    counts_by_state,
    decode_cursor,
    filtered,
    hide_paths,
    incidents,
    match_counts,
    page_of,
    stuck_by_workflow,
    stuck_steps,
)
from orchestrator import stats
from orchestrator.audit import Actor
from orchestrator.dsl import ESCALATE, Retry, StepContext, Task, Workflow
from orchestrator.models import AuditEvent, InstanceState, StepRun, StepState, WorkflowInstance
from orchestrator.services.instances import instance_pause, instance_start

pytestmark = pytest.mark.django_db


def boom(ctx: StepContext) -> dict:
    if ctx.data.get("fail"):
        raise ValueError(f"card declined for {ctx.data.get('customer')}")
    return {"ok": True}


@pytest.fixture
def flow(register_workflow):
    return register_workflow(Workflow("sel_flow", 1, [Task("charge", boom, retry=Retry(max_attempts=2, backoff=0))]))


@pytest.fixture
def escalating(register_workflow):
    return register_workflow(
        Workflow("sel_escalate", 1, [Task("charge", boom, retry=Retry(max_attempts=1), on_failure=ESCALATE)])
    )


def test_filters_on_business_data_error_and_key(flow, users, run_steps):
    # given
    lyon = instance_start("sel_flow", {"address": {"city": "Lyon"}, "amount": 40}, business_key="ORD-1")
    failed = instance_start("sel_flow", {"fail": True, "customer": "ACME"})
    instance_start("sel_flow", {"address": {"city": "Paris"}, "amount": "40"})
    run_steps(advance=True)

    def ids(**kwargs):
        return sorted(filtered(users.admin, InstanceFilter(**kwargs)).values_list("pk", flat=True))

    # then
    assert ids(data_path="address.city", data_value="Lyon") == [lyon.pk]
    assert len(ids(data_path="amount", data_value="40")) == 2  # the number 40 and the text "40"
    assert ids(error="DECLINED for acme") == [failed.pk]
    assert ids(business_key="ORD-1") == [lyon.pk]
    assert ids(workflow="sel_flow", version=2) == []
    assert ids(started_from=timezone.now() + timedelta(minutes=1)) == []


@pytest.mark.parametrize("typed", ["1e400", "-1e999", "NaN", "Infinity", "-Infinity"])
def test_a_data_value_that_spells_no_finite_number_is_matched_as_text(flow, users, typed):
    """Given an instance whose data holds the text an operator types, when the list is filtered by it, then the
    text matches and nothing fails: read as a JSON number it was an infinity or NaN, which PostgreSQL's JSON has
    not, and the page was a 500."""
    # given
    texty = instance_start("sel_flow", {"amount": typed})
    instance_start("sel_flow", {"amount": 40})

    # when
    found = list(
        filtered(users.admin, InstanceFilter(data_path="amount", data_value=typed)).values_list("pk", flat=True)
    )

    # then
    assert found == [texty.pk]


def test_keyset_pages_walk_every_instance_once_newest_first(flow, users):
    # given
    made = [instance_start("sel_flow", {}) for _ in range(7)]
    qs = filtered(users.admin, InstanceFilter(workflow="sel_flow"))

    # when
    seen, cursor = [], None
    while True:
        page = page_of(qs, cursor, size=3)
        seen += [i.pk for i in page.rows]
        if not page.next_cursor:
            break
        cursor = decode_cursor(page.next_cursor)

    # then
    assert seen == [i.pk for i in reversed(made)]


@pytest.mark.parametrize("junk", ["", "abc", "!!!", "MjAyNi0xMS0yOVQxMjowMDowMHwx", "bm90fGFufGlk"])
def test_a_cursor_that_is_not_ours_is_none(junk):
    assert decode_cursor(junk) is None


def test_counts_by_state_stop_at_the_cap(flow, users, run_steps):
    # given
    for _ in range(3):
        instance_start("sel_flow", {"fail": True})
    instance_start("sel_flow", {})
    run_steps(advance=True)

    # when
    counts = capped_counts(filtered(users.admin, InstanceFilter()), cap=2)

    # then
    assert counts == {"failed": 3, "completed": 1}  # 3 is "more than 2": the page shows "2+"


@pytest.mark.parametrize(("cap", "expected", "more"), [(4, {"failed": 2, "completed": 1}, False), (2, None, True)])
def test_a_business_data_filter_counts_its_match_once_exact_up_to_the_cap(flow, users, run_steps, cap, expected, more):
    """match_counts: one read of at most cap + 1 matches; within the cap every state is exact, past it each
    count is a lower bound (the page shows "n+") and together they are the cap + 1 rows read."""
    # given: three instances in Lyon (two fail), one in Paris
    for fail in (True, True, False):
        instance_start("sel_flow", {"fail": fail, "address": {"city": "Lyon"}})
    instance_start("sel_flow", {"fail": True, "address": {"city": "Paris"}})
    run_steps(advance=True)
    lyon = filtered(users.admin, InstanceFilter(data_path="address.city", data_value="Lyon"))

    # when
    counts, counted_more = match_counts(lyon, cap=cap)

    # then
    assert counted_more is more
    if expected is not None:
        assert counts == expected
    else:
        assert sum(counts.values()) == cap + 1
        assert set(counts) <= {"failed", "completed"}
        assert counts["failed"] <= 2
        assert counts.get("completed", 0) <= 1


def test_only_a_business_data_filter_counts_its_match_once(flow, users, run_steps, django_assert_num_queries):
    # given
    instance_start("sel_flow", {"fail": True, "address": {"city": "Lyon"}})
    run_steps(advance=True)
    by_data = InstanceFilter(data_path="address.city", data_value="Lyon")

    # when
    with django_assert_num_queries(1):
        data_counts = counts_by_state(filtered(users.admin, by_data), by_data)
    with django_assert_num_queries(1):
        other_counts = counts_by_state(filtered(users.admin, InstanceFilter()), InstanceFilter())

    # then
    assert data_counts == ({"failed": 1}, False)
    assert other_counts == ({"failed": 1}, False)


def test_the_list_says_its_counts_are_lower_bounds_past_the_cap(client, users, flow, run_steps, monkeypatch):
    # given: three instances in Lyon, counts capped at two
    monkeypatch.setattr(selectors, "COUNT_CAP", 2)
    for _ in range(3):
        instance_start("sel_flow", {"fail": True, "address": {"city": "Lyon"}})
    run_steps(advance=True)
    client.force_login(users.operator)

    # when
    page = client.get("/instances/", {"data_path": "address.city", "data_value": "Lyon"}).content.decode()
    plain = client.get("/instances/").content.decode()

    # then
    assert 'id="counts-more"' in page
    assert "2+</span>" in page  # the three failed instances, read no further than the cap + 1
    assert 'id="counts-more"' not in plain


def test_incidents_group_failures_by_workflow_and_error_and_list_escalations(flow, escalating, users, run_steps):
    # given
    for customer in ("A", "A", "B"):
        instance_start("sel_flow", {"fail": True, "customer": customer})
    instance_start("sel_escalate", {"fail": True, "customer": "C"})
    paused = instance_start("sel_flow", {})
    instance_pause(paused.pk, actor=Actor("user:op"), reason="x", until=timezone.now() + timedelta(minutes=5))
    run_steps(advance=True)

    # when
    found = incidents(now=timezone.now() + timedelta(minutes=10))

    # then
    assert [(g["workflow"], g["reason"], g["count"]) for g in found.failed_groups] == [
        ("sel_flow", "charge failed: card declined for A", 2),
        ("sel_flow", "charge failed: card declined for B", 1),
    ]
    assert found.failed_total == 3
    assert [t.instance.workflow_name for t in found.escalations] == ["sel_escalate"]
    assert found.escalations[0].kind == TaskKind.ESCALATION
    assert [i.pk for i in found.paused_past] == [paused.pk]
    assert found.count == 3 + 1 + 1


def test_a_step_running_past_its_timeout_is_an_incident(flow, users):
    # given
    instance = instance_start("sel_flow", {})
    step = instance.steps.get()
    StepRun.objects.filter(pk=step.pk).update(
        state=StepState.RUNNING, lease_expires_at=timezone.now() + timedelta(seconds=1)
    )

    # then
    assert [s.pk for s in incidents().past_timeout] == [step.pk]


def test_stuck_steps_and_late_pauses_past_the_rows_shown_are_said_to_be_more(client, users, flow, monkeypatch):
    """Stuck steps and pauses past their resume are listed up to ``INCIDENT_ROWS``; past that the page showed the
    first rows as if they were all, and its "n things need attention" counted only those shown."""
    # given: three stuck steps and three pauses past their resume, with two rows a part shown
    monkeypatch.setattr(selectors, "INCIDENT_ROWS", 2)
    now = timezone.now()
    for _ in range(3):
        stuck = instance_start("sel_flow", {})
        StepRun.objects.filter(instance=stuck).update(
            state=StepState.RUNNING, started_at=now, lease_expires_at=now + timedelta(seconds=1)
        )
        held = instance_start("sel_flow", {})
        instance_pause(held.pk, actor=Actor.system("test"), reason="hold", until=now + timedelta(hours=1))
        WorkflowInstance.objects.filter(pk=held.pk).update(paused_until=now - timedelta(hours=1))

    # when
    found = incidents(now)
    client.force_login(users.operator)
    page = client.get("/incidents/")

    # then: two of each shown, each part and the total said to be a lower bound
    assert (len(found.past_timeout), len(found.paused_past)) == (2, 2)
    assert (found.past_timeout_more, found.paused_past_more, found.count_more) == (True, True, True)
    text = page.content.decode()
    assert 'id="past-timeout-more"' in text
    assert 'id="paused-past-more"' in text
    assert f"{found.count}+</strong> things need attention" in text


@pytest.mark.parametrize(("who", "linked"), [("operator", False), ("manager", True)])
def test_more_tasks_past_their_sla_link_to_escalations_only_for_who_may_open_it(
    client, users, monkeypatch, who, linked
):
    """Past the rows shown, the page sent everyone to Escalations, a managers' page: an operator got a 404. A manager
    is sent to its overdue filter, which lists every task counted."""
    # given: two tasks past their SLA, one row shown
    monkeypatch.setattr(selectors, "INCIDENT_ROWS", 1)
    late = []
    for _ in range(2):
        instance = _expense()
        HumanTask.objects.filter(instance=instance).update(due_at=timezone.now() - timedelta(hours=1))
        late.append(HumanTask.objects.get(instance=instance).pk)
    client.force_login(getattr(users, who))

    # when
    page = client.get("/incidents/").content.decode()

    # then
    assert "overdue tasks in all" in page
    assert ('href="/escalations/?show=overdue"' in page.split('id="stuck-title"')[1]) is linked
    if linked:
        listed = client.get("/escalations/?show=overdue")
        assert listed.status_code == 200
        assert all(f'data-task="{pk}"' in listed.content.decode() for pk in late)


@pytest.mark.parametrize("who", ["operator", "manager", "admin"])
def test_every_link_on_incidents_opens_for_who_sees_it(client, users, flow, escalating, run_steps, who):
    """Each thing Incidents lists links somewhere its reader may go: a task past its SLA linked to the task's page,
    which a non-manager operator may not open (404)."""
    # given: a failure, an escalation, a task past its SLA, a stuck step, a pause past its resume
    instance_start("sel_flow", {"fail": True, "customer": "A"})
    instance_start("sel_escalate", {"fail": True, "customer": "B"})
    run_steps(advance=True)
    HumanTask.objects.filter(instance=_expense()).update(due_at=timezone.now() - timedelta(hours=1))
    now = timezone.now()
    stuck = instance_start("sel_flow", {})
    StepRun.objects.filter(instance=stuck).update(
        state=StepState.RUNNING, started_at=now, lease_expires_at=now + timedelta(seconds=1)
    )
    held = instance_start("sel_flow", {})
    instance_pause(held.pk, actor=Actor.system("test"), reason="hold", until=now + timedelta(hours=1))
    WorkflowInstance.objects.filter(pk=held.pk).update(paused_until=now - timedelta(hours=1))
    client.force_login(getattr(users, who))

    # when
    page = client.get("/incidents/").content.decode()
    main = page.split('<main id="main"', 1)[1].split("</main>", 1)[0]
    links = sorted({html.unescape(href) for href in re.findall(r'href="(/[^"]*)"', main)})

    # then: every kind is there, and each link opens
    for kind in ("failed", "escalation", "overdue", "timeout", "paused"):
        assert f'data-incident="{kind}"' in main, kind
    refused = {link: client.get(link).status_code for link in links}
    assert {link: code for link, code in refused.items() if code != 200} == {}


@pytest.mark.parametrize("error", ["x" * 150, ""], ids=["a first line longer than the filter takes", "no error"])
def test_a_failure_groups_link_to_its_instances_lists_them(client, users, flow, run_steps, error):
    """Each failure group links to the list of its instances, to retry them in bulk. The link carried the reason cut
    to 90 characters with an ellipsis ("…"), which no error contains, and "(no error recorded)" for a failure
    without one: the list it opened was empty, and the bulk retry impossible."""
    # given: a failed instance with that error
    instance = instance_start("sel_flow", {"fail": True, "customer": "A"})
    run_steps(advance=True)
    WorkflowInstance.objects.filter(pk=instance.pk).update(error=error)
    client.force_login(users.operator)

    # when: the group's link is followed
    page = client.get("/incidents/").content.decode()
    link = html.unescape(re.search(r'href="(/instances/\?[^"]*)"[^>]*>All 1 · bulk retry', page).group(1))
    listed = client.get(link)

    # then
    assert [i.pk for i in listed.context["page"].rows] == [instance.pk]
    assert not list(listed.context["messages"])


def test_attempts_come_from_the_audit_trail_with_paths_only_for_operators(flow, run_steps):
    # given
    instance = instance_start("sel_flow", {"fail": True, "customer": "Z"})
    run_steps(advance=True)
    steps = list(instance.steps.all())
    events = list(AuditEvent.objects.filter(instance=instance).order_by("seq"))

    # when
    operator_view = attempts_by_step(steps, events, show_paths=True)[steps[0].pk]
    public_view = attempts_by_step(steps, events, show_paths=False)[steps[0].pk]

    # then
    assert [(a.number, a.outcome) for a in operator_view] == [(1, "failed"), (2, "dead")]
    assert all(a.duration is not None and a.worker for a in operator_view)
    assert "card declined for Z" in operator_view[0].error
    assert "\n" in operator_view[0].error  # the traceback keeps its lines
    assert "/" in operator_view[0].error.split('File "')[1].split('"')[0]
    assert 'File "test_selectors.py"' in public_view[0].error


def test_hide_paths_keeps_the_file_name():
    assert hide_paths('File "/srv/baton/orchestrator/x.py", line 3') == 'File "x.py", line 3'


def test_overdue_human_tasks_are_incidents(users, run_steps):
    # given
    instance = instance_start("expense_approval", {"employee": "Sam", "amount": "20", "category": "meals",
                                                   "description": "Lunch"})  # fmt: skip
    HumanTask.objects.filter(instance=instance).update(due_at=timezone.now() - timedelta(hours=1))

    # then
    found = incidents()
    assert [t.instance_id for t in found.overdue_tasks] == [instance.pk]
    assert WorkflowInstance.objects.get(pk=instance.pk).state == InstanceState.WAITING


def test_a_task_whose_sla_falls_due_inside_its_instances_pause_is_not_late_on_incidents(users):
    """A task's SLA counts unpaused time only (docs/architecture.md, "Deadlines and pauses"): a due time that fell
    inside the pause moves on at the resume, so while the pause lasts the task is held, not late. One already due
    when the pause began was late before it and stays listed."""
    # given: two expense approvals, each paused an hour ago; one's SLA fell due inside the pause, the other's
    # before it
    now = timezone.now()
    held = _expense()
    late_before = _expense()
    for instance in (held, late_before):
        instance_pause(instance.pk, actor=Actor.system("test"), reason="supplier audit")
    WorkflowInstance.objects.filter(pk__in=[held.pk, late_before.pk]).update(paused_at=now - timedelta(hours=1))
    HumanTask.objects.filter(instance=held).update(due_at=now - timedelta(minutes=30))
    HumanTask.objects.filter(instance=late_before).update(due_at=now - timedelta(hours=2))

    # when
    found = incidents(now)

    # then: only the one late before its pause is listed, and counted
    assert [t.instance_id for t in found.overdue_tasks] == [late_before.pk]
    assert found.overdue_total == 1


def _expense() -> WorkflowInstance:
    return instance_start(
        "expense_approval", {"employee": "Sam", "amount": "20", "category": "meals", "description": "Lunch"}
    )


def test_stuck_is_one_definition_listed_by_incidents_and_counted_by_the_catalog(flow, users):
    """A step running after its timeout is stuck; one whose lease is far off, a person's step, or one that failed
    is not. Incidents lists exactly stuck_steps(), and the catalog's per-workflow count is the same set."""
    # given: three instances of sel_flow, their one step each put in a different state
    late, running, human = (instance_start("sel_flow", {}) for _ in range(3))
    now = timezone.now()
    StepRun.objects.filter(instance=late).update(state=StepState.RUNNING, lease_expires_at=now + timedelta(seconds=1))
    StepRun.objects.filter(instance=running).update(state=StepState.RUNNING, lease_expires_at=now + timedelta(hours=1))
    StepRun.objects.filter(instance=human).update(
        state=StepState.RUNNING, kind="human", lease_expires_at=now - timedelta(hours=1)
    )

    # when
    stuck = [s.instance_id for s in stuck_steps(now)]
    listed = [s.instance_id for s in incidents(now=now).past_timeout]
    counted = stuck_by_workflow(now)
    entry = next(e for e in stats.catalog(24, now=now, stuck=counted) if e.workflow.name == "sel_flow")

    # then
    assert stuck == listed == [late.pk]
    assert counted == {"sel_flow": 1}
    assert (entry.stuck_steps, entry.stuck) == (1, 1)  # no failed instance, one stuck step


def test_past_the_sample_failures_are_grouped_from_the_newest_and_the_total_says_more(
    flow, users, run_steps, monkeypatch
):
    """More failed instances than ``INCIDENT_SAMPLE``: the groups are the newest ones' (by start), the total stops
    one past the sample (the page shows "2+"), and the page's count says it is a lower bound."""
    # given: three failures, a sample of two
    monkeypatch.setattr(selectors, "INCIDENT_SAMPLE", 2)
    started = [instance_start("sel_flow", {"fail": True, "customer": c}) for c in ("A", "A", "B")]
    run_steps(advance=True)

    # when
    found = incidents(now=timezone.now() + timedelta(minutes=10))

    # then
    assert found.failed_total == 3
    assert found.failed_sampled
    assert sorted((g["reason"], g["count"], g["ids"]) for g in found.failed_groups) == [
        ("charge failed: card declined for A", 1, [started[1].pk]),
        ("charge failed: card declined for B", 1, [started[2].pk]),
    ]
    assert (found.count, found.count_more) == (2, True)


def test_within_the_sample_failures_are_all_grouped_and_counted_exactly(flow, users, run_steps, monkeypatch):
    # given: three failures, a sample of three
    monkeypatch.setattr(selectors, "INCIDENT_SAMPLE", 3)
    for customer in ("A", "A", "B"):
        instance_start("sel_flow", {"fail": True, "customer": customer})
    run_steps(advance=True)

    # when
    found = incidents(now=timezone.now() + timedelta(minutes=10))

    # then
    assert (found.failed_total, found.failed_sampled, found.count_more) == (3, False, False)
    assert [g["count"] for g in found.failed_groups] == [2, 1]


def test_failures_group_by_the_first_line_of_their_error(flow, users, run_steps):
    # given: two failures whose errors differ after their first line (a traceback; one with Windows line ends),
    # one with no error text
    failed = [instance_start("sel_flow", {"fail": True, "customer": c}) for c in ("A", "B", "C")]
    run_steps(advance=True)
    WorkflowInstance.objects.filter(pk=failed[0].pk).update(error="carrier down\nTraceback: line 1")
    WorkflowInstance.objects.filter(pk=failed[1].pk).update(error="carrier down\r\nTraceback: line 9")
    WorkflowInstance.objects.filter(pk=failed[2].pk).update(error="")

    # when
    found = incidents()

    # then
    assert sorted((g["reason"], g["count"]) for g in found.failed_groups) == [
        ("(no error recorded)", 1),
        ("carrier down", 2),
    ]


@pytest.mark.parametrize(("sample", "instances", "sampled"), [(2, 2, True), (3, 3, False)])
def test_retry_storms_are_read_from_the_newest_retrying_steps(flow, users, monkeypatch, sample, instances, sampled):
    """A retry storm is STORM_INSTANCES instances retrying one step; past ``INCIDENT_SAMPLE`` retrying steps the
    storm is counted among the newest instances' steps, and the page says the read was sampled."""
    # given: three instances whose step waits to retry (attempt 1 failed), an older one retrying at attempt 4
    monkeypatch.setattr(selectors, "INCIDENT_SAMPLE", sample)
    monkeypatch.setattr(selectors, "STORM_INSTANCES", 2)
    retrying = [instance_start("sel_flow", {"customer": c}) for c in ("A", "B", "C")]
    since = timezone.now() - timedelta(minutes=5)
    StepRun.objects.filter(instance__in=retrying).update(state=StepState.FAILED, attempt=1, started_at=since)
    StepRun.objects.filter(instance=retrying[0]).update(attempt=4)

    # when
    found = incidents()

    # then
    assert (found.retrying_total, found.storms_sampled) == (min(3, sample + 1), sampled)
    assert found.storms == [
        {"workflow": "sel_flow", "step": "charge", "instances": instances, "attempts": 4 if not sampled else 1}
        | {"since": since}
    ]


def test_no_storm_below_the_thresholds(flow, users):
    # given: one instance retrying at attempt 1
    one = instance_start("sel_flow", {})
    StepRun.objects.filter(instance=one).update(state=StepState.FAILED, attempt=1)

    # when
    found = incidents()

    # then
    assert (found.storms, found.retrying_total, found.storms_sampled) == ([], 1, False)


def test_the_incidents_page_says_when_it_shows_the_newest_failures_only(client, users, flow, run_steps, monkeypatch):
    # given: three failures and a sample of two
    monkeypatch.setattr(selectors, "INCIDENT_SAMPLE", 2)
    for customer in ("A", "B", "C"):
        instance_start("sel_flow", {"fail": True, "customer": customer})
    run_steps(advance=True)
    client.force_login(users.operator)

    # when
    page = client.get("/incidents/").content.decode()

    # then
    assert 'id="failed-total">2+</span>' in page
    assert 'id="failed-sampled"' in page
    assert "the newest 2 by start" in page
    assert "All 1 · bulk retry" not in page  # a group's count is of the sample, not all of its failures


@pytest.mark.skipif(connection.vendor != "postgresql", reason="EXPLAIN plans are PostgreSQL's")
def test_the_grouped_incident_reads_walk_an_index_newest_first_and_stop_at_the_sample(users):
    """Failed groups and retry storms read the newest INCIDENT_SAMPLE rows in index order (a Limit over an index
    scan, no sort of every failed row), and the storms' steps index-only (bench/README.md "Run 4")."""
    # given: the statements incidents() runs
    with CaptureQueriesContext(connection) as ctx:
        incidents()
    plans: dict[str, str] = {}

    # when: planned as at a million rows, where walking an index in order and stopping beats reading and sorting
    # every failed row (bench/README.md "Run 4"); the test's few rows and whatever statistics earlier tests left
    # would make a sort of one row the cheaper plan, which says nothing about the statement's shape
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        for query in ctx.captured_queries:
            for kind, marker in (("failed groups", "AS reason"), ("retry storms", "AS instances")):
                if marker in query["sql"]:
                    cursor.execute(f"EXPLAIN {query['sql']}")
                    plans[kind] = "\n".join(row[0] for row in cursor.fetchall())

    # then
    assert set(plans) == {"failed groups", "retry storms"}
    assert "Index Scan using console_instance_state_keyset" in plans["failed groups"], plans["failed groups"]
    assert "Index Only Scan using console_instance_failed" in plans["failed groups"], plans["failed groups"]
    assert "Index Only Scan using console_step_retrying_recent" in plans["retry storms"], plans["retry storms"]
    for plan in plans.values():
        assert "Seq Scan" not in plan, plan
        assert "Sort Key: orchestrator_steprun.instance_id" not in plan, plan  # walked in order, not sorted


# The Incidents reads that scanned far more than the rows in trouble at a million (bench/README.md, Run 3), each
# with the partial index it must read now (console/migrations/0003_incident_indexes.py).
INCIDENT_INDEXES = {
    "escalations": "console_task_escalations",
    "overdue tasks": "console_task_overdue",
    "paused past resume": "console_instance_paused_until",
}


def _incident_statement(sql: str) -> str | None:
    if 'FROM "approvals_humantask"' in sql and "\"kind\" = 'escalation' AND" in sql:
        return "escalations"
    if 'FROM "approvals_humantask"' in sql and 'NOT ("approvals_humantask"."kind" = \'escalation\')' in sql:
        return "overdue tasks"
    if 'FROM "orchestrator_workflowinstance"' in sql and '"paused_until" <' in sql:
        return "paused past resume"
    return None


@pytest.mark.skipif(connection.vendor != "postgresql", reason="EXPLAIN plans are PostgreSQL's")
def test_each_incidents_read_of_tasks_and_pauses_walks_its_partial_index(users):
    """Escalations, tasks past their SLA and pauses past their resume are read through partial indexes of those
    rows only: the plan names the index and scans no table (bench/console.py --explain /incidents/ at a million)."""
    # given: the statements incidents() runs
    with CaptureQueriesContext(connection) as ctx:
        incidents()
    found: dict[str, list[str]] = {}

    # when
    with connection.cursor() as cursor:
        # With a handful of rows the planner rightly prefers a scan; turned off, the plan shows whether the
        # partial index can serve the read at all.
        cursor.execute("SET LOCAL enable_seqscan = off")
        for query in ctx.captured_queries:
            kind = _incident_statement(query["sql"])
            if kind is not None:
                cursor.execute(f"EXPLAIN {query['sql']}")
                found.setdefault(kind, []).append("\n".join(row[0] for row in cursor.fetchall()))

    # then: two statements each for escalations and overdue tasks (count, then the first rows), one for pauses
    assert {kind: len(plans) for kind, plans in found.items()} == {
        "escalations": 2,
        "overdue tasks": 2,
        "paused past resume": 1,
    }
    for kind, plans in found.items():
        for plan in plans:
            assert INCIDENT_INDEXES[kind] in plan, plan
            assert "Seq Scan on approvals_humantask" not in plan, plan
            assert "Seq Scan on orchestrator_workflowinstance" not in plan, plan


def test_the_incidents_page_takes_a_fixed_number_of_statements(
    client, users, flow, run_steps, django_assert_num_queries
):
    """The eleven reads of incidents() (the tasks nobody may act on among them) and the page's own (session, user,
    permissions, the operators to reassign to, the navigation's): 18 whatever is in trouble. A failure more, an
    escalation more or a stuck step more adds no statement; a task nobody may act on adds two, however many
    (tests/console/test_nobody_can_act.py)."""
    # given
    client.force_login(users.operator)
    instance_start("sel_flow", {"fail": True, "customer": "A"})
    run_steps(advance=True)
    client.get("/incidents/")  # the first request of a session may write it
    with CaptureQueriesContext(connection) as first:
        client.get("/incidents/")

    # when: more of everything in trouble
    for customer in ("B", "C", "D"):
        instance_start("sel_flow", {"fail": True, "customer": customer})
    late = instance_start("sel_flow", {})
    run_steps(advance=True)
    StepRun.objects.filter(instance=late).update(
        state=StepState.RUNNING, lease_expires_at=timezone.now() + timedelta(seconds=1)
    )

    # then
    assert len(first.captured_queries) == INCIDENTS_QUERIES
    with django_assert_num_queries(INCIDENTS_QUERIES):
        response = client.get("/incidents/")
    assert response.status_code == 200


# bench/README.md: the page's statements at 10,000 and at 1,000,000 instances alike (17 in its runs, before the
# read of the tasks nobody may act on).
INCIDENTS_QUERIES = 18


@pytest.mark.skipif(connection.vendor != "postgresql", reason="EXPLAIN plans are PostgreSQL's")
def test_the_error_filters_count_of_each_state_walks_the_instances_with_an_error_in_that_state(users):
    """Each state's capped count under the error-text filter reads console_instance_error_state (the instances
    with an error, by state), not every instance of the state intersected with those that have an error."""
    # given: the count of one state under the filter, as capped_counts builds it
    query = filtered(users.admin, InstanceFilter(error="carrier")).filter(state="completed").values("id")[:1001]

    # when
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        sql, params = query.query.sql_with_params()
        cursor.execute(f"EXPLAIN SELECT count(*) FROM ({sql}) s", params)  # noqa: S608 (Django's own SQL)
        plan = "\n".join(row[0] for row in cursor.fetchall())

    # then
    assert "console_instance_error_state" in plan, plan
