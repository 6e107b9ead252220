"""Scheduled starts: fired by the sweep once per fire time (two sweeps at once too), missed runs caught up once or
skipped, cron read in the schedule's zone, declared schedules synced, every fire audited."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django import forms
from django.contrib.auth.models import Permission
from django.utils import timezone

from approvals.models import HumanTask, Notification
from approvals.selectors import team_queue
from approvals.services.base import APPROVE, TaskForbidden
from approvals.services.tasks import task_claim, task_decide
from automation import schedules
from automation.models import FireOutcome, MissedPolicy, Schedule, ScheduleFire, ScheduleSource
from automation.schedules import ScheduleInvalid, fire, schedule_save, sync_declared, upcoming
from orchestrator.audit import Actor
from orchestrator.dsl import DefinitionError, Human, StepContext, Task, Workflow
from orchestrator.dsl import Schedule as Declared
from orchestrator.models import AuditEvent, WorkflowInstance
from orchestrator.services import sweep as engine
from tests.concurrency import race
from tests.factories import SuperUserFactory

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


def test_a_schedules_owner_is_the_initiator_of_what_it_starts_and_cannot_approve_it(users):
    """Given an approver who may manage automation and owns a schedule starting expense approvals with the input
    they typed, when it fires, then they are the instance's initiator (the audit still names the scheduler): their
    claim and approval are refused by four-eyes and the task is not in their queue. Started with no initiator, the
    schedule was a side door around four-eyes: anyone could schedule their own expense and approve it."""
    # given
    owner = users.staff
    expense = {"employee": "Sam", "amount": "42.00", "category": "meals", "description": "Lunch"}
    schedule = schedule_save(
        Schedule(name="my lunches", workflow_name="expense_approval", input=expense, cron="0 * * * *", owner=owner),
        actor=Actor.of(owner),
    )
    now = timezone.now()
    due_now(schedule, now - timedelta(seconds=5))

    # when
    fire(schedule.pk, now)

    # then
    instance = WorkflowInstance.objects.get(workflow_name="expense_approval")
    task = HumanTask.objects.get(instance=instance)
    assert instance.initiator == owner
    assert AuditEvent.objects.get(instance=instance, action="instance.started").actor_label == "system:scheduler"
    assert task.pk not in set(team_queue(owner).values_list("pk", flat=True))
    with pytest.raises(TaskForbidden, match="four-eyes"):
        task_claim(task.pk, owner)
    with pytest.raises(TaskForbidden, match="four-eyes"):
        task_decide(task.pk, owner, APPROVE)
    assert task_decide(task.pk, users.staff2, APPROVE).decision == APPROVE


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


@pytest.mark.parametrize(
    ("recurrence", "covers"),
    [({"cron": "* * * * *"}, 10_001), ({"cron": "", "interval_seconds": 60}, 43_200)],  # a cron's count is bounded
)
def test_a_month_of_missed_minutes_is_caught_up_once_stamped_with_the_latest(report, recurrence, covers):
    # given an every-minute schedule whose last 30 days passed while Baton was down (43,200 fire times)
    schedule = hourly("each minute", **recurrence)
    now = datetime(2026, 11, 30, 10, 30, 20, tzinfo=UTC)
    due_now(schedule, datetime(2026, 10, 31, 10, 31, tzinfo=UTC))

    # when the sweep runs again
    fire(schedule.pk, now)

    # then the one start is stamped with the latest missed minute, not the 10,000th, and counts them all
    fire_row = ScheduleFire.objects.get(schedule=schedule)
    assert fire_row.fire_time == datetime(2026, 11, 30, 10, 30, tzinfo=UTC)
    assert fire_row.covers == covers


def test_a_schedule_left_on_a_time_already_fired_moves_on(report):
    """A schedule whose next time is one already recorded (a clock behind the worker's at a resume or a sync):
    the unique fire row refused every sweep's attempt, silently, and it never fired again."""
    schedule = hourly()
    now = timezone.now()
    due = now - timedelta(seconds=5)
    due_now(schedule, due)
    fire(schedule.pk, now)
    due_now(schedule, due)

    fire(schedule.pk, now + timedelta(seconds=1))

    schedule.refresh_from_db()
    assert schedule.next_fire_at > now
    assert WorkflowInstance.objects.filter(workflow_name="nightly_report").count() == 1


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


@pytest.mark.parametrize(
    ("cron", "zone", "after", "expected"),
    [
        # 01:30 happens twice when the clocks go back (BST then GMT; EDT then EST): a daily run runs once, at the first
        ("30 1 * * *", "Europe/London", datetime(2026, 10, 24, 12, 0, tzinfo=UTC),
         [datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 26, 1, 30, tzinfo=UTC)]),
        ("30 1 * * *", "America/New_York", datetime(2026, 10, 31, 12, 0, tzinfo=UTC),
         [datetime(2026, 11, 1, 5, 30, tzinfo=UTC), datetime(2026, 11, 2, 6, 30, tzinfo=UTC)]),
        # read from inside the repeated hour (the first 01:59 fired): the second is not another run
        ("59 1 * * *", "Europe/London", datetime(2026, 10, 25, 0, 59, tzinfo=UTC),
         [datetime(2026, 10, 26, 1, 59, tzinfo=UTC), datetime(2026, 10, 27, 1, 59, tzinfo=UTC)]),
        # 02:30 does not exist when the clocks go forward: it runs once, as the gap ends
        ("30 2 * * *", "America/New_York", datetime(2026, 3, 7, 12, 0, tzinfo=UTC),
         [datetime(2026, 3, 8, 7, 0, tzinfo=UTC), datetime(2026, 3, 9, 6, 30, tzinfo=UTC)]),
        # a wildcard hour runs by the clock: every half hour, the repeated hour's included
        ("0,30 * * * *", "Europe/London", datetime(2026, 10, 24, 23, 50, tzinfo=UTC),
         [datetime(2026, 10, 25, 0, 0, tzinfo=UTC), datetime(2026, 10, 25, 0, 30, tzinfo=UTC)]),
        ("0,30 * * * *", "Europe/London", datetime(2026, 10, 25, 0, 50, tzinfo=UTC),
         [datetime(2026, 10, 25, 1, 0, tzinfo=UTC), datetime(2026, 10, 25, 1, 30, tzinfo=UTC)]),
    ],
)  # fmt: skip
def test_a_wall_clock_time_that_happens_twice_fires_once(report, cron, zone, after, expected):
    schedule = hourly("at night", cron=cron, timezone=zone)

    assert upcoming(schedule, 2, now=after) == expected


def test_a_sweep_inside_the_repeated_hour_does_not_fire_a_daily_schedule_again(report):
    # given a daily 01:30 London schedule that fired at the first 01:30 (BST) on the night the clocks go back
    schedule = hourly("nightly", cron="30 1 * * *", timezone="Europe/London")
    first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    due_now(schedule, first)
    fire(schedule.pk, first + timedelta(seconds=2))

    # when the sweep runs at the second 01:30 (GMT)
    fire(schedule.pk, datetime(2026, 10, 25, 1, 30, 2, tzinfo=UTC))

    # then it started once, and next fires the following night
    schedule.refresh_from_db()
    assert WorkflowInstance.objects.count() == 1
    assert schedule.next_fire_at == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)


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


def test_a_fire_whose_input_writes_who_approved_is_recorded_failed_saying_so_and_the_others_fire(users):
    # given two due expense schedules; one's input holds the manager's decision (saved before the rule, or the
    # workflow named a human step like one of its keys since)
    expense = {"employee": "Sam", "amount": "42.00", "category": "meals", "description": "Lunch"}
    forged = hourly("forged expenses", workflow_name="expense_approval", input=expense, owner=users.staff)
    honest = hourly("honest expenses", workflow_name="expense_approval", input=expense, owner=users.staff)
    Schedule.objects.filter(pk=forged.pk).update(input={**expense, "manager_approval": {"decision": "approve"}})
    now = timezone.now()
    due_now(forged, now - timedelta(seconds=5))
    due_now(honest, now - timedelta(seconds=4))

    # when the sweep runs
    engine.sweep(now=now)

    # then the forged fire is failed with the reason and started nothing, audited like any failed fire; the other
    # started its expense
    fire_row = ScheduleFire.objects.get(schedule=forged)
    assert (fire_row.outcome, fire_row.instance) == (FireOutcome.FAILED, None)
    assert fire_row.error == (
        "InputSetsRecords: manager_approval: This is where the workflow records what its step 'manager_approval' "
        "did; a start's input cannot set it."
    )
    assert AuditEvent.objects.filter(chain="automation", action="schedule.failed", subject_id=forged.pk).exists()
    assert ScheduleFire.objects.get(schedule=honest).outcome == FireOutcome.STARTED
    assert WorkflowInstance.objects.count() == 1
    assert "manager_approval" not in WorkflowInstance.objects.get().data


def test_a_schedule_input_writing_who_approved_is_refused_at_save_and_another_workflows_step_is_not():
    # given an expense's input
    expense = {"employee": "Sam", "amount": "42.00", "category": "meals", "description": "Lunch"}

    # when it holds the team's decision, or a key named like another workflow's human step
    with pytest.raises(ScheduleInvalid) as refused:
        hourly("forged", workflow_name="expense_approval", input={**expense, "team_approval": "approve"})
    saved = hourly("other", workflow_name="expense_approval", input={**expense, "approve": "a key of its own"})

    # then the first is refused naming the key, on the input field; the second is saved
    assert refused.value.errors == {
        "input": [
            "team_approval: This is where the workflow records what its step 'team_approval' did; a schedule's "
            "input cannot set it."
        ]
    }
    assert list(Schedule.objects.values_list("pk", flat=True)) == [saved.pk]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "0 9 * *"}, "cron"),
        # croniter's R is a random value drawn anew at each computation: "R 9 * * *" fired again each time the next
        # time drawn fell later in the same hour
        ({"cron": "R 9 * * *"}, "cron"),
        ({"cron": "r(0-30) 9 * * *"}, "cron"),
        ({"cron": "", "interval_seconds": 5}, "interval_seconds"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        # real zone files that name no place: the server's own zone (its meaning moves with the server) and the
        # placeholder zone "-00"
        ({"timezone": "localtime"}, "timezone"),
        ({"timezone": "Factory"}, "timezone"),
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
    assert (retired.retired, retired.next_fire_at) == (True, None)


def test_an_admins_pause_of_a_declared_schedule_outlives_its_retirement(register_workflow):
    """A sync in a process missing the workflow's package retires its schedules; the next sync brings them back.
    A retirement disabled the row and a declaration again enabled it: a schedule an admin had paused (a report
    going to a customer who left) started firing again, against the documented rule that an admin's pause stands."""
    # given two declared schedules, one paused by an admin
    register_workflow(
        report_flow(
            Declared("paused one", cron="0 2 * * *", input={"region": "eu"}),
            Declared("running one", cron="0 3 * * *", input={"region": "eu"}),
        )
    )
    sync_declared()
    paused = Schedule.objects.get(name="paused one")
    schedules.schedule_toggle(paused.pk, enabled=False, actor=ADMIN)

    # when both are retired, then declared again
    register_workflow(report_flow(version=2))
    assert sync_declared()["retired"] == 2
    assert not Schedule.objects.filter(next_fire_at__isnull=False).exists()
    register_workflow(
        report_flow(
            Declared("paused one", cron="0 2 * * *", input={"region": "eu"}),
            Declared("running one", cron="0 3 * * *", input={"region": "eu"}),
            version=3,
        )
    )
    sync_declared()

    # then the paused one is still paused, the other fires again
    paused, running = Schedule.objects.get(name="paused one"), Schedule.objects.get(name="running one")
    assert (paused.retired, paused.enabled, paused.next_fire_at) == (False, False, None)
    assert (running.retired, running.enabled) == (False, True)
    assert running.next_fire_at is not None


def test_a_declared_schedule_is_checked_when_built():
    with pytest.raises(DefinitionError, match="exactly one"):
        Declared("both", cron="0 * * * *", every=timedelta(hours=1))
    with pytest.raises(DefinitionError, match="time zone"):
        Declared("zone", cron="0 * * * *", timezone="Nowhere/Land")
    with pytest.raises(DefinitionError, match="never fires"):
        Declared("leap", cron="0 0 30 2 *")  # no 30 February: the first sweep's sync failed, and every schedule with it
    with pytest.raises(DefinitionError, match="JSON"):
        Declared("money", cron="0 * * * *", input={"amount": Decimal("42.00")})  # not JSON: the sync failed on it
    with pytest.raises(DefinitionError, match="JSON"):
        Declared("nul", cron="0 * * * *", input={"region": "e\x00u"})
    with pytest.raises(DefinitionError, match="missed"):
        Declared("policy", cron="0 * * * *", missed="always")  # type: ignore[arg-type]


def test_a_declared_schedule_that_cannot_be_stored_stops_no_other_schedule(register_workflow, monkeypatch):
    """The sync runs before every sweep's fires until it succeeds: one declared schedule it could not save (an input
    changed after the check, a Decimal in it) made it raise each time, and no schedule, declared or an admin's,
    fired at all."""
    # given an admin's schedule due now, and a workflow declaring a good schedule and one whose input went bad
    register_workflow(report_flow())
    admins = hourly("admins hourly")
    now = timezone.now()
    due_now(admins, now - timedelta(seconds=5))
    spoiled: dict = {"region": "eu"}
    bad = Declared("spoiled", cron="0 2 * * *", input=spoiled)
    spoiled["amount"] = Decimal("42.00")
    register_workflow(report_flow(Declared("eu nightly", cron="0 2 * * *", input={"region": "eu"}), bad, version=2))
    monkeypatch.setitem(schedules._synced, "done", False)

    # when the sweep runs (its first in this process: it syncs first)
    engine.sweep(now=now)

    # then the admin's schedule fired and the good declared one is in the table; the bad one is not
    assert ScheduleFire.objects.filter(schedule=admins, outcome=FireOutcome.STARTED).count() == 1
    assert Schedule.objects.filter(name="eu nightly", source=ScheduleSource.CODE).exists()
    assert not Schedule.objects.filter(name="spoiled").exists()


@pytest.mark.parametrize("zone", ["US/Pacific-New", "localtime", "Factory"])
def test_a_schedule_whose_time_zone_is_gone_is_paused_with_the_reason_and_the_others_fire(report, zone):
    """A tzdata upgrade removes a zone (US/Pacific-New went in 2020b): the schedule's times can no longer be
    computed. It raised in every sweep without a trace on its page, stayed due at the head of the queue, and its
    page answered 500. A zone stored before Baton refused the zone files that name no place (``localtime``, the
    server's own; ``Factory``) is handled the same way."""
    # given a schedule in a zone this tzdata no longer has (or one that is no place), and another one, both due
    gone = hourly("pacific new")
    other = hourly("other")
    now = timezone.now()
    due_now(gone, now - timedelta(seconds=5))
    due_now(other, now - timedelta(seconds=4))
    Schedule.objects.filter(pk=gone.pk).update(timezone=zone)

    # when the sweep runs
    engine.sweep(now=now)

    # then the other fired; the broken one has a failed fire saying why, and is paused (not due every pass)
    assert ScheduleFire.objects.get(schedule=other).outcome == FireOutcome.STARTED
    fire_row = ScheduleFire.objects.get(schedule=gone)
    gone.refresh_from_db()
    assert fire_row.outcome == FireOutcome.FAILED
    assert zone in fire_row.error
    assert (gone.enabled, gone.next_fire_at) == (False, None)
    assert AuditEvent.objects.filter(chain="automation", action="schedule.paused", subject_id=gone.pk).exists()

    # and resuming it says why it cannot be
    with pytest.raises(ScheduleInvalid, match="time zone"):
        schedules.schedule_toggle(gone.pk, enabled=True, actor=ADMIN)


def test_a_schedule_input_with_an_object_for_a_text_field_is_refused_at_save():
    # given: the start form's "employee" is one text; Django's field would store str({...}) at every fire
    from automation.schedules import check
    from tests.factories import ExpenseInputFactory

    data = {**ExpenseInputFactory(), "employee": {"name": "Sam"}}

    # when
    errors = check("expense_approval", "", 3600, "UTC", data)

    # then
    assert any(message.startswith("employee:") for message in errors["input"]), errors


class TestAFailingScheduleIsToldNotSilent:
    """A schedule that cannot start what it schedules (its workflow removed from the code, its input refused by the
    start form since changed) records a failed fire and goes on, at every fire: nobody was told, so an every-minute
    schedule failed 1,440 times a day unseen. Now the first failure of a run of them is told, once."""

    @staticmethod
    def break_input(schedule: Schedule, owner: object) -> None:
        Schedule.objects.filter(pk=schedule.pk).update(input={"region": "mars"}, owner=owner)

    def test_its_owner_is_told_at_the_first_failure_not_at_every_one(self, report, users):
        schedule = hourly()
        self.break_input(schedule, users.admin)
        now = timezone.now()
        due_now(schedule, now - timedelta(seconds=5))

        engine.sweep(now=now)
        schedule.refresh_from_db()
        engine.sweep(now=schedule.next_fire_at)

        told = Notification.objects.filter(kind="schedule.failed")
        assert ScheduleFire.objects.filter(schedule=schedule, outcome=FireOutcome.FAILED).count() == 2
        assert [(n.user_id, n.url) for n in told] == [(users.admin.pk, f"/automation/schedules/{schedule.pk}/")]
        assert "hourly report" in told.get().message

    def test_a_failure_after_a_start_is_told_again(self, report, users):
        schedule = hourly()
        Schedule.objects.filter(pk=schedule.pk).update(owner=users.admin)
        now = timezone.now()
        due_now(schedule, now - timedelta(seconds=5))
        engine.sweep(now=now)  # starts
        self.break_input(schedule, users.admin)
        schedule.refresh_from_db()

        engine.sweep(now=schedule.next_fire_at)

        assert Notification.objects.filter(kind="schedule.failed", user=users.admin).count() == 1

    @pytest.mark.parametrize("left", ["deactivated", "no longer an admin"])
    def test_when_its_owner_has_left_every_admin_is_told(self, report, users, left):
        owner = SuperUserFactory(username="leaver")
        users.manager.user_permissions.add(Permission.objects.get(codename="manage_automation"))
        schedule = hourly()
        self.break_input(schedule, owner)
        if left == "deactivated":
            owner.is_active = False
        else:
            owner.is_superuser = False
        owner.save()
        now = timezone.now()
        due_now(schedule, now - timedelta(seconds=5))

        engine.sweep(now=now)

        told = Notification.objects.filter(kind="schedule.failed")
        assert sorted(told.values_list("user__username", flat=True)) == ["admin", "manager"]

    def test_a_schedule_paused_because_its_times_cannot_be_computed_is_told(self, report, users):
        schedule = hourly()
        Schedule.objects.filter(pk=schedule.pk).update(owner=users.admin, timezone="US/Pacific-New")
        now = timezone.now()
        due_now(schedule, now - timedelta(seconds=5))

        engine.sweep(now=now)

        schedule.refresh_from_db()
        assert schedule.enabled is False
        assert Notification.objects.filter(kind="schedule.failed", user=users.admin).count() == 1


class TestAChangeThatKeepsTheRecurrenceKeepsTheRunsDue:
    """A change recomputed the next time from now whatever it changed: a schedule due when its input or name was
    changed (the sweep not yet there, or the beat down for hours with runs to catch up) lost those runs without a
    fire, a skip or a word. So did a deploy that changed a declared schedule's input: its sync runs on ``migrate``,
    while the beat is down."""

    def test_changing_the_input_of_a_due_schedule_fires_it_with_the_new_input(self, report):
        # given an hourly schedule due five seconds ago, not yet fired
        schedule = hourly()
        now = timezone.now()
        due = now - timedelta(seconds=5)
        due_now(schedule, due)
        schedule.refresh_from_db()

        # when an admin changes its input, then the sweep runs
        schedule.input = {"region": "us"}
        schedule_save(schedule, actor=ADMIN, now=now)
        engine.sweep(now=now)

        # then it fired for its due time, with the new input
        fire_row = ScheduleFire.objects.get(schedule=schedule)
        assert (fire_row.outcome, fire_row.fire_time) == (FireOutcome.STARTED, due)
        assert fire_row.instance.data["region"] == "us"

    def test_renaming_a_schedule_with_runs_missed_still_catches_them_up(self, report):
        # given an hourly schedule whose last five hours passed while the beat was down
        schedule = hourly()
        now = datetime(2026, 11, 30, 10, 30, tzinfo=UTC)
        due_now(schedule, datetime(2026, 11, 30, 6, 0, tzinfo=UTC))
        schedule.refresh_from_db()

        # when it is renamed, then the sweep runs again
        schedule.name = "hourly report (EU)"
        schedule_save(schedule, actor=ADMIN, now=now)
        engine.sweep(now=now)

        # then one start stands for the five missed runs
        fire_row = ScheduleFire.objects.get(schedule=schedule)
        assert (fire_row.outcome, fire_row.covers) == (FireOutcome.STARTED, 5)

    def test_changing_the_recurrence_fires_from_the_next_time_after_the_change(self, report):
        schedule = hourly()
        now = datetime(2026, 11, 30, 10, 30, tzinfo=UTC)
        due_now(schedule, datetime(2026, 11, 30, 6, 0, tzinfo=UTC))
        schedule.refresh_from_db()

        schedule.cron = "45 * * * *"
        schedule_save(schedule, actor=ADMIN, now=now)

        schedule.refresh_from_db()
        assert schedule.next_fire_at == datetime(2026, 11, 30, 10, 45, tzinfo=UTC)

    def test_a_deploy_that_changes_a_declared_schedules_input_keeps_the_run_missed_meanwhile(self, register_workflow):
        # given a declared nightly schedule due at 02:00, and a deploy whose migrate runs at 02:05 (beat down)
        register_workflow(report_flow(Declared("eu nightly", cron="0 2 * * *", input={"region": "eu"})))
        sync_declared(now=datetime(2026, 11, 29, 12, 0, tzinfo=UTC))
        register_workflow(report_flow(Declared("eu nightly", cron="0 2 * * *", input={"region": "us"}), version=2))

        assert sync_declared(now=datetime(2026, 11, 30, 2, 5, tzinfo=UTC))["changed"] == 1
        engine.sweep(now=datetime(2026, 11, 30, 2, 6, tzinfo=UTC))

        # then the 02:00 run is caught up, with the new input
        fire_row = ScheduleFire.objects.get(schedule__name="eu nightly")
        assert (fire_row.outcome, fire_row.fire_time) == (FireOutcome.STARTED, datetime(2026, 11, 30, 2, 0, tzinfo=UTC))
        assert fire_row.instance.data["region"] == "us"


def other_flow(*schedules: Declared) -> Workflow:
    return Workflow(name="weekly_digest", version=1, steps=[Task("build", build_report)], schedules=list(schedules))


class TestADeclaredScheduleThatCannotTakeEffect:
    """A schedule declared in code that the sync could not apply was only logged (a name an admin's schedule had) or
    applied by chance (the last of two declarations of one name won), or applied and then failed at every fire
    (an input its start form refuses): the author believed it ran. Each is now left out of the sync, the others
    synced, and said on the schedules list and the schedule's page (and by ``manage.py check``, on ``migrate``)."""

    def test_a_name_an_admins_schedule_has_is_left_out_and_said(self, register_workflow):
        # given an admin's schedule, and a workflow declaring one of that name beside a good one
        register_workflow(report_flow())
        admins = hourly("eu nightly")
        register_workflow(
            report_flow(
                Declared("eu nightly", cron="0 2 * * *", input={"region": "eu"}),
                Declared("us nightly", cron="0 7 * * *", input={"region": "us"}),
                version=2,
            )
        )

        # when synced
        counts = sync_declared()

        # then the good one is in the table, the admin's is as it was, and the clash is said
        assert Schedule.objects.filter(name="us nightly", source=ScheduleSource.CODE).exists()
        admins_now = Schedule.objects.get(name="eu nightly")
        assert (admins_now.pk, admins_now.source, admins_now.cron) == (admins.pk, ScheduleSource.ADMIN, admins.cron)
        assert counts["left_out"] == 1
        [left] = schedules.declared_left_out()
        assert left.name == "eu nightly"
        assert left.schedule_id == admins.pk
        assert "nightly_report" in left.declared_by[0]
        assert "an admin's schedule has this name" in left.reason

    def test_a_name_declared_twice_is_applied_to_neither_and_said(self, register_workflow):
        # given a name declared by two workflows (which one runs was the one registered last, silently)
        register_workflow(report_flow(Declared("nightly", cron="0 2 * * *", input={"region": "eu"})))
        register_workflow(other_flow(Declared("nightly", cron="0 5 * * *"), Declared("digest", cron="0 6 * * 1")))

        # when synced
        counts = sync_declared()

        # then neither is in the table, the other one is, and the clash names both workflows
        assert not Schedule.objects.filter(name="nightly").exists()
        assert Schedule.objects.filter(name="digest").exists()
        assert counts["left_out"] == 1
        [left] = schedules.declared_left_out()
        assert (left.name, left.schedule_id) == ("nightly", None)
        assert len(left.declared_by) == 2
        assert "declared 2 times" in left.reason

    def test_a_name_declared_twice_keeps_the_schedule_synced_before_as_it_was(self, register_workflow):
        # given a declared schedule in the table, then a second workflow declaring its name too
        register_workflow(report_flow(Declared("nightly", cron="0 2 * * *", input={"region": "eu"})))
        sync_declared()
        before = Schedule.objects.get(name="nightly")
        register_workflow(other_flow(Declared("nightly", cron="0 5 * * *")))

        # when synced again
        sync_declared()

        # then it is neither changed to the other's nor retired
        after = Schedule.objects.get(name="nightly")
        assert (after.cron, after.workflow_name, after.enabled, after.retired) == (
            before.cron,
            "nightly_report",
            True,
            False,
        )

    def test_an_input_its_start_form_refuses_is_left_out_and_said(self, register_workflow):
        # given a declared schedule whose input its workflow's start form refuses (no such region)
        register_workflow(report_flow(Declared("mars nightly", cron="0 2 * * *", input={"region": "mars"})))

        # when synced
        counts = sync_declared()

        # then it is not in the table (it would fail at every fire) and the form's reason is said
        assert not Schedule.objects.filter(name="mars nightly").exists()
        assert counts["left_out"] == 1
        [left] = schedules.declared_left_out()
        assert "region" in left.reason
        assert "mars" in left.reason

    def test_a_declared_change_its_start_form_refuses_keeps_the_last_good_one_and_says_so(self, register_workflow):
        # given a declared schedule synced with a good input, then a new version declaring an input the form refuses
        register_workflow(report_flow(Declared("nightly", cron="0 2 * * *", input={"region": "eu"})))
        sync_declared()
        register_workflow(report_flow(Declared("nightly", cron="0 2 * * *", input={"region": "mars"}), version=2))

        # when synced
        sync_declared()

        # then the table keeps what it had, and says the declaration is not applied
        schedule = Schedule.objects.get(name="nightly")
        assert schedule.input == {"region": "eu"}
        [left] = schedules.declared_left_out()
        assert left.schedule_id == schedule.pk
        assert "nightly_report v2" in left.declared_by[0]

    def test_a_valid_declaration_not_in_the_table_yet_is_said(self, register_workflow):
        # given a declared schedule the sync has not reached (migrate not run, or the sync failed)
        register_workflow(report_flow(Declared("eu nightly", cron="0 2 * * *", input={"region": "eu"})))

        # then it is said, until a sync puts it in the table
        [left] = schedules.declared_left_out()
        assert (left.kind, left.schedule_id) == ("not_synced", None)
        sync_declared()
        assert schedules.declared_left_out() == []

    def test_a_schedule_declared_only_on_an_older_version_is_said(self, register_workflow):
        # given a schedule added to version 1 while version 2 (declaring none) is the latest: only the latest's sync
        register_workflow(report_flow(Declared("eu nightly", cron="0 2 * * *", input={"region": "eu"})))
        register_workflow(report_flow(version=2))

        # when synced
        sync_declared()

        # then it is not in the table, and it is said, naming the version whose schedules count
        assert not Schedule.objects.filter(name="eu nightly").exists()
        [left] = schedules.declared_left_out()
        assert (left.name, left.kind, left.declared_by) == ("eu nightly", "old_version", ("nightly_report v1",))
        assert "v2" in left.reason

    def test_a_schedule_a_later_version_dropped_after_it_ran_is_retired_not_said(self, register_workflow):
        # given a schedule synced from version 1, dropped by version 2
        register_workflow(report_flow(Declared("eu nightly", cron="0 2 * * *", input={"region": "eu"})))
        sync_declared()
        register_workflow(report_flow(version=2))

        # when synced
        sync_declared()

        # then it is retired (on the list as such), not said as a declaration left out
        assert Schedule.objects.get(name="eu nightly").retired
        assert schedules.declared_left_out() == []

    def test_the_same_name_twice_in_one_workflow_is_a_definition_error(self):
        with pytest.raises(DefinitionError, match="used twice"):
            report_flow(Declared("nightly", cron="0 2 * * *"), Declared("nightly", cron="0 3 * * *"))

    def test_manage_py_check_warns_of_each_without_stopping(self, register_workflow):
        from django.core import checks

        # given a clash with an admin's schedule and a name declared twice
        register_workflow(report_flow())
        hourly("eu nightly")
        register_workflow(report_flow(Declared("eu nightly", cron="0 2 * * *", input={"region": "eu"}), version=2))
        register_workflow(other_flow(Declared("eu nightly", cron="0 5 * * *"), Declared("dup", cron="0 5 * * *")))
        register_workflow(
            Workflow(
                name="third", version=1, steps=[Task("b", build_report)], schedules=[Declared("dup", cron="0 1 * * *")]
            )
        )

        # when the checks run as migrate runs them (with the database)
        found = checks.run_checks(databases=["default"])

        # then each is a warning (migrate goes on, the other schedules synced), naming the schedule
        ours = [m for m in found if m.id and m.id.startswith("automation.")]
        assert {m.level for m in ours} == {checks.WARNING}
        assert sorted(m.msg.split("'")[1] for m in ours) == ["dup", "eu nightly"]


def test_migrate_with_a_declaration_that_cannot_run_warns_and_syncs_the_others(register_workflow):
    """``migrate`` runs the system checks first: the warning is printed and the migration and the sync go on (an
    error there would stop the deploy, and every other declared schedule with it)."""
    from io import StringIO

    from django.core.management import call_command

    # given an admin's schedule, and a workflow declaring one of its name beside a good one
    register_workflow(report_flow())
    hourly("eu nightly")
    register_workflow(
        report_flow(
            Declared("eu nightly", cron="0 2 * * *", input={"region": "eu"}),
            Declared("us nightly", cron="0 7 * * *", input={"region": "us"}),
            version=2,
        )
    )
    err = StringIO()

    # when migrate runs
    call_command("migrate", verbosity=0, skip_checks=False, stdout=StringIO(), stderr=err)

    # then it warned of the clash and synced the good one
    assert "automation.W002" in err.getvalue()
    assert "'eu nightly'" in err.getvalue()
    assert Schedule.objects.filter(name="us nightly", source=ScheduleSource.CODE).exists()
    assert Schedule.objects.get(name="eu nightly").source == ScheduleSource.ADMIN


def test_a_declared_input_holding_a_tuple_is_synced_once_not_changed_at_every_sync(register_workflow):
    """JSON has no tuple: the table gives a list back, which never equalled the declared tuple, so every migrate (and
    every process's first sweep) saved and audited the schedule as changed, and its page said it was not synced."""
    # given a declared input holding a tuple, synced once
    register_workflow(
        Workflow(
            name="weekly_digest",
            version=1,
            steps=[Task("build", build_report)],
            schedules=[Declared("digest", cron="0 6 * * 1", input={"regions": ("eu", "us")})],
        )
    )
    assert sync_declared()["created"] == 1

    # when synced again with nothing changed
    counts = sync_declared()

    # then nothing changed, nothing was audited, and nothing is said on the pages
    assert counts["changed"] == 0
    assert AuditEvent.objects.filter(action="schedule.changed").count() == 0
    assert schedules.declared_left_out() == []


def test_manage_py_check_without_the_database_warns_of_a_name_declared_twice(register_workflow):
    from django.core import checks

    register_workflow(report_flow(Declared("nightly", cron="0 2 * * *", input={"region": "eu"})))
    register_workflow(other_flow(Declared("nightly", cron="0 5 * * *")))

    found = [m for m in checks.run_checks() if m.id == "automation.W001"]

    assert [m.msg.split("'")[1] for m in found] == ["nightly"]


class BrokenForm(forms.Form):
    region = forms.CharField()

    def clean(self) -> dict:
        raise RuntimeError("the form's own bug")


def test_a_start_form_that_raises_on_a_declared_input_stops_no_other_and_is_said(register_workflow):
    # given a workflow whose start form raises on any input, declaring a schedule, beside another declaring a good one
    register_workflow(
        Workflow(
            name="weekly_digest",
            version=1,
            start_form=BrokenForm,
            steps=[Task("build", build_report)],
            schedules=[Declared("digest", cron="0 6 * * 1", input={"region": "eu"})],
        )
    )
    register_workflow(report_flow(Declared("eu nightly", cron="0 2 * * *", input={"region": "eu"})))

    # when synced
    sync_declared()

    # then the good one is in the table, the other is not, and the list says why
    assert Schedule.objects.filter(name="eu nightly").exists()
    assert not Schedule.objects.filter(name="digest").exists()
    [left] = schedules.declared_left_out()
    assert left.name == "digest"
    assert "the form's own bug" in left.reason


def test_a_declared_schedule_whose_input_writes_a_decision_is_left_out_and_said(register_workflow):
    # given a workflow declaring a schedule whose input holds its own human step's decision, beside a good one
    register_workflow(
        Workflow(
            name="approved_digest",
            version=1,
            steps=[Human("sign_off", candidate_groups=["approvers"]), Task("build", build_report)],
            schedules=[Declared("signed digest", cron="0 6 * * 1", input={"sign_off": {"decision": "approve"}})],
        )
    )
    register_workflow(report_flow(Declared("eu nightly", cron="0 2 * * *", input={"region": "eu"})))

    # when synced
    sync_declared()

    # then the good one is in the table, the other is not, and the list says why
    assert Schedule.objects.filter(name="eu nightly").exists()
    assert not Schedule.objects.filter(name="signed digest").exists()
    [left] = schedules.declared_left_out()
    assert left.name == "signed digest"
    assert "sign_off: This is where the workflow records what its step 'sign_off' did" in left.reason
