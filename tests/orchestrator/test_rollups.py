"""The roll-ups the sweep folds from the audit trail: they agree with the instances, never step over a late commit,
and cost the engine's hot path nothing.

Transactional tests: the pass settles on PostgreSQL snapshots, which only move when transactions end.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction
from django.db.models import Count

from orchestrator import rollups
from orchestrator.audit import Actor
from orchestrator.models import (
    InstanceState,
    InstanceStateCount,
    RollupCursor,
    WorkflowHourStats,
    WorkflowInstance,
    WorkflowVersionSeen,
)
from orchestrator.services.instances import instance_cancel, instance_pause, instance_start
from orchestrator.services.sweep import sweep
from tests.factories import ExpenseInputFactory, OrderInputFactory

pytestmark = pytest.mark.django_db(transaction=True)


def settle() -> int:
    """Two passes: the first looks (remembers the newest id and the snapshot), the second folds up to it."""
    return rollups.rollup_pass() + rollups.rollup_pass()


def counted_states() -> dict[tuple[str, int, str], int]:
    return {
        (r.workflow_name, r.workflow_version, r.state): r.count
        for r in InstanceStateCount.objects.all()
        if r.count != 0
    }


def true_states() -> dict[tuple[str, int, str], int]:
    rows = WorkflowInstance.objects.values("workflow_name", "workflow_version", "state").annotate(n=Count("id"))
    return {(r["workflow_name"], r["workflow_version"], r["state"]): r["n"] for r in rows}


def test_state_counts_and_hour_totals_agree_with_the_instances_after_every_kind_of_ending(users, run_steps):
    """Completed, compensated, failed, retried, waiting and cancelled instances: the counts by state equal a
    GROUP BY over the instances, and the hour's totals count each ending once."""
    # given
    done = instance_start("order_fulfilment", OrderInputFactory(fail_payment=1))
    compensated = instance_start("order_fulfilment", OrderInputFactory(fail_shipping=9))
    failed = instance_start("order_fulfilment", OrderInputFactory(fail_reserve=9))
    waiting = instance_start("expense_approval", ExpenseInputFactory(amount="20.00"))
    cancelled = instance_start("order_fulfilment", OrderInputFactory(amount="5000"))
    run_steps(advance=True)
    instance_cancel(cancelled.pk, actor=Actor.of(users.operator), reason="customer withdrew")

    # when
    settle()

    # then
    assert counted_states() == true_states()
    states = {i.pk: i.state for i in WorkflowInstance.objects.all()}
    assert states[done.pk] == InstanceState.COMPLETED
    assert states[compensated.pk] == InstanceState.COMPENSATED
    assert states[failed.pk] == InstanceState.FAILED
    assert states[waiting.pk] == InstanceState.WAITING
    hours = {r.workflow_name: r for r in WorkflowHourStats.objects.filter(span=rollups.SPAN_ALL)}
    order, expense = hours["order_fulfilment"], hours["expense_approval"]
    assert (order.started, order.completed, order.compensated, order.cancelled, order.failed) == (4, 1, 1, 1, 1)
    assert (expense.started, expense.completed) == (1, 0)
    assert order.step_retries >= 1  # the payment's first failed attempt
    assert sum(order.durations) == 1  # one completion, one duration
    assert "charge_payment" in order.step_durations
    assert sum(order.step_durations["charge_payment"]["buckets"]) >= 1


def test_a_pass_folds_each_event_once_and_a_second_sweep_skips_while_one_holds_the_cursor(run_steps):
    """Passes after the fold add nothing, and a pass that finds the cursor locked (a worker's start-up sweep beside
    beat's) folds nothing and returns at once."""
    # given
    instance_start("order_fulfilment", OrderInputFactory())
    run_steps()
    settle()
    before = counted_states()

    # when
    rollups.rollup_pass()
    rollups.rollup_pass()
    holder_ready, release = threading.Event(), threading.Event()

    def hold() -> None:
        with transaction.atomic():
            RollupCursor.objects.select_for_update().get(name=rollups.CURSOR)
            holder_ready.set()
            release.wait(10)
        connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    holder_ready.wait(10)
    instance_start("order_fulfilment", OrderInputFactory())
    skipped = rollups.rollup_pass() + rollups.rollup_pass()
    release.set()
    thread.join(10)

    # then
    assert skipped == 0
    assert before == counted_states()
    settle()
    assert counted_states() == true_states()


def test_an_event_whose_transaction_commits_late_is_folded_not_stepped_over(users, run_steps):
    """A pause holds its transaction open (its audit event has the lower id) while a start commits and the passes
    run: the start's later id is not folded past the open one; once the pause commits, the next passes count both."""
    # given
    existing = instance_start("order_fulfilment", OrderInputFactory(amount="5000"))
    run_steps()
    settle()
    inserted, release = threading.Event(), threading.Event()

    def slow_pause() -> None:
        with transaction.atomic():
            instance_pause(existing.pk, actor=Actor.of(users.operator), reason="held open")
            inserted.set()
            release.wait(20)
        connection.close()

    thread = threading.Thread(target=slow_pause)
    thread.start()
    assert inserted.wait(10)
    instance_start("order_fulfilment", OrderInputFactory(amount="5000"))

    # when
    settle()
    settle()
    while_open = WorkflowHourStats.objects.get(workflow_name="order_fulfilment", span=rollups.SPAN_ALL).started
    release.set()
    thread.join(10)
    settle()

    # then
    assert while_open == 1  # the committed later start waits behind the open pause rather than skip it
    assert WorkflowHourStats.objects.get(workflow_name="order_fulfilment", span=rollups.SPAN_ALL).started == 2
    assert counted_states() == true_states()
    assert counted_states()[("order_fulfilment", 1, "paused")] == 1


def test_the_sweep_runs_the_pass_and_records_when_it_ran(run_steps):
    """The sweep folds the trail and notes its time; a registered version is recorded as seen once."""
    # given
    instance_start("order_fulfilment", OrderInputFactory())
    run_steps()

    rollups._recorded.clear()  # a process that has not recorded its registry yet

    # when
    sweep()
    report = sweep()

    # then
    assert report.errors == 0
    assert report.rolled_up > 0
    assert rollups.sweep_age() is not None
    assert rollups.sweep_age() < 60
    seen = WorkflowVersionSeen.objects.filter(workflow_name="order_fulfilment", workflow_version=1)
    assert seen.count() == 1
    first = seen.get().first_seen_at
    rollups._recorded.clear()  # another process starting later
    rollups.record_versions(first + timedelta(days=1))
    assert seen.get().first_seen_at == first


def test_the_hot_path_pins_are_unchanged_by_the_roll_ups(django_assert_max_num_queries, run_steps):
    """Starting an instance still writes only what it did: the roll-ups add no statement to it (they are the
    sweep's). tests/orchestrator/test_rows.py pins the exact counts; this checks that nothing here wrote tables."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory())

    # then
    assert not InstanceStateCount.objects.exists()
    assert not WorkflowHourStats.objects.exists()
    assert WorkflowInstance.objects.filter(pk=instance.pk).exists()


class TestFold:
    """The pure fold of events into deltas."""

    at = datetime(2026, 11, 29, 10, 15, tzinfo=UTC)

    def event(self, action: str, subject_type: str = "instance", **extra):
        base = {
            "id": 1,
            "action": action,
            "subject_type": subject_type,
            "subject_id": 7,
            "from_state": "",
            "to_state": "",
            "occurred_at": self.at,
            "instance__workflow_name": "flow",
            "instance__workflow_version": 2,
            "instance__created_at": self.at - timedelta(seconds=3),
        }
        return base | extra

    def test_state_changes_move_one_count_down_and_one_up(self):
        # when
        result = rollups.fold(
            [
                self.event("instance.started", to_state="running"),
                self.event("instance.waiting", from_state="running", to_state="waiting"),
                self.event("instance.completed", from_state="waiting", to_state="completed"),
            ],
            {},
        )

        # then
        assert {k: v for k, v in result.states.items() if v} == {("flow", 2, "completed"): 1}
        hour = result.hours[("flow", datetime(2026, 11, 29, 10, tzinfo=UTC))]
        assert (hour["started"], hour["completed"]) == (1, 1)
        assert hour["durations"][rollups.bucket_index(3.0)] == 1
        assert hour["duration_sum"] == pytest.approx(3.0)

    def test_an_event_of_no_instance_and_a_same_state_event_count_nothing(self):
        # when
        result = rollups.fold(
            [
                self.event("account.changed", instance__workflow_name=None),
                self.event("instance.paused", from_state="running", to_state="running"),
            ],
            {},
        )

        # then
        assert not any(result.states.values())

    def test_a_step_attempt_is_timed_from_its_start_and_a_retry_counted(self):
        # given
        steps = {7: {"id": 7, "name": "charge", "kind": "task", "started_at": self.at - timedelta(seconds=2)}}

        # when
        result = rollups.fold(
            [
                self.event("step.failed", "step", from_state="running", to_state="failed"),
                self.event("step.succeeded", "step", from_state="running", to_state="succeeded"),
            ],
            steps,
        )

        # then
        hour = result.hours[("flow", datetime(2026, 11, 29, 10, tzinfo=UTC))]
        assert hour["step_retries"] == 1
        timing = hour["step_durations"]["charge"]
        assert sum(timing["buckets"]) == 1
        assert timing["sum"] == pytest.approx(2.0)

    def test_a_step_restarted_after_its_event_or_not_run_by_a_worker_is_not_timed(self):
        # given
        later = {7: {"id": 7, "name": "charge", "kind": "task", "started_at": self.at + timedelta(seconds=5)}}
        human = {7: {"id": 7, "name": "approve", "kind": "human", "started_at": self.at - timedelta(hours=1)}}

        # when
        restarted = rollups.fold([self.event("step.dead", "step", from_state="running", to_state="dead")], later)
        person = rollups.fold([self.event("step.succeeded", "step", from_state="running", to_state="succeeded")], human)

        # then
        assert not next(iter(restarted.hours.values()))["step_durations"]
        assert not next(iter(person.hours.values()))["step_durations"]


class TestQuantile:
    def test_interpolates_inside_the_bucket_like_histogram_quantile(self):
        # given: ten observations in (1, 2.5]
        histogram = rollups.empty_histogram()
        histogram[rollups.bucket_index(2.0)] = 10

        # then
        assert rollups.quantile(histogram, 0.5) == pytest.approx(1.75)
        assert rollups.quantile(histogram, 1.0) == pytest.approx(2.5)

    def test_no_observations_is_none_and_beyond_the_last_bound_is_that_bound(self):
        # given
        beyond = rollups.empty_histogram()
        beyond[-1] = 3

        # then
        assert rollups.quantile(rollups.empty_histogram(), 0.95) is None
        assert rollups.quantile(beyond, 0.5) == rollups.DURATION_BUCKETS[-1]

    def test_a_stored_histogram_shorter_than_the_bounds_adds_up(self):
        assert rollups.add_histograms([1, 2], [1, 1, 1]) == [2, 3, 1]
