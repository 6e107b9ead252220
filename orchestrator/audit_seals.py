"""Seals: the chain heads, signed with the audit key and written outside the database.

A seal pins where each chain stood at a moment. Whoever later rewrites the database, even holding the key stolen
after the seal, cannot make its stored events reach a sealed head again: ``baton_verify_audit --seals PATH``
reports every chain that no longer does (cut-off tail, rewritten or recomputed history). Seals are JSON Lines, one
line per up to ``SEAL_LINE_HEADS`` heads, each line signed on its own (docs/architecture.md, "Audit trail").
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from django.conf import settings
from django.utils import timezone

from orchestrator.audit import Sealed, chain_name, signing_key, verifying_keys
from orchestrator.models import AuditChain, WorkflowInstance

logger = logging.getLogger("baton.audit.seal")

SEAL_LINE_HEADS = 1000


def seal(*, full: bool = False, now: datetime | None = None, path: str | None = None) -> int:
    """Write a seal of the chain heads and return how many heads it holds.

    ``full`` seals every chain; otherwise the standalone chains and the instance chains whose instance changed in
    the last two seal intervals (so one late beat tick loses nothing; the daily full seal covers longer gaps).
    ``path`` (default BATON_AUDIT_SEAL_PATH) is appended to and fsynced; with none, each line goes to the
    ``baton.audit.seal`` logger. Raises ``OSError`` when the file cannot be written.
    """
    now = now or timezone.now()
    at = now.astimezone(UTC).isoformat()
    instances = WorkflowInstance.objects.filter(audit_seq__gt=0)
    if not full:
        window = max(settings.BATON_AUDIT_SEAL_INTERVAL, 1.0) * 2
        instances = instances.filter(updated_at__gte=now - timedelta(minutes=window))
    heads = (
        (chain_name(pk), seq, head)
        for pk, seq, head in instances.order_by("pk").values_list("pk", "audit_seq", "audit_head").iterator()
    )
    standalone = AuditChain.objects.filter(seq__gt=0).order_by("name").values_list("name", "seq", "head")
    lines = _lines(at, full, _chain(standalone, heads))
    target = path if path is not None else settings.BATON_AUDIT_SEAL_PATH
    count = 0
    if target:
        # Appended, never rewritten; readable by the owner's group only (the heads are not secret, but the file is
        # evidence). One fsync per seal: a seal that returned is on disk.
        descriptor = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        with os.fdopen(descriptor, "a", encoding="utf-8") as out:
            for line, size in lines:
                out.write(line + "\n")
                count += size
            out.flush()
            os.fsync(out.fileno())
    else:
        for line, size in lines:
            logger.info("%s", line)
            count += size
    return count


def _chain(*parts: Iterable[tuple[str, int, str]]) -> Iterator[tuple[str, int, str]]:
    for part in parts:
        yield from part


def _lines(at: str, full: bool, heads: Iterator[tuple[str, int, str]]) -> Iterator[tuple[str, int]]:
    key_id, secret = signing_key()
    batch: list[list[Any]] = []
    part = 0

    def line() -> tuple[str, int]:
        record = {"v": 1, "at": at, "full": full, "part": part, "key": key_id, "heads": batch}
        record["mac"] = _mac(record, secret)
        return json.dumps(record, separators=(",", ":")), len(batch)

    for chain, seq, head in heads:
        batch.append([chain, seq, head])
        if len(batch) >= SEAL_LINE_HEADS:
            yield line()
            part, batch = part + 1, []
    if batch or part == 0:
        yield line()  # an empty seal still says when it ran


def _mac(record: dict[str, Any], secret: bytes) -> str:
    body = {k: v for k, v in record.items() if k != "mac"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(secret, canonical.encode(), hashlib.sha256).hexdigest()


# The longest line a seal file may hold: a seal's line pins at most SEAL_LINE_HEADS heads of about 125 bytes each
# (a chain name of up to 40 characters, a seq, a 64-digit hash), so about 125 KB; a longer line is no seal (a binary
# file, a log stream without line ends) and is skipped unread rather than held in memory whole.
SEAL_LINE_MAX = 1024 * 1024
# The problems of one seal file kept word for word; past them only counted, so a file of junk (a few hundred
# thousand bad lines) does not fill the memory, or the report, with one message per line.
SEAL_PROBLEMS_MAX = 100
_SKIP_CHUNK = 64 * 1024


@dataclass
class Seals:
    """Heads read from a seal file: ``sealed`` for ``verify_trail``, and the problems of the file itself (the first
    :data:`SEAL_PROBLEMS_MAX`, then one line counting the rest)."""

    sealed: Sealed = field(default_factory=dict)
    lines: int = 0
    problems: list[str] = field(default_factory=list)
    more_problems: int = 0

    def problem(self, text: str) -> None:
        """Record a problem of the file: kept word for word up to :data:`SEAL_PROBLEMS_MAX`, counted past it."""
        if len(self.problems) < SEAL_PROBLEMS_MAX:
            self.problems.append(text)
        else:
            self.more_problems += 1


def _raw_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes | None, bool]]:
    """The lines of ``stream`` as ``(number, bytes, ended)``, one at a time: ``ended`` is False for a last line with
    no line end. A line longer than :data:`SEAL_LINE_MAX` bytes comes as ``None`` and is read past in chunks, never
    held whole: memory stays bounded whatever the file holds."""
    number = 0
    while raw := stream.readline(SEAL_LINE_MAX + 1):
        number += 1
        if len(raw) <= SEAL_LINE_MAX or raw.endswith(b"\n"):
            yield number, raw, raw.endswith(b"\n")
            continue
        ended = False
        while rest := stream.readline(_SKIP_CHUNK):
            if rest.endswith(b"\n"):
                ended = True
                break
        yield number, None, ended


def read_seals(path: str) -> Seals:
    """Read and check a seal file (JSON Lines), streamed line by line: memory holds one line (at most
    :data:`SEAL_LINE_MAX` bytes) and the distinct heads sealed (what the chains are checked against), never the
    file. Lines that are not UTF-8 or not JSON, name an unknown key, whose signature does not verify or that are
    longer than any seal line are reported in ``problems`` and their heads ignored; two seals that pin one chain's
    seq to different hashes are reported too. A last line with no line end that cannot be read yet is a seal still
    being appended: skipped. Raises ``OSError`` when the file cannot be read.
    """
    keys = verifying_keys()
    seals = Seals()
    # Read as bytes and decoded line by line: one line that is not text (a disk fault, a binary file rotated into
    # the stream) is one reported line, not a crash that hides every good seal after it.
    with open(path, "rb") as stream:
        for number, raw, ended in _raw_lines(stream):
            if raw is None:
                seals.problem(f"seal line {number}: longer than {SEAL_LINE_MAX:,} bytes, not a seal record")
                continue
            # Only the last line can lack its line end: a seal being appended while this reads (beat's seal during
            # the daily verification). Cut short, it is skipped, not reported: the next read sees it whole.
            being_written = not ended
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                if not being_written:
                    seals.problem(f"seal line {number}: not UTF-8 text")
                continue
            if not text:
                continue
            # A seal logged without a file is "<log prefix> {json}": accept a log stream copied to a file.
            text = text[text.find("{") :] if "{" in text else text
            try:
                record = json.loads(text)
                secret = keys.get(record.get("key", ""))
                if secret is None:
                    seals.problem(f"seal line {number}: key {record.get('key')!r} is not configured")
                    continue
                valid = hmac.compare_digest(_mac(record, secret), str(record.get("mac", "")))
                heads = record["heads"] if valid else []
                at = str(record["at"])
            except (ValueError, KeyError, TypeError, AttributeError):
                if not being_written:
                    seals.problem(f"seal line {number}: not a seal record")
                continue
            if not valid:
                seals.problem(f"seal line {number}: its signature does not verify")
                continue
            seals.lines += 1
            for chain, seq, head in heads:
                points = seals.sealed.setdefault(chain, {})
                if seq in points and points[seq][0] != head:
                    seals.problem(
                        f"seal line {number}: chain {chain} seq {seq} was sealed at {points[seq][1]} "
                        "with a different hash"
                    )
                    continue
                points.setdefault(seq, (head, at))
    if seals.more_problems:
        seals.problems.append(f"and {seals.more_problems:,} more problems in the seal file (the first were listed)")
    return seals
