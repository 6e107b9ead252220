"""Breaker review of signal consumption in a savepoint (signals._consume / _consume_stopped, Unit.mark/rewind):
what the unit collected before the consumption survives a rewind, nothing written inside survives, database
errors propagate, and the audit chain verifies after each path."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.db import IntegrityError, OperationalError, transaction
from django.utils import timezone

from approvals.models import HumanTask, Notification, TaskKind
from approvals.services.tasks import task_decide
from orchestrator import audit, registry
from orchestrator.audit_actions import AuditAction
from orchestrator.dsl import ESCALATE, Decision, Human, Node, Parallel, Signal, Task, Timer, Workflow
from orchestrator.models import AuditEvent, InstanceState, ReceivedSignal, StepKind, StepState, WorkflowInstance
from orchestrator.realtime import send_all_now
from orchestrator.services import instances, signals, sweep
from orchestrator.services.instances import instance_pause, instance_resume, instance_retry
from orchestrator.services.locks import lock_instance, lock_step
from orchestrator.services.unit import Unit
from tests.conftest import describe_instance
from tests.orchestrator.test_signals import OPERATOR, PaymentForm, deliver, reserve, routed_flow, waiting_instance

pytestmark = pytest.mark.django_db


def assert_trail_verifies(instance: WorkflowInstance) -> None:
    """The instance's chain verifies link by link and against its stored head (what baton_verify_audit does)."""
    report = audit.verify_trail(chain=audit.chain_name(instance.pk))
    assert report.breaks == [], report.breaks
    assert report.events == AuditEvent.objects.filter(instance=instance).count()


def reserve_then(name: str, *nodes: Node) -> Workflow:
    """Version 1 of workflow ``name``: a "reserve" task, then ``nodes`` (the waits and what follows them)."""
    return Workflow(name=name, version=1, steps=[Task("reserve", reserve), *nodes])


def test_what_the_unit_held_before_the_consumption_survives_its_rewind(register_workflow, run_steps):
    # given an instance waiting at a wait whose decision afterwards raises, a kept-style signal row for it, and a
    # unit that collected work before the consumption: an event, a dispatch, a note, a group, a new row, a fenced
    # step write, a changed title and nested data
    workflow = register_workflow(routed_flow("rewind_routed"))
    instance = waiting_instance(run_steps, "rewind_routed")
    reserve_id = instance.steps.get(name="reserve").pk
    with transaction.atomic():
        _, reserve_step = lock_step(reserve_id)
        locked = lock_instance(instance.pk)
        unit = Unit(locked, OPERATOR)
        unit.audit("instance", locked.pk, reason="before", action=AuditAction.INSTANCE_DATA_EDITED)
        unit.dispatch(reserve_step)
        unit.notify(["somebody"], {"type": "before"})
        unit.groups.add("before-group")
        unit.inserts.append(
            ReceivedSignal(
                instance=locked,
                event="payment.confirmed",
                signal_id="inserted-before",
                payload={},
                payload_hash="x" * 64,
                received_at=unit.now,
                sender="t",
            )
        )
        reserve_step.error = "noted before"
        unit.fence(reserve_step, ["error"])
        locked.title = "Title before"
        locked.data["nested"] = {"list": [1]}
        seq_before, head_before, state_before = locked.audit_seq, locked.audit_head, locked.state
        before = {name: list(getattr(unit, name)) for name in ("events", "dispatches", "notes", "inserts", "fenced")}
        received = ReceivedSignal(
            instance=locked,
            event="payment.confirmed",
            signal_id="now",
            payload={"paid_amount": "1.00", "reference": "R"},
            payload_hash="y" * 64,
            received_at=unit.now,
            sender="t",
        )
        received.save()
        wait = signals._waiting_step(locked, ["wait_payment"])

        # when the wait consumes the signal and the decision after it raises
        signals._consume(unit, workflow, wait, received)

        # then what was collected before is still there, first and in order, and the instance's fields as they
        # were plus only the stop's own changes
        for name, items in before.items():
            assert getattr(unit, name)[: len(items)] == items, name
        assert "before-group" in unit.groups
        assert locked.title == "Title before"
        assert locked.data["nested"] == {"list": [1]}
        assert locked.audit_seq == seq_before + 2  # the wait's death and the instance's failure, nothing else
        assert unit.events[len(before["events"])].prev_hash == head_before
        assert (state_before, locked.state) == (InstanceState.WAITING, InstanceState.FAILED)
        unit.finish()

    # and everything written: the fenced write, the inserted row, the title, the chain (which verifies)
    instance.refresh_from_db()
    assert instance.title == "Title before"
    assert instance.steps.get(pk=reserve_id).error == "noted before"
    assert ReceivedSignal.objects.filter(instance=instance, signal_id="inserted-before").exists()
    assert not instance.steps.filter(name="route").exists()
    assert_trail_verifies(instance)


def mutating_route(data: dict) -> None:
    """A decision that changes the nested data it was given (a shallow copy) before it raises."""
    data["nested"]["list"].append("changed inside")
    data["nested"]["new"] = True
    return data["route"] and None


def test_nested_data_a_raising_flow_changed_in_place_is_restored_deeply(register_workflow, run_steps):
    # given a waiting instance with nested data, whose decision after the wait mutates it in place and raises
    register_workflow(
        reserve_then(
            "rewind_mutating",
            Signal("wait_payment", event="payment.confirmed", form=PaymentForm),
            Decision("route", mutating_route),
        )
    )
    instance = waiting_instance(run_steps, "rewind_mutating", nested={"list": [1]})

    # when the signal is delivered
    assert deliver(instance.pk, signal_id="late").outcome == "consumed"

    # then the instance failed and its nested data is as it was before the decision ran
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    assert instance.data["nested"] == {"list": [1]}, instance.data
    assert_trail_verifies(instance)


@pytest.mark.parametrize(
    "error",
    [OperationalError("server closed the connection"), SoftTimeLimitExceeded(), IntegrityError("dup key")],
)
def test_a_database_error_inside_the_consumption_is_not_recorded_as_the_workflows(register_workflow, run_steps, error):
    # given a waiting instance whose decision after the wait meets a database error
    def route(data: dict) -> None:
        raise error

    register_workflow(
        reserve_then(
            "rewind_db_error",
            Signal("wait_payment", event="payment.confirmed", form=PaymentForm),
            Decision("route", route),
        )
    )
    instance = waiting_instance(run_steps, "rewind_db_error")

    # when a signal is delivered
    if isinstance(error, OperationalError | SoftTimeLimitExceeded):
        # then an operational one (or a worker's time limit landing now) reaches the caller and nothing is stored
        with pytest.raises(type(error)):
            deliver(instance.pk, signal_id="late")
        assert not ReceivedSignal.objects.filter(instance=instance).exists()
        assert WorkflowInstance.objects.get(pk=instance.pk).state == InstanceState.WAITING
    else:
        # an integrity error raised by the definition's code is the documented "value the database refuses":
        # the instance fails at the wait
        assert deliver(instance.pk, signal_id="late").outcome == "consumed"
        assert WorkflowInstance.objects.get(pk=instance.pk).state == InstanceState.FAILED
    assert_trail_verifies(instance)


def two_waits_flow(name: str) -> Workflow:
    """reserve -> wait "a" -> wait "b" -> a decision reading data["route"]."""
    return reserve_then(
        name,
        Signal("wait_a", event="a"),
        Signal("wait_b", event="b"),
        Decision("route", lambda data: data["route"] and None),
    )


def test_a_wait_right_after_a_wait_stops_at_the_inner_wait_only(register_workflow, run_steps):
    # given an instance waiting for "a" with a "b" kept for the wait after it, whose flow onward raises
    register_workflow(two_waits_flow("rewind_two_waits"))
    instance = waiting_instance(run_steps, "rewind_two_waits")
    assert deliver(instance.pk, signal_id="b1", event="b", payload={"x": 1}).outcome == "kept"

    # when "a" is delivered: wait_a consumes it, wait_b takes the kept "b", and the decision raises
    assert deliver(instance.pk, signal_id="a1", event="a", payload={"y": 2}).outcome == "consumed"

    # then wait_a succeeded, wait_b died keeping "b", the instance failed and the chain verifies
    instance.refresh_from_db()
    wait_a, wait_b = instance.steps.get(name="wait_a"), instance.steps.get(name="wait_b")
    assert (wait_a.state, wait_b.state) == (StepState.SUCCEEDED, StepState.DEAD), describe_instance(instance)
    assert wait_b.result[signals.SIGNAL_KEPT] is True
    assert instance.state == InstanceState.FAILED
    assert instance.data == {**instance.data, "x": 1, "y": 2}
    assert ReceivedSignal.objects.filter(instance=instance, consumed_at__isnull=True).count() == 0
    assert_trail_verifies(instance)

    # and a retry once the data is fixed completes it
    WorkflowInstance.objects.filter(pk=instance.pk).update(data={**instance.data, "route": "north"})
    instance_retry(instance.pk, actor=OPERATOR, reason="fixed")
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED, describe_instance(instance)
    assert_trail_verifies(instance)


def test_an_outer_raise_after_an_inner_wait_took_a_kept_signal_gives_that_signal_back(register_workflow, run_steps):
    # given an instance waiting for "a" before a parallel whose first branch waits for "b" (one is kept) and whose
    # second branch's timer raises without data["route"]
    register_workflow(
        reserve_then(
            "rewind_parallel_waits",
            Signal("wait_a", event="a"),
            Parallel(
                "fan",
                branches=[
                    [Signal("wait_b", event="b")],
                    [Timer("later", until=lambda data: timezone.now() - timedelta(seconds=data["route"]))],
                ],
            ),
        )
    )
    instance = waiting_instance(run_steps, "rewind_parallel_waits")
    assert deliver(instance.pk, signal_id="b1", event="b", payload={"x": 1}).outcome == "kept"

    # when "a" is delivered
    assert deliver(instance.pk, signal_id="a1", event="a", payload={}).outcome == "consumed"

    # then wait_a died, no wait_b or parallel is left, "b" is kept again (not consumed by a step that is gone)
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    assert instance.steps.get(name="wait_a").state == StepState.DEAD
    assert not instance.steps.filter(name__in=["fan", "wait_b", "later"]).exists()
    b1 = ReceivedSignal.objects.get(instance=instance, signal_id="b1")
    assert (b1.consumed_at, b1.step_id, b1.rejected_at) == (None, None, None)
    assert "x" not in instance.data
    assert_trail_verifies(instance)

    # and a retry after the fix enters the parallel, whose wait takes the kept "b"
    WorkflowInstance.objects.filter(pk=instance.pk).update(data={**instance.data, "route": 5})
    instance_retry(instance.pk, actor=OPERATOR, reason="fixed")
    run_steps(instance, advance=True)
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED, describe_instance(instance)
    assert instance.steps.get(name="wait_b").result["signal_id"] == "b1"
    assert_trail_verifies(instance)


def test_two_kept_signals_the_first_failing_leaves_the_second_kept(register_workflow, run_steps):
    # given a paused waiting instance holding two kept signals: the first lacks what the decision reads
    register_workflow(
        reserve_then(
            "rewind_two_kept",
            Signal("wait", event="e"),
            Decision("route", lambda data: data["route"] and None),
        )
    )
    instance = waiting_instance(run_steps, "rewind_two_kept")
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")
    assert deliver(instance.pk, signal_id="bad", event="e", payload={"n": 1}).outcome == "kept"
    assert deliver(instance.pk, signal_id="good", event="e", payload={"route": "x"}).outcome == "kept"

    # when it is resumed: the oldest is handed on and its flow raises
    assert instance_resume(instance.pk, actor=OPERATOR, reason="go") is True

    # then the wait died with "bad", "good" is still kept, and the chain verifies
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    assert instance.steps.get(name="wait").result["signal_id"] == "bad"
    good = ReceivedSignal.objects.get(instance=instance, signal_id="good")
    assert (good.consumed_at, good.rejected_at) == (None, None)
    assert_trail_verifies(instance)

    # and the retry is refused while the data lacks "route", and completes once fixed
    with pytest.raises(instances.NotAllowed, match="still raises KeyError"):
        instance_retry(instance.pk, actor=OPERATOR, reason="again")
    WorkflowInstance.objects.filter(pk=instance.pk).update(data={**instance.data, "route": "y"})
    instance_retry(instance.pk, actor=OPERATOR, reason="fixed")
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED
    assert_trail_verifies(instance)


def test_many_kept_signals_for_a_looping_wait_are_handed_on_without_exhausting_the_stack(register_workflow, run_steps):
    # given a paused instance at a wait that loops back to itself, holding more kept signals than Python's
    # recursion allows nested consumptions
    register_workflow(
        reserve_then(
            "rewind_loop",
            Signal("wait", event="e"),
            Decision("again", lambda data: "wait"),
        )
    )
    instance = waiting_instance(run_steps, "rewind_loop")
    instance_pause(instance.pk, actor=OPERATOR, reason="hold")
    count = 150
    for n in range(count):
        assert deliver(instance.pk, signal_id=f"s{n}", event="e", payload={"n": n}).outcome == "kept"

    # when it is resumed
    instance_resume(instance.pk, actor=OPERATOR, reason="go")

    # then every kept signal was taken by one wait in turn and the instance still waits (no RecursionError
    # recorded as the workflow's failure)
    instance.refresh_from_db()
    assert instance.state == InstanceState.WAITING, (instance.state, instance.error[:300])
    assert ReceivedSignal.objects.filter(instance=instance, consumed_at__isnull=True).count() == 0
    assert instance.steps.filter(kind=StepKind.SIGNAL, state=StepState.SUCCEEDED).count() == count
    assert_trail_verifies(instance)


def test_waits_a_consumption_enters_in_parallel_take_kept_signals_oldest_first_in_entry_order(
    register_workflow, run_steps
):
    # given an instance waiting for "a" before a parallel of two waits for "e", with two "e" signals kept
    register_workflow(
        reserve_then(
            "rewind_parallel_two",
            Signal("wait_a", event="a"),
            Parallel("fan", branches=[[Signal("first", event="e")], [Signal("second", event="e")]]),
        )
    )
    instance = waiting_instance(run_steps, "rewind_parallel_two")
    assert deliver(instance.pk, signal_id="e1", event="e", payload={"one": 1}).outcome == "kept"
    assert deliver(instance.pk, signal_id="e2", event="e", payload={"two": 2}).outcome == "kept"

    # when "a" is delivered
    assert deliver(instance.pk, signal_id="a1", event="a", payload={}).outcome == "consumed"

    # then the first branch's wait took the older signal, the second the newer, the parallel joined and the
    # instance completed with both payloads in its data
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED, describe_instance(instance)
    assert instance.steps.get(name="first").result["signal_id"] == "e1"
    assert instance.steps.get(name="second").result["signal_id"] == "e2"
    assert (instance.data["one"], instance.data["two"]) == (1, 2)
    assert_trail_verifies(instance)


def test_a_task_opened_before_the_flow_raised_leaves_no_task_inbox_note_or_notification(
    register_workflow, run_steps, users, django_capture_on_commit_callbacks
):
    # given an instance waiting before a parallel whose first branch opens a task for the approvers and whose
    # second branch's timer raises without data["route"]
    register_workflow(
        reserve_then(
            "rewind_task_opened",
            Signal("wait_payment", event="payment.confirmed", form=PaymentForm),
            Parallel(
                "fan",
                branches=[
                    [Human("approve", candidate_groups=["approvers"])],
                    [Timer("later", until=lambda data: timezone.now() - timedelta(seconds=data["route"]))],
                ],
            ),
        )
    )
    instance = waiting_instance(run_steps, "rewind_task_opened")
    notifications_before = Notification.objects.count()

    # when the signal is delivered
    with django_capture_on_commit_callbacks(execute=False) as after_commit:
        assert deliver(instance.pk, signal_id="late").outcome == "consumed"

    # then the instance failed at the wait and the task, its notification and its inbox news all went back
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    assert not HumanTask.objects.filter(instance=instance).exists()
    assert Notification.objects.count() == notifications_before
    sent = [event for c in after_commit if getattr(c, "func", None) is send_all_now for _, event in c.args[0]]
    assert sent, "the instance's own news is still sent"
    assert not [e for e in sent if e.get("type") == "task.opened"], sent
    assert_trail_verifies(instance)


def test_an_escalation_retry_taking_a_kept_signal_whose_flow_raises_fails_the_instance_cleanly(
    register_workflow, run_steps, users
):
    # given a wait that timed out and escalated, whose decision afterwards raises, and a signal kept meanwhile
    register_workflow(
        reserve_then(
            "rewind_escalated",
            Signal(
                "wait_payment",
                event="payment.confirmed",
                form=PaymentForm,
                timeout=timedelta(minutes=5),
                on_timeout=ESCALATE,
            ),
            Decision("route", lambda data: data["route"] and None),
        )
    )
    instance = waiting_instance(run_steps, "rewind_escalated")
    wait = instance.steps.get(name="wait_payment")
    sweep.sweep(now=wait.due_at + timedelta(seconds=1))
    assert deliver(instance.pk, signal_id="meanwhile").outcome == "kept"

    # when an operator answers Retry: the wait waits again and takes the kept signal, and the decision raises
    escalation = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)
    task_decide(escalation.pk, users.operator, "retry", comment="asked the bank")

    # then the answer is recorded, the wait died keeping the signal, the instance failed, the trail verifies
    instance.refresh_from_db()
    wait.refresh_from_db()
    assert instance.state == InstanceState.FAILED, describe_instance(instance)
    assert (wait.state, wait.result.get(signals.SIGNAL_KEPT)) == (StepState.DEAD, True)
    assert HumanTask.objects.get(pk=escalation.pk).state != "open"
    assert_trail_verifies(instance)


def test_a_retry_after_the_definition_is_fixed_and_deployed_again_goes_on(register_workflow, run_steps):
    # given an instance that failed at its wait because the decision after it raised
    register_workflow(routed_flow("rewind_redeployed"))
    instance = waiting_instance(run_steps, "rewind_redeployed")
    assert deliver(instance.pk, signal_id="late").outcome == "consumed"
    assert WorkflowInstance.objects.get(pk=instance.pk).state == InstanceState.FAILED

    # when the definition is fixed (the decision no longer reads data["route"]) and deployed under its version
    registry.unregister("rewind_redeployed", 1)
    register_workflow(
        Workflow(
            name="rewind_redeployed",
            version=1,
            title_template="Order {order}",
            steps=[
                Task("reserve", reserve),
                Signal("wait_payment", event="payment.confirmed", form=PaymentForm),
                Decision("route", lambda data: data.get("route") and None),
            ],
        )
    )
    instance_retry(instance.pk, actor=OPERATOR, reason="decision fixed")

    # then the retry enters what follows the wait without waiting again and the instance completes
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED, describe_instance(instance)
    assert instance.steps.filter(name="wait_payment").count() == 1
    assert instance.steps.get(name="wait_payment").state == StepState.SUCCEEDED
    assert_trail_verifies(instance)
