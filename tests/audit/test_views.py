"""The admins' audit pages: the timeline's filters and keyset pages, bad input as a 400 with what was typed, 403 for
everyone else (recorded), pinned query counts, and the chain status with its verification job."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from approvals.models import HumanTask
from approvals.services.base import APPROVE
from approvals.services.tasks import task_decide
from audit import selectors, services
from audit.models import Verification, VerificationState
from audit.selectors import AuditFilters, audit_events_filtered, keyset_page
from orchestrator.audit import ACCESS_CHAIN, ACCOUNTS_CHAIN, Actor, append_standalone
from orchestrator.models import AuditEvent
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory, OrderInputFactory

pytestmark = pytest.mark.django_db

AGENT = "AuditTest/1.0"


def client_for(user) -> Client:
    client = Client(REMOTE_ADDR="192.0.2.44", HTTP_USER_AGENT=AGENT)
    client.force_login(user)
    return client


@pytest.fixture
def two_orders(run_steps, users):
    """Two orders run to a manager's decision: one approved with a comment, one waiting."""
    first = instance_start("order_fulfilment", OrderInputFactory(amount="1500.00"), initiator=users.staff)
    second = instance_start("order_fulfilment", OrderInputFactory(amount="2500.00"), initiator=users.staff)
    run_steps(first, advance=True)
    run_steps(second, advance=True)
    task = HumanTask.objects.get(instance=first)
    task_decide(task.pk, users.manager, APPROVE, comment="Invoice checked against PO-7781")
    run_steps(first, advance=True)
    return first, second


@pytest.mark.parametrize("role", ["staff", "operator", "manager"])
@pytest.mark.parametrize("path", ["/audit/", "/audit/chains/", "/audit/export/csv/", "/audit/chains/verification/"])
def test_staff_operators_and_managers_are_refused_and_the_refusal_is_recorded(users, role, path):
    """403 for every role but the auditors; the refusal goes into the access chain with who, where and how."""
    # given
    user = getattr(users, role)

    # when
    response = client_for(user).get(path)

    # then
    assert response.status_code == 403
    event = AuditEvent.objects.filter(chain=ACCESS_CHAIN, action="access.refused").latest("id")
    assert (event.actor_label, event.actor_id) == (f"user:{role}", user.pk)
    assert event.request_meta["ip"] == "192.0.2.44"
    assert event.request_meta["user_agent"] == AGENT
    assert event.request_meta["path"] == path
    assert event.request_id == response["X-Request-ID"]
    assert event.payload["method"] == "GET"


def test_verify_now_is_refused_to_an_operator_and_nothing_is_queued(users):
    # when
    response = client_for(users.operator).post("/audit/chains/verify/")

    # then
    assert response.status_code == 403
    assert not Verification.objects.exists()


def test_anonymous_visitors_are_sent_to_sign_in(db):
    response = Client().get("/audit/")
    assert response.status_code == 302
    assert "/login/?next=/audit/" in response["Location"]


def test_the_timeline_filters_to_one_instance_with_full_dates_and_links(users, two_orders):
    """Filtering by instance shows only its events, each with a date, time and zone, linking to the instance."""
    # given
    first, _second = two_orders

    # when
    response = client_for(users.admin).get("/audit/", {"instance": first.pk})

    # then
    assert response.status_code == 200
    shown = {e.instance_id for e in response.context["page"].events}
    assert shown == {first.pk}
    html = response.content.decode()
    local = timezone.localtime(response.context["page"].events[0].occurred_at)
    assert local.strftime("%Y-%m-%d %H:%M:%S") in html
    assert f'href="/instances/{first.pk}/"' in html


def test_text_search_finds_a_comment(users, two_orders):
    """Search over reasons and comments, case-insensitive."""
    # when
    response = client_for(users.admin).get("/audit/", {"q": "po-7781"})

    # then
    events = response.context["page"].events
    assert [e.action for e in events] == ["task.completed"]
    assert events[0].actor_label == "user:manager"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"actor": "manager"}, lambda e: e.actor_label == "user:manager"),
        ({"actor": "system:worker"}, lambda e: e.actor_label == "system:worker"),
        ({"action": "task."}, lambda e: e.action.startswith("task.")),
        ({"action": "instance.started"}, lambda e: e.action == "instance.started"),
        ({"workflow": "order_fulfilment"}, lambda e: e.instance and e.instance.workflow_name == "order_fulfilment"),
        ({"subject_type": "task"}, lambda e: e.subject_type == "task"),
    ],
)
def test_each_filter_keeps_exactly_the_matching_events(users, two_orders, run_steps, params, expected):
    # given: an expense too, so the workflow filter has something to leave out
    run_steps(instance_start("expense_approval", ExpenseInputFactory()), advance=True)

    # when
    response = client_for(users.admin).get("/audit/", {**params})

    # then
    shown = response.context["page"].events
    assert shown
    assert all(expected(e) for e in shown)
    matching = [e for e in AuditEvent.objects.select_related("instance") if expected(e)]
    assert len(shown) == min(50, len(matching))


def test_a_date_range_is_read_in_the_sites_time_zone(users, two_orders):
    """From / Until bound the events; an empty range shows the empty message, not an error."""
    # given
    newest = AuditEvent.objects.latest("occurred_at")
    later = timezone.localtime(newest.occurred_at) + timezone.timedelta(minutes=1)

    # when
    response = client_for(users.admin).get("/audit/", {"since": later.strftime("%Y-%m-%dT%H:%M")})

    # then
    assert response.status_code == 200
    assert response.context["rows"] == []
    assert "No event matches" in response.content.decode()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"since": "yesterday"}, "From: enter a real date and time"),
        ({"instance": "12abc"}, "Enter a whole number"),
        ({"actor": "bob'; drop table"}, "letters, digits"),
        ({"q": "a\x00b"}, "Null characters are not allowed"),
        ({"since": "2026-05-02T10:00", "until": "2026-05-01T10:00"}, "Until must be after From"),
        ({"instance": "99999999999999999999999"}, "less than or equal"),
    ],
)
def test_bad_filters_answer_400_with_the_message_and_the_typed_value(users, params, message):
    # when
    response = client_for(users.admin).get("/audit/", params)

    # then
    assert response.status_code == 400
    html = response.content.decode()
    assert message in html
    typed = next(iter(params.values())).replace("\x00", "")
    if "'" not in typed and "\x00" not in next(iter(params.values())):
        assert f'value="{typed}"' in html


def test_a_bad_export_filter_is_a_400_page_not_a_broken_file(users):
    response = client_for(users.admin).get("/audit/export/csv/", {"since": "soon"})
    assert response.status_code == 400
    assert "From: enter a real date and time" in response.content.decode()


def test_the_filter_form_on_an_exports_400_page_filters_the_timeline_in_the_sites_zone(users):
    """The export's 400 page is the timeline's: its form sent the corrected filters back to the export URL (a file
    downloaded, and recorded as an export, where a Filter button was pressed), and its From/Until labels lost the
    zone the times are read in."""
    # when
    html = client_for(users.admin).get("/audit/export/csv/", {"since": "soon"}).content.decode()

    # then
    assert 'action="/audit/"' in html
    assert f"({timezone.get_current_timezone_name()})" in html


def test_keyset_pages_walk_every_event_once_even_when_times_tie(users):
    """120 events, many sharing one timestamp: older pages, then newer pages back, never skip or repeat."""
    # given
    at = timezone.now()
    for n in range(120):
        append_standalone(
            ACCOUNTS_CHAIN,
            actor=Actor("system"),
            action="test.tie",
            subject_type="user",
            subject_id=n,
            now=at if n % 3 else at + timezone.timedelta(seconds=n),
        )
    events = audit_events_filtered(AuditFilters(action="test.tie"))

    # when
    pages, cursor = [], ""
    while True:
        page = keyset_page(events, after=cursor, size=25)
        pages.append(page)
        if not page.older:
            break
        cursor = page.older
    back = keyset_page(events, before=pages[-1].newer, size=25)

    # then
    seen = [e.pk for page in pages for e in page.events]
    assert len(seen) == 120
    assert len(set(seen)) == 120
    assert seen == list(events.values_list("pk", flat=True))
    assert [e.pk for e in back.events] == [e.pk for e in pages[-2].events]


def test_a_damaged_cursor_shows_the_newest_page_with_a_message(users, two_orders):
    response = client_for(users.admin).get("/audit/", {"after": "not-a-cursor!!"})
    assert response.status_code == 200
    assert "That page link is damaged" in response.content.decode()
    assert response.context["rows"]


def test_the_timeline_page_costs_the_same_few_queries_for_any_page(users, two_orders, django_assert_num_queries):
    """Session, user, the page of events (with their instances and the workflow filter in one statement), the
    last and the last finished verification (one statement), and the navigation's two (groups, counts): six, on any
    page (seven before the two verifications were read together)."""
    # given
    client = client_for(users.admin)
    client.get("/audit/")  # the first request of a session may write it

    # when / then
    with django_assert_num_queries(6):
        first = client.get("/audit/", {"workflow": "order_fulfilment"})
    with django_assert_num_queries(6):
        client.get("/audit/", {"workflow": "order_fulfilment", "after": first.context["page"].older or ""})


@pytest.mark.skipif(connection.vendor != "postgresql", reason="EXPLAIN plans are PostgreSQL's")
@pytest.mark.parametrize(
    "filters",
    [
        AuditFilters(),
        AuditFilters(action="task.completed"),
        AuditFilters(actor="user:manager"),
        AuditFilters(since=timezone.now() - timezone.timedelta(days=1)),
        AuditFilters(subject_type="task", subject_id=1),
    ],
    ids=["none", "action", "actor", "since", "subject"],
)
def test_each_filter_reads_an_index_in_page_order_without_sorting(users, filters):
    """The page query walks an index in (occurred_at, id) order: no Sort node, so its cost does not grow with the
    number of matching events (bench/audit.py measures it at a million)."""
    # given
    query = audit_events_filtered(filters)[:51]

    # when
    with connection.cursor() as cursor:
        # With a handful of rows the planner rightly prefers a scan and a sort; turned off, the plan shows whether
        # an index can give the rows in page order at all.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        sql, params = query.query.sql_with_params()
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())

    # then
    assert "Index" in plan, plan
    assert "Sort" not in plan, plan


def test_the_chain_status_page_shows_the_last_verification_and_its_first_broken_link(users):
    # given
    now = timezone.now()
    Verification.objects.create(
        state=VerificationState.FAILED,
        active=None,
        requested_at=now,
        started_at=now,
        finished_at=now,
        events_done=42,
        chains_done=3,
        breaks_count=1,
        breaks=[{"chain": "instance:7", "seq": 4, "event_id": 99, "problem": "content does not match its hash"}],
    )

    # when
    response = client_for(users.admin).get("/audit/chains/")

    # then
    html = response.content.decode()
    assert response.status_code == 200
    assert "1 problem found" in html
    assert "instance:7 #4" in html
    assert "content does not match its hash" in html
    assert timezone.localtime(now).strftime("%Y-%m-%d %H:%M:%S") in html


def test_verify_now_queues_one_job_records_who_asked_and_a_second_click_joins_it(
    users, django_capture_on_commit_callbacks
):
    # given
    client = client_for(users.admin)

    # when
    with django_capture_on_commit_callbacks(execute=False) as sent:
        first = client.post("/audit/chains/verify/")
        second = client.post("/audit/chains/verify/")

    # then
    assert first.status_code == second.status_code == 302
    job = Verification.objects.get()
    assert (job.state, job.requested_by, job.active) == (VerificationState.QUEUED, users.admin, True)
    asked = AuditEvent.objects.get(action="audit.verification_requested")
    assert (asked.actor_label, asked.subject_id) == ("user:admin", job.pk)
    published = [c for c in sent if isinstance(c, partial) and c.func is services.send_verification]
    assert [c.args for c in published] == [(job.pk,)]  # one message for the one job, sent after commit
    page = client.get("/audit/chains/").content.decode()
    assert "queued" in page
    assert "disabled" in page


def test_the_job_verifies_every_chain_with_progress_and_passes(users, two_orders):
    # given
    job = services.verification_request(users.admin)

    # when
    services.verification_execute(job.pk)

    # then
    job.refresh_from_db()
    assert job.state == VerificationState.PASSED
    assert job.active is None
    assert job.events_done == AuditEvent.objects.count()
    assert job.percent == 100
    assert job.chains_done >= 3


def test_the_job_reports_a_tampered_event_as_the_first_broken_link(users, two_orders):
    # given: the table's owner turns the triggers off and edits a reason
    first, _ = two_orders
    target = AuditEvent.objects.filter(instance=first).order_by("seq")[2]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute("UPDATE orchestrator_auditevent SET reason = 'rewritten' WHERE id = %s", [target.pk])
        cursor.execute("SET LOCAL session_replication_role = origin")
    job = services.verification_request(None, scheduled=True)

    # when
    services.verification_execute(job.pk)

    # then
    job.refresh_from_db()
    assert job.state == VerificationState.FAILED
    assert job.first_break == {
        "chain": f"instance:{first.pk}",
        "seq": target.seq,
        "event_id": target.pk,
        "problem": "content does not match its hash",
    }
    html = client_for(users.admin).get("/audit/chains/").content.decode()
    assert f"instance:{first.pk} #{target.seq}" in html
    # and the auditors hear of it on their bell
    assert users.admin.notifications.filter(kind="audit_broken").exists()


def test_a_job_whose_worker_died_is_settled_and_a_new_one_can_start(users):
    # given
    long_ago = timezone.now() - timezone.timedelta(hours=1)
    Verification.objects.create(state=VerificationState.RUNNING, requested_at=long_ago, heartbeat_at=long_ago)

    # when
    job = services.verification_request(users.admin)

    # then
    stale = Verification.objects.exclude(pk=job.pk).get()
    assert stale.state == VerificationState.ERROR
    assert "stopped reporting" in stale.error
    assert job.state == VerificationState.QUEUED


def test_a_repeated_message_does_not_run_a_finished_job_twice(users):
    job = services.verification_request(users.admin)
    services.verification_execute(job.pk)
    assert services.verification_execute(job.pk) is None


def test_the_daily_verification_is_scheduled_by_default():
    from django.conf import settings

    entry = settings.CELERY_BEAT_SCHEDULE["baton-audit-verify"]
    assert entry["task"] == "audit.tasks.verification_scheduled"
    assert (entry["schedule"].hour, entry["schedule"].minute) == ({2}, {30})


def test_the_status_strip_reads_the_latest_and_the_last_finished_run_in_one_statement(users, django_assert_num_queries):
    # given: a passed run, then a failed one, then one still running
    now = timezone.now()
    runs = [
        Verification.objects.create(
            state=state,
            active=True if finished is None else None,
            requested_by=users.admin,
            requested_at=now + timedelta(minutes=n),
            finished_at=finished,
        )
        for n, (state, finished) in enumerate(
            [
                (VerificationState.PASSED, now + timedelta(minutes=1)),
                (VerificationState.FAILED, now + timedelta(minutes=2)),
                (VerificationState.RUNNING, None),
            ]
        )
    ]

    # when
    with django_assert_num_queries(1):
        latest, finished = selectors.verification_status()

    # then
    assert (latest, finished) == (runs[2], runs[1])
    assert (latest, finished) == (selectors.verification_latest(), selectors.verification_last_finished())


def test_before_any_run_the_status_is_empty(db):
    assert selectors.verification_status() == (None, None)


@pytest.mark.parametrize(
    "offset_time", ["2026-01-01T00:00:00+23:59", "2026-01-01T00:00:00-23:59", "9999-12-31T23:59:59-23:59"]
)
@pytest.mark.parametrize("direction", ["after", "before"])
def test_a_cursor_edited_to_an_offset_postgresql_refuses_is_a_damaged_link_not_a_500(
    users, two_orders, offset_time, direction
):
    # given: a cursor whose time carries an offset Python reads but PostgreSQL refuses (beyond +/-15:59), or
    # whose UTC value is past year 9999
    import base64
    import json

    cursor = base64.urlsafe_b64encode(json.dumps([offset_time, 1]).encode()).decode()

    # when
    response = client_for(users.admin).get("/audit/", {direction: cursor})

    # then: a page of events (or the newest with the message), never a database error
    assert response.status_code == 200


def test_every_link_on_the_timeline_opens_for_an_administrator(users, two_orders):
    """Each event links its subject, its instance, its actor's events and its request: every one opens."""
    import html
    import re

    # given
    client = client_for(users.admin)

    # when
    page = client.get("/audit/").content.decode()
    main = page.split('<main id="main"', 1)[1].split("</main>", 1)[0]
    links = {html.unescape(href) for href in re.findall(r'href="([/?][^"]*)"', main)}
    links = sorted(("/audit/" + link) if link.startswith("?") else link for link in links)

    # then
    assert any(link.startswith("/instances/") for link in links)
    refused = {link: client.get(link).status_code for link in links}
    assert {link: code for link, code in refused.items() if code != 200} == {}


@pytest.fixture
def sealed_then_cut(two_orders, tmp_path, settings):
    """Both orders sealed to the configured seal file, then the last two events of the first deleted by the table's
    owner and its stored head moved back to the new last event: the database alone is consistent again."""
    from orchestrator.audit_seals import seal

    settings.BATON_AUDIT_SEAL_PATH = str(tmp_path / "seals.jsonl")
    first, _ = two_orders
    seal(full=True)
    events = list(AuditEvent.objects.filter(instance=first).order_by("seq"))
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute("DELETE FROM orchestrator_auditevent WHERE id = ANY(%s)", [[e.pk for e in events[-2:]]])
        cursor.execute("SET LOCAL session_replication_role = origin")
    type(first).objects.filter(pk=first.pk).update(audit_seq=events[-3].seq, audit_head=events[-3].hash)
    return first, events


def test_the_job_checks_the_chains_against_the_configured_seal_file(users, sealed_then_cut):
    """The page's verification (Verify now, the daily run) reads the seals the worker writes: a tail cut off with
    its head moved back verifies against the database alone, and only the seal can tell."""
    # given
    first, events = sealed_then_cut
    job = services.verification_request(users.admin)

    # when
    services.verification_execute(job.pk)

    # then
    job.refresh_from_db()
    assert job.state == VerificationState.FAILED
    assert job.first_break["chain"] == f"instance:{first.pk}"
    assert f"sealed at seq {events[-1].seq}" in job.first_break["problem"]
    html = client_for(users.admin).get("/audit/chains/").content.decode()
    assert "checked against 1 seal line" in html


@pytest.mark.parametrize("damage", ["removed", "forged"])
def test_a_seal_file_removed_or_forged_fails_the_job_and_the_page_says_why(users, sealed_then_cut, damage):
    """The seal file gone (nothing to check against) or a line of it rewritten (its signature fails) is a problem of
    the run, named on the page, not a pass that claims a check that did not happen."""
    # given
    from pathlib import Path

    from django.conf import settings

    path = Path(settings.BATON_AUDIT_SEAL_PATH)
    if damage == "removed":
        path.unlink()
    else:
        path.write_text(path.read_text().replace('"full":true', '"full":false'))
    job = services.verification_request(users.admin)

    # when
    services.verification_execute(job.pk)

    # then
    job.refresh_from_db()
    assert job.state == VerificationState.FAILED
    expected = "cannot be read" if damage == "removed" else "seal line 1: its signature does not verify"
    assert any(expected in b["problem"] for b in job.breaks)
    html = client_for(users.admin).get("/audit/chains/").content.decode()
    assert expected in html


def test_without_a_seal_file_the_page_says_the_seals_were_not_checked(users, two_orders, settings):
    # given: seals go to the log
    settings.BATON_AUDIT_SEAL_PATH = ""
    job = services.verification_request(users.admin)

    # when
    services.verification_execute(job.pk)

    # then
    job.refresh_from_db()
    assert job.state == VerificationState.PASSED
    html = client_for(users.admin).get("/audit/chains/").content.decode()
    assert "Not checked against seals" in html


def test_every_problem_listed_on_the_chain_status_page_names_its_row(users):
    """Not only the first broken link: each problem in the list names its chain, seq and event id when it has one."""
    # given
    now = timezone.now()
    breaks = [
        {"chain": "instance:7", "seq": 4, "event_id": 99, "problem": "content does not match its hash"},
        {"chain": "instance:8", "seq": 2, "event_id": 123, "problem": "prev_hash does not match the previous event"},
    ]
    Verification.objects.create(
        state=VerificationState.FAILED, active=None, requested_at=now, finished_at=now, breaks_count=2, breaks=breaks
    )

    # when
    html = client_for(users.admin).get("/audit/chains/").content.decode()

    # then
    listed = html[html.index("All 2 problems") :]
    assert "instance:8 #2</span> (event id 123)" in listed


@pytest.mark.parametrize("path", ["/audit/", "/audit/export/csv/"])
def test_with_a_bad_filter_the_export_buttons_do_not_export_the_whole_trail(users, two_orders, path):
    """A filter typed wrong (a 400 page, from the timeline or from an export link) kept the Export buttons, pointing
    at an export with no filter at all: one click sent every event of every chain instead of the few asked for.
    Until the filters are valid there is nothing to export."""
    # when
    response = client_for(users.admin).get(path, {"actor": "manager", "since": "yesterday-ish"})

    # then
    html = response.content.decode()
    assert response.status_code == 400
    assert "yesterday-ish" in html
    assert 'href="/audit/export/csv/"' not in html
    assert 'href="/audit/export/jsonl/"' not in html
    assert "Fix the filters to export" in html


@pytest.mark.parametrize("side", ["after", "before"])
def test_a_page_past_either_end_offers_the_newest_page_not_a_dead_end(users, two_orders, side):
    """A cursor past the oldest event (or past the newest one), from a link kept for long or edited by hand, showed
    "No event matches these filters" and no link anywhere: the trail looked empty. It says the page is past the end
    and links to the newest page, keeping the filters."""
    # given
    import base64
    import json

    at = "2001-01-01T00:00:00+00:00" if side == "after" else "2099-01-01T00:00:00+00:00"
    cursor = base64.urlsafe_b64encode(json.dumps([at, 1]).encode()).decode().rstrip("=")

    # when
    response = client_for(users.admin).get("/audit/", {"action": "instance.", side: cursor})

    # then
    html = response.content.decode()
    assert response.status_code == 200
    assert "No event matches these filters" not in html
    assert "No events past this page" in html
    assert 'href="?action=instance.">Newest</a>' in html
