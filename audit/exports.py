"""Exports of the audit trail that verify offline: CSV and JSON Lines, streamed in constant memory.

Each event line carries everything its hash covers (so ``event_hash`` can be recomputed from the line alone), its
chain and position in the chain, and an *export MAC*: an HMAC, under the current audit key, over the previous
line's MAC, the line's number and the event's hash. The first record describes the export (filters, who, when)
and starts that chain; the last one counts the events and closes it. Whoever holds the audit keys (and nothing
else: no database) can then tell, with ``manage.py baton_verify_audit --file``:

- an edited line: its content no longer matches its event hash (or the hash no longer matches its MAC);
- a deleted line: the next line's number and MAC do not follow, or the end record's count is wrong;
- swapped lines: their numbers are out of place and their MACs do not follow;
- a cut-off file: the end record is missing.

Events of one chain that follow each other (seq n, n+1) must also link (prev_hash), as in the database.

Writers yield text; ``stream_csv`` and ``stream_jsonl`` are async generators for Django's StreamingHttpResponse
under ASGI (a sync iterator there is first read whole into memory), reading ``EXPORT_CHUNK`` rows at a time from
a server-side cursor. The API calls the same functions.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any, TextIO

from asgiref.sync import sync_to_async
from django.db.models import QuerySet
from django.utils import timezone

from orchestrator.audit import event_hash, signing_key, verifying_keys
from orchestrator.models import AuditEvent

FORMAT = "baton-audit-export/1"
EXPORT_CHUNK = 2000
# The columns of an event line, in CSV order; every one but "record", "line" and "export_mac" is hashed content.
EVENT_FIELDS = (
    "chain",
    "seq",
    "prev_hash",
    "hash",
    "key_id",
    "occurred_at",
    "actor_label",
    "actor_id",
    "action",
    "instance_id",
    "subject_type",
    "subject_id",
    "from_state",
    "to_state",
    "reason",
    "payload",
    "request_meta",
    "request_id",
)
CSV_COLUMNS = ("record", "line", *EVENT_FIELDS, "export_mac")
# A spreadsheet runs a cell that starts with one of these as a formula; such a cell is written with a leading
# apostrophe, and a cell that starts with an apostrophe gets one more, so reading takes exactly one off.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
# How many export lines back a line's predecessor is looked for (a swap further apart reads as missing lines).
MAC_WINDOW = 10_000


def _mac(secret: bytes, text: str) -> str:
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


def _canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def event_record(event: AuditEvent) -> dict[str, Any]:
    """The hashed content of ``event`` as plain JSON values (times as UTC ISO 8601, exactly as hashed)."""
    return {
        "chain": event.chain,
        "seq": event.seq,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
        "key_id": event.key_id,
        "occurred_at": event.occurred_at.astimezone(UTC).isoformat(),
        "actor_label": event.actor_label,
        "actor_id": event.actor_id,
        "action": event.action,
        "instance_id": event.instance_id,
        "subject_type": event.subject_type,
        "subject_id": event.subject_id,
        "from_state": event.from_state,
        "to_state": event.to_state,
        "reason": event.reason,
        "payload": event.payload,
        "request_meta": event.request_meta,
        "request_id": event.request_id,
    }


def event_from_record(record: dict[str, Any]) -> AuditEvent:
    """An unsaved AuditEvent from an exported record, for ``event_hash``; raises ``ValueError`` (with what is
    wrong) for a record that lacks a field or holds one of the wrong type."""
    missing = [name for name in EVENT_FIELDS if name not in record]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    at = datetime.fromisoformat(str(record["occurred_at"]))
    if at.tzinfo is None:
        raise ValueError("occurred_at has no time zone")
    return AuditEvent(
        chain=str(record["chain"]),
        seq=_int(record["seq"], "seq"),
        prev_hash=str(record["prev_hash"]),
        hash=str(record["hash"]),
        key_id=str(record["key_id"]),
        occurred_at=at,
        actor_label=str(record["actor_label"]),
        actor_id=_optional_int(record["actor_id"], "actor_id"),
        action=str(record["action"]),
        instance_id=_optional_int(record["instance_id"], "instance_id"),
        subject_type=str(record["subject_type"]),
        subject_id=_optional_int(record["subject_id"], "subject_id"),
        from_state=str(record["from_state"]),
        to_state=str(record["to_state"]),
        reason=str(record["reason"]),
        payload=record["payload"],
        request_meta=record["request_meta"],
        request_id=str(record["request_id"]),
    )


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{name} is not a number")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name} is not a number") from None


def _optional_int(value: Any, name: str) -> int | None:
    return None if value is None or value == "" else _int(value, name)


@dataclass
class ExportHeader:
    """What the first record says about an export."""

    filters: dict[str, str]
    generated_by: str
    export_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    generated_at: str = field(default_factory=lambda: timezone.now().astimezone(UTC).isoformat())


class ExportSigner:
    """Numbers the event lines of one export and chains their MACs, from the header's MAC to the end record's."""

    def __init__(self, header: ExportHeader) -> None:
        self.key_id, self.secret = signing_key()
        self.header = {
            "record": "export",
            "format": FORMAT,
            "export_id": header.export_id,
            "generated_at": header.generated_at,
            "generated_by": header.generated_by,
            "filters": header.filters,
            "key_id": self.key_id,
        }
        self.header["mac"] = self.last = _mac(self.secret, _canonical(self.header))
        self.count = 0

    def sign(self, event_hash_hex: str) -> tuple[int, str]:
        """The next line number and its MAC, for the event whose hash is ``event_hash_hex``."""
        self.count += 1
        self.last = _mac(self.secret, f"{self.last}|{self.count}|{event_hash_hex}")
        return self.count, self.last

    def end(self) -> dict[str, Any]:
        """The closing record: how many events, and the MAC that seals the whole chain of lines."""
        return {"record": "end", "events": self.count, "mac": _mac(self.secret, f"{self.last}|end|{self.count}")}


def _ascending(events: QuerySet[AuditEvent]) -> Iterator[AuditEvent]:
    # Oldest first, the order a chain is read in; a server-side cursor, EXPORT_CHUNK rows per round trip.
    return events.order_by("occurred_at", "id").iterator(chunk_size=EXPORT_CHUNK)


def jsonl_lines(events: Iterable[AuditEvent], header: ExportHeader) -> Iterator[str]:
    """The export as JSON Lines (each ending in "\\n"): the export record, one line per event, the end record."""
    signer = ExportSigner(header)
    yield json.dumps(signer.header, ensure_ascii=False) + "\n"
    for event in events:
        line, mac = signer.sign(event.hash)
        record = {"record": "event", "line": line, **event_record(event), "export_mac": mac}
        yield json.dumps(record, ensure_ascii=False, default=str) + "\n"
    yield json.dumps(signer.end()) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    else:
        text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def uncell(text: str) -> str:
    """A CSV cell as it was before ``_cell`` protected it from spreadsheet formulas."""
    return text[1:] if text.startswith("'") else text


def csv_lines(events: Iterable[AuditEvent], header: ExportHeader) -> Iterator[str]:
    """The export as CSV (RFC 4180, CRLF): a header row of column names, then the export record (its JSON in the
    ``payload`` column, its MAC in ``export_mac``), one row per event, and the end record (count in ``line``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def row(values: Iterable[Any]) -> str:
        writer.writerow([_cell(v) for v in values])
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    signer = ExportSigner(header)
    yield row(CSV_COLUMNS)
    described = {k: v for k, v in signer.header.items() if k not in ("record", "mac")}
    yield row(["export", "", *([""] * (len(EVENT_FIELDS) - 3)), described, "", "", signer.header["mac"]])
    for event in events:
        line, mac = signer.sign(event.hash)
        record = event_record(event)
        yield row(["event", line, *(record[name] for name in EVENT_FIELDS), mac])
    end = signer.end()
    yield row(["end", end["events"], *([""] * len(EVENT_FIELDS)), end["mac"]])


def export_lines(kind: str, events: QuerySet[AuditEvent], header: ExportHeader) -> Iterator[str]:
    """``kind`` ("csv" or "jsonl") lines of the events of ``events`` (any order; exported oldest first)."""
    writer = csv_lines if kind == "csv" else jsonl_lines
    return writer(_ascending(events), header)


async def stream(lines: Iterator[str], batch: int = 500) -> AsyncIterator[bytes]:
    """``lines`` as an async stream of byte chunks, ``batch`` lines per chunk, each batch read on the request's
    sync thread (the database cursor lives there). Memory holds one batch and one cursor chunk. Closing the stream
    (a client that disconnected) closes ``lines`` on that thread."""

    def take() -> bytes:
        return "".join(islice(lines, batch)).encode()

    def close() -> None:
        closer = getattr(lines, "close", None)
        if closer is not None:
            closer()

    try:
        while True:
            chunk = await sync_to_async(take, thread_sensitive=True)()
            if not chunk:
                return
            yield chunk
    finally:
        # A client that leaves ends this stream early: the cursor is closed now and on the thread whose database
        # connection holds it, not later by the garbage collector on whatever thread it runs.
        await sync_to_async(close, thread_sensitive=True)()


# --- offline verification -----------------------------------------------------------------------------------


@dataclass
class FileReport:
    """What ``verify_export`` found: events checked, and each problem as ``(line in the file, message)``."""

    events: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)
    export_id: str = ""
    generated_at: str = ""
    filters: dict[str, Any] = field(default_factory=dict)

    def add(self, line: int, message: str) -> None:
        self.problems.append((line, message))


def detect_kind(path: str, first: str) -> str:
    """ "csv" or "jsonl" from the file name, else from its first character."""
    lowered = path.lower()
    if lowered.endswith(".csv"):
        return "csv"
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    return "jsonl" if first.lstrip().startswith("{") else "csv"


def read_jsonl(stream: TextIO) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """``(line number, record)`` for each non-blank line; a line that is not a JSON object comes as its error."""
    for number, text in enumerate(stream, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, f"not JSON ({exc.msg})"
            continue
        yield number, record if isinstance(record, dict) else "not a JSON object"


# The largest field a CSV export may hold when read back: a request body is capped far below this (the API's 256 KiB).
CSV_FIELD_LIMIT = 64 * 1024 * 1024


def read_csv(stream: TextIO) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """``(line number where the row starts, record)`` for each CSV row after the column names, as JSON records."""
    # An event's payload has no size limit of its own (a skipped step's output, a diff): the csv module's default
    # field limit (128 KiB) would call a genuine export "not CSV". The limit is per process; raise it, never lower it.
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    reader = csv.reader(stream)
    start = 1
    try:
        columns = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        yield 1, f"not CSV ({exc})"
        return
    if tuple(columns) != CSV_COLUMNS:
        yield 1, f"the columns are not those of a Baton export ({', '.join(CSV_COLUMNS[:4])}, ...)"
        return
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, f"not CSV ({exc})"
            return
        number, start = start, reader.line_num + 1
        if len(cells) != len(CSV_COLUMNS):
            yield number, f"{len(cells)} cells instead of {len(CSV_COLUMNS)}"
            continue
        row = dict(zip(CSV_COLUMNS, (uncell(cell) for cell in cells), strict=True))
        yield number, _csv_record(row)


def _csv_record(row: dict[str, str]) -> dict[str, Any] | str:
    kind = row["record"]
    try:
        if kind == "export":
            described = json.loads(row["payload"])
            if not isinstance(described, dict):
                return "the export record's description is not a JSON object"
            return {"record": "export", **described, "mac": row["export_mac"]}
        if kind == "end":
            return {"record": "end", "events": int(row["line"]), "mac": row["export_mac"]}
        if kind == "event":
            record: dict[str, Any] = {"record": "event", "line": int(row["line"]), "export_mac": row["export_mac"]}
            for name in EVENT_FIELDS:
                record[name] = row[name]
            for name in ("payload", "request_meta"):
                record[name] = json.loads(row[name])
            for name in ("seq", "actor_id", "instance_id", "subject_id"):
                record[name] = int(row[name]) if row[name] != "" else None
            return record
    except ValueError as exc:
        return f"a cell cannot be read ({exc})"
    return f"unknown record type {kind!r}"


def verify_export(
    records: Iterable[tuple[int, dict[str, Any] | str]], keys: dict[str, bytes] | None = None
) -> FileReport:
    """Check an export's records (from ``read_jsonl`` or ``read_csv``) with ``keys`` (default: BATON_AUDIT_KEYS):
    the export record's MAC, each event's hash and its place in the chain of export MACs, the links between
    consecutive events of a chain, and the end record. Reads the file once, keeping one line and one link per
    chain; returns a ``FileReport`` whose problems name the line of the file."""
    keys = verifying_keys() if keys is None else keys
    report = FileReport()
    secret: bytes | None = None
    # The MACs of the last lines by export line number: a line is checked against its own predecessor, found by
    # number, so a line deleted or moved is reported once and the lines after it still verify. Bounded.
    macs: dict[int, str] = {}
    highest = 0
    last_of_chain: dict[str, tuple[int, str]] = {}
    ended = False
    started = False
    last_line = 0
    for number, record in records:
        last_line = number
        if isinstance(record, str):
            report.add(number, record)
            continue
        kind = record.get("record")
        if ended:
            report.add(number, "a line after the end record: the export was appended to")
            continue
        if not started:
            if kind != "export":
                report.add(number, "the file does not start with the export record (cut off at the top?)")
                return report
            started = True
            header = {k: v for k, v in record.items() if k != "mac"}
            key_id = str(record.get("key_id", ""))
            secret = keys.get(key_id)
            report.export_id, report.generated_at = (
                str(record.get("export_id", "")),
                str(record.get("generated_at", "")),
            )
            filters = record.get("filters")
            report.filters = filters if isinstance(filters, dict) else {}
            if secret is None:
                report.add(number, f"signed with key {key_id!r}, which BATON_AUDIT_KEYS does not hold")
                return report
            macs[0] = str(record.get("mac", ""))
            if not hmac.compare_digest(_mac(secret, _canonical(header)), macs[0]):
                report.add(number, "the export record was edited (its MAC does not match)")
            continue
        assert secret is not None
        if kind == "end":
            ended = True
            count = record.get("events")
            if count != report.events:
                report.add(number, f"the end record counts {count} events, the file holds {report.events}")
            elif report.events not in macs or not hmac.compare_digest(
                _mac(secret, f"{macs[report.events]}|end|{count}"), str(record.get("mac", ""))
            ):
                report.add(number, f"the end record does not close the file's last line (export line {count})")
            continue
        if kind != "event":
            report.add(number, f"unknown record type {kind!r}")
            continue
        report.events += 1
        try:
            event = event_from_record(record)
            line = _int(record.get("line"), "line")
        except ValueError as exc:
            report.add(number, f"the event cannot be read: {exc}")
            continue
        content_ok = True
        event_key = keys.get(event.key_id) if event.key_id else b""
        if event.key_id and event_key is None:
            report.add(number, f"event {event.chain}#{event.seq} is signed with key {event.key_id!r}, not held")
        elif not hmac.compare_digest(event_hash(event, event_key or None), event.hash):
            content_ok = False
            report.add(number, f"event {event.chain}#{event.seq} was edited: its content does not match its hash")
        mac = str(record.get("export_mac", ""))
        if line in macs:
            report.add(number, f"export line {line} appears twice")
        elif line < highest:
            report.add(number, f"out of place: export line {line} comes after line {highest} (lines swapped)")
        elif line - 1 not in macs:
            report.add(number, f"export line {line - 1} is missing or moved: it should come just before this line")
        elif content_ok and not hmac.compare_digest(_mac(secret, f"{macs[line - 1]}|{line}|{event.hash}"), mac):
            # (An edited event was reported above; its MAC then fails too, and says nothing more.)
            report.add(number, "the event's hash or line number was changed: its export MAC does not match")
        macs[line] = mac
        highest = max(highest, line)
        macs.pop(line - MAC_WINDOW, None)
        previous = last_of_chain.get(event.chain)
        if previous is not None and event.seq == previous[0] + 1 and event.prev_hash != previous[1]:
            report.add(number, f"event {event.chain}#{event.seq} does not link to #{previous[0]} (prev_hash differs)")
        last_of_chain[event.chain] = (event.seq, event.hash)
    if not started:
        report.add(max(last_line, 1), "the file holds no export record: empty, or not a Baton export")
    elif not ended:
        report.add(last_line + 1, "the end record is missing: the file was cut off after this line")
    return report
