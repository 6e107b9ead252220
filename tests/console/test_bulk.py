"""Bulk actions (console/services.py): the dry run lists, the confirmation acts on exactly that list, the outcome
is told honestly, and the whole is one audited operation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from console.models import BulkItemState, BulkJob, BulkJobState
from console.selectors import InstanceFilter, bulk_progress, bulk_sample
from console.services import BulkError, BulkNotFound, bulk_confirm, bulk_dry_run, bulk_jobs_stale, bulk_stop, bulk_work
from orchestrator.audit import Actor
from orchestrator.dsl import Retry, StepContext, Task, Workflow
from orchestrator.inputs import REASON_MAX
from orchestrator.models import AuditEvent, InstanceState, WorkflowInstance
from orchestrator.services.instances import instance_retry, instance_start

pytestmark = pytest.mark.django_db

DOWN = {"on": True}


def sync(ctx: StepContext) -> dict:
    if DOWN["on"] or ctx.data.get("always_fail"):
        raise ConnectionError("ledger is down")
    return {"synced": True}


@pytest.fixture
def flow(register_workflow):
    DOWN["on"] = True
    yield register_workflow(Workflow("bulk_flow", 1, [Task("sync", sync, retry=Retry(max_attempts=1))]))
    DOWN["on"] = False


def failed_instances(run_steps, n: int, **data) -> list[WorkflowInstance]:
    made = [instance_start("bulk_flow", {"n": i, **data}) for i in range(n)]
    run_steps()
    return made


def test_confirm_acts_on_exactly_the_dry_runs_instances_not_on_later_matches(flow, users, run_steps):
    """Three instances failed at the dry run; two more fail before the confirmation: only the three are retried,
    and the outcome counts say what became of them."""
    # given
    counted = failed_instances(run_steps, 3)
    job = bulk_dry_run(users.operator, "retry", InstanceFilter(workflow="bulk_flow", state="failed"))
    later = failed_instances(run_steps, 2)
    DOWN["on"] = False

    # when
    bulk_confirm(job.pk, users.operator, reason="ledger is back")
    while bulk_work(job.pk):
        pass
    run_steps()

    # then
    job.refresh_from_db()
    assert job.total == 3
    assert job.state == BulkJobState.DONE
    states = dict(WorkflowInstance.objects.filter(workflow_name="bulk_flow").values_list("pk", "state"))
    assert {states[i.pk] for i in counted} == {InstanceState.COMPLETED}
    assert {states[i.pk] for i in later} == {InstanceState.FAILED}
    progress = bulk_progress(job)
    assert (progress.done, progress.completed, progress.failed_again, progress.percent) == (3, 3, 0, 100)
    started = AuditEvent.objects.get(chain="operations", action="bulk.started", subject_id=job.pk)
    assert started.reason == "ledger is back"
    assert started.payload["instances"] == [i.pk for i in counted]
    assert started.actor_label == "user:operator"
    retried = AuditEvent.objects.filter(action="instance.retried", instance__in=counted)
    assert {e.reason for e in retried} == {f"ledger is back (bulk retry #{job.pk})"}


def test_the_outcome_tells_failed_again_and_skipped_with_why(flow, users, run_steps):
    # given
    good, bad, taken = failed_instances(run_steps, 1) + failed_instances(run_steps, 2, always_fail=True)
    job = bulk_dry_run(users.operator, "retry", InstanceFilter(workflow="bulk_flow"))
    DOWN["on"] = False
    instance_retry(taken.pk, actor=Actor("user:someone"), reason="by hand first")

    # when
    bulk_confirm(job.pk, users.operator, reason="retry all")
    bulk_work(job.pk)
    run_steps()

    # then
    progress = bulk_progress(job)
    assert (progress.done, progress.skipped, progress.completed, progress.failed_again) == (2, 1, 1, 1)
    assert progress.skipped_why == [("Only failed instances can be retried; this one is running.", 1)]
    assert [item.instance_id for item in bulk_sample(job)] == [good.pk, bad.pk, taken.pk]


def test_a_dry_run_is_confirmed_once_by_whoever_ran_it_with_a_reason(flow, users, run_steps):
    # given
    failed_instances(run_steps, 1)
    job = bulk_dry_run(users.operator, "cancel", InstanceFilter(workflow="bulk_flow"))

    # when / then
    with pytest.raises(BulkNotFound):
        bulk_confirm(job.pk, users.admin, reason="not mine")
    with pytest.raises(ValidationError, match="reason"):
        bulk_confirm(job.pk, users.operator, reason=" ")
    bulk_confirm(job.pk, users.operator, reason="obsolete")
    with pytest.raises(BulkError, match="already started"):
        bulk_confirm(job.pk, users.operator, reason="again")


def test_an_old_dry_run_must_be_run_again(flow, users, run_steps):
    failed_instances(run_steps, 1)
    job = bulk_dry_run(users.operator, "retry", InstanceFilter())
    with pytest.raises(BulkError, match="run it again"):
        bulk_confirm(job.pk, users.operator, reason="late", now=timezone.now() + timedelta(hours=1))


def test_a_dry_run_with_no_match_or_an_unknown_action_is_refused(flow, users):
    with pytest.raises(ValidationError, match="No instance that can be retried"):
        bulk_dry_run(users.operator, "retry", InstanceFilter(workflow="bulk_flow"))
    with pytest.raises(ValidationError, match="Choose one of"):
        bulk_dry_run(users.operator, "explode", InstanceFilter())
    assert not BulkJob.objects.exists()


def test_stop_skips_what_is_left_and_keeps_what_was_done(flow, users, run_steps):
    # given
    failed_instances(run_steps, 4)
    job = bulk_dry_run(users.operator, "cancel", InstanceFilter(workflow="bulk_flow"))
    bulk_confirm(job.pk, users.operator, reason="cleanup")
    bulk_work(job.pk, batch=1)

    # when
    left = bulk_stop(job.pk, users.operator, reason="wrong filter")

    # then
    job.refresh_from_db()
    assert (left, job.state) == (3, BulkJobState.STOPPED)
    assert job.items.filter(state=BulkItemState.DONE).count() == 1
    assert bulk_work(job.pk) == 0


def test_a_job_stopped_before_any_worker_took_it_is_audited_as_stopped_from_queued(flow, users, run_steps):
    """The audit trail records the state a job left: one stopped while still queued (no worker had taken it) was
    recorded as stopped from "running", a state it never had."""
    # given: a confirmed job no worker has taken yet
    failed_instances(run_steps, 2)
    job = bulk_dry_run(users.operator, "cancel", InstanceFilter(workflow="bulk_flow"))
    bulk_confirm(job.pk, users.operator, reason="cleanup")

    # when
    bulk_stop(job.pk, users.operator, reason="wrong filter")

    # then
    event = AuditEvent.objects.get(chain="operations", action="bulk.stopped", subject_id=job.pk)
    assert (event.from_state, event.to_state) == (BulkJobState.QUEUED, BulkJobState.STOPPED)


def test_a_resume_time_posted_with_a_bulk_cancel_is_not_recorded_as_part_of_it(flow, users, run_steps):
    """Only a pause has a planned end. A cancel confirmed with an ``until`` (a tampered form) stored it on the job
    and in its audit event, and the job's page then said its instances would resume."""
    # given
    failed_instances(run_steps, 1)
    job = bulk_dry_run(users.operator, "cancel", InstanceFilter(workflow="bulk_flow"))

    # when
    bulk_confirm(job.pk, users.operator, reason="cleanup", until=timezone.now() + timedelta(days=1))

    # then
    job.refresh_from_db()
    assert job.until is None
    assert AuditEvent.objects.get(action="bulk.started", subject_id=job.pk).payload["until"] is None


def test_a_job_nobody_works_is_found_stale(flow, users, run_steps):
    # given
    failed_instances(run_steps, 1)
    job = bulk_dry_run(users.operator, "cancel", InstanceFilter())
    bulk_confirm(job.pk, users.operator, reason="x")

    # then
    assert bulk_jobs_stale() == []
    assert bulk_jobs_stale(timezone.now() + timedelta(minutes=5)) == [job.pk]


def test_a_bulk_pause_until_a_time_pauses_each_with_that_end(flow, users):
    # given
    instances = [instance_start("bulk_flow", {}) for _ in range(2)]
    until = timezone.now() + timedelta(hours=2)
    job = bulk_dry_run(users.operator, "pause", InstanceFilter(workflow="bulk_flow"))

    # when
    bulk_confirm(job.pk, users.operator, reason="maintenance", until=until)
    bulk_work(job.pk)

    # then
    paused = WorkflowInstance.objects.filter(pk__in=[i.pk for i in instances])
    assert {(i.state, i.paused_until) for i in paused} == {(InstanceState.PAUSED, until)}


@pytest.mark.parametrize("action", ["retry", "cancel"])
def test_a_reason_of_the_full_length_allowed_still_acts_on_every_instance(flow, users, run_steps, action):
    """The job's reason plus its "(bulk retry #n)" label went past the reason limit: every item was skipped."""
    # given: the longest reason the confirmation accepts
    failed_instances(run_steps, 2)
    job = bulk_dry_run(users.operator, action, InstanceFilter(workflow="bulk_flow"))
    reason = "x" * REASON_MAX
    bulk_confirm(job.pk, users.operator, reason=reason)

    # when
    bulk_work(job.pk)

    # then: both acted on; each instance's event names the job within the limit; the whole reason is on the job's
    assert job.items.filter(state=BulkItemState.DONE).count() == 2, list(job.items.values_list("detail", flat=True))
    events = AuditEvent.objects.filter(
        instance__workflow_name="bulk_flow", request_meta__bulk_job=job.pk, action__startswith="instance."
    )
    assert events.count() == 2
    assert all(len(e.reason) <= REASON_MAX and e.reason.endswith(f"(bulk {action} #{job.pk})") for e in events)
    assert AuditEvent.objects.get(action="bulk.started", subject_id=job.pk).reason == reason


def test_a_bulk_resume_skips_an_instance_whose_definition_is_gone_and_resumes_the_rest(
    register_workflow, users, run_steps
):
    # given: two paused instances of two workflows; one workflow's code is then removed
    from orchestrator import registry
    from orchestrator.services.instances import instance_pause

    register_workflow(Workflow("bulk_keep", 1, [Task("sync", sync)]))
    gone = register_workflow(Workflow("bulk_gone", 1, [Task("sync", sync)]))
    kept = instance_start("bulk_keep", {})
    lost = instance_start("bulk_gone", {})
    for instance in (kept, lost):
        instance_pause(instance.pk, actor=Actor("user:operator"), reason="hold")
    job = bulk_dry_run(users.operator, "resume", InstanceFilter(state="paused"))
    bulk_confirm(job.pk, users.operator, reason="go on")
    registry.unregister(gone.name, gone.version)

    # when
    bulk_work(job.pk)

    # then: the job finished; the one without its definition was skipped with why, the other resumed
    job.refresh_from_db()
    assert job.state == BulkJobState.DONE
    items = {i.instance_id: i for i in job.items.all()}
    assert items[kept.pk].state == BulkItemState.DONE
    assert items[lost.pk].state == BulkItemState.SKIPPED, items[lost.pk].detail
    assert "not available" in items[lost.pk].detail
    assert WorkflowInstance.objects.get(pk=lost.pk).state == InstanceState.PAUSED


@pytest.mark.parametrize("loses", ["the operators group", "the account"])
def test_a_job_whose_creator_may_no_longer_operate_stops_before_its_next_batch(flow, users, run_steps, loses):
    """A job acted with its creator's authority however long it ran: an operator moved out of the operators group,
    or deactivated, mid-job, still retried or cancelled the rest through it."""
    # given: a job under way, one item done
    failed_instances(run_steps, 4)
    job = bulk_dry_run(users.operator, "cancel", InstanceFilter(workflow="bulk_flow"))
    bulk_confirm(job.pk, users.operator, reason="cleanup")
    bulk_work(job.pk, batch=1)

    # when: the creator loses the role (or leaves), and a worker takes the next batch
    if loses == "the account":
        users.operator.is_active = False
        users.operator.save(update_fields=["is_active"])
    else:
        users.operator.groups.remove(users.operators)
    worked = bulk_work(job.pk)

    # then: nothing more is done; the rest is skipped saying why, and the stop is audited
    job.refresh_from_db()
    assert (worked, job.state) == (0, BulkJobState.STOPPED)
    assert job.items.filter(state=BulkItemState.DONE).count() == 1
    skipped = job.items.filter(state=BulkItemState.SKIPPED)
    assert skipped.count() == 3
    assert all("operator may no longer operate instances" in item.detail for item in skipped)
    assert WorkflowInstance.objects.filter(workflow_name="bulk_flow", state=InstanceState.CANCELLED).count() == 1
    stopped = AuditEvent.objects.get(action="bulk.stopped", subject_id=job.pk)
    assert stopped.actor_label == "system:bulk"
