"""The catalog, a workflow's page (versions, diagrams, what changed) and the dashboard: who sees them, what they
say, junk in their parameters, and a constant number of queries whatever the number of instances."""

from __future__ import annotations

import pytest

from demo.data import grant_group_permissions
from orchestrator import rollups, stats
from orchestrator.dsl import Human, Task, Workflow
from orchestrator.models import InstanceStateCount, WorkflowHourStats
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory, OrderInputFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def users(users):
    """The demo's permissions on the roles' groups (operators operate, managers view)."""
    grant_group_permissions()
    return users


def noop(ctx):
    return {}


class TestCatalog:
    def test_every_workflow_with_owner_criticality_versions_and_health_links(self, client, users):
        # given
        client.force_login(users.staff)

        # when
        page = client.get("/workflows/").content.decode()

        # then
        assert "Order fulfilment" in page
        assert "Fulfilment team" in page
        assert "v2" in page
        assert "v1" in page
        assert "/instances/?workflow=order_fulfilment&amp;state=failed" in page
        assert "/instances/?workflow=expense_approval&amp;version=1" in page

    def test_counts_come_from_the_roll_ups_in_constant_queries(self, client, users, django_assert_num_queries):
        """Ten versions' worth of state rows or one: the same handful of queries (no scan of the instances)."""
        # given
        client.force_login(users.staff)
        client.get("/workflows/")  # records the versions seen
        InstanceStateCount.objects.create(
            workflow_name="order_fulfilment", workflow_version=1, state="running", count=123_456
        )
        InstanceStateCount.objects.create(workflow_name="order_fulfilment", workflow_version=1, state="failed", count=7)

        # when
        with django_assert_num_queries(10) as captured:
            page = client.get("/workflows/").content.decode()

        # then
        assert "123456" in page or "123,456" in page
        assert not [q for q in captured.captured_queries if 'FROM "orchestrator_workflowinstance"' in q["sql"]]

    def test_a_version_still_holding_instances_but_no_longer_deployed_is_shown(self, client, users):
        # given
        InstanceStateCount.objects.create(
            workflow_name="order_fulfilment", workflow_version=9, state="running", count=2
        )
        client.force_login(users.operator)

        # when
        page = client.get("/workflows/order_fulfilment/").content.decode()

        # then
        assert "v9" in page
        assert "not deployed" in page

    def test_anonymous_is_sent_to_sign_in(self, client):
        assert client.get("/workflows/")["Location"].startswith("/login/")


class TestWorkflowPage:
    def test_by_default_it_shows_what_the_latest_version_changed(self, client, users):
        # given
        client.force_login(users.operator)

        # when
        response = client.get("/workflows/expense_approval/")

        # then
        assert response.status_code == 200
        diff = response.context["diff"]
        assert (diff.old.version, diff.new.version) == (1, 2)
        assert not diff.same
        page = response.content.decode()
        assert page.count('class="diagram"') == 2

    def test_a_version_that_is_junk_or_not_deployed_is_named_with_400(self, client, users):
        # given
        client.force_login(users.operator)

        # when
        junk = client.get("/workflows/expense_approval/", {"from": "1\x00; drop", "to": "2"})
        missing = client.get("/workflows/expense_approval/", {"from": "1", "to": "99"})

        # then
        assert junk.status_code == 400
        assert "is not a version of this workflow" in junk.content.decode()
        assert missing.status_code == 400

    def test_an_unknown_workflow_is_404(self, client, users):
        client.force_login(users.operator)
        assert client.get("/workflows/no_such_flow/").status_code == 404


class TestVersionDiff:
    def test_added_removed_and_changed_nodes_attribute_by_attribute(self):
        # given
        old = Workflow(
            name="diffed",
            version=1,
            steps=[Task("a", noop, timeout=10), Task("b", noop), Human("ok", candidate_groups=["x"])],
        )
        new = Workflow(
            name="diffed",
            version=2,
            steps=[Task("a", noop, timeout=30), Human("ok", candidate_groups=["x", "y"]), Task("c", noop)],
        )

        # when
        diff = stats.version_diff(old, new)

        # then
        assert diff.added == ["c"]
        assert diff.removed == ["b"]
        timeouts = [(float(before), float(after)) for what, before, after in diff.changed["a"] if what == "timeout"]
        assert timeouts == [(10.0, 30.0)]
        assert ("goes to", "b", "ok") in diff.changed["a"]
        assert ("candidate_groups", "['x']", "['x', 'y']") in diff.changed["ok"]

    def test_a_version_compared_with_itself_is_the_same(self):
        flow = Workflow(name="same", version=1, steps=[Task("a", noop)])
        assert stats.version_diff(flow, flow).same


class TestDashboard:
    @pytest.mark.parametrize(("role", "status"), [("staff", 404), ("manager", 404), ("operator", 200), ("admin", 200)])
    def test_only_operators_and_admins(self, client, users, role, status):
        # given
        client.force_login(getattr(users, role))

        # then
        assert client.get("/dashboard/").status_code == status

    def test_it_shows_the_rolled_up_figures_with_their_zone(self, client, users, run_steps):
        # given
        instance_start("order_fulfilment", OrderInputFactory(fail_payment=1))
        instance_start("expense_approval", ExpenseInputFactory(amount="20.00"))
        run_steps(advance=True)
        WorkflowHourStats.objects.all().delete()
        # The pass settles on running transactions; inside this test's transaction it folds with a direct fold.
        from orchestrator.models import AuditEvent

        events = (
            AuditEvent.objects.filter(instance__isnull=False)
            .order_by("id")
            .values(
                "id",
                "action",
                "subject_type",
                "subject_id",
                "from_state",
                "to_state",
                "occurred_at",
                "instance__workflow_name",
                "instance__workflow_version",
                "instance__created_at",
            )
        )
        rollups._write(rollups.fold(list(events), {}))
        client.force_login(users.operator)

        # when
        response = client.get("/dashboard/")

        # then
        page = response.content.decode()
        data = response.context["data"]
        assert data.totals.started == 2
        assert data.totals.completed == 1
        assert data.tasks["open"] == 1
        assert data.by_state["waiting"] == 1
        assert 'id="dashboard-data"' in page
        # the card of work in progress counts running and waiting, each linking to the list of what it counts
        card = page.split('id="dashboard-in-progress"', 1)[1].split("</div></div></div>", 1)[0]
        running, waiting = data.by_state.get("running", 0), data.by_state["waiting"]
        assert f'<div class="fs-4 fw-semibold">{running + waiting}</div>' in card
        assert f'/instances/?state=running">{running} running</a>' in card
        assert f'/instances/?state=waiting">{waiting} waiting</a>' in card
        assert "{#" not in page  # no template note printed as text
        assert "chart.umd.min.js" in page

    @pytest.mark.parametrize("window", ["24h", "7d", "30d"])
    def test_each_window_in_constant_queries(self, client, users, window, django_assert_num_queries):
        # given
        client.force_login(users.operator)

        # when
        # session, user, two permission reads, the navigation's counts (3), and the six roll-up reads
        with django_assert_num_queries(12) as captured:
            response = client.get("/dashboard/", {"window": window})

        # then
        assert response.status_code == 200
        # No statement reads instances, but the overdue count's probe of the instance of a task already past its
        # due time (is it held by a pause?: approvals.selectors.late), one index probe per such task.
        for query in captured.captured_queries:
            reads = query["sql"].count('FROM "orchestrator_workflowinstance"')
            assert reads == query["sql"].count('EXISTS(SELECT 1 AS "a" FROM "orchestrator_workflowinstance"'), query

    def test_a_junk_window_is_named_and_the_last_24_hours_shown(self, client, users):
        # given
        client.force_login(users.operator)

        # when
        response = client.get("/dashboard/", {"window": "1y<script>"})

        # then
        assert response.status_code == 200
        page = response.content.decode()
        assert "is not a window" in page
        assert "<script>\u201d" not in page
        assert response.context["window"] == "24h"


def test_a_pass_over_an_empty_trail_changes_nothing():
    assert rollups.rollup_pass() == 0


def _one_hour_of(workflow: str, completed: int, failed: int = 0, bucket_seconds: float = 20.0) -> None:
    """The current hour's roll-up row for ``workflow``: ``completed`` runs all timed in the bucket holding
    ``bucket_seconds``, and ``failed`` failures."""
    from django.utils import timezone

    durations = rollups.empty_histogram()
    durations[rollups.bucket_index(bucket_seconds)] = completed
    WorkflowHourStats.objects.create(
        workflow_name=workflow,
        span=rollups.SPAN_HOUR,
        hour=rollups.hour_of(timezone.now()),
        started=completed + failed,
        completed=completed,
        failed=failed,
        durations=durations,
        duration_sum=completed * bucket_seconds,
    )


class TestFewRuns:
    """A p95 over a couple of runs is the middle of a histogram bucket, not a measurement: the pages say how many
    runs a figure comes from, and give no quantile until there are enough."""

    def test_the_catalog_gives_no_p95_from_two_runs_and_says_why(self, client, users):
        # given two timed runs (both in the 10-30 s bucket: interpolation would call the p95 29.0 s)
        _one_hour_of("order_fulfilment", completed=2)
        client.force_login(users.staff)

        # when
        response = client.get("/workflows/")

        # then
        page = response.content.decode()
        entry = next(e for e in response.context["entries"] if e.workflow.name == "order_fulfilment")
        assert entry.health.timed == 2
        assert entry.health.p95 is None
        assert "29.0 s" not in page
        assert f"2 runs; p95 from {stats.MIN_RUNS_FOR_QUANTILES}" in page

    def test_the_catalog_gives_the_p95_with_how_many_runs_when_there_are_enough(self, client, users):
        # given
        _one_hour_of("order_fulfilment", completed=stats.MIN_RUNS_FOR_QUANTILES)
        client.force_login(users.staff)

        # when
        page = client.get("/workflows/").content.decode()

        # then
        assert "29.0 s" in page
        assert f"· {stats.MIN_RUNS_FOR_QUANTILES} runs" in page

    def test_the_dashboard_names_how_many_runs_each_rate_and_quantile_comes_from(self, client, users):
        # given one run that failed, and two timed runs
        _one_hour_of("order_fulfilment", completed=2, failed=1)
        client.force_login(users.operator)

        # when
        page = client.get("/dashboard/").content.decode()

        # then: a third is shown over its three ended runs, and no p95 from two
        assert "33.3 %" in page
        assert "1 of 3 ended" in page
        assert "29.0 s" not in page
        assert "only 2 runs" in page


class TestAWorkflowNoLongerDeployed:
    """A workflow whose every version was taken out of the code, while instances of it still run or failed: the
    catalog still lists it (its instances need an operator), marked as not deployed, and its page answers."""

    @pytest.fixture
    def retired(self):
        InstanceStateCount.objects.create(workflow_name="retired_flow", workflow_version=3, state="running", count=4)
        InstanceStateCount.objects.create(workflow_name="retired_flow", workflow_version=3, state="failed", count=2)

    def test_the_catalog_lists_it_with_its_instances(self, client, users, retired):
        # given
        client.force_login(users.staff)

        # when
        response = client.get("/workflows/")

        # then
        page = response.content.decode()
        entry = next(e for e in response.context["entries"] if e.workflow.name == "retired_flow")
        assert entry.deployed is False
        assert entry.running == 4
        assert entry.failed_now == 2
        assert "/instances/?workflow=retired_flow&amp;version=3&amp;state=running" in page
        assert "No process here registers this workflow any more" in page
        assert "/workflows/retired_flow/start/" not in page

    def test_its_page_shows_its_versions_and_no_diagram(self, client, users, retired):
        # given
        client.force_login(users.staff)

        # when
        response = client.get("/workflows/retired_flow/")

        # then
        assert response.status_code == 200
        page = response.content.decode()
        assert "retired_flow" in page
        assert "v3" in page
        assert "not deployed" in page


class TestTimelineLabels:
    """The chart's slots are UTC hours or UTC days (the roll-up's rows): each label names its slot unambiguously in
    the zone the page states."""

    def test_a_utc_day_is_labelled_with_its_own_date_not_the_evening_before(self, client, users, settings):
        # given a zone behind UTC: the UTC day that starts Nov 30 00:00 starts at 19:00 on Nov 29 in New York
        settings.TIME_ZONE = "America/New_York"
        client.force_login(users.operator)

        # when
        response = client.get("/dashboard/", {"window": "7d"})

        # then the last slot (today, UTC) carries today's UTC date, and the page says the days are UTC days
        from datetime import UTC

        from django.utils import timezone

        assert response.context["chart"]["labels"][-1] == timezone.now().astimezone(UTC).strftime("%b %d")
        assert "per UTC day" in response.content.decode()

    def test_the_hour_repeated_when_summer_time_ends_gets_two_different_labels(self):
        # given the night Berlin leaves summer time: 00:00 and 01:00 UTC are both 02:00 local
        from datetime import UTC, datetime, timedelta

        from django.utils import timezone

        from console.views_observe import timeline_labels

        slots = [datetime(2026, 10, 25, hour, tzinfo=UTC) for hour in range(3)]

        # when
        with timezone.override("Europe/Berlin"):
            labels = timeline_labels(slots, timedelta(hours=1))

        # then
        assert labels == ["Oct 25 02:00 CEST", "Oct 25 02:00 CET", "Oct 25 03:00 CET"]


class TestARetriedFailure:
    """An instance that failed, was retried by an operator and then ended is one ending, not two: the failure it
    came back from is taken back (``instance.retried`` follows only a failed instance)."""

    @pytest.mark.parametrize(
        ("counts", "failures", "ended"),
        [
            # failed, retried, completed: one instance, now completed
            ({"failed": 1, "operator_retries": 1, "completed": 1}, 0, 1),
            # failed, retried, failed again: one instance, failed
            ({"failed": 2, "operator_retries": 1}, 1, 1),
            # failed mid-compensation, retried, compensated: one instance, compensated
            ({"failed": 1, "operator_retries": 1, "compensated": 1}, 1, 1),
            # retried and still running: nothing ended
            ({"failed": 1, "operator_retries": 1}, 0, 0),
            # failed before the window, retried and completed inside it: one completion
            ({"operator_retries": 1, "completed": 1}, 0, 1),
        ],
    )
    def test_the_rate_counts_each_instance_once(self, counts, failures, ended):
        # given
        health = stats.Health(**counts)

        # then
        assert (health.failures, health.finished) == (failures, ended)
        assert health.failure_rate == (failures / ended if ended else None)

    def test_the_catalog_says_none_of_one_ended_failed(self, client, users):
        # given one instance that failed, was retried and completed in this hour
        from django.utils import timezone

        WorkflowHourStats.objects.create(
            workflow_name="order_fulfilment",
            span=rollups.SPAN_HOUR,
            hour=rollups.hour_of(timezone.now()),
            started=1,
            failed=1,
            operator_retries=1,
            completed=1,
        )
        client.force_login(users.operator)

        # when
        catalog = client.get("/workflows/").content.decode()
        dashboard = client.get("/dashboard/").content.decode()

        # then
        assert "0 of 1 ended" in catalog
        assert "50.0 %" not in catalog
        assert "0 of 1 ended" in dashboard
        assert "50.0 %" not in dashboard


def _started_at(workflow: str, moment) -> None:
    """One start at ``moment`` folded as the roll-up pass folds it: into its hour's row and its UTC day's row."""
    from django.db.models import F

    for span, start in (
        (rollups.SPAN_HOUR, rollups.hour_of(moment)),
        (rollups.SPAN_DAY, rollups.hour_of(moment).replace(hour=0)),
    ):
        row, _ = WorkflowHourStats.objects.get_or_create(workflow_name=workflow, span=span, hour=start)
        WorkflowHourStats.objects.filter(pk=row.pk).update(started=F("started") + 1)


class TestWindowsOfDays:
    """ "Last 7d" and "last 30d" are that many hours ending with the current one, as "last 24h" is: not the whole UTC
    days since a midnight, which left out up to a day (six days and some hours read as seven)."""

    NOW = "2026-11-30T15:30:00+00:00"

    @pytest.mark.parametrize(("hours", "first_inside"), [(24 * 7, "2026-11-23T16:00"), (24 * 30, "2026-10-31T16:00")])
    def test_the_window_counts_its_first_partial_day_and_not_the_hour_before_it(self, hours, first_inside):
        # given a start in the window's first hour, one in the hour before it, one on a whole day and one now
        from datetime import datetime, timedelta

        now = datetime.fromisoformat(self.NOW)
        first = datetime.fromisoformat(first_inside + ":00+00:00")
        assert first == rollups.window_start(hours, now)
        for moment in (first, first - timedelta(hours=1), first + timedelta(days=1, hours=11), now):
            _started_at("order_fulfilment", moment)

        # when
        data = stats.dashboard(hours, now)

        # then three of the four are inside, and the chart's days add up to the same
        assert data.totals.started == 3
        assert stats.health_by_workflow(hours, now)["order_fulfilment"].started == 3
        timeline = data.timeline
        assert sum(timeline["started"]) == 3
        assert timeline["labels"][0] == first.replace(hour=0)
        assert timeline["labels"][-1] == now.replace(hour=0, minute=0)
        assert timeline["started"][0] == 1  # the first day's hours inside the window, not the one before
        assert len(timeline["labels"]) == hours // 24 + 1

    def test_a_window_starting_at_midnight_reads_whole_days_only(self):
        # given the current hour is 23:00 UTC, so the seven days start at a midnight
        from datetime import datetime, timedelta

        now = datetime.fromisoformat("2026-11-30T23:10:00+00:00")
        first = rollups.window_start(24 * 7, now)
        assert first == datetime.fromisoformat("2026-11-24T00:00:00+00:00")
        for moment in (first, first - timedelta(minutes=1), now):
            _started_at("order_fulfilment", moment)

        # when
        data = stats.dashboard(24 * 7, now)

        # then
        assert data.totals.started == 2
        assert data.timeline["started"] == [1, 0, 0, 0, 0, 0, 1]

    def test_the_dashboard_says_when_its_window_began(self, client, users):
        # given
        from django.utils import timezone

        client.force_login(users.operator)

        # when
        response = client.get("/dashboard/", {"window": "7d"})

        # then
        since = response.context["data"].since
        assert response.context["since_label"] == timezone.localtime(since).strftime("since %b %d %H:%M %Z")
        assert response.context["since_label"] in response.content.decode()

    def test_the_first_day_says_from_which_hour_it_counts(self):
        # given seven days read at 15:30 UTC: the first day counts from 16:00
        from datetime import datetime, timedelta

        from console.views_observe import timeline_labels

        now = datetime.fromisoformat(self.NOW)
        slots = stats.timeline(24 * 7, now)["labels"]

        # when
        labels = timeline_labels(slots, timedelta(days=1), rollups.window_start(24 * 7, now))
        at_midnight = timeline_labels(slots[1:], timedelta(days=1), slots[1])

        # then
        assert labels[0] == "Nov 23 from 16:00 UTC"
        assert labels[1:] == ["Nov 24", "Nov 25", "Nov 26", "Nov 27", "Nov 28", "Nov 29", "Nov 30"]
        assert at_midnight[0] == "Nov 24"
