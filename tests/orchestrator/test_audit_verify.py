"""baton_verify_audit against someone who can bypass the append-only triggers (the database's owner).

Each test tampers as the owner would (``session_replication_role = replica`` turns the triggers off for the
session), then runs the real command, which must fail naming the chain, the seq and the problem.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from orchestrator.audit import (
    ACCOUNTS_CHAIN,
    Actor,
    _event,
    append_standalone,
    chain_name,
    event_hash,
    keying_record,
    signing_key,
    verify_trail,
)
from orchestrator.audit_actions import AuditAction
from orchestrator.models import AuditChain, AuditEvent, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import OrderInputFactory

pytestmark = pytest.mark.django_db

KEY_A = ("old", "a" * 40)
KEY_B = ("new", "b" * 40)


@contextlib.contextmanager
def triggers_off() -> Iterator[None]:
    """What the tables' owner (or a superuser) can do: switch the append-only triggers off for its session."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL session_replication_role = origin")


def sql(statement: str, params: list | None = None) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def events_of(instance: WorkflowInstance) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(chain=chain_name(instance.pk)).order_by("seq"))


def verify_fails(*args: str) -> str:
    with pytest.raises(CommandError) as failure:
        call_command("baton_verify_audit", *args)
    return str(failure.value)


def verify_passes(*args: str) -> None:
    call_command("baton_verify_audit", *args)


def set_head(instance: WorkflowInstance, event: AuditEvent) -> None:
    """Move the head stored on the instance to ``event`` (the application role may do this: it updates rows)."""
    WorkflowInstance.objects.filter(pk=instance.pk).update(audit_seq=event.seq, audit_head=event.hash)


@pytest.fixture
def instance(run_steps) -> WorkflowInstance:
    """An order that ran a few steps: a chain of a handful of keyed events, its head on the instance."""
    started = instance_start("order_fulfilment", OrderInputFactory())
    run_steps(started)
    started.refresh_from_db()
    assert started.audit_seq >= 6
    verify_passes()
    return started


def test_an_untouched_trail_verifies_and_says_what_it_checked(instance, capsys):
    """Given an intact trail, verify succeeds and reports chains and events counted."""
    # given
    total = AuditEvent.objects.count()
    chains = AuditEvent.objects.values("chain").distinct().count()

    # when
    call_command("baton_verify_audit")

    # then
    out = capsys.readouterr().out
    assert f"{chains} chains, {total} events (0 legacy, unkeyed): all links, keys and heads verify." in out


def test_an_edited_event_is_named(instance):
    """Given an event whose reason the owner rewrote in place, verify names that chain and seq."""
    # given
    target = events_of(instance)[2]
    with triggers_off():
        sql("UPDATE orchestrator_auditevent SET reason = 'nothing happened' WHERE id = %s", [target.pk])

    # when
    message = verify_fails()

    # then
    assert f"chain instance:{instance.pk} seq 3 (event id {target.pk}): content does not match its hash" in message


def test_a_deleted_event_is_named(instance):
    """Given an event deleted from the middle of a chain, verify names the missing seq."""
    # given
    target = events_of(instance)[3]
    with triggers_off():
        sql("DELETE FROM orchestrator_auditevent WHERE id = %s", [target.pk])

    # when
    message = verify_fails()

    # then
    assert f"chain instance:{instance.pk} seq 4" in message
    assert "event #4 is missing" in message


def _forge_next(instance: WorkflowInstance, key_id: str, secret: bytes | None) -> AuditEvent:
    """An event appended by someone without the key: chained correctly, its hash made with what they have."""
    last = events_of(instance)[-1]
    forged = _event(
        last.chain,
        last.seq + 1,
        last.hash,
        instance.pk,
        now=last.occurred_at,
        actor=Actor.system("worker"),
        action="step.succeeded",
        subject_type="step",
        subject_id=last.subject_id,
        from_state="running",
        to_state="succeeded",
        reason="",
        payload={"result": {"refund": "to attacker"}},
        request_meta=None,
    )
    forged.key_id = key_id
    forged.hash = event_hash(forged, secret)
    forged.save(force_insert=True)
    set_head(instance, forged)
    return forged


@pytest.mark.parametrize(
    ("key_id", "secret", "problem"),
    [
        pytest.param(None, b"a guessed key that is not the real one", "content does not match its hash", id="guess"),
        pytest.param("", None, "unkeyed event after a keyed one", id="unkeyed-downgrade"),
        pytest.param("attacker", b"x" * 32, "signed with key 'attacker', which BATON_AUDIT_KEYS", id="own-key"),
    ],
)
def test_a_forged_event_is_named(instance, key_id, secret, problem):
    """Given an event inserted at the head (the stored head moved to it too) by someone who lacks the audit key,
    verify names it: the current key's id with a guessed secret, a downgrade to plain SHA-256 and a key of one's
    own all fail."""
    # given
    forged = _forge_next(instance, signing_key()[0] if key_id is None else key_id, secret)

    # when
    message = verify_fails()

    # then
    assert f"chain instance:{instance.pk} seq {forged.seq} (event id {forged.pk}): {problem}" in message


def test_a_chain_rewritten_whole_as_plain_sha256_is_not_legacy(instance):
    """Given a whole chain recomputed without the key (every event unkeyed, so no keyed event precedes them),
    verify refuses them: they were written after keying began, past the legacy boundary."""
    # given
    events = events_of(instance)
    with triggers_off():
        previous = ""
        for event in events:
            event.prev_hash, event.key_id = previous, ""
            event.reason = "rewritten"
            event.hash = event_hash(event)
            sql(
                "UPDATE orchestrator_auditevent SET prev_hash = %s, key_id = '', reason = %s, hash = %s WHERE id = %s",
                [event.prev_hash, event.reason, event.hash, event.pk],
            )
            previous = event.hash
    set_head(instance, events[-1])

    # when
    message = verify_fails()

    # then
    assert (
        f"chain instance:{instance.pk} seq 1 (event id {events[0].pk}): unkeyed event written after keying" in message
    )


@pytest.mark.parametrize("across", [False, True], ids=["within-a-chain", "across-chains"])
def test_swapped_events_are_named(instance, run_steps, across):
    """Given two events exchanged (their seqs within one chain, or their chains between two instances), verify
    names the first place where a link no longer holds."""
    # given
    events = events_of(instance)
    if across:
        other = instance_start("order_fulfilment", OrderInputFactory())
        run_steps(other)
        theirs = events_of(other)[2]
        with triggers_off():
            sql("UPDATE orchestrator_auditevent SET chain = 'x', seq = 0 WHERE id = %s", [events[2].pk])
            sql(
                "UPDATE orchestrator_auditevent SET chain = %s, instance_id = %s WHERE id = %s",
                [events[2].chain, instance.pk, theirs.pk],
            )
            sql(
                "UPDATE orchestrator_auditevent SET chain = %s, seq = 3, instance_id = %s WHERE id = %s",
                [theirs.chain, other.pk, events[2].pk],
            )
        expected = [f"chain instance:{instance.pk} seq 3 (event id {theirs.pk})", f"chain instance:{other.pk} seq 3"]
    else:
        with triggers_off():
            sql("UPDATE orchestrator_auditevent SET seq = 0 WHERE id = %s", [events[1].pk])
            sql("UPDATE orchestrator_auditevent SET seq = 2 WHERE id = %s", [events[2].pk])
            sql("UPDATE orchestrator_auditevent SET seq = 3 WHERE id = %s", [events[1].pk])
        expected = [f"chain instance:{instance.pk} seq 2 (event id {events[2].pk})"]

    # when
    message = verify_fails()

    # then
    for where in expected:
        assert where in message


def test_a_cut_off_tail_is_named_against_the_stored_head(instance):
    """Given the last events of a chain deleted (the head on the instance left as it was), verify compares the
    chain with its stored head and names the first missing seq."""
    # given
    events = events_of(instance)
    with triggers_off():
        sql("DELETE FROM orchestrator_auditevent WHERE id = ANY(%s)", [[e.pk for e in events[-2:]]])

    # when
    message = verify_fails()

    # then
    assert (
        f"chain instance:{instance.pk} seq {len(events) - 1}: cut off: the chain ends at seq {len(events) - 2}, "
        f"its stored head is at seq {len(events)}"
    ) in message


@pytest.mark.parametrize("reset_head", [False, True], ids=["head-kept", "head-reset"])
def test_a_chain_deleted_whole_is_named(instance, reset_head):
    """Given every event of an instance's chain deleted, its stored head names it; with the head reset to nothing
    too, the instance itself does (every instance is started with an event)."""
    # given
    with triggers_off():
        sql("DELETE FROM orchestrator_auditevent WHERE chain = %s", [chain_name(instance.pk)])
    if reset_head:
        WorkflowInstance.objects.filter(pk=instance.pk).update(audit_seq=0, audit_head="")

    # when
    message = verify_fails()

    # then
    if reset_head:
        expected = "the instance has no events and no head: chain removed"
    else:
        expected = f"cut off: no events, its stored head is at seq {instance.audit_seq}"
    assert f"chain instance:{instance.pk} seq 1: {expected}" in message


def test_an_event_past_the_stored_head_is_named(instance):
    """Given a correctly signed event appended without moving the stored head (a lost or forged write), verify
    names it as past the head."""
    # given
    last = events_of(instance)[-1]
    forged = _forge_next(instance, signing_key()[0], None)
    set_head(instance, last)

    # when
    message = verify_fails()

    # then
    assert (
        f"chain instance:{instance.pk} seq {forged.seq} (event id {forged.pk}): events run past the stored head "
        f"(seq {last.seq})"
    ) in message


def test_a_standalone_chain_is_compared_with_its_audit_chain_row():
    """Given an accounts chain whose tail the owner deleted, its AuditChain head names the cut."""
    # given
    actor = Actor.system("accounts")
    for n in range(4):
        append_standalone(ACCOUNTS_CHAIN, actor=actor, action="user.changed", subject_type="user", subject_id=n)
    verify_passes()
    last = AuditEvent.objects.get(chain=ACCOUNTS_CHAIN, seq=4)
    with triggers_off():
        sql("DELETE FROM orchestrator_auditevent WHERE id = %s", [last.pk])

    # when
    message = verify_fails()

    # then
    assert "chain accounts seq 4: cut off: the chain ends at seq 3, its stored head is at seq 4" in message


def test_every_broken_chain_is_reported_not_only_the_first(instance, run_steps):
    """Given two instances tampered with differently, verify names both."""
    # given
    other = instance_start("order_fulfilment", OrderInputFactory())
    run_steps(other)
    with triggers_off():
        sql("UPDATE orchestrator_auditevent SET reason = 'x' WHERE id = %s", [events_of(instance)[1].pk])
        sql("DELETE FROM orchestrator_auditevent WHERE id = %s", [events_of(other)[1].pk])

    # when
    message = verify_fails()

    # then
    assert f"chain instance:{instance.pk} seq 2" in message
    assert f"chain instance:{other.pk} seq 2" in message
    assert "2 problems" in message


def test_one_chain_can_be_verified_alone(instance, run_steps):
    """--instance and --chain verify one chain: a broken neighbour does not fail it, its own break does."""
    # given
    other = instance_start("order_fulfilment", OrderInputFactory())
    run_steps(other)
    with triggers_off():
        sql("UPDATE orchestrator_auditevent SET reason = 'x' WHERE id = %s", [events_of(other)[1].pk])

    # when / then
    verify_passes("--instance", str(instance.pk))
    verify_passes("--chain", chain_name(instance.pk))
    assert f"chain instance:{other.pk} seq 2" in verify_fails("--instance", str(other.pk))
    assert "has no events" in verify_fails("--chain", "instance:999999999")


def test_verification_streams_in_chunks(instance, run_steps, monkeypatch):
    """With a chunk smaller than the number of chains, every chain is still checked against its stored head."""
    # given
    others = [instance_start("order_fulfilment", OrderInputFactory()) for _ in range(4)]
    for other in others:
        run_steps(other)
    monkeypatch.setattr("orchestrator.audit.VERIFY_CHUNK", 2)
    last = events_of(others[-1])[-1]
    with triggers_off():
        sql("DELETE FROM orchestrator_auditevent WHERE id = %s", [last.pk])

    # when
    report = verify_trail()

    # then
    assert report.chains >= 6  # five instances and the audit chain
    assert [str(b) for b in report.breaks] == [
        f"chain instance:{others[-1].pk} seq {last.seq}: cut off: the chain ends at seq {last.seq - 1}, "
        f"its stored head is at seq {last.seq}"
    ]


# --- keys: legacy events, rotation ---------------------------------------------------------------------------


def legacy_append(chain: str, n: int) -> list[AuditEvent]:
    """Events as the code before keying wrote them: plain SHA-256, no key id (a standalone chain)."""
    AuditChain.objects.get_or_create(name=chain)
    written = []
    for _ in range(n):
        head = AuditChain.objects.get(name=chain)
        event = _event(
            chain,
            head.seq + 1,
            head.head,
            None,
            now=timezone.now(),
            actor=Actor.system("old"),
            action="user.changed",
            subject_type="user",
            subject_id=1,
            from_state="",
            to_state="",
            reason="",
            payload=None,
            request_meta=None,
        )
        event.key_id = ""
        event.hash = event_hash(event)
        event.save(force_insert=True)
        AuditChain.objects.filter(name=chain).update(seq=event.seq, head=event.hash)
        written.append(event)
    return written


def test_legacy_events_still_verify_and_are_reported_as_legacy(capsys):
    """Given unkeyed events written before keying and the keying record naming them, verify accepts them as
    legacy (and says how many); keyed events may follow them in the same chain."""
    # given
    old = legacy_append("legacy-test", 3)
    keying_record(legacy_through=old[-1].pk)
    append_standalone(
        "legacy-test", actor=Actor.system("new"), action="user.changed", subject_type="user", subject_id=1
    )

    # when
    call_command("baton_verify_audit")

    # then
    out = capsys.readouterr().out
    assert "(3 legacy, unkeyed)" in out
    assert f"events up to id {old[-1].pk} may be legacy" in out


def test_unkeyed_events_after_the_legacy_boundary_are_named():
    """Given the keying record, an unkeyed event written later (old code still running, or a forger) is a break."""
    # given
    keying_record(legacy_through=AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0)
    late = legacy_append("legacy-test", 1)[0]

    # when
    message = verify_fails()

    # then
    assert f"chain legacy-test seq 1 (event id {late.pk}): unkeyed event written after keying began" in message


def test_removing_the_keying_record_does_not_make_events_legacy():
    """Given legacy events whose keying record the owner deleted, they are breaks, not silently legacy: no
    unkeyed event is accepted without a keyed record vouching for it."""
    # given
    old = legacy_append("legacy-test", 2)
    keying_record(legacy_through=old[-1].pk)
    verify_passes()
    with triggers_off():
        sql("DELETE FROM orchestrator_auditevent WHERE chain = 'audit'")
        sql("DELETE FROM orchestrator_auditchain WHERE name = 'audit'")

    # when
    message = verify_fails()

    # then
    assert f"chain legacy-test seq 1 (event id {old[0].pk}): unkeyed event written after keying began" in message


def test_a_rotated_key_keeps_verifying_what_it_signed():
    """Given events signed with key "old", then "new" made current with "old" kept, both verify; once "old" is
    dropped from the settings, its events are named as signed by a key that is not configured."""
    # given
    actor = Actor.system("accounts")
    with override_settings(BATON_AUDIT_KEYS=[KEY_A]):
        first = append_standalone("rotation", actor=actor, action="a", subject_type="user", subject_id=1)
        keying_record(legacy_through=0)
    with override_settings(BATON_AUDIT_KEYS=[KEY_B, KEY_A]):
        second = append_standalone("rotation", actor=actor, action="b", subject_type="user", subject_id=1)

        # when
        verify_passes("--chain", "rotation")

    # then
    assert (first.key_id, second.key_id) == ("old", "new")
    with override_settings(BATON_AUDIT_KEYS=[KEY_B]):
        message = verify_fails("--chain", "rotation")
    assert f"chain rotation seq 1 (event id {first.pk}): signed with key 'old', which BATON_AUDIT_KEYS" in message


def test_the_hash_is_a_keyed_mac_not_a_digest_anyone_can_recompute(instance):
    """An event's hash cannot be recomputed from the database's content alone: another key gives another hash."""
    # given
    event = events_of(instance)[0]

    # when
    with_other_key = event_hash(event, b"another key of thirty-two bytes!")

    # then
    assert event.key_id == signing_key()[0]
    assert event_hash(event) == event.hash
    assert with_other_key != event.hash


def test_with_a_retired_key_removed_verify_names_what_it_cannot_check_and_still_checks_the_rest(run_steps):
    """Rotated from "old" to "new", then "old" dropped from the settings: verify names the events it cannot check
    (how many, which seqs, which key) without crashing, and still verifies the events signed with "new", so an
    edit made to them after the rotation is not hidden behind the first unverifiable event."""
    # given
    actor = Actor.system("accounts")
    with override_settings(BATON_AUDIT_KEYS=[KEY_A]):
        keying_record(legacy_through=0)
        for n in range(3):
            append_standalone("rotation", actor=actor, action="a", subject_type="user", subject_id=n)
    with override_settings(BATON_AUDIT_KEYS=[KEY_B, KEY_A]):
        for n in range(3):
            append_standalone("rotation", actor=actor, action="b", subject_type="user", subject_id=n)
        verify_passes("--chain", "rotation")
    chain = list(AuditEvent.objects.filter(chain="rotation").order_by("seq"))
    with triggers_off():
        sql("UPDATE orchestrator_auditevent SET reason = 'nothing happened' WHERE id = %s", [chain[4].pk])

    # when
    with override_settings(BATON_AUDIT_KEYS=[KEY_B]):
        message = verify_fails()

    # then
    assert f"chain rotation seq 5 (event id {chain[4].pk}): content does not match its hash" in message
    assert (
        f"chain rotation seq 1 (event id {chain[0].pk}): signed with key 'old', which BATON_AUDIT_KEYS does not "
        "hold: 3 events, #1 to #3, cannot be verified"
    ) in message
    assert "chain audit seq 1" in message
    assert f"{AuditEvent.objects.count()} events" in message


def test_events_appended_while_verifying_are_verified_not_taken_for_a_cut_off_tail(instance, run_steps, monkeypatch):
    """Given a live trail, events appended after the stream's snapshot but before the heads are read (a sign-in
    during a daily verification) move a head past what the stream saw: they are read and checked, not reported as
    a cut-off chain. Found by bench/audit.py on a million events, where a sign-in landed mid-run."""

    # given: the accounts chain (streamed first) gets an event after its first event streamed
    def account_event() -> AuditEvent:
        return append_standalone(
            ACCOUNTS_CHAIN,
            actor=Actor.system("test"),
            action=AuditAction.USER_RENAMED,
            subject_type="user",
            subject_id=None,
        )

    account_event()
    assert AuditEvent.objects.order_by("chain", "seq").first().chain == ACCOUNTS_CHAIN
    monkeypatch.setattr("orchestrator.audit.VERIFY_CHUNK", 1)
    appended: list[int] = []

    def append_once(chains: int, events: int) -> None:
        if not appended:
            appended.append(account_event().seq)

    # when
    report = verify_trail(progress=append_once)

    # then
    assert appended
    assert report.breaks == []
    assert AuditEvent.objects.filter(chain=ACCOUNTS_CHAIN, seq=appended[0]).exists()


def test_a_real_cut_off_is_still_named_when_events_were_appended_meanwhile(instance, monkeypatch):
    """The same re-read finds nothing for a chain whose tail was deleted: it stays a cut-off chain."""
    # given
    events = events_of(instance)
    with triggers_off():
        sql("DELETE FROM orchestrator_auditevent WHERE id = %s", [events[-1].pk])
    monkeypatch.setattr("orchestrator.audit.VERIFY_CHUNK", 1)

    # when
    report = verify_trail(progress=lambda chains, seen: None)

    # then
    assert [str(b) for b in report.breaks] == [
        f"chain instance:{instance.pk} seq {len(events)}: cut off: the chain ends at seq {len(events) - 1}, "
        f"its stored head is at seq {len(events)}"
    ]


def test_a_deleted_event_is_not_named_by_the_id_of_the_one_after_it(instance):
    """Given an event deleted from the middle, the break names the missing seq and, as where the chain goes on, the
    next event present by its own seq and id: never the next event's id as if it were the missing one's."""
    # given
    events = events_of(instance)
    with triggers_off():
        sql("DELETE FROM orchestrator_auditevent WHERE id = %s", [events[3].pk])

    # when
    [broken] = verify_trail().breaks

    # then
    assert (broken.seq, broken.event_id) == (4, None)
    assert broken.problem == f"event #4 is missing: the chain goes on at #5 (event id {events[4].pk})"


def test_an_event_inserted_past_the_stored_head_is_named_by_its_id(instance):
    """Given an event inserted directly in PostgreSQL after the last one (the stored head not moved), verify names
    the inserted row, so an auditor can find it."""
    # given
    last = events_of(instance)[-1]
    forged = _forge_next(instance, signing_key()[0], None)
    set_head(instance, last)

    # when
    [broken] = verify_trail().breaks

    # then
    assert (broken.seq, broken.event_id) == (forged.seq, forged.pk)
    assert broken.problem == f"events run past the stored head (seq {last.seq})"


def test_an_event_inserted_before_the_first_is_named_as_such(instance):
    """Given a row inserted directly in PostgreSQL at seq 0 of a chain (the unique (chain, seq) lets it in), verify
    names it as an insertion before the chain's first event, not as a repeat of an event that appears once."""
    # given
    first = events_of(instance)[0]
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO orchestrator_auditevent (chain, seq, prev_hash, hash, key_id, occurred_at, actor_label, "
            "action, instance_id, subject_type, from_state, to_state, reason, payload, request_meta, request_id) "
            "SELECT chain, 0, '', hash, key_id, occurred_at, actor_label, action, instance_id, subject_type, "
            "from_state, to_state, 'inserted', payload, request_meta, request_id FROM orchestrator_auditevent "
            "WHERE id = %s RETURNING id",
            [first.pk],
        )
        inserted = cursor.fetchone()[0]

    # when
    [broken] = verify_trail().breaks

    # then
    assert (broken.chain, broken.seq, broken.event_id) == (first.chain, 0, inserted)
    assert "appears twice" not in broken.problem
    assert broken.problem == "event #0 comes before the chain's first event (#1): inserted"


def test_events_inserted_into_a_chain_that_has_no_head_are_named_by_the_first_id():
    """Given events inserted directly under a chain name nothing holds the head of (no instance, no AuditChain row),
    verify names the chain and its first row."""
    # given
    append_standalone("bogus", actor=Actor.system("t"), action="user.changed", subject_type="user", subject_id=1)
    append_standalone("bogus", actor=Actor.system("t"), action="user.changed", subject_type="user", subject_id=2)
    AuditChain.objects.filter(name="bogus").delete()
    first = AuditEvent.objects.get(chain="bogus", seq=1)

    # when
    [broken] = verify_trail().breaks

    # then
    assert (broken.chain, broken.seq, broken.event_id) == ("bogus", 1, first.pk)
    assert "no instance or AuditChain row holds this chain's head" in broken.problem
