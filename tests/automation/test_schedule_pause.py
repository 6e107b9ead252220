"""A schedule whose fires cannot start pauses itself after PAUSE_AFTER_FAILURES in a row spanning PAUSE_AFTER, as a
failing webhook subscription does: said on its page and the list, audited, its people told once, cleared by a
resume (automation/schedules.py). It failed at every fire for ever, every minute perhaps, its owner told once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from approvals.models import Notification
from automation import schedules
from automation.models import FireOutcome, MissedPolicy, Schedule, ScheduleFire
from automation.schedules import PAUSE_AFTER, PAUSE_AFTER_FAILURES, fire, schedule_save, sync_declared
from orchestrator.audit import Actor
from orchestrator.bidi import FSI, PDI
from orchestrator.dsl import Schedule as Declared
from orchestrator.models import AuditEvent
from orchestrator.services import sweep as engine
from tests.automation.test_schedules import due_now, hourly, report_flow
from tests.concurrency import race
from tests.factories import SuperUserFactory

pytestmark = pytest.mark.django_db

ADMIN = Actor("user:admin")
# A Monday morning in winter: Paris is on CET (UTC+1).
MONDAY = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def report(register_workflow):
    return register_workflow(report_flow())


def broken(name: str = "hourly report", owner=None, **fields: object) -> Schedule:
    """An hourly schedule whose input its start form now refuses (the form changed since it was saved)."""
    schedule = hourly(name, **fields)
    Schedule.objects.filter(pk=schedule.pk).update(input={"region": "mars"}, owner=owner)
    schedule.refresh_from_db()
    return schedule


def refuse_starts(monkeypatch: pytest.MonkeyPatch, error: str) -> None:
    """The engine refuses every start with ``error`` (the schedule itself is fine)."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(error)

    monkeypatch.setattr("orchestrator.services.instances.instance_start", refuse)


def fire_on_time(schedule: Schedule, when: datetime) -> Schedule:
    """Fire ``schedule`` at ``when``, due then (on time: not missed); returns it as stored after."""
    due_now(schedule, when)
    fire(schedule.pk, when)
    schedule.refresh_from_db()
    return schedule


def fail_hourly(schedule: Schedule, times: int, start: datetime = MONDAY) -> Schedule:
    for hour in range(times):
        schedule = fire_on_time(schedule, start + timedelta(hours=hour))
    return schedule


def paused_events(schedule: Schedule):
    return AuditEvent.objects.filter(chain="automation", action="schedule.paused", subject_id=schedule.pk)


class TestTheRule:
    def test_the_figures_mirror_the_webhooks_rule(self):
        # a count and a span, both needed (automation/webhooks.py pauses at 10 attempts over 30 minutes)
        assert PAUSE_AFTER_FAILURES == 5
        assert timedelta(hours=1) == PAUSE_AFTER

    def test_it_pauses_at_the_fifth_failed_fire_in_a_row_spanning_an_hour(self, report, users):
        # given an hourly schedule that cannot start, owned by an admin
        schedule = broken(owner=users.admin)

        # when four fires fail, then a fifth
        schedule = fail_hourly(schedule, 4)
        four = (schedule.enabled, schedule.consecutive_failures, schedule.failing_since)
        schedule = fire_on_time(schedule, MONDAY + timedelta(hours=4))

        # then it ran after four, failing since the first; the fifth paused it, saying which failure and since when
        assert four == (True, 4, MONDAY)
        assert (schedule.enabled, schedule.next_fire_at, schedule.paused_at) == (
            False,
            None,
            MONDAY + timedelta(hours=4),
        )
        assert schedule.paused_reason.startswith("Paused after 5 failed fires in a row (since 2026-01-05 09:00 UTC): ")
        assert "region" in schedule.paused_reason
        assert ScheduleFire.objects.filter(schedule=schedule, outcome=FireOutcome.FAILED).count() == 5

    def test_a_burst_of_failures_within_the_hour_does_not_pause_it(self, report):
        # given an every-minute schedule that cannot start (a deploy rolling out, say)
        schedule = broken(cron="", interval_seconds=60)

        # when it fails at ten fires over nine minutes
        for minute in range(10):
            schedule = fire_on_time(schedule, MONDAY + timedelta(minutes=minute))

        # then it goes on; the first failure an hour after the first pauses it
        assert (schedule.enabled, schedule.consecutive_failures) == (True, 10)
        assert not paused_events(schedule).exists()
        schedule = fire_on_time(schedule, MONDAY + PAUSE_AFTER)
        assert (schedule.enabled, schedule.consecutive_failures) == (False, 11)
        assert schedule.paused_reason.startswith("Paused after 11 failed fires in a row (since 2026-01-05 09:00 UTC)")

    def test_a_start_ends_the_run(self, report):
        # given a schedule that failed four times in a row
        schedule = fail_hourly(broken(), 4)

        # when its input is put right behind the form's back and it starts, then it fails four times again
        Schedule.objects.filter(pk=schedule.pk).update(input={"region": "eu"})
        schedule = fire_on_time(schedule, MONDAY + timedelta(hours=4))
        started = (schedule.consecutive_failures, schedule.failing_since)
        Schedule.objects.filter(pk=schedule.pk).update(input={"region": "mars"})
        schedule = fail_hourly(schedule, 4, MONDAY + timedelta(hours=5))

        # then the start cleared the run: four failures since, not eight, and it still runs
        assert started == (0, None)
        assert (schedule.enabled, schedule.consecutive_failures) == (True, 4)
        assert schedule.failing_since == MONDAY + timedelta(hours=5)

    def test_a_skipped_fire_neither_counts_nor_ends_the_run(self, report):
        """Decision: a skip (runs missed while Baton was down, ``missed=skip``) tried to start nothing, so it says
        nothing of whether the schedule can start: the run goes on across it."""
        # given a skip-missed-runs schedule that failed three times in a row
        schedule = fail_hourly(broken(missed=MissedPolicy.SKIP), 3)

        # when Baton was down for a day: the sweep skips the missed runs
        back = MONDAY + timedelta(days=1)
        Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=MONDAY + timedelta(hours=3))
        fire(schedule.pk, back)
        schedule.refresh_from_db()
        skipped = ScheduleFire.objects.filter(schedule=schedule).order_by("-fire_time").first()

        # then the skip is recorded, the run is still three; the next two failures make five and pause it
        assert skipped is not None
        assert skipped.outcome == FireOutcome.SKIPPED
        assert (schedule.enabled, schedule.consecutive_failures, schedule.failing_since) == (True, 3, MONDAY)
        schedule = fail_hourly(schedule, 2, back + timedelta(hours=1))
        assert (schedule.enabled, schedule.consecutive_failures) == (False, 5)


class TestThePause:
    def test_it_is_audited_with_the_reason_and_its_owner_is_told_once_with_a_link(self, report, users):
        # given a schedule of an admin's that cannot start
        schedule = broken(owner=users.admin)

        # when it fails five times, and a sweep comes by afterwards
        schedule = fail_hourly(schedule, 5)
        engine.sweep(now=MONDAY + timedelta(hours=6))

        # then one pause, audited as the scheduler's with the reason; the owner was told at the first failure and
        # at the pause, each once, with a link to the schedule
        event = paused_events(schedule).get()
        assert (event.actor_label, event.reason) == ("system:scheduler", schedule.paused_reason)
        assert event.payload["failures"] == 5
        assert event.payload["failing_since"] == MONDAY.isoformat()
        told = Notification.objects.filter(user=users.admin).order_by("pk")
        url = f"/automation/schedules/{schedule.pk}/"
        assert [(n.kind, n.url) for n in told] == [("schedule.failed", url), ("schedule.paused", url)]
        assert "paused after 5 failed fires in a row" in told.last().message
        assert ScheduleFire.objects.filter(schedule=schedule).count() == 5

    @pytest.mark.parametrize("left", ["deactivated", "deleted"])
    def test_when_its_owner_has_left_those_who_manage_automation_are_told(self, report, users, left):
        # given a failing schedule whose owner has left, and a manager allowed on the automation pages
        owner = SuperUserFactory(username="leaver")
        users.manager.user_permissions.add(Permission.objects.get(codename="manage_automation"))
        schedule = broken(owner=owner)
        if left == "deactivated":
            owner.is_active = False
            owner.save()
        else:
            owner.delete()

        # when it pauses
        schedule = fail_hourly(schedule, 5)

        # then everyone who may resume it is told of the pause
        assert schedule.enabled is False
        told = Notification.objects.filter(kind="schedule.paused")
        assert sorted(told.values_list("user__username", flat=True)) == ["admin", "manager"]

    def test_a_huge_error_with_nul_and_bidi_controls_is_stored_and_told_safely(self, report, users, monkeypatch):
        # given an engine that refuses with an error of 5,000 characters holding a NUL, an override and a stray pop
        refuse_starts(monkeypatch, "\u202erefused\u2069 \x00" + "x" * 5000)
        schedule = hourly(owner=users.admin)

        # when it fails five times
        schedule = fail_hourly(schedule, 5)

        # then the reason is stored without the NUL, cut, the error isolated; the notice fits and closes its isolates
        assert schedule.enabled is False
        assert "\x00" not in schedule.paused_reason
        assert "\\x00" in schedule.paused_reason
        assert len(schedule.paused_reason) < 1200
        assert schedule.paused_reason.count(FSI) == schedule.paused_reason.count(PDI) == 1
        notice = Notification.objects.get(kind="schedule.paused")
        assert len(notice.message) <= 300
        assert notice.message.count(FSI) == notice.message.count(PDI) == 2  # the name's and the error's
        assert notice.message.endswith("\u2026" + PDI)


class TestResuming:
    def test_a_resume_clears_the_run_and_the_reason_audited_and_fires_from_now(self, report, users):
        # given a schedule the scheduler paused
        schedule = fail_hourly(broken(owner=users.admin), 5)
        reason = schedule.paused_reason

        # when an admin resumes it (its input since put right)
        Schedule.objects.filter(pk=schedule.pk).update(input={"region": "eu"})
        before = timezone.now()
        schedules.schedule_toggle(schedule.pk, enabled=True, actor=ADMIN)
        schedule.refresh_from_db()

        # then it runs, from the next hour after now (the times while paused are not caught up), the run and the
        # reason gone; the resume's audit keeps why it had paused
        assert (schedule.enabled, schedule.consecutive_failures, schedule.failing_since) == (True, 0, None)
        assert (schedule.paused_reason, schedule.paused_at) == ("", None)
        assert before < schedule.next_fire_at <= before + timedelta(hours=1)
        resumed = AuditEvent.objects.get(chain="automation", action="schedule.resumed", subject_id=schedule.pk)
        assert resumed.payload["was_paused"] == reason

    def test_one_that_still_cannot_start_is_not_resumed_and_says_why(self, report, users, admin_client):
        # given a schedule paused by the scheduler, its input still refused by the start form
        schedule = fail_hourly(broken(owner=users.admin), 5)

        # when an admin presses Resume
        response = admin_client.post(f"/automation/schedules/{schedule.pk}/toggle/", {"enabled": "1"}, follow=True)

        # then it stays paused with why, and the page says what to fix
        schedule.refresh_from_db()
        assert (schedule.enabled, schedule.consecutive_failures) == (False, 5)
        assert schedule.paused_reason.startswith("Paused after 5")
        assert "It cannot be resumed: it would fail at every fire (start input: region:" in response.content.decode()
        assert not AuditEvent.objects.filter(action="schedule.resumed").exists()

    def test_failing_again_after_a_resume_is_a_new_run_told_again(self, report, users, monkeypatch):
        # given a schedule paused by the scheduler (the engine refused its starts) and resumed, the engine still
        # refusing
        refuse_starts(monkeypatch, "engine refuses")
        schedule = fail_hourly(hourly(owner=users.admin), 5)
        schedules.schedule_toggle(schedule.pk, enabled=True, actor=ADMIN)

        # when it fails again
        schedule = fire_on_time(schedule, MONDAY + timedelta(days=1))

        # then a new run of one, its owner told of it
        assert (schedule.enabled, schedule.consecutive_failures) == (True, 1)
        assert Notification.objects.filter(kind="schedule.failed", user=users.admin).count() == 2

    def test_an_admins_pause_and_resume_say_no_reason_and_clear_the_run(self, report, monkeypatch):
        # given a schedule failing three times in a row
        refuse_starts(monkeypatch, "engine refuses")
        schedule = fail_hourly(hourly(), 3)

        # when an admin pauses it, then resumes it
        schedules.schedule_toggle(schedule.pk, enabled=False, actor=ADMIN)
        schedule.refresh_from_db()
        paused = (schedule.enabled, schedule.paused_reason, schedule.consecutive_failures)
        assert schedule.paused_at is not None
        schedules.schedule_toggle(schedule.pk, enabled=True, actor=ADMIN)

        # then the pause gave no reason of the scheduler's (the audit names the admin), the run was cleared
        assert paused == (False, "", 0)
        assert "was_paused" not in AuditEvent.objects.get(action="schedule.resumed").payload


class TestAnEditWhileFailing:
    """Decision: a change of what the schedule starts (its workflow or input) may have fixed what failed, so the run
    starts again; a change of its name, recurrence or policy fixes no start, and keeps it."""

    def test_a_change_of_its_input_clears_the_run(self, report, users):
        # given a schedule that failed four times in a row
        schedule = fail_hourly(broken(owner=users.admin), 4)
        assert schedule.consecutive_failures == 4

        # when an admin changes its input
        schedule.input = {"region": "us"}
        schedule_save(schedule, actor=ADMIN)
        schedule.refresh_from_db()

        # then its run starts again
        assert (schedule.consecutive_failures, schedule.failing_since) == (0, None)

    def test_a_change_of_its_name_or_recurrence_keeps_the_run(self, report, monkeypatch):
        # given a schedule the engine refused to start four times in a row (its input is fine)
        refuse_starts(monkeypatch, "engine refuses")
        schedule = fail_hourly(hourly(), 4)

        # when it is renamed and made to fire at half past
        schedule.name, schedule.cron = "renamed", "30 * * * *"
        schedule_save(schedule, actor=ADMIN)
        schedule.refresh_from_db()

        # then its run goes on
        assert (schedule.name, schedule.consecutive_failures, schedule.failing_since) == ("renamed", 4, MONDAY)


@pytest.mark.django_db(transaction=True)
def test_two_sweeps_at_the_fifth_failure_count_it_once_and_pause_once(report, users):
    # given a schedule that failed four times in a row, due for its fifth (committed: each sweep has its connection)
    schedule = fail_hourly(broken(owner=users.admin), 4)
    now = MONDAY + timedelta(hours=4)
    due_now(schedule, now)

    # when two sweeps run at the same instant, and fire() is called again
    results = race(lambda: engine.sweep(now=now), lambda: engine.sweep(now=now))
    again = fire(schedule.pk, now)

    # then one fire, counted once, one pause, one notice of it
    schedule.refresh_from_db()
    assert not [r for r in results if isinstance(r, Exception)], results
    assert again == 0
    assert ScheduleFire.objects.filter(schedule=schedule).count() == 5
    assert (schedule.enabled, schedule.consecutive_failures) == (False, 5)
    assert paused_events(schedule).count() == 1
    assert Notification.objects.filter(kind="schedule.paused").count() == 1


class TestADeclaredSchedule:
    """A schedule declared in code is synced on migrate and by each process's first sweep: the sync must not undo
    the scheduler's pause (a deploy that changes the declaration may not have fixed what failed)."""

    @staticmethod
    def declare(register_workflow, region: str = "eu", version: int = 1, *, declared: bool = True) -> None:
        schedules_ = [Declared("eu hourly", cron="0 * * * *", input={"region": region})] if declared else []
        register_workflow(report_flow(*schedules_, version=version))

    def test_its_pause_outlives_the_sync_a_retirement_and_a_changed_declaration(self, register_workflow, monkeypatch):
        # given a declared schedule the engine refuses to start, paused by the scheduler
        self.declare(register_workflow)
        sync_declared()
        schedule = Schedule.objects.get(name="eu hourly")
        refuse_starts(monkeypatch, "engine refuses")
        schedule = fail_hourly(schedule, 5)
        reason = schedule.paused_reason
        assert schedule.enabled is False

        # when a process's first sweep syncs it again, it is retired and declared again, then declared with
        # another input
        monkeypatch.setitem(schedules._synced, "done", False)
        engine.sweep(now=MONDAY + timedelta(hours=6))
        self.declare(register_workflow, version=2, declared=False)
        sync_declared()
        self.declare(register_workflow, version=3)
        sync_declared()
        kept = Schedule.objects.get(pk=schedule.pk)
        self.declare(register_workflow, "us", version=4)
        sync_declared()
        changed = Schedule.objects.get(pk=schedule.pk)

        # then it stays paused with why throughout; the new input clears the run (a resume would start afresh)
        assert (kept.enabled, kept.retired, kept.next_fire_at, kept.paused_reason) == (False, False, None, reason)
        assert (changed.enabled, changed.next_fire_at, changed.paused_reason) == (False, None, reason)
        assert changed.input == {"region": "us"}
        assert (changed.consecutive_failures, changed.failing_since) == (0, None)
        assert paused_events(schedule).count() == 1


class TestThePages:
    def test_a_failing_schedule_says_so_with_the_run_and_since_when_in_its_zone(self, report, admin_client, users):
        # given a Paris schedule that failed three times in a row
        schedule = fail_hourly(broken(owner=users.admin, timezone="Europe/Paris"), 3)

        # when its page and the list are read
        page = admin_client.get(f"/automation/schedules/{schedule.pk}/").content.decode()
        listed = admin_client.get("/automation/").content.decode()

        # then both say it fails, the page since when in Paris time and the rule
        assert "Failing: 3 fires in a row since 2026-01-05 10:00 CET" in page
        assert "pauses itself after 5 in a row over at least 1 hour" in page
        assert "failing: 3 in a row" in listed

    def test_a_paused_schedule_says_why_and_offers_resume(self, report, admin_client, users):
        # given a schedule the scheduler paused
        schedule = fail_hourly(broken("paused one", owner=users.admin), 5)

        # when its page and the list are read
        page = admin_client.get(f"/automation/schedules/{schedule.pk}/").content.decode()
        listed = admin_client.get("/automation/").content.decode()

        # then the page says why, with the Resume button (a POST form with its CSRF token); the list says it short
        assert "Paused after 5 failed fires in a row (since 2026-01-05 09:00 UTC)" in page
        assert "Failing:" not in page
        assert f'action="/automation/schedules/{schedule.pk}/toggle/"' in page
        assert 'name="enabled" value="1"' in page
        assert "csrfmiddlewaretoken" in page
        assert "data-paused-reason" in listed
        assert "Paused after 5 failed fires" in listed

    def test_resuming_on_the_page_clears_the_reason(self, report, admin_client, users):
        # given a schedule the scheduler paused, its input since put right
        schedule = fail_hourly(broken(owner=users.admin), 5)
        Schedule.objects.filter(pk=schedule.pk).update(input={"region": "eu"})

        # when an admin presses Resume on its page
        response = admin_client.post(f"/automation/schedules/{schedule.pk}/toggle/", {"enabled": "1"})
        page = admin_client.get(f"/automation/schedules/{schedule.pk}/").content.decode()

        # then it is back, nothing of the pause said
        assert response.status_code == 302
        assert "Paused after" not in page
        assert "Failing:" not in page
