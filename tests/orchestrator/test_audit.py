"""The audit trail: one event per transition, a verifiable hash chain, and a table the database keeps append-only."""

from __future__ import annotations

import copy
import itertools
import threading
from collections import defaultdict

import pytest
from django.db import connection, transaction
from django.db.utils import ProgrammingError

from approvals.models import HumanTask
from approvals.services.base import APPROVE
from approvals.services.tasks import task_decide
from orchestrator.audit import ACCOUNTS_CHAIN, Actor, append_standalone, event_hash, verify_chain
from orchestrator.models import AuditChain, AuditEvent, InstanceState, StepRun, WorkflowInstance
from orchestrator.services.instances import instance_pause, instance_resume, instance_start
from tests.factories import OrderInputFactory

pytestmark = pytest.mark.django_db


def chain_of(instance: WorkflowInstance) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(instance=instance).order_by("seq"))


def assert_one_event_per_transition(instance: WorkflowInstance) -> None:
    """Per subject, each event starts where the previous one ended, and the last ends in the current state."""
    by_subject: dict[tuple[str, int], list[AuditEvent]] = defaultdict(list)
    for event in chain_of(instance):
        by_subject[(event.subject_type, event.subject_id)].append(event)
    current = {("instance", instance.pk): instance.state}
    current |= {("step", s.pk): s.state for s in StepRun.objects.filter(instance=instance)}
    current |= {("task", t.pk): t.state for t in HumanTask.objects.filter(instance=instance)}
    assert set(by_subject) == set(current), "every instance, step and task has events, and nothing else has"
    for subject, events in by_subject.items():
        walk = [(e.action, e.from_state, e.to_state) for e in events]
        assert events[0].from_state == "", (subject, walk)
        for before, after in itertools.pairwise(events):
            assert after.from_state == before.to_state, (subject, walk)
        assert events[-1].to_state == current[subject], (subject, walk)


@pytest.mark.parametrize(
    "order",
    [
        pytest.param({}, id="completed"),
        pytest.param({"fail_payment": 2}, id="retried"),
        pytest.param({"fail_shipping": True}, id="compensated"),
        pytest.param({"fail_shipping": True, "fail_refund": True}, id="escalated"),
    ],
)
def test_every_transition_writes_exactly_one_event(run_steps, order):
    """Whatever path an order takes, each state change of each subject has one event, and no event is missing."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(**order))

    # when
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    assert_one_event_per_transition(instance)


def test_human_decisions_and_operator_actions_are_audited_with_their_actor(users, run_steps):
    """A pause, a resume and an approval each add one event, carrying who did it and why."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(amount="1500"), initiator=users.staff)
    run_steps(instance)
    task = HumanTask.objects.get(instance=instance)
    operator = Actor.of(users.operator)

    # when
    instance_pause(instance.pk, actor=operator, reason="customer called")
    instance_resume(instance.pk, actor=operator, reason="call done")
    task_decide(task.pk, users.manager, APPROVE, comment="ok")
    run_steps(instance)

    # then
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED
    assert_one_event_per_transition(instance)
    people = [
        (e.action, e.actor_label, e.actor_id, e.reason)
        for e in chain_of(instance)
        if not e.actor_label.startswith("system:")
    ]
    assert people[0] == ("instance.started", "user:staff", users.staff.pk, "")
    assert ("instance.paused", "user:operator", users.operator.pk, "customer called") in people
    assert ("instance.resumed", "user:operator", users.operator.pk, "call done") in people
    assert ("task.completed", "user:manager", users.manager.pk, "ok") in people


def test_a_completed_instance_has_an_intact_hash_chain(run_steps):
    """The events of a finished instance link up seq 1..n, and the instance holds the chain's head."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory(fail_payment=1))
    run_steps(instance, advance=True)
    instance.refresh_from_db()

    # when
    events = chain_of(instance)
    broken = verify_chain(events)

    # then
    assert broken is None
    assert [e.seq for e in events] == list(range(1, instance.audit_seq + 1))
    assert events[-1].hash == instance.audit_head
    assert events[0].prev_hash == ""


@pytest.fixture
def audited_instance(run_steps) -> WorkflowInstance:
    instance = instance_start("order_fulfilment", OrderInputFactory())
    run_steps(instance)
    return instance


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda event: AuditEvent.objects.filter(pk=event.pk).update(reason="rewritten"), id="update"),
        pytest.param(lambda event: event.save(), id="save"),
        pytest.param(lambda event: event.delete(), id="delete"),
        pytest.param(lambda event: AuditEvent.objects.filter(pk=event.pk).delete(), id="queryset-delete"),
        pytest.param(
            lambda event: connection.cursor().execute(
                "UPDATE orchestrator_auditevent SET payload = '{}'::jsonb WHERE id = %s", [event.pk]
            ),
            id="raw-sql",
        ),
    ],
)
def test_the_database_refuses_to_change_or_delete_an_event(audited_instance, tamper):
    """UPDATE and DELETE of an audit row fail in PostgreSQL itself (a trigger), and the row stays as it was."""
    # given
    event = chain_of(audited_instance)[2]
    before = AuditEvent.objects.filter(pk=event.pk).values().get()

    # when
    with pytest.raises(ProgrammingError, match="append-only"), transaction.atomic():
        tamper(event)

    # then
    assert AuditEvent.objects.filter(pk=event.pk).values().get() == before
    assert verify_chain(chain_of(audited_instance)) is None


def test_a_tampered_payload_is_detected_at_its_seq(audited_instance):
    """Changing an event's content (here a copy in memory: the table refuses UPDATE) breaks the chain at that seq."""
    # given
    events = chain_of(audited_instance)
    target = next(e for e in events if e.action == "step.succeeded")
    forged = copy.deepcopy(events)
    forged[target.seq - 1].payload["result"] = {"reservation_id": "INV-forged"}

    # when
    broken = verify_chain(forged)

    # then
    assert broken is not None
    assert (broken.seq, broken.event_id, broken.problem) == (target.seq, target.pk, "content does not match its hash")


def test_a_removed_event_is_detected_as_missing(audited_instance):
    """Dropping an event from the chain is reported as the first missing seq."""
    # given
    events = chain_of(audited_instance)

    # when
    broken = verify_chain(events[:3] + events[4:])

    # then
    assert broken is not None
    assert (broken.seq, broken.event_id) == (4, None)
    assert broken.problem == f"event #4 is missing: the chain goes on at #5 (event id {events[4].pk})"


def test_a_rehashed_forgery_is_caught_by_the_next_link(audited_instance):
    """Rewriting an event and recomputing its own hash still breaks the next event's prev_hash."""
    # given
    events = copy.deepcopy(chain_of(audited_instance))
    events[1].reason = "nothing to see"
    events[1].hash = event_hash(events[1])

    # when
    broken = verify_chain(events)

    # then
    assert broken is not None
    assert (broken.seq, broken.problem) == (3, "prev_hash does not match the previous event")


def test_a_standalone_chain_keeps_its_head_and_verifies():
    """Events that belong to no instance (account changes) form their own chain, its head kept on AuditChain."""
    # given
    actor = Actor.system("accounts")

    # when
    first = append_standalone(ACCOUNTS_CHAIN, actor=actor, action="user.created", subject_type="user", subject_id=1)
    second = append_standalone(ACCOUNTS_CHAIN, actor=actor, action="user.changed", subject_type="user", subject_id=1)

    # then
    events = list(AuditEvent.objects.filter(chain=ACCOUNTS_CHAIN).order_by("seq"))
    assert [e.pk for e in events] == [first.pk, second.pk]
    assert events[1].prev_hash == events[0].hash
    assert events[0].instance_id is None
    assert verify_chain(events) is None
    head = AuditChain.objects.get(name=ACCOUNTS_CHAIN)
    assert (head.seq, head.head) == (2, second.hash)


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_to_a_standalone_chain_stay_linear():
    """Writers in parallel threads queue on the chain's head row: no seq is taken twice, no link is broken."""
    # given
    actor = Actor.system("accounts")
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(5):
                append_standalone("test-threads", actor=actor, action="t", subject_type="user", subject_id=n * 10 + i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    # when
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # then
    assert errors == []
    events = list(AuditEvent.objects.filter(chain="test-threads").order_by("seq"))
    assert [e.seq for e in events] == list(range(1, 21))
    assert verify_chain(events) is None
