"""Scheduled starts: fired by the sweep once per fire time (two sweeps at once too), missed runs caught up once or
skipped, cron read in the schedule's zone, declared schedules synced, every fire audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django import forms
from django.utils import timezone

from automation.models import FireOutcome, MissedPolicy, Schedule, ScheduleFire, ScheduleSource
from automation.schedules import ScheduleInvalid, fire, schedule_save, sync_declared, upcoming
from orchestrator.audit import Actor
from orchestrator.dsl import DefinitionError, StepContext, Task, Workflow
from orchestrator.dsl import Schedule as Declared
from orchestrator.models import AuditEvent, WorkflowInstance
from orchestrator.services import sweep as engine
from tests.concurrency import race

pytestmark = pytest.mark.django_db

ADMIN = Actor("user:admin")


class ReportForm(forms.Form):
    region = forms.ChoiceField(choices=[("eu", "EU"), ("us", "US")])


def build_report(ctx: StepContext) -> dict:
    return {"built": True}


def report_flow(*schedules: Declared, version: int = 1) -> Workflow:
    return Workflow(
        name="nightly_report",
        version=version,
        start_form=ReportForm,
        steps=[Task("build", build_report)],
        schedules=list(schedules),
    )


@pytest.fixture
def report(register_workflow):
    return register_workflow(report_flow())


def hourly(name: str = "hourly report", **fields: object) -> Schedule:
    values = {
        "name": name,
        "workflow_name": "nightly_report",
        "input": {"region": "eu"},
        "cron": "0 * * * *",
        "timezone": "UTC",
        **fields,
    }
    return schedule_save(Schedule(**values), actor=ADMIN)  # type: ignore[arg-type]


def due_now(schedule: Schedule, when: datetime) -> None:
    """Setup: the schedule's next time is ``when`` (as if created long ago)."""
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=when, anchor=when - timedelta(days=1))


def test_a_due_schedule_starts_its_workflow_once_and_moves_on(report):
    # given an hourly schedule due a few seconds ago
    schedule = hourly()
    now = timezone.now()
    due_now(schedule, now - timedelta(seconds=5))

    # when the sweep runs, and runs again
    first = engine.sweep(now=now)
    second = engine.sweep(now=now + timedelta(seconds=1))

    # then one instance started, with the schedule's input, by the scheduler, and the next time is ahead
    instance = WorkflowInstance.objects.get(workflow_name="nightly_report")
    fire_row = ScheduleFire.objects.get(schedule=schedule)
    schedule.refresh_from_db()
    assert first.extensions["schedules"]["started"] == 1
    assert second.extensions["schedules"]["started"] == 0
    assert instance.data == {"region": "eu"}
    assert (fire_row.outcome, fire_row.instance_id) == (FireOutcome.STARTED, instance.pk)
    assert schedule.next_fire_at > now
    started = AuditEvent.objects.get(instance=instance, action="instance.started")
    assert started.actor_label == "system:scheduler"


def test_every_fire_is_audited_on_the_automation_chain(report):
    schedule = hourly()
    now = timezone.now()
    due_now(schedule, now - timedelta(seconds=5))

    engine.sweep(now=now)

    event = AuditEvent.objects.get(chain="automation", action="schedule.fired")
    assert event.subject_id == schedule.pk
    assert event.payload["instance"] == WorkflowInstance.objects.get().pk
    assert event.payload["fire_time"] == (now - timedelta(seconds=5)).isoformat()


@pytest.mark.django_db(transaction=True)
def test_two_sweeps_at_once_start_a_fire_time_once(report):
    # given a due schedule (committed: each sweep has its own connection)
    schedule = hourly()
    now = timezone.now()
    due_now(schedule, now - timedelta(seconds=2))

    # when two sweeps (two beats, two workers) run at the same instant, and fire() is called again directly
    results = race(lambda: engine.sweep(now=now), lambda: engine.sweep(now=now))
    again = fire(schedule.pk, now)

    # then one start, one fire row
    assert not [r for r in results if isinstance(r, Exception)], results
    assert WorkflowInstance.objects.filter(workflow_name="nightly_report").count() == 1
    assert ScheduleFire.objects.filter(schedule=schedule).count() == 1
    assert again == 0


def test_a_second_sweep_with_a_stale_read_cannot_start_the_same_fire_time_again(report):
    """Belt and braces: were the lock ever bypassed, the unique (schedule, fire_time) refuses the second fire."""
    schedule = hourly()
    now = timezone.now()
    due = now - timedelta(seconds=5)
    due_now(schedule, due)
    fire(schedule.pk, now)

    # when the schedule is put back at the same fire time (what a stale read would see) and fired again
    due_now(schedule, due)
    result = fire(schedule.pk, now)

    assert result == 0
    assert WorkflowInstance.objects.filter(workflow_name="nightly_report").count() == 1


def test_runs_missed_while_down_are_caught_up_once(report):
    # given an hourly schedule whose last five hours passed while Baton was down
    schedule = hourly()
    now = datetime(2026, 11, 30, 10, 30, tzinfo=UTC)
    due_now(schedule, datetime(2026, 11, 30, 6, 0, tzinfo=UTC))

    # when the sweep runs again
    engine.sweep(now=now)

    # then one start stands for the five missed runs, stamped with the latest, and the next is at 11:00
    fire_row = ScheduleFire.objects.get(schedule=schedule)
    schedule.refresh_from_db()
    assert WorkflowInstance.objects.filter(workflow_name="nightly_report").count() == 1
    assert fire_row.outcome == FireOutcome.STARTED
    assert fire_row.fire_time == datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    assert fire_row.covers == 5
    assert schedule.next_fire_at == datetime(2026, 11, 30, 11, 0, tzinfo=UTC)


def test_runs_missed_while_down_are_skipped_with_skip(report):
    schedule = hourly(missed=MissedPolicy.SKIP)
    now = datetime(2026, 11, 30, 10, 30, tzinfo=UTC)
    due_now(schedule, datetime(2026, 11, 30, 6, 0, tzinfo=UTC))

    engine.sweep(now=now)

    fire_row = ScheduleFire.objects.get(schedule=schedule)
    assert not WorkflowInstance.objects.exists()
    assert fire_row.outcome == FireOutcome.SKIPPED
    assert AuditEvent.objects.filter(chain="automation", action="schedule.skipped").count() == 1


def test_cron_is_read_in_the_schedules_time_zone_across_daylight_saving(report):
    schedule = hourly("paris at nine", cron="0 9 * * *", timezone="Europe/Paris")

    times = upcoming(schedule, 3, now=datetime(2026, 3, 27, 12, 0, tzinfo=UTC))

    # 09:00 in Paris is 08:00 UTC in winter, 07:00 UTC once summer time began on 29 March
    assert times == [
        datetime(2026, 3, 28, 8, 0, tzinfo=UTC),
        datetime(2026, 3, 29, 7, 0, tzinfo=UTC),
        datetime(2026, 3, 30, 7, 0, tzinfo=UTC),
    ]


def test_an_interval_counts_from_its_anchor_not_from_the_sweep(report):
    schedule = hourly("every quarter", cron="", interval_seconds=900)
    anchor = schedule.anchor
    assert schedule.next_fire_at == anchor + timedelta(minutes=15)
    schedule.next_fire_at = anchor + timedelta(minutes=30)  # the 15-minute run fired, a little late

    times = upcoming(schedule, 2, now=anchor + timedelta(minutes=20, seconds=7))

    assert times == [anchor + timedelta(minutes=30), anchor + timedelta(minutes=45)]


def test_a_start_that_fails_is_recorded_and_audited_and_the_schedule_goes_on(report):
    schedule = hourly()
    Schedule.objects.filter(pk=schedule.pk).update(input={"region": "mars"})  # the form changed since
    now = timezone.now()
    due_now(schedule, now - timedelta(seconds=5))

    engine.sweep(now=now)

    fire_row = ScheduleFire.objects.get(schedule=schedule)
    schedule.refresh_from_db()
    assert fire_row.outcome == FireOutcome.FAILED
    assert "region" in fire_row.error
    assert schedule.next_fire_at > now
    assert AuditEvent.objects.filter(chain="automation", action="schedule.failed").exists()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "0 9 * *"}, "cron"),
        ({"cron": "", "interval_seconds": 5}, "interval_seconds"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"workflow_name": "no_such_flow"}, "workflow_name"),
        ({"input": {"region": "mars"}}, "input"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_field(report, fields, field):
    with pytest.raises(ScheduleInvalid) as refused:
        hourly(**fields)

    assert field in refused.value.errors
    assert not Schedule.objects.exists()


def test_schedules_declared_beside_a_workflow_are_synced(register_workflow):
    # given a workflow declaring a schedule
    register_workflow(
        report_flow(Declared("eu nightly", cron="0 2 * * *", timezone="Europe/Berlin", input={"region": "eu"}))
    )

    # when synced (migrate, or a process's first sweep)
    counts = sync_declared()

    # then it is in the table, from code, due at 02:00 Berlin
    schedule = Schedule.objects.get(name="eu nightly")
    assert counts["created"] == 1
    assert schedule.source == ScheduleSource.CODE
    assert schedule.next_fire_at.astimezone(timezone.get_fixed_timezone(0)).minute == 0

    # when a new version declares it with another time, and a later one no longer declares it
    register_workflow(report_flow(Declared("eu nightly", cron="0 3 * * *", input={"region": "eu"}), version=2))
    assert sync_declared()["changed"] == 1
    assert Schedule.objects.get(name="eu nightly").cron == "0 3 * * *"
    register_workflow(report_flow(version=3))
    assert sync_declared()["retired"] == 1
    retired = Schedule.objects.get(name="eu nightly")
    assert (retired.enabled, retired.retired, retired.next_fire_at) == (False, True, None)


def test_a_declared_schedule_is_checked_when_built():
    with pytest.raises(DefinitionError, match="exactly one"):
        Declared("both", cron="0 * * * *", every=timedelta(hours=1))
    with pytest.raises(DefinitionError, match="time zone"):
        Declared("zone", cron="0 * * * *", timezone="Nowhere/Land")
    with pytest.raises(DefinitionError, match="missed"):
        Declared("policy", cron="0 * * * *", missed="always")  # type: ignore[arg-type]


def test_a_schedule_input_with_an_object_for_a_text_field_is_refused_at_save():
    # given: the start form's "employee" is one text; Django's field would store str({...}) at every fire
    from automation.schedules import check
    from tests.factories import ExpenseInputFactory

    data = {**ExpenseInputFactory(), "employee": {"name": "Sam"}}

    # when
    errors = check("expense_approval", "", 3600, "UTC", data)

    # then
    assert any(message.startswith("employee:") for message in errors["input"]), errors
