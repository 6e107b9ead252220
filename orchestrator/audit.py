"""The tamper-evident audit trail: one hash chain per instance, appended under the instance row lock."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.utils import timezone

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


def event_hash(event: AuditEvent) -> str:
    """SHA-256 over the event's content and its predecessor's hash (canonical JSON, UTC timestamps)."""
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
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def append(
    instance: WorkflowInstance,
    *,
    now: datetime,
    actor: Actor,
    action: str,
    subject_type: str,
    subject_id: int | None,
    from_state: str = "",
    to_state: str = "",
    reason: str = "",
    payload: dict[str, Any] | None = None,
    request_meta: dict[str, Any] | None = None,
) -> AuditEvent:
    """Build the next event of the instance's chain and advance the head held on the instance (unsaved).

    The caller holds the instance's row lock and saves the event and the instance in its transaction.
    """
    event = _event(
        chain_name(instance.pk),
        instance.audit_seq + 1,
        instance.audit_head,
        instance.pk,
        now=now,
        actor=actor,
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        from_state=from_state,
        to_state=to_state,
        reason=reason,
        payload=payload,
        request_meta=request_meta,
    )
    instance.audit_seq = event.seq
    instance.audit_head = event.hash
    return event


def append_standalone(
    chain: str,
    *,
    actor: Actor,
    action: str,
    subject_type: str,
    subject_id: int | None,
    from_state: str = "",
    to_state: str = "",
    reason: str = "",
    payload: dict[str, Any] | None = None,
    request_meta: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> AuditEvent:
    """Append and save an event to ``chain``, a chain that belongs to no instance (e.g. ``ACCOUNTS_CHAIN``).

    Locks the chain's head row (created on first use) for the rest of the caller's transaction, or of its own
    when called outside one, so concurrent appends queue and the chain stays linear. Returns the saved event.
    """
    with transaction.atomic():
        AuditChain.objects.bulk_create([AuditChain(name=chain)], ignore_conflicts=True)
        head = AuditChain.objects.select_for_update().get(name=chain)
        event = _event(
            chain,
            head.seq + 1,
            head.head,
            None,
            now=now or timezone.now(),
            actor=actor,
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            from_state=from_state,
            to_state=to_state,
            reason=reason,
            payload=payload,
            request_meta=request_meta,
        )
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
    action: str,
    subject_type: str,
    subject_id: int | None,
    from_state: str,
    to_state: str,
    reason: str,
    payload: dict[str, Any] | None,
    request_meta: dict[str, Any] | None,
) -> AuditEvent:
    event = AuditEvent(
        chain=chain,
        seq=seq,
        prev_hash=prev_hash,
        occurred_at=now,
        actor_id=actor.user_id,
        actor_label=actor.label,
        action=action,
        instance_id=instance_id,
        subject_type=subject_type,
        subject_id=subject_id,
        from_state=str(from_state or ""),
        to_state=str(to_state or ""),
        reason=reason,
        payload=payload or {},
        request_meta=request_meta or {},
    )
    event.hash = event_hash(event)
    return event


@dataclass
class ChainBreak:
    chain: str
    seq: int
    event_id: int
    problem: str


def verify_chain(events: list[AuditEvent]) -> ChainBreak | None:
    """Check one chain's events (ordered by seq); return the first broken link, or None."""
    previous = ""
    expected_seq = 1
    for event in events:
        if event.seq != expected_seq:
            return ChainBreak(event.chain, expected_seq, event.pk, f"event #{expected_seq} is missing")
        if event.prev_hash != previous:
            return ChainBreak(event.chain, event.seq, event.pk, "prev_hash does not match the previous event")
        if event_hash(event) != event.hash:
            return ChainBreak(event.chain, event.seq, event.pk, "content does not match its hash")
        previous = event.hash
        expected_seq += 1
    return None
