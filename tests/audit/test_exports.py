"""Exports verify offline: a filtered range passes ``baton_verify_audit --file``; the same file with one line edited,
deleted or swapped (or its end cut off) does not, and the command names the line."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from approvals.models import HumanTask
from approvals.services.base import APPROVE
from approvals.services.tasks import task_decide
from orchestrator.audit import ACCOUNTS_CHAIN, Actor, append_standalone
from orchestrator.models import AuditEvent
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory, OrderInputFactory

pytestmark = pytest.mark.django_db


def admin_client(users) -> Client:
    client = Client()
    client.force_login(users.admin)
    return client


def body(response) -> str:
    return b"".join(response.streaming_content).decode()


def verify(path: Path) -> str:
    """The command's output; raises CommandError when the file does not verify."""
    out = io.StringIO()
    call_command("baton_verify_audit", file=str(path), stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.fixture
def order(run_steps, users):
    """An order of 1,500 (a manager approves it) run to its end: a chain of a few dozen events."""
    instance = instance_start("order_fulfilment", OrderInputFactory(amount="1500.00"), initiator=users.staff)
    run_steps(instance, advance=True)
    task = HumanTask.objects.get(instance=instance)
    task_decide(task.pk, users.manager, APPROVE, comment="within budget =SUM(A1)")
    run_steps(instance, advance=True)
    return instance


def export(users, kind: str, **filters: str) -> str:
    response = admin_client(users).get(f"/audit/export/{kind}/", filters)
    assert response.status_code == 200, response
    return body(response)


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_an_export_of_a_filtered_range_verifies_offline(users, order, tmp_path, kind):
    """The events of one instance, exported from the page, pass the offline check: every line, none missing."""
    # given
    expected = AuditEvent.objects.filter(instance=order).count()
    path = tmp_path / f"export.{kind}"
    path.write_text(export(users, kind, instance=str(order.pk)))

    # when
    out = verify(path)

    # then
    assert f"{expected} events" in out
    assert "every line verifies" in out


def test_an_export_carries_hash_and_chain_position_and_the_records_it_came_from(users, order):
    """Each event line holds its chain, seq, prev_hash and hash; the first line says which filters made it."""
    # when
    lines = [json.loads(line) for line in export(users, "jsonl", instance=str(order.pk)).splitlines()]

    # then
    assert lines[0]["record"] == "export"
    assert lines[0]["filters"] == {"instance": str(order.pk)}
    assert lines[0]["generated_by"] == "admin"
    events = lines[1:-1]
    stored = list(AuditEvent.objects.filter(instance=order).order_by("occurred_at", "id"))
    assert [(e["chain"], e["seq"], e["hash"]) for e in events] == [(e.chain, e.seq, e.hash) for e in stored]
    assert [e["line"] for e in events] == list(range(1, len(stored) + 1))
    assert lines[-1] == {"record": "end", "events": len(stored), "mac": lines[-1]["mac"]}


def test_the_export_itself_is_recorded_with_who_and_which_filters(users, order):
    """An export is access to the record: who made it, in which format, with which filters, goes into the trail."""
    # when
    export(users, "csv", instance=str(order.pk))

    # then
    event = AuditEvent.objects.filter(action="audit.exported").latest("id")
    assert event.actor_label == "user:admin"
    assert event.payload["format"] == "csv"
    assert event.payload["filters"] == {"instance": str(order.pk)}


def _jsonl(users, order, tmp_path) -> tuple[Path, list[str]]:
    path = tmp_path / "export.jsonl"
    text = export(users, "jsonl", instance=str(order.pk))
    path.write_text(text)
    return path, text.splitlines(keepends=True)


def _fails_naming(path: Path, *needles: str) -> str:
    with pytest.raises(CommandError) as failed:
        verify(path)
    message = str(failed.value)
    for needle in needles:
        assert needle in message, message
    return message


def test_an_edited_line_is_named(users, order, tmp_path):
    """One reason changed in line 5 of the file: the check fails and names line 5 and its event."""
    # given
    path, lines = _jsonl(users, order, tmp_path)
    record = json.loads(lines[4])
    record["reason"] = "nothing to see here"
    lines[4] = json.dumps(record) + "\n"
    path.write_text("".join(lines))

    # when / then
    _fails_naming(path, "line 5:", f"event {record['chain']}#{record['seq']} was edited")


def test_a_deleted_line_is_named(users, order, tmp_path):
    """Line 6 removed: the line now at 6 is reported as following a missing export line."""
    # given
    path, lines = _jsonl(users, order, tmp_path)
    del lines[5]
    path.write_text("".join(lines))

    # when / then
    _fails_naming(path, "line 6:", "export line 5 is missing")


def test_the_last_event_deleted_is_caught_by_the_end_record(users, order, tmp_path):
    """The last event line removed (nothing follows to notice it): the end record's count says so."""
    # given
    path, lines = _jsonl(users, order, tmp_path)
    del lines[-2]
    path.write_text("".join(lines))

    # when / then
    _fails_naming(path, f"line {len(lines)}:", "the end record counts")


def test_swapped_lines_are_named(users, order, tmp_path):
    """Lines 3 and 4 swapped: both are named, as out of place."""
    # given
    path, lines = _jsonl(users, order, tmp_path)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_text("".join(lines))

    # when
    message = _fails_naming(path, "line 3:", "line 4:")

    # then
    assert "out of place" in message
    assert "line 5:" not in message, "the lines after a swap still verify"


def test_a_cut_off_file_is_caught(users, order, tmp_path):
    """The end record removed: the file was cut off, and the command says after which line."""
    # given
    path, lines = _jsonl(users, order, tmp_path)
    path.write_text("".join(lines[:-1]))

    # when / then
    _fails_naming(path, f"line {len(lines)}:", "end record is missing")


def test_an_edited_csv_cell_is_named_by_its_line_in_the_file(users, order, tmp_path):
    """CSV: the comment of the decision edited; the message names the file line where that row starts."""
    # given
    text = export(users, "csv", instance=str(order.pk))
    rows = list(csv.reader(io.StringIO(text)))
    target = next(i for i, row in enumerate(rows) if "within budget" in row[16])
    rows[target][16] = "'=SUM(B1)"
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    path = tmp_path / "export.csv"
    path.write_text(out.getvalue())

    # when / then
    _fails_naming(path, f"line {target + 1}:", "was edited")


def test_a_reason_that_looks_like_a_formula_is_neutralised_in_csv_and_still_verifies(users, tmp_path):
    """A comment starting with "=" would run in a spreadsheet: the cell starts with an apostrophe, and the file
    still verifies (the apostrophe is taken off again to check the hash)."""
    # given
    append_standalone(
        ACCOUNTS_CHAIN,
        actor=Actor("system"),
        action="user.note",
        subject_type="user",
        subject_id=None,
        reason='=HYPERLINK("http://x")',
    )
    text = export(users, "csv", action="user.note")
    path = tmp_path / "formula.csv"
    path.write_text(text)

    # when
    out = verify(path)

    # then
    assert "'=HYPERLINK" in text
    assert "every line verifies" in out


def test_odd_data_survives_the_round_trip(users, tmp_path):
    """Line breaks, quotes, commas, non-Latin text and nested payloads: exported and verified in both formats."""
    # given
    append_standalone(
        ACCOUNTS_CHAIN,
        actor=Actor("system"),
        action="user.odd",
        subject_type="user",
        subject_id=None,
        reason='line one\nline "two", three\r\n— ünïcödé 名前',
        payload={"nested": {"list": [1, 2.5, None, True]}, "text": 'a,b"c'},
    )
    for kind in ("csv", "jsonl"):
        path = tmp_path / f"odd.{kind}"
        path.write_text(export(users, kind, action="user.odd"))

        # when
        out = verify(path)

        # then
        assert "1 events" in out
        assert "every line verifies" in out


def test_an_event_with_a_field_larger_than_the_csv_modules_default_limit_still_verifies(users, tmp_path):
    """A skipped step's output or a diff has no size limit of its own: a 200 KB payload (the csv module refuses
    fields over 128 KiB by default) exports and verifies in both formats."""
    # given
    append_standalone(
        ACCOUNTS_CHAIN,
        actor=Actor("system"),
        action="user.large",
        subject_type="user",
        subject_id=None,
        payload={"output": {"k": "x" * 200_000}},
    )
    for kind in ("csv", "jsonl"):
        path = tmp_path / f"large.{kind}"
        path.write_text(export(users, kind, action="user.large"))

        # when
        out = verify(path)

        # then
        assert "1 events" in out
        assert "every line verifies" in out


def test_junk_files_are_refused_with_a_message_not_a_traceback(tmp_path):
    """A file that is not an export, binary junk, an empty file, a missing file: a clear message each."""
    cases = {
        "empty.jsonl": b"",
        "junk.jsonl": b"not json at all\n",
        "binary.csv": b"\xff\xfe\x00junk",
        "other.csv": b"a,b,c\n1,2,3\n",
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CommandError):
            verify(path)
    with pytest.raises(CommandError, match="cannot read"):
        verify(tmp_path / "missing.jsonl")


def test_an_export_of_a_large_range_is_streamed(users, run_steps):
    """The response is streamed (never built whole in memory), and holds every event of the range."""
    # given
    for _ in range(3):
        instance = instance_start("expense_approval", ExpenseInputFactory(amount="20.00"))
        run_steps(instance, advance=True)
    total = AuditEvent.objects.filter(instance__workflow_name="expense_approval").count()

    # when
    response = admin_client(users).get("/audit/export/jsonl/", {"workflow": "expense_approval"})

    # then
    assert response.streaming
    lines = body(response).splitlines()
    assert len(lines) == total + 2


def test_a_client_that_leaves_mid_export_closes_the_cursor_on_the_requests_own_thread():
    """Under ASGI a client that disconnects ends the async stream; the lines' generator (holding the export's
    server-side cursor) was left to the garbage collector, which closed it on the event loop's thread while the
    request's database connection belongs to its sync thread. It is closed there, at once."""
    # given
    import asyncio
    import threading

    from asgiref.sync import sync_to_async

    from audit.exports import stream

    where: dict[str, int] = {}

    def lines():
        where["read"] = threading.get_ident()
        try:
            while True:
                yield "line\n"
        finally:
            where["closed"] = threading.get_ident()

    async def leave_after_one_chunk() -> None:
        chunks = stream(lines(), batch=2)
        await anext(chunks)
        await chunks.aclose()

    # when
    async def run() -> None:
        await leave_after_one_chunk()
        where["loop"] = threading.get_ident()
        await sync_to_async(lambda: None, thread_sensitive=True)()

    asyncio.run(run())

    # then
    assert "closed" in where
    assert where["closed"] == where["read"] != where["loop"]
