"""The upgrade to keyed events: a trail written before it still verifies, as legacy, and keying goes on from there."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from orchestrator.audit import Actor, _event, append_standalone, event_hash
from orchestrator.models import AuditEvent

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE_KEYING = "0006_instance_paused_at"
COLUMNS = [
    "chain",
    "seq",
    "prev_hash",
    "hash",
    "occurred_at",
    "actor_label",
    "action",
    "subject_type",
    "subject_id",
    "from_state",
    "to_state",
    "reason",
    "payload",
    "request_meta",
]

INSERT = (
    f"INSERT INTO orchestrator_auditevent ({', '.join(COLUMNS)}) "  # noqa: S608 - fixed column names
    f"VALUES ({', '.join(['%s'] * len(COLUMNS))}) RETURNING id"
)


def wipe_trail() -> None:
    """As the owner, triggers off: a database that never had keyed events (the state before the upgrade)."""
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        cursor.execute("DELETE FROM orchestrator_auditevent")
        cursor.execute("DELETE FROM orchestrator_auditchain")
        cursor.execute("SET session_replication_role = origin")


def write_as_before_keying(chain: str, count: int) -> list[int]:
    """Events as the code before keying wrote them: plain SHA-256 over the same canonical JSON, into the table as
    it was then (no key_id column), and the head on the AuditChain row."""
    ids, head = [], ""
    with connection.cursor() as cursor:
        for seq in range(1, count + 1):
            event = _event(
                chain,
                seq,
                head,
                None,
                now=timezone.now(),
                actor=Actor.system("old"),
                action="user.changed",
                subject_type="user",
                subject_id=seq,
                from_state="",
                to_state="",
                reason="before keying",
                payload={"n": seq},
                request_meta=None,
            )
            event.key_id = ""
            event.hash = event_hash(event)
            values = [getattr(event, c) for c in COLUMNS]
            values[COLUMNS.index("payload")] = f'{{"n": {seq}}}'
            values[COLUMNS.index("request_meta")] = "{}"
            cursor.execute(INSERT, values)
            ids.append(cursor.fetchone()[0])
            head = event.hash
        cursor.execute(
            "INSERT INTO orchestrator_auditchain (name, seq, head) VALUES (%s, %s, %s)", [chain, count, head]
        )
    return ids


@pytest.fixture(autouse=True)
def _every_app_migrated_again():
    """Migrating the engine back also unapplies what depends on it (demo.0001 and its ledger table), and a
    refused unapply leaves the migrations before the refused one undone: put every app back for later tests."""
    yield
    call_command("migrate", verbosity=0)


def test_a_trail_written_before_keying_verifies_as_legacy_after_the_migration(capsys):
    """Given the database at the migration before keying and events written the old way, migrating records them
    as legacy: verify passes and counts them, and keyed events continue the same chain."""
    # given
    wipe_trail()
    call_command("migrate", "orchestrator", BEFORE_KEYING, verbosity=0)
    try:
        old = write_as_before_keying("accounts", 3)
    finally:
        # when: every app, since going back below 0007 also unapplied demo.0001, which depends on it
        call_command("migrate", verbosity=0)
    append_standalone("accounts", actor=Actor.system("new"), action="user.changed", subject_type="user", subject_id=9)
    call_command("baton_verify_audit")

    # then
    out = capsys.readouterr().out
    assert f"events up to id {max(old)} may be legacy" in out
    assert "(3 legacy, unkeyed): all links, keys and heads verify." in out
    keyed = AuditEvent.objects.get(chain="accounts", seq=4)
    assert keyed.key_id != ""
    assert list(AuditEvent.objects.filter(pk__in=old).values_list("key_id", flat=True)) == ["", "", ""]


def test_unapplying_the_keying_is_refused_while_keyed_events_exist():
    """Migrating back below the keying would strip every event's key id; it is refused and nothing changes."""
    # given
    append_standalone("accounts", actor=Actor.system("t"), action="user.changed", subject_type="user", subject_id=1)

    # when
    with pytest.raises(RuntimeError, match="keyed audit events would lose their key id"):
        call_command("migrate", "orchestrator", BEFORE_KEYING, verbosity=0)

    # then
    assert AuditEvent.objects.filter(chain="accounts").exclude(key_id="").count() == 1
    call_command("baton_verify_audit")
