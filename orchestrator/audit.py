"""The tamper-evident audit trail: one HMAC chain per instance (and a few standalone chains), appended under a lock.

Each event's hash is an HMAC-SHA256 under a key from settings that the database never holds, so whoever can only
rewrite the database cannot recompute a chain; ``baton_verify_audit`` checks every chain against its stored head,
and ``orchestrator/audit_seals.py`` pins heads outside the database (docs/architecture.md, "Audit trail").
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Required, TypedDict, Unpack

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.db.models import CharField, Exists, OuterRef, QuerySet, TextField, Value
from django.db.models.functions import Cast, Concat
from django.utils import timezone

from orchestrator.audit_actions import AuditAction
from orchestrator.models import AuditChain, AuditEvent, WorkflowInstance


@dataclass(frozen=True)
class Actor:
    """Who did it: a signed-in user, or a named system component ("system:worker")."""

    label: str
    user_id: int | None = None

    @classmethod
    def of(cls, user: AbstractBaseUser | AnonymousUser) -> Actor:
        if not user.is_authenticated:
            return cls("anonymous")
        return cls(f"user:{user.get_username()}", user.pk)

    @classmethod
    def system(cls, component: str) -> Actor:
        return cls(f"system:{component}")


# The chain of events about people's accounts (users, groups, permissions), which belong to no instance.
ACCOUNTS_CHAIN = "accounts"


def chain_name(instance_id: int) -> str:
    """The name of an instance's own chain."""
    return f"instance:{instance_id}"


# The chain of sign-ins, sign-outs, failed sign-ins and refused requests (orchestrator/accounts.py).
ACCESS_CHAIN = "access"

# The chain of saved inbox views created, shared or deleted.
SAVED_VIEWS_CHAIN = "saved_views"

# The chain of workflow versions first seen by a deployment (``workflow_versions_record``).
WORKFLOWS_CHAIN = "workflows"

# The chain that records facts about the trail itself (when keying began: ``legacy_boundary``).
AUDIT_CHAIN = "audit"


def signing_key() -> tuple[str, bytes]:
    """The current key of BATON_AUDIT_KEYS as ``(key id, secret bytes)``: it signs new events and seals."""
    return _keys()[0]


def verifying_keys() -> dict[str, bytes]:
    """Every configured key by id (the current one and those retired but kept to verify what they signed)."""
    return dict(_keys())


_parsed: tuple[object, list[tuple[str, bytes]]] | None = None


def _keys() -> list[tuple[str, bytes]]:
    # Encoded once per settings value: the hot path signs every event, and override_settings in tests swaps it.
    global _parsed
    configured = settings.BATON_AUDIT_KEYS
    if _parsed is None or _parsed[0] is not configured:
        _parsed = (configured, [(key_id, secret.encode()) for key_id, secret in configured])
    return _parsed[1]


# What verification reads of an event: every hashed field, its id and its hash. Read as tuples, not models: building
# a million model instances was about as costly as hashing them (bench/README.md, "Audit trail at a million events").
class _EventRow(NamedTuple):
    """One event as verification reads it: the attributes ``event_hash`` and ``ChainWalk`` use, ``pk`` included."""

    id: int
    chain: str
    seq: int
    prev_hash: str
    hash: str
    key_id: str
    occurred_at: datetime
    actor_id: int | None
    actor_label: str
    action: str
    instance_id: int | None
    subject_type: str
    subject_id: int | None
    from_state: str
    to_state: str
    reason: str
    payload: Any
    request_meta: Any
    request_id: str

    @property
    def pk(self) -> int:
        return self.id


_VERIFIED_FIELDS = _EventRow._fields
_AT = _VERIFIED_FIELDS.index("occurred_at")
# The time is read as the database's text and parsed by datetime.fromisoformat (C): Django's time-zone-aware loader
# for psycopg parses in Python, a fifth of a million-event verification's CPU (bench/README.md).
_READ_FIELDS = (*_VERIFIED_FIELDS[:_AT], "occurred_at_text", *_VERIFIED_FIELDS[_AT + 1 :])


def _verified_rows(events: QuerySet[AuditEvent]) -> Iterator[_EventRow]:
    """``events`` as ``_EventRow`` tuples, streamed in chunks of ``VERIFY_CHUNK`` (a server-side cursor)."""
    rows = events.annotate(occurred_at_text=Cast("occurred_at", TextField())).values_list(*_READ_FIELDS)
    for row in rows.iterator(chunk_size=VERIFY_CHUNK):
        at = datetime.fromisoformat(row[_AT])
        # PostgreSQL's text carries the offset; SQLite stores naive UTC.
        yield _EventRow._make((*row[:_AT], at if at.tzinfo is not None else at.replace(tzinfo=UTC), *row[_AT + 1 :]))


# The canonical JSON of an event: one encoder made once (json.dumps with these options builds a new one per call,
# a measurable part of verifying a million events); the same output as
# json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode


def event_hash(event: AuditEvent | _EventRow, key: bytes | None = None) -> str:
    """The event's hash: an HMAC-SHA256 under the key ``event.key_id`` names, over canonical JSON of its content,
    its key id and its predecessor's hash (UTC timestamps). An event with no key id is a legacy event, written
    before keying: plain SHA-256 over the same content without the key id.

    ``key`` is that key's secret; by default it is looked up in BATON_AUDIT_KEYS. Raises ``KeyError`` for a key
    id that is not configured.
    """
    body = {
        "chain": event.chain,
        "seq": event.seq,
        "prev": event.prev_hash,
        "at": event.occurred_at.astimezone(UTC).isoformat(),
        "actor": event.actor_label,
        "actor_id": event.actor_id,
        "action": event.action,
        "instance": event.instance_id,
        "subject": [event.subject_type, event.subject_id],
        "from": event.from_state,
        "to": event.to_state,
        "reason": event.reason,
        "payload": event.payload,
        "meta": event.request_meta,
    }
    # Added after keying began: part of the hash only when set, so every event written before it verifies as it did.
    request_id = getattr(event, "request_id", "")
    if request_id:
        body["request_id"] = request_id
    if not event.key_id:
        return hashlib.sha256(_canonical(body).encode()).hexdigest()
    body["key"] = event.key_id
    secret = key if key is not None else verifying_keys()[event.key_id]
    return hmac.digest(secret, _canonical(body).encode(), "sha256").hex()


class EventContent(TypedDict, total=False):
    """What an event says, as :func:`append` and :func:`append_standalone` take it by keyword: its ``action`` about
    ``subject_type`` ``subject_id`` (required); the subject's ``from_state`` and ``to_state``, a ``reason`` and a JSON
    ``payload`` (default empty); ``request_meta``, the request's IP, user agent and ``request_id`` (default none)."""

    action: Required[AuditAction]
    subject_type: Required[str]
    subject_id: Required[int | None]
    from_state: str
    to_state: str
    reason: str
    payload: dict[str, Any] | None
    request_meta: dict[str, Any] | None


def append(instance: WorkflowInstance, *, now: datetime, actor: Actor, **content: Unpack[EventContent]) -> AuditEvent:
    """Build the next event of the instance's chain (``content``: :class:`EventContent`) and advance the head held
    on the instance (unsaved).

    The caller holds the instance's row lock and saves the event and the instance in its transaction.
    """
    seq, head = instance.audit_seq + 1, instance.audit_head
    event = _event(chain_name(instance.pk), seq, head, instance.pk, now=now, actor=actor, **content)
    instance.audit_seq = event.seq
    instance.audit_head = event.hash
    return event


def append_standalone(
    chain: str, *, actor: Actor, now: datetime | None = None, **content: Unpack[EventContent]
) -> AuditEvent:
    """Append and save an event (``content``: :class:`EventContent`) to ``chain``, a chain that belongs to no
    instance (e.g. ``ACCOUNTS_CHAIN``); ``now`` defaults to the current time.

    Locks the chain's head row (created on first use) for the rest of the caller's transaction, or of its own
    when called outside one, so concurrent appends queue and the chain stays linear. Returns the saved event.
    """
    with transaction.atomic():
        AuditChain.objects.bulk_create([AuditChain(name=chain)], ignore_conflicts=True)
        head = AuditChain.objects.select_for_update().get(name=chain)
        event = _event(chain, head.seq + 1, head.head, None, now=now or timezone.now(), actor=actor, **content)
        event.save(force_insert=True)
        head.seq, head.head = event.seq, event.hash
        head.save(update_fields=["seq", "head"])
    return event


def _event(
    chain: str,
    seq: int,
    prev_hash: str,
    instance_id: int | None,
    *,
    now: datetime,
    actor: Actor,
    **content: Unpack[EventContent],
) -> AuditEvent:
    meta = dict(content.get("request_meta") or {})
    # The request id has a column of its own (searchable: everything one request did); the rest stays in request_meta.
    request_id = str(meta.pop("request_id", "") or "")[:64]
    event = AuditEvent(
        chain=chain,
        seq=seq,
        prev_hash=prev_hash,
        occurred_at=now,
        actor_id=actor.user_id,
        actor_label=actor.label,
        action=content["action"],
        instance_id=instance_id,
        subject_type=content["subject_type"],
        subject_id=content["subject_id"],
        from_state=str(content.get("from_state") or ""),
        to_state=str(content.get("to_state") or ""),
        reason=content.get("reason", ""),
        payload=content.get("payload") or {},
        request_meta=meta,
        request_id=request_id,
    )
    event.key_id, secret = signing_key()
    event.hash = event_hash(event, secret)
    return event


@dataclass
class ChainBreak:
    """The first problem found in one chain: which chain, at which seq (the event's, or the first missing one)."""

    chain: str
    seq: int
    event_id: int | None
    problem: str

    def __str__(self) -> str:
        where = f" (event id {self.event_id})" if self.event_id is not None else ""
        return f"chain {self.chain} seq {self.seq}{where}: {self.problem}"


# Per chain, the heads that seals pinned: {chain: {seq: (hash, when sealed)}} (orchestrator/audit_seals.py).
Sealed = dict[str, dict[int, tuple[str, str]]]


class ChainWalk:
    """Checks one chain's events as they stream past in seq order, keeping only the last link.

    ``keys`` are the verifying keys by id; ``legacy_through`` is the highest event id that may be unkeyed (see
    ``legacy_boundary``); ``sealed`` maps seqs of this chain to the (hash, time) a seal pinned them at.
    """

    def __init__(
        self,
        chain: str,
        keys: dict[str, bytes],
        legacy_through: int = 0,
        sealed: dict[int, tuple[str, str]] | None = None,
    ) -> None:
        self.chain = chain
        self.keys = keys
        self.legacy_through = legacy_through
        self.sealed = sealed or {}
        self.seq = 0
        self.head = ""
        self.keyed = False
        self.events = 0
        # The first event's (seq, id): what names a chain that no head row holds (rows inserted under a new name).
        self.first: tuple[int, int | None] | None = None
        self.legacy = 0
        self.broken: ChainBreak | None = None
        # Events signed with a key that is no longer configured: their links are still checked and the walk goes
        # on, so the events after them (signed with a current key) are verified, not hidden behind the first one.
        self.unverifiable: list[int] = []
        self.unverifiable_keys: set[str] = set()
        self.unverifiable_first_id: int | None = None
        prefix, _, number = chain.partition(":")
        self.instance_id = int(number) if prefix == "instance" and number.isdecimal() else None

    def add(self, event: AuditEvent | _EventRow) -> None:
        """Check the next event; the first problem found is kept in ``broken`` and later events are ignored."""
        self.events += 1
        if self.broken is not None:
            return
        if self.first is None:
            self.first = (event.seq, event.pk)
        problem = self._problem(event)
        if problem is not None:
            # A gap is named by the seq missing; the event after it is not that row, so the problem names it as
            # where the chain goes on rather than giving its id as the break's.
            missing = event.seq > self.seq + 1
            self.broken = ChainBreak(
                self.chain, self.seq + 1 if missing else event.seq, None if missing else event.pk, problem
            )
            return
        self.seq, self.head = event.seq, event.hash

    def _problem(self, event: AuditEvent | _EventRow) -> str | None:
        expected = self.seq + 1
        if event.seq > expected:
            where = f" (event id {event.pk})" if event.pk is not None else ""
            return f"event #{expected} is missing: the chain goes on at #{event.seq}{where}"
        if event.seq < 1:
            # The unique (chain, seq) lets a row in at seq 0, before the first one: it repeats nothing.
            return f"event #{event.seq} comes before the chain's first event (#1): inserted"
        if event.seq < expected:
            return f"event #{event.seq} appears twice"
        if event.instance_id != self.instance_id:
            return f"the event names instance {event.instance_id}, not this chain's"
        if event.prev_hash != self.head:
            return "prev_hash does not match the previous event"
        if not event.key_id:
            if self.keyed:
                return "unkeyed event after a keyed one (a downgrade to plain SHA-256)"
            if event.pk is None or event.pk > self.legacy_through:
                return f"unkeyed event written after keying began (legacy events end at id {self.legacy_through})"
            self.legacy += 1
        elif event.key_id not in self.keys:
            self.keyed = True
            self.unverifiable.append(event.seq)
            self.unverifiable_keys.add(event.key_id)
            if self.unverifiable_first_id is None:
                self.unverifiable_first_id = event.pk
        else:
            self.keyed = True
        checkable = event.key_id in self.keys or not event.key_id
        if checkable and not hmac.compare_digest(event_hash(event, self.keys.get(event.key_id)), event.hash):
            return "content does not match its hash"
        pinned = self.sealed.get(event.seq)
        if pinned is not None and pinned[0] != event.hash:
            return f"differs from the head sealed at {pinned[1]}: history was rewritten after the seal"
        return None

    def unverified(self) -> ChainBreak | None:
        """The events whose key is no longer configured, named by seq range and key ids, or None. They count as a
        problem (an event nobody can check is not evidence), reported beside any other break of the chain."""
        if not self.unverifiable:
            return None
        seqs, keys = self.unverifiable, ", ".join(repr(k) for k in sorted(self.unverifiable_keys))
        if len(seqs) == 1:
            which = f"event #{seqs[0]} cannot"
        else:
            span = "to" if seqs[-1] - seqs[0] + 1 == len(seqs) else "in"
            which = f"{len(seqs)} events, #{seqs[0]} {span} #{seqs[-1]}, cannot"
        plural = "s" if len(self.unverifiable_keys) > 1 else ""
        return ChainBreak(
            self.chain,
            seqs[0],
            self.unverifiable_first_id,
            f"signed with key{plural} {keys}, which BATON_AUDIT_KEYS does not hold: {which} be verified (keep a "
            "retired key listed for as long as its events must verify)",
        )

    def finish(self, stored: tuple[int, str] | None, *, has_head: bool = True) -> ChainBreak | None:
        """The chain's verdict once all its events went past, compared with the head stored for it.

        ``stored`` is ``(seq, hash)`` from the instance row or the AuditChain row; ``has_head=False`` skips the
        comparison (a caller checking a list of events). Returns the first problem, or None; events signed with a
        key no longer configured come last (see ``unverified``), after any other problem.
        """
        verdicts = self.verdicts(stored, has_head=has_head)
        return verdicts[0] if verdicts else None

    def verdicts(self, stored: tuple[int, str] | None, *, has_head: bool = True) -> list[ChainBreak]:
        """Every problem of the chain, at most two: its first break (as ``finish``), and its events that cannot
        be verified because their key is no longer configured."""
        found = [self._finish(stored, has_head=has_head), self.unverified()]
        return [problem for problem in found if problem is not None]

    def _finish(self, stored: tuple[int, str] | None, *, has_head: bool) -> ChainBreak | None:
        if self.broken is not None:
            return self.broken
        if has_head:
            if stored is None:
                seq, first_id = self.first or (self.seq, None)
                return ChainBreak(self.chain, seq, first_id, "no instance or AuditChain row holds this chain's head")
            stored_seq, stored_head = stored
            if self.seq < stored_seq:
                return ChainBreak(
                    self.chain,
                    self.seq + 1,
                    None,
                    f"cut off: the chain ends at seq {self.seq}, its stored head is at seq {stored_seq}",
                )
            if self.seq > stored_seq:
                # Only the first event past the head is named (the walk keeps one link): read its id back.
                past = AuditEvent.objects.filter(chain=self.chain, seq=stored_seq + 1).values_list("pk", flat=True)
                return ChainBreak(
                    self.chain, stored_seq + 1, past.first(), f"events run past the stored head (seq {stored_seq})"
                )
            if stored_head != self.head:
                return ChainBreak(self.chain, self.seq, None, "the stored head does not match the last event's hash")
        if self.sealed:
            last_sealed = max(self.sealed)
            if last_sealed > self.seq:
                return ChainBreak(
                    self.chain,
                    self.seq + 1,
                    None,
                    f"cut off: sealed at seq {last_sealed} at {self.sealed[last_sealed][1]}, "
                    f"the chain now ends at seq {self.seq}",
                )
        return None


def verify_chain(events: list[AuditEvent], legacy_through: int = 0) -> ChainBreak | None:
    """Check one chain's events (ordered by seq) link by link; return the first broken link, or None.

    Does not compare with the stored head (``verify_trail`` does). ``legacy_through``: see ``ChainWalk``.
    """
    if not events:
        return None
    walk = ChainWalk(events[0].chain, verifying_keys(), legacy_through)
    for event in events:
        walk.add(event)
    return walk.finish(None, has_head=False)


def legacy_boundary() -> tuple[int, str]:
    """The highest event id that may be unkeyed, from the keyed ``audit.keyed`` event of the ``audit`` chain
    (migration 0007 wrote it when keying began), and a note. 0 when that chain is missing or broken: then no
    unkeyed event is accepted, so deleting the record cannot turn new events into legacy ones.
    """
    walk = ChainWalk(AUDIT_CHAIN, verifying_keys())
    through = 0
    for event in AuditEvent.objects.filter(chain=AUDIT_CHAIN).order_by("seq").iterator():
        walk.add(event)
        if walk.broken is None and event.action == AuditAction.AUDIT_KEYED:
            through = max(through, int(event.payload.get("legacy_through", 0)))
    if walk.broken is not None:
        return 0, f"the {AUDIT_CHAIN} chain is broken, so no unkeyed event is accepted"
    if walk.unverifiable:
        return 0, (
            f"the {AUDIT_CHAIN} chain is signed with a key BATON_AUDIT_KEYS no longer holds, so no unkeyed event is "
            "accepted"
        )
    return through, f"events up to id {through} may be legacy (unkeyed)"


def keying_record(legacy_through: int, now: datetime | None = None) -> AuditEvent:
    """Append, to the ``audit`` chain, the keyed record that events up to id ``legacy_through`` are legacy."""
    return append_standalone(
        AUDIT_CHAIN,
        actor=Actor.system("migrate"),
        action=AuditAction.AUDIT_KEYED,
        subject_type="audit",
        subject_id=None,
        payload={"legacy_through": legacy_through},
        now=now,
    )


@dataclass
class TrailReport:
    """What ``verify_trail`` found: counts, and the first problem of each broken chain."""

    chains: int = 0
    events: int = 0
    legacy: int = 0
    legacy_note: str = ""
    breaks: list[ChainBreak] = field(default_factory=list)


VERIFY_CHUNK = 2000


def verify_trail(
    chain: str | None = None,
    sealed: Sealed | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TrailReport:
    """Verify every chain (or only ``chain``) against its stored head and the heads ``sealed`` pinned.

    Streams the events in (chain, seq) order in chunks of ``VERIFY_CHUNK`` and looks the stored heads up for a
    batch of chains at a time, so memory holds one chain's last link and one batch of verdicts, never the trail.
    Heads with no events at all and sealed chains with no events are found too. Returns a ``TrailReport``.
    ``progress(chains, events)``, when given, is called with the counts so far every ``VERIFY_CHUNK`` events and
    once at the end (a background job shows it as a progress bar).
    """
    report = TrailReport()
    legacy_through, report.legacy_note = legacy_boundary()
    keys = verifying_keys()
    sealed = dict(sealed or {})
    pending: list[ChainWalk] = []

    def settle(walks: list[ChainWalk]) -> None:
        heads = _stored_heads([w.chain for w in walks])
        for walk in walks:
            stored = heads.get(walk.chain)
            if stored is not None and stored[0] > walk.seq and walk.broken is None:
                # The stream reads a snapshot taken when it began; a head read now may have moved past it (a
                # sign-in during the daily run). Events and head commit together, so the events up to the head
                # are there to read and check now; a chain whose tail was really deleted still ends short.
                for event in events_after(walk.chain, walk.seq, stored[0]):
                    walk.add(event)
            report.chains += 1
            report.events += walk.events
            report.legacy += walk.legacy
            report.breaks += walk.verdicts(heads.get(walk.chain))

    events = AuditEvent.objects.order_by("chain", "seq")
    if chain is not None:
        events = events.filter(chain=chain)
    walk: ChainWalk | None = None
    seen = chains_seen = 0
    for event in _verified_rows(events):
        seen += 1
        if progress is not None and seen % VERIFY_CHUNK == 0:
            progress(chains_seen, seen)
        if walk is None or event.chain != walk.chain:
            chains_seen += 1
            if walk is not None:
                pending.append(walk)
                if len(pending) >= VERIFY_CHUNK:
                    settle(pending)
                    pending = []
            walk = ChainWalk(event.chain, keys, legacy_through, sealed.pop(event.chain, None))
        walk.add(event)
    if walk is not None:
        pending.append(walk)
    settle(pending)
    if progress is not None:
        progress(chains_seen, seen)

    for name, seq in _heads_without_events(chain):
        if seq == 0:  # every instance commits with its instance.started event: none left means it was removed
            report.breaks.append(ChainBreak(name, 1, None, "the instance has no events and no head: chain removed"))
        else:
            report.breaks.append(ChainBreak(name, 1, None, f"cut off: no events, its stored head is at seq {seq}"))
    for name, points in sealed.items():
        if chain is None or name == chain:
            last = max(points)
            report.breaks.append(
                ChainBreak(name, 1, None, f"cut off: sealed at seq {last} at {points[last][1]}, no events now")
            )
    return report


def events_after(chain: str, after: int, through: int) -> Iterator[_EventRow]:
    """``chain``'s events with ``after < seq <= through``, in seq order, as verification reads them."""
    return _verified_rows(AuditEvent.objects.filter(chain=chain, seq__gt=after, seq__lte=through).order_by("seq"))


def _stored_heads(chains: list[str]) -> dict[str, tuple[int, str]]:
    ids = [int(c.partition(":")[2]) for c in chains if c.startswith("instance:") and c.partition(":")[2].isdecimal()]
    heads = {
        chain_name(pk): (seq, head)
        for pk, seq, head in WorkflowInstance.objects.filter(pk__in=ids).values_list("pk", "audit_seq", "audit_head")
    }
    heads |= {
        name: (seq, head)
        for name, seq, head in AuditChain.objects.filter(name__in=chains).values_list("name", "seq", "head")
    }
    return heads


def _heads_without_events(chain: str | None) -> list[tuple[str, int]]:
    """Chains with a head but no event at all: a chain deleted whole. Every instance counts (its start writes its
    first event in the same transaction), and standalone chains whose AuditChain row has seq > 0."""
    instance_chain = Concat(Value("instance:"), Cast(OuterRef("pk"), CharField()))
    instances = WorkflowInstance.objects.exclude(Exists(AuditEvent.objects.filter(chain=instance_chain)))
    standalone = AuditChain.objects.filter(seq__gt=0).exclude(Exists(AuditEvent.objects.filter(chain=OuterRef("name"))))
    if chain is not None:
        prefix, _, number = chain.partition(":")
        is_instance = prefix == "instance" and number.isdecimal()
        instances = instances.filter(pk=int(number)) if is_instance else instances.none()
        standalone = standalone.filter(name=chain)
    found = [(chain_name(pk), seq) for pk, seq in instances.values_list("pk", "audit_seq").iterator()]
    return found + list(standalone.values_list("name", "seq"))


def workflow_versions_record(workflows: list[Any], actor: Actor | None = None) -> list[AuditEvent]:
    """Write ``workflow.version_seen`` to the ``workflows`` chain for each of ``workflows`` (registry definitions:
    name, version, owner, fingerprint) that this deployment's trail has not seen yet; returns the events written.

    Called after ``migrate`` and when a worker starts, so the first deployment that runs a version is on record,
    with the fingerprint of its shape. Under the chain's lock, so two processes starting at once write it once.
    """
    written: list[AuditEvent] = []
    if not workflows:
        return written
    with transaction.atomic():
        AuditChain.objects.bulk_create([AuditChain(name=WORKFLOWS_CHAIN)], ignore_conflicts=True)
        AuditChain.objects.select_for_update().get(name=WORKFLOWS_CHAIN)
        seen = {
            (str(p.get("name")), p.get("version"))
            for p in AuditEvent.objects.filter(
                chain=WORKFLOWS_CHAIN, action=AuditAction.WORKFLOW_VERSION_SEEN
            ).values_list("payload", flat=True)
            if isinstance(p, dict)
        }
        for workflow in sorted(workflows, key=lambda w: (w.name, w.version)):
            if (workflow.name, workflow.version) in seen:
                continue
            written.append(
                append_standalone(
                    WORKFLOWS_CHAIN,
                    actor=actor or Actor.system("deploy"),
                    action=AuditAction.WORKFLOW_VERSION_SEEN,
                    subject_type="workflow",
                    subject_id=None,
                    payload={
                        "name": workflow.name,
                        "version": workflow.version,
                        "owner": getattr(workflow, "owner", ""),
                        "fingerprint": workflow.fingerprint(),
                    },
                )
            )
    return written
