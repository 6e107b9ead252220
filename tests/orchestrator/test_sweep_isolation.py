"""One broken instance never stops the others: the sweep handles each due item on its own.

The broken instance of most tests here is an orphan: pinned to a workflow version whose code is no longer
registered (its module removed from a deployment). Its due work ends in "definition orphan_demo v1 is not
available", visible and audited, and everything else due in the same pass still happens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals.models import HumanTask, TaskState
from approvals.services.base import APPROVE, TaskConflict
from approvals.services.deadlines import tasks_sweep
from approvals.services.tasks import task_decide
from orchestrator import registry
from orchestrator import tasks as celery_tasks
from orchestrator.audit import Actor
from orchestrator.dsl import Human, Reassign, Remind, StepContext, Task, Timer, Workflow
from orchestrator.models import AuditEvent, InstanceState, StepRun, StepState, WorkflowInstance
from orchestrator.services.instances import NotAllowed, instance_pause, instance_retry, instance_start
from orchestrator.services.steps import step_claim
from orchestrator.services.sweep import _logged_failures, sweep
from tests.factories import OrderInputFactory

pytestmark = pytest.mark.django_db

OPERATOR = Actor("user:operator")
REASON = "definition orphan_demo v1 is not available"


def work(ctx: StepContext) -> dict:
    return {"worked": ctx.attempt}


ORPHAN_TASK = Workflow("orphan_demo", 1, [Task("work", work, timeout=1), Task("more", work, timeout=1)])
ORPHAN_HUMAN = Workflow(
    "orphan_demo",
    1,
    [Human("review", candidate_groups=["approvers"], escalation=[Remind(timedelta(minutes=1))]), Task("work", work)],
)


@pytest.fixture
def orphan_of(register_workflow):
    """``orphan_of(definition, prepare)``: start an instance of ``definition``, let ``prepare(instance)`` bring it
    to the state a test needs, then unregister the definition, as a deployment without its module would."""

    def make(definition: Workflow, prepare=lambda instance: None) -> WorkflowInstance:
        register_workflow(definition)
        instance = instance_start(definition.name, {})
        prepare(instance)
        registry.unregister(definition.name, definition.version)
        return instance

    return make


@contextmanager
def deployed_again(definition: Workflow) -> Iterator[None]:
    """``definition`` registered again for the block (its module deployed back), unregistered after it."""
    registry.register(definition)
    try:
        yield
    finally:
        registry.unregister(definition.name, definition.version)


def claim_first_step(instance: WorkflowInstance) -> None:
    assert step_claim(instance.steps.get().pk) is not None


def reminder_flow() -> Workflow:
    return Workflow(
        "reminded",
        1,
        [Human("review", candidate_groups=["approvers"], escalation=[Remind(timedelta(minutes=1))]), Task("w", work)],
    )


def test_every_kind_of_due_work_happens_beside_an_orphan(
    orphan_of, register_workflow, run_steps, users, broker, django_capture_on_commit_callbacks
):
    """A due retry, an expired lease, a pause end, a reminder rung and a due timer all happen in the one sweep
    that also meets an orphan whose lease expired first; the orphan ends dead and failed with the reason."""
    # given: the orphan's step is running on a lease that expires before any other
    orphan = orphan_of(ORPHAN_TASK, claim_first_step)
    retrying = instance_start("order_fulfilment", OrderInputFactory(fail_payment=1))
    run_steps(retrying)
    retry_step = retrying.steps.get(name="charge_payment")
    assert retry_step.state == StepState.FAILED
    leased = instance_start("bench_chain", {})
    leased_step = leased.steps.get()
    assert step_claim(leased_step.pk) is not None
    paused = instance_start("bench_chain", {})
    instance_pause(paused.pk, actor=OPERATOR, reason="hold", until=timezone.now() + timedelta(minutes=1))
    register_workflow(reminder_flow())
    reminded = instance_start("reminded", {})
    register_workflow(Workflow("timed", 1, [Timer("cool_off", wait=timedelta(minutes=1)), Task("after", work)]))
    timed = instance_start("timed", {})
    timer = timed.steps.get()
    later = timezone.now() + timedelta(minutes=5)

    # when
    with django_capture_on_commit_callbacks(execute=True):
        report = sweep(now=later)

    # then: the others' work happened
    assert report.errors == 0
    assert report.leases_expired == 2
    assert report.resumed == 1
    assert report.tasks == {"escalations": 1}
    sent = broker.step_ids()
    assert {retry_step.pk, timer.pk, paused.steps.get().pk} <= set(sent)
    leased_step.refresh_from_db()
    assert (leased_step.state, leased_step.error_type) == (StepState.FAILED, "LeaseExpired")
    paused.refresh_from_db()
    assert paused.state == InstanceState.RUNNING
    task = HumanTask.objects.get(instance=reminded)
    assert task.escalation_level == 1
    assert AuditEvent.objects.filter(instance=reminded, action="task.reminded").count() == 1
    # and the orphan's ended in a clear state, audited
    orphan.refresh_from_db()
    orphan_step = orphan.steps.get()
    assert (orphan_step.state, orphan_step.error_type, orphan_step.error) == (
        StepState.DEAD,
        "UnknownWorkflow",
        REASON,
    )
    assert (orphan.state, orphan.error) == (InstanceState.FAILED, f"work failed: {REASON}")
    failed = AuditEvent.objects.get(instance=orphan, action="instance.failed")
    assert (failed.actor_label, failed.reason) == ("system:sweeper", f"work failed: {REASON}")


def test_the_next_sweep_does_not_trip_over_the_orphan_again(orphan_of):
    """Once its due work ended, the orphan is nothing the sweep meets again: no error, no new audit event."""
    # given
    orphan = orphan_of(ORPHAN_TASK, claim_first_step)
    later = timezone.now() + timedelta(minutes=5)
    first = sweep(now=later)
    events = AuditEvent.objects.filter(instance=orphan).count()

    # when
    again = sweep(now=later + timedelta(minutes=5))

    # then
    assert (first.errors, first.leases_expired) == (0, 1)
    assert (again.errors, again.leases_expired, again.dispatched) == (0, 0, 0)
    assert AuditEvent.objects.filter(instance=orphan).count() == events


def test_an_orphans_pause_end_fails_it_with_the_reason_and_a_retry_goes_on_later(orphan_of, run_steps):
    """Resuming needs the definition: the pause's end fails the orphan with the reason (audited, once), its step
    stays where it was; deployed again, a retry runs the instance on from there."""

    # given: a pause that ends a little ahead (a pause must end in the future); the sweeps run at that time
    ends = timezone.now() + timedelta(minutes=5)

    def pause(instance):
        instance_pause(instance.pk, actor=OPERATOR, reason="hold", until=ends)

    orphan = orphan_of(ORPHAN_TASK, pause)

    # when
    first = sweep(now=ends)
    again = sweep(now=ends)

    # then
    orphan.refresh_from_db()
    assert (first.resumed, first.errors, again.resumed, again.errors) == (0, 0, 0, 0)
    assert (orphan.state, orphan.error, orphan.paused_until) == (InstanceState.FAILED, REASON, None)
    assert orphan.steps.get().state == StepState.SCHEDULED
    failed = AuditEvent.objects.filter(instance=orphan, action="instance.failed")
    assert [(e.from_state, e.reason) for e in failed] == [(InstanceState.PAUSED, REASON)]

    # when: deployed again
    with deployed_again(ORPHAN_TASK):
        instance_retry(orphan.pk, actor=OPERATOR, reason="module is back")
        run_steps(orphan)

    # then
    orphan.refresh_from_db()
    assert orphan.state == InstanceState.COMPLETED


def test_an_orphans_task_deadline_fails_it_with_the_reason_and_waits(orphan_of, users):
    """The ladder of an orphan's task is in the missing code: the instance fails with the reason (audited), the
    task stays open with its deadline, and later sweeps leave it alone."""
    # given
    orphan = orphan_of(ORPHAN_HUMAN)
    task = HumanTask.objects.get(instance=orphan)
    deadline = task.next_escalation_at
    later = task.created_at + timedelta(minutes=2)

    # when
    first = sweep(now=later)
    again = sweep(now=later + timedelta(minutes=1))

    # then
    orphan.refresh_from_db()
    task.refresh_from_db()
    assert (first.tasks, first.errors) == ({"escalations": 0}, 0)
    assert (again.tasks, again.errors) == ({"escalations": 0}, 0)
    assert (orphan.state, orphan.error) == (InstanceState.FAILED, REASON)
    assert (task.state, task.escalation_level, task.next_escalation_at) == (TaskState.OPEN, 0, deadline)
    assert AuditEvent.objects.filter(instance=orphan, action="instance.failed", reason=REASON).count() == 1


def test_deciding_an_orphans_task_is_refused_with_the_reason(orphan_of, users):
    """No HTTP 500 and no half-done decision: a conflict naming the missing definition; the task stays open."""
    # given
    orphan = orphan_of(ORPHAN_HUMAN)
    task = HumanTask.objects.get(instance=orphan)

    # when
    with pytest.raises(TaskConflict) as refused:
        task_decide(task.pk, users.staff, APPROVE)

    # then
    task.refresh_from_db()
    assert REASON in str(refused.value)
    assert task.state == TaskState.OPEN


def test_retry_is_refused_while_the_definition_is_missing_and_works_once_it_is_back(orphan_of, run_steps):
    """Retry names the reason while the code is gone; deployed again, the same retry runs the instance on."""
    # given: the orphan's step died at its claim
    orphan = orphan_of(ORPHAN_TASK)
    run_steps(orphan)
    orphan.refresh_from_db()
    assert orphan.state == InstanceState.FAILED

    # when / then: refused while missing
    with pytest.raises(NotAllowed) as refused:
        instance_retry(orphan.pk, actor=OPERATOR, reason="try again")
    assert REASON in str(refused.value)

    # when: deployed again
    with deployed_again(ORPHAN_TASK):
        instance_retry(orphan.pk, actor=OPERATOR, reason="module is back")
        run_steps(orphan)

    # then
    orphan.refresh_from_db()
    assert orphan.state == InstanceState.COMPLETED
    assert list(orphan.steps.order_by("id").values_list("name", "state")) == [
        ("work", StepState.SUCCEEDED),
        ("more", StepState.SUCCEEDED),
    ]


def test_an_orphan_failed_at_its_task_deadline_is_retried_from_its_open_task(orphan_of, users):
    """Failed by the sweep with open work and no dead step, the orphan's retry (once deployed again) takes it up
    where it stopped: waiting on its task, whose overdue reminder then fires."""
    # given
    orphan = orphan_of(ORPHAN_HUMAN)
    task = HumanTask.objects.get(instance=orphan)
    sweep(now=task.created_at + timedelta(minutes=2))

    # when
    with deployed_again(ORPHAN_HUMAN):
        instance_retry(orphan.pk, actor=OPERATOR, reason="module is back")
        fired = tasks_sweep(now=task.created_at + timedelta(minutes=3))

    # then
    orphan.refresh_from_db()
    task.refresh_from_db()
    assert orphan.state == InstanceState.WAITING
    assert fired == {"escalations": 1}
    assert (task.state, task.escalation_level) == (TaskState.OPEN, 1)


# --- pages and actions of an orphan ---------------------------------------------------------------------


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_an_orphans_pages_and_actions_answer_with_the_reason_not_a_500(orphan_of, users, run_steps):
    """Instance page, task page, task decision, retry and resume: each shows the missing definition, none
    answers 500."""

    from demo.data import grant_group_permissions

    grant_group_permissions()
    waiting = orphan_of(ORPHAN_HUMAN)
    task = HumanTask.objects.get(instance=waiting)
    staff, operator = login(users.staff), login(users.operator)

    # when
    instance_page = operator.get(reverse("console:instance_detail", args=[waiting.pk]))
    task_page = staff.get(reverse("approvals:task_detail", args=[task.pk]))
    decided = staff.post(reverse("approvals:task_decide", args=[task.pk]), {"decision": "approve"}, follow=True)
    sweep(now=task.created_at + timedelta(minutes=2))  # the deadline fails it
    retried = operator.post(
        reverse("console:instance_operate", args=[waiting.pk, "retry"]), {"reason": "again"}, follow=True
    )
    paused = orphan_of(ORPHAN_TASK, lambda i: instance_pause(i.pk, actor=OPERATOR, reason="hold"))
    resumed = operator.post(
        reverse("console:instance_operate", args=[paused.pk, "resume"]), {"reason": "go"}, follow=True
    )

    # then
    assert instance_page.status_code == 200
    assert REASON in instance_page.content.decode()
    assert task_page.status_code == 200
    assert REASON in task_page.content.decode()
    # A refusal re-shows the page with the reason (409: the state does not allow it now), never a 500.
    assert decided.status_code == 409
    assert REASON in decided.content.decode()
    assert retried.status_code == 409
    assert f"Cannot retry: the {REASON}" in retried.content.decode()
    assert resumed.status_code == 409
    assert f"Cannot resume: the {REASON}" in resumed.content.decode()
    task.refresh_from_db()
    waiting.refresh_from_db()
    assert task.state == TaskState.OPEN
    assert waiting.state == InstanceState.FAILED


# --- an item that raises --------------------------------------------------------------------------------


def test_a_task_deadline_that_raises_is_logged_audited_and_counted_and_the_others_go_on(
    register_workflow, users, caplog
):
    """A rung handing the task to a group whose name PostgreSQL refuses (a NUL: DataError) fails for its task alone:
    the other task's reminder fires, the failure is audited on its instance once and logged in full once, and
    the Celery sweep task reports it."""
    # given
    rung = Reassign(timedelta(seconds=1), group="g")
    register_workflow(Workflow("bad_rung", 1, [Human("review", candidate_groups=["approvers"], escalation=[rung])]))
    # A group PostgreSQL cannot hold, due at once (the Celery sweep below runs at the real now), put in after the
    # definition's checks (which refuse both): what the sweep meets when a rung raises, for whatever reason.
    object.__setattr__(rung, "group", "g\x00")
    object.__setattr__(rung, "after", timedelta(0))
    register_workflow(reminder_flow())
    broken = instance_start("bad_rung", {})
    reminded = instance_start("reminded", {})
    later = timezone.now() + timedelta(minutes=2)
    caplog.set_level(logging.DEBUG, logger="orchestrator.services.sweep")
    _logged_failures.clear()  # what this process logged in full before is not this test's business

    # when
    first = sweep(now=later)
    second = sweep(now=later + timedelta(seconds=1))
    from_celery = celery_tasks.sweep()

    # then
    assert (first.errors, first.tasks) == (1, {"escalations": 1})
    assert (second.errors, second.tasks) == (1, {"escalations": 0})
    assert from_celery["errors"] == 1
    assert HumanTask.objects.get(instance=reminded).escalation_level == 1
    assert HumanTask.objects.get(instance=broken).escalation_level == 0
    audited = AuditEvent.objects.filter(instance=broken, action="sweep.failed")
    assert [(e.actor_label, e.subject_type, e.payload["work"], e.payload["error_type"]) for e in audited] == [
        ("system:sweeper", "task", "task deadline", "DataError")
    ]
    assert "cannot contain NUL" in audited[0].reason
    full = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert len(full) == 1
    assert StepRun.objects.filter(instance=broken, state=StepState.RUNNING).count() == 1
