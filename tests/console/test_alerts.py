"""Operator alerts (console/alerts.py): a storm of failures is one message in the bell and one e-mail per
operator; the news that arrives within the throttle waits for the next message; a sweep that fell behind is told."""

from __future__ import annotations

import threading
import tracemalloc
from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection, transaction
from django.utils import timezone

from approvals.models import HumanTask, Notification, TaskKind
from approvals.services.base import FAIL
from approvals.services.tasks import task_decide
from console.alerts import COMPENSATION, FAILED, SWEEP, alert_pass
from console.models import AlertOutbox
from orchestrator.dsl import ESCALATE, Retry, StepContext, Task, Workflow
from orchestrator.models import StepRun
from orchestrator.services.instances import instance_start
from orchestrator.services.steps import step_execute
from tests.factories import OrderInputFactory

pytestmark = pytest.mark.django_db(transaction=True)


def boom(ctx: StepContext) -> dict:
    raise ValueError("ledger refused the entry")


@pytest.fixture
def flow(register_workflow):
    return register_workflow(Workflow("alert_flow", 1, [Task("post", boom, retry=Retry(max_attempts=1))]))


def test_a_storm_of_failures_is_one_message(flow, users, run_steps, settings):
    # given
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    for _ in range(12):
        instance_start("alert_flow", {})
    run_steps()

    # when
    told = alert_pass()

    # then
    assert told[FAILED] == 12
    notes = list(Notification.objects.filter(kind=FAILED))
    assert [n.user_id for n in notes] == [users.operator.pk]
    assert notes[0].message.startswith("12 instances failed: alert_flow (12). Commonest error (12): post failed")
    assert [m.to for m in mail.outbox] == [[users.operator.email]]


def test_news_within_the_throttle_waits_for_the_next_message(flow, users, run_steps):
    # given
    instance_start("alert_flow", {})
    run_steps()
    alert_pass()
    instance_start("alert_flow", {})
    run_steps()

    # when
    soon = alert_pass()
    later = alert_pass(now=timezone.now() + timedelta(minutes=6))

    # then
    assert (soon[FAILED], later[FAILED]) == (0, 1)
    assert Notification.objects.filter(kind=FAILED).count() == 2


def test_a_sweep_that_fell_behind_is_told(flow, users):
    # given: a step due ten minutes ago that no sweep ever sent
    instance = instance_start("alert_flow", {})
    StepRun.objects.filter(instance=instance).update(due_at=timezone.now() - timedelta(minutes=10), dispatched_at=None)

    # when
    told = alert_pass()

    # then
    assert told[SWEEP] == 1
    assert Notification.objects.get(kind=SWEEP).message.startswith("The sweep is behind: due work has waited")


def test_a_failure_committed_after_a_pass_read_is_told_by_the_next_pass(flow, users):
    """Read by time, a failure stamped before a pass but committed after its read was never told: the next pass
    read only what happened after the first one's time."""
    # given: a step that fails inside a transaction which stays open while an alert pass runs
    instance = instance_start("alert_flow", {})
    step_id = StepRun.objects.get(instance=instance).pk
    recorded, release = threading.Event(), threading.Event()

    def fail_and_commit_late() -> None:
        try:
            with transaction.atomic():
                step_execute(step_id)
                recorded.set()
                release.wait(10)
        finally:
            connection.close()

    worker = threading.Thread(target=fail_and_commit_late)
    worker.start()
    assert recorded.wait(10)

    # when a pass runs before the failure commits, and another one after the throttle
    first = alert_pass()
    release.set()
    worker.join(10)
    second = alert_pass(now=timezone.now() + timedelta(minutes=6))

    # then the second one tells it, once
    instance.refresh_from_db()
    assert instance.state == "failed"
    assert (first[FAILED], second[FAILED]) == (0, 1)
    assert Notification.objects.get(kind=FAILED).message.startswith("1 instance failed: alert_flow (1).")
    assert alert_pass(now=timezone.now() + timedelta(minutes=12))[FAILED] == 0


def test_a_compensation_that_needs_a_person_is_told_once(users, run_steps):
    # given an order whose refund failed every attempt: an operators' escalation of the compensation
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_shipping=True, fail_refund=4))
    run_steps(instance, advance=True)

    # when
    told = alert_pass()
    again = alert_pass(now=timezone.now() + timedelta(minutes=6))

    # then: the failed shipping step that started the saga is no instance failure; the undo that failed is told
    assert (told[COMPENSATION], again[COMPENSATION]) == (1, 0)
    assert told[FAILED] == 0
    note = Notification.objects.get(kind=COMPENSATION, user=users.operator)
    assert note.message.startswith("1 compensation needs a person (failed to undo on its own), e.g. ")
    assert not AlertOutbox.objects.exists()


def test_a_rolled_back_failure_is_never_told(flow, users):
    # given a failure recorded in a transaction that is then rolled back
    instance = instance_start("alert_flow", {})
    step_id = StepRun.objects.get(instance=instance).pk

    def fail_then_roll_back() -> None:
        with transaction.atomic():
            step_execute(step_id)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        fail_then_roll_back()

    # when / then
    assert alert_pass()[FAILED] == 0
    assert not Notification.objects.filter(kind=FAILED).exists()


def _outbox(n: int) -> None:
    now = timezone.now()
    AlertOutbox.objects.bulk_create(
        AlertOutbox(kind=FAILED, workflow_name=f"flow_{i % 3}", title=f"#{i}", reason="ledger refused", occurred_at=now)
        for i in range(n)
    )


def test_a_storm_of_ten_thousand_failures_is_one_message_per_operator(users):
    # given ten thousand failures waiting in the outbox
    _outbox(10_000)

    # when
    told = alert_pass()

    # then one message tells them all, and none is left to tell again
    assert told[FAILED] == 10_000
    note = Notification.objects.get(kind=FAILED)
    assert note.user_id == users.operator.pk
    assert note.message.startswith("10000 instances failed: flow_0 (3334), flow_1 (3333), flow_2 (3333).")
    assert not AlertOutbox.objects.exists()


def test_a_pass_whose_transaction_fails_leaves_its_news_for_the_next(users, monkeypatch):
    # given failures waiting, and a pass that fails while writing the bell's notices
    _outbox(3)

    def refuse(*_args, **_kwargs):
        raise RuntimeError("database went away")

    with monkeypatch.context() as patched:
        patched.setattr(Notification.objects, "bulk_create", refuse)
        with pytest.raises(RuntimeError):
            alert_pass()

    # when the next pass runs
    told = alert_pass()

    # then it tells them, once
    assert told[FAILED] == 3
    assert Notification.objects.filter(kind=FAILED).count() == 1
    assert not AlertOutbox.objects.exists()


def test_two_passes_at_once_tell_each_failure_once(users):
    # given failures waiting, and two beats whose passes start together
    _outbox(50)
    results: list[dict[str, int]] = []
    start = threading.Barrier(2)

    def one_pass() -> None:
        try:
            start.wait(10)
            results.append(alert_pass())
        finally:
            connection.close()

    passes = [threading.Thread(target=one_pass) for _ in range(2)]
    for thread in passes:
        thread.start()
    for thread in passes:
        thread.join(30)

    # then one message tells all fifty
    assert sorted(r[FAILED] for r in results) == [0, 50]
    assert Notification.objects.filter(kind=FAILED).count() == 1


def test_a_storm_of_failures_is_summed_up_by_the_database_not_in_the_passs_memory(users):
    """The pass fetched every row it deleted into Python: 200,000 failures cost it about 90 MB, a million (a bulk
    retry of a million instances that fail again) half a gigabyte in the beat's worker, at every pass if that failed."""
    # given two hundred thousand failures waiting in the outbox, each with its own error
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {AlertOutbox._meta.db_table} (kind, workflow_name, title, reason, occurred_at) "  # noqa: S608
            "SELECT %s, 'order_fulfilment', 'Order ' || g, 'charge_payment failed: card declined, reference ' || g, "
            "now() FROM generate_series(1, 200000) g",
            [FAILED],
        )

    # when
    tracemalloc.start()
    try:
        told = alert_pass()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # then one message with the exact count, and the pass held a few megabytes at most
    assert told[FAILED] == 200_000
    assert Notification.objects.get(kind=FAILED).message.startswith(
        "200000 instances failed: order_fulfilment (200000). Commonest error (1): charge_payment failed: card declined"
    )
    assert peak < 5_000_000, peak
    assert not AlertOutbox.objects.exists()


def test_an_operators_fail_instance_on_an_escalation_is_told_once_and_the_escalation_is_no_compensation(
    register_workflow, users
):
    # given a failed step handed to the operators (an escalation, not a compensation)
    register_workflow(Workflow("alert_escalated", 1, [Task("post", boom, on_failure=ESCALATE, retry=Retry(1))]))
    instance = instance_start("alert_escalated", {})
    step_execute(StepRun.objects.get(instance=instance).pk)
    escalation = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)
    assert alert_pass() == {FAILED: 0, COMPENSATION: 0, SWEEP: 0}

    # when an operator answers it with Fail instance
    task_decide(escalation.pk, users.operator, FAIL, comment="ledger closed for the year")
    told = alert_pass(now=timezone.now() + timedelta(minutes=6))

    # then the failure is told once, with the operator's words
    assert told[FAILED] == 1
    assert Notification.objects.get(kind=FAILED).message.endswith("Commonest error (1): ledger closed for the year")
    assert alert_pass(now=timezone.now() + timedelta(minutes=12))[FAILED] == 0


def test_news_with_no_active_operator_waits_for_the_first_one(users):
    """With no active operator the pass deleted the rows and counted them told: told to nobody, and an operator who
    came back (or was added) never heard of them, although docs/console.md says each row is told exactly once."""
    # given failures while the only operator is deactivated
    users.operator.is_active = False
    users.operator.save(update_fields=["is_active"])
    _outbox(4)

    # when a pass runs, then the operator is back and the next pass runs
    alone = alert_pass()
    users.operator.is_active = True
    users.operator.save(update_fields=["is_active"])
    back = alert_pass()

    # then the news waited for them, and is told once
    assert (alone[FAILED], back[FAILED]) == (0, 4)
    assert Notification.objects.get(kind=FAILED, user=users.operator).message.startswith("4 instances failed")
    assert not AlertOutbox.objects.exists()
