"""Seals: chain heads signed and written outside the database, and verify --seals against a rewritten database."""

from __future__ import annotations

import json
import logging
import re
import tracemalloc
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone

from orchestrator import tasks
from orchestrator.audit import ACCOUNTS_CHAIN, Actor, append_standalone, chain_name, event_hash, signing_key
from orchestrator.audit_seals import SEAL_PROBLEMS_MAX, _mac, read_seals, seal
from orchestrator.models import AuditChain, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import OrderInputFactory
from tests.orchestrator.test_audit_verify import events_of, set_head, sql, triggers_off

pytestmark = pytest.mark.django_db


@pytest.fixture
def instance(run_steps) -> WorkflowInstance:
    started = instance_start("order_fulfilment", OrderInputFactory())
    run_steps(started)
    started.refresh_from_db()
    return started


@pytest.fixture
def seal_path(tmp_path) -> str:
    return str(tmp_path / "seals.jsonl")


def verify(*args: str) -> str | None:
    """The command's failure message, or None when it passes."""
    try:
        call_command("baton_verify_audit", *args)
    except CommandError as failure:
        return str(failure)
    return None


def test_a_seal_is_signed_json_lines_appended_to_the_file(instance, seal_path):
    """Two seals append two signed lines holding the heads; reading them back pins each chain's head."""
    # given
    append_standalone(ACCOUNTS_CHAIN, actor=Actor.system("t"), action="user.changed", subject_type="user", subject_id=1)

    # when
    first = seal(full=True, path=seal_path)
    second = seal(full=True, path=seal_path)

    # then
    lines = [json.loads(line) for line in Path(seal_path).read_text().splitlines()]
    assert len(lines) == 2
    assert first == second == len(lines[0]["heads"])
    assert [chain_name(instance.pk), instance.audit_seq, instance.audit_head] in lines[0]["heads"]
    assert {line["key"] for line in lines} == {signing_key()[0]}
    read = read_seals(seal_path)
    assert read.problems == []
    assert read.sealed[chain_name(instance.pk)][instance.audit_seq][0] == instance.audit_head
    assert verify("--seals", seal_path) is None


def test_a_tail_cut_off_with_its_head_moved_back_is_caught_only_by_the_seal(instance, seal_path):
    """Given a seal, then the last events deleted AND the stored head moved back to the new last event (the
    database is consistent again), verify alone passes but verify --seals names the cut."""
    # given
    seal(full=True, path=seal_path)
    events = events_of(instance)
    with triggers_off():
        sql("DELETE FROM orchestrator_auditevent WHERE id = ANY(%s)", [[e.pk for e in events[-2:]]])
    set_head(instance, events[-3])

    # when
    without = verify()
    with_seals = verify("--seals", seal_path)

    # then
    assert without is None
    assert with_seals is not None
    assert f"chain instance:{instance.pk} seq {len(events) - 1}: cut off: sealed at seq {len(events)}" in with_seals, (
        with_seals
    )


def test_history_recomputed_with_a_stolen_key_after_the_seal_is_caught(instance, seal_path):
    """Given a seal, then an event rewritten and every later hash recomputed with the real key (stolen after the
    seal) and the head moved, verify alone passes but verify --seals names the first rewritten seq."""
    # given
    seal(full=True, path=seal_path)
    events = events_of(instance)
    with triggers_off():
        previous = events[1].hash
        for event in events[2:]:
            event.prev_hash = previous
            if event.seq == 3:
                event.reason = "approved by nobody"
            event.hash = event_hash(event)
            sql(
                "UPDATE orchestrator_auditevent SET prev_hash = %s, reason = %s, hash = %s WHERE id = %s",
                [event.prev_hash, event.reason, event.hash, event.pk],
            )
            previous = event.hash
    set_head(instance, events[-1])

    # when
    without = verify()
    with_seals = verify("--seals", seal_path)

    # then
    assert without is None
    assert with_seals is not None
    assert (
        f"chain instance:{instance.pk} seq {len(events)} (event id {events[-1].pk}): differs from the head sealed"
        in (with_seals)
    )


def test_a_standalone_chain_deleted_with_its_head_row_is_caught_by_the_seal(instance, seal_path):
    """Given a seal, then the accounts chain's events and its AuditChain row deleted (nothing in the database
    says it existed), verify alone passes but the seal still names it."""
    # given
    for n in range(3):
        append_standalone(
            ACCOUNTS_CHAIN, actor=Actor.system("t"), action="user.changed", subject_type="user", subject_id=n
        )
    seal(full=True, path=seal_path)
    with triggers_off():
        sql("DELETE FROM orchestrator_auditevent WHERE chain = %s", [ACCOUNTS_CHAIN])
    AuditChain.objects.filter(name=ACCOUNTS_CHAIN).delete()

    # when
    without = verify()
    with_seals = verify("--seals", seal_path)

    # then
    assert without is None
    assert with_seals is not None
    assert "chain accounts seq 1: cut off: sealed at seq 3" in with_seals


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda line: line.replace('"heads":[[', '"heads":[["instance:0",1,"00"],['), id="added-head"),
        pytest.param(lambda line: re.sub(r'"key":"[^"]*"', '"key":"other"', line), id="key-id"),
        pytest.param(lambda line: line[:20], id="truncated"),
    ],
)
def test_a_tampered_seal_line_is_named_and_not_trusted(instance, seal_path, tamper):
    """A seal line whose content or key changed, or that is not a seal at all, is reported by its line number."""
    # given
    seal(full=True, path=seal_path)
    line = Path(seal_path).read_text().strip()
    Path(seal_path).write_text(tamper(line) + "\n")

    # when
    message = verify("--seals", seal_path)

    # then
    assert message is not None
    assert "seal line 1:" in message
    assert "instance:0" not in json.dumps(read_seals(seal_path).sealed)


def test_the_periodic_seal_covers_recent_changes_and_standalone_chains(instance, run_steps, seal_path):
    """The beat task seals chains changed within two intervals and every standalone chain; an instance untouched
    for longer waits for the daily full seal."""
    # given
    idle = instance_start("order_fulfilment", OrderInputFactory())
    run_steps(idle)
    WorkflowInstance.objects.filter(pk=idle.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    append_standalone(ACCOUNTS_CHAIN, actor=Actor.system("t"), action="user.changed", subject_type="user", subject_id=1)

    # when
    with override_settings(BATON_AUDIT_SEAL_PATH=seal_path):
        tasks.audit_seal()
        sealed_recent = read_seals(seal_path).sealed
        tasks.audit_seal(full=True)
        sealed_all = read_seals(seal_path).sealed

    # then
    assert chain_name(instance.pk) in sealed_recent
    assert ACCOUNTS_CHAIN in sealed_recent
    assert chain_name(idle.pk) not in sealed_recent
    assert chain_name(idle.pk) in sealed_all
    schedule = settings.CELERY_BEAT_SCHEDULE
    assert schedule["baton-audit-seal"]["task"] == "orchestrator.tasks.audit_seal"
    assert schedule["baton-audit-seal"]["schedule"] == settings.BATON_AUDIT_SEAL_INTERVAL * 60


def test_without_a_seal_path_seals_go_to_the_log_and_a_copied_log_verifies(instance, caplog, tmp_path):
    """With BATON_AUDIT_SEAL_PATH empty the seal is logged; a log stream saved to a file reads as seals."""
    # given
    caplog.set_level(logging.INFO, logger="baton.audit.seal")

    # when
    with override_settings(BATON_AUDIT_SEAL_PATH=""):
        call_command("baton_audit_seal", "--full")

    # then
    logged = [r.getMessage() for r in caplog.records if r.name == "baton.audit.seal"]
    assert len(logged) == 1
    copy = tmp_path / "from-log.jsonl"
    copy.write_text("".join(f"2026-11-29 21:00:00 INFO baton.audit.seal {line}\n" for line in logged))
    assert read_seals(str(copy)).sealed[chain_name(instance.pk)][instance.audit_seq][0] == instance.audit_head


def test_seals_are_split_into_lines_and_each_line_verifies_alone(run_steps, seal_path, monkeypatch):
    """Many chains make several lines, each signed on its own (a seal never needs one huge line)."""
    # given
    for _ in range(3):
        run_steps(instance_start("order_fulfilment", OrderInputFactory()))
    monkeypatch.setattr("orchestrator.audit_seals.SEAL_LINE_HEADS", 2)

    # when
    count = seal(full=True, path=seal_path)

    # then
    lines = [json.loads(line) for line in Path(seal_path).read_text().splitlines()]
    assert [line["part"] for line in lines] == list(range(len(lines)))
    assert sum(len(line["heads"]) for line in lines) == count
    chains = WorkflowInstance.objects.filter(audit_seq__gt=0).count() + AuditChain.objects.filter(seq__gt=0).count()
    assert count == chains >= 3
    assert read_seals(seal_path).problems == []


def test_two_seals_that_disagree_about_a_head_are_reported(instance, seal_path):
    """Given a seal, then history recomputed with the key and sealed again, the seal file itself shows that one
    chain's seq was sealed with two hashes, and the events no longer reach the first seal's head."""
    # given
    seal(full=True, path=seal_path)
    last = events_of(instance)[-1]
    with triggers_off():
        last.reason = "rewritten between seals"
        last.hash = event_hash(last)
        sql(
            "UPDATE orchestrator_auditevent SET reason = %s, hash = %s WHERE id = %s", [last.reason, last.hash, last.pk]
        )
    set_head(instance, last)
    seal(full=True, path=seal_path)

    # when
    message = verify("--seals", seal_path)

    # then
    assert message is not None
    assert f"chain instance:{instance.pk} seq {last.seq} was sealed at" in message
    assert f"chain instance:{instance.pk} seq {last.seq} (event id {last.pk}): differs from the head sealed" in message


def test_the_seal_file_is_appended_with_restricted_permissions(instance, seal_path):
    """The file is created readable by owner and group only, and a second seal appends to the first."""
    # when
    seal(full=True, path=seal_path)
    seal(path=seal_path)

    # then
    assert Path(seal_path).stat().st_mode & 0o777 == 0o640
    assert len(Path(seal_path).read_text().splitlines()) == 2


def test_junk_in_a_seal_file_is_named_by_line_and_the_good_seals_still_count(instance, seal_path):
    """A seal file that picked up bytes that are not text (a disk error, a binary log rotated into it), JSON that
    is not a record, and a line cut off mid-write: each bad line is named by its number, nothing crashes, and the
    good seals around them still pin the heads (a tail cut off afterwards is caught)."""
    # given
    seal(full=True, path=seal_path)
    with open(seal_path, "ab") as out:
        out.write(b'\xff\xfe\x00\x9c not text\n[1, 2, 3]\nnull\n"heads"\n')
    seal(full=True, path=seal_path)
    with open(seal_path, "ab") as out:
        out.write(b'{"v":1,"at":"2026-11-29T21:00:00+00:00","heads":[["instance:1",')
    # The writer died mid-line: the next seal is appended to that line (while it was the last line, with no line
    # end, it read as a seal still being written).
    seal(full=True, path=seal_path)
    events = events_of(instance)

    # when
    clean = verify("--seals", seal_path)
    with triggers_off():
        sql("DELETE FROM orchestrator_auditevent WHERE id = %s", [events[-1].pk])
    set_head(instance, events[-2])
    cut = verify("--seals", seal_path)

    # then
    for message in (clean, cut):
        assert message is not None
        for number in (2, 3, 4, 5, 7):
            assert f"seal line {number}:" in message, message
        assert "seal line 1:" not in message
        assert "seal line 6:" not in message
    assert "cut off" not in clean
    assert f"chain {chain_name(instance.pk)} seq {len(events)}: cut off: sealed at seq {len(events)}" in cut


@pytest.mark.parametrize("where", ["missing-directory", "a-directory"])
def test_a_seal_that_cannot_be_written_is_a_clear_command_error(instance, tmp_path, where):
    """``baton_audit_seal --path`` to a place it cannot write says so, naming the path, instead of a traceback."""
    # given
    target = tmp_path / "gone" / "seals.jsonl" if where == "missing-directory" else tmp_path

    # when
    with pytest.raises(CommandError) as failure:
        call_command("baton_audit_seal", "--full", "--path", str(target))

    # then
    assert f"cannot write seals to {target}" in str(failure.value)


@pytest.mark.parametrize("content", ["", "\n\n", "not a seal\n"], ids=["empty", "blank-lines", "junk-only"])
def test_a_seal_file_with_no_seal_in_it_does_not_pass(instance, seal_path, content):
    """A seal file truncated to nothing (or holding no valid seal) checks nothing: verify --seals fails and says
    so, rather than reporting a trail verified against seals. A file that is missing is named too."""
    # given
    Path(seal_path).write_text(content)

    # when
    message = verify("--seals", seal_path)
    missing = verify("--seals", seal_path + ".gone")

    # then
    assert message is not None
    assert f"no valid seal in {seal_path}" in message
    assert missing is not None
    assert f"cannot read seals from {seal_path}.gone" in missing


def test_a_seal_line_still_being_written_is_not_reported_as_junk(instance, seal_path):
    """The verification reads the seal file while beat may be appending to it: a last line cut short with no line
    end yet is a seal being written, skipped, not a damaged line that fails the run (and rings every auditor's
    bell). A cut-short line followed by others is still reported."""
    # given
    seal(full=True, path=seal_path)
    whole = Path(seal_path).read_text()
    with open(seal_path, "a") as out:
        out.write(whole[: len(whole) // 2])

    # when
    read = read_seals(seal_path)

    # then
    assert (read.lines, read.problems) == (1, [])
    with open(seal_path, "a") as out:
        out.write("\n" + whole)
    assert read_seals(seal_path).problems == ["seal line 2: not a seal record"]


# --- a large seal file: read line by line, memory bounded ---------------------------------------------------


def seal_line(chain: str, seq: int, head: str, at: str) -> str:
    """One signed seal line pinning ``chain`` at ``seq`` to ``head``, as ``seal`` writes it (with its line end)."""
    key_id, secret = signing_key()
    record = {"v": 1, "at": at, "full": False, "part": 0, "key": key_id, "heads": [[chain, seq, head]]}
    record["mac"] = _mac(record, secret)
    return json.dumps(record, separators=(",", ":")) + "\n"


def test_a_seal_file_of_200000_lines_with_junk_and_a_50_mb_line_is_read_in_bounded_memory(tmp_path):
    """A verification run read a line as long as the file let it (a 50 MB line without a line end, a binary file
    rotated into the stream: 100 MB of memory) and kept one message per bad line (200,000 of them: 18 MB); the
    file is read line by line, a line longer than any seal is read past, and past 100 problems the rest are
    counted. The seals it holds read as before, and a last line still being written is still no problem."""
    # given 200,002 lines: a 50 MB line, 20,000 seals of 100 chains, 27,000 lines of junk, blank padding, and a
    # seal cut short at the end (beat appending while this reads)
    path = tmp_path / "seals.jsonl"
    seals = [seal_line(f"instance:{c}", c + 1, f"{c:064x}", f"2026-01-01T00:00:{c % 60:02d}+00:00") for c in range(100)]
    with open(path, "w") as out:
        out.write("x" * 50_000_000 + "\n")  # line 1
        for block in range(2000):  # 2,000 blocks of 100 lines: every tenth the 100 seals, else junk and padding
            out.writelines(seals if block % 10 == 0 else ["not a seal\n"] * 15 + [" " * 200 + "\n"] * 85)
        out.write(seals[0][:100])  # the last line, with no line end yet

    # when
    tracemalloc.start()
    try:
        read = read_seals(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    # then memory held a line and the sealed heads, not the file
    assert peak < 8_000_000, f"peak {peak:,} bytes"
    # and the results are those of the seals in it: 20,000 good lines pinning 100 heads, every bad line reported
    assert read.lines == 20_000
    assert read.sealed == {
        f"instance:{c}": {c + 1: (f"{c:064x}", f"2026-01-01T00:00:{c % 60:02d}+00:00")} for c in range(100)
    }
    assert read.problems[0] == "seal line 1: longer than 1,048,576 bytes, not a seal record"
    assert read.problems[1] == "seal line 102: not a seal record"
    assert len(read.problems) == SEAL_PROBLEMS_MAX + 1
    assert read.problems[-1] == "and 26,901 more problems in the seal file (the first were listed)"
