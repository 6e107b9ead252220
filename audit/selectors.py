"""Reads of the audit trail for the admins' timeline, its exports and the API: filters and keyset pagination.

Every filter ends in an index whose order is the timeline's, newest first on ``(occurred_at, id)`` (the indexes
of ``AuditEvent``), so a page is one index range scan at millions of events; the cursor is the last row's
``(occurred_at, id)``, never an offset (bench/audit.py measures each filter at 1,000,000 events).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db import connection
from django.db.models import IntegerField, Q, QuerySet, Value
from django.utils.dateparse import parse_datetime

from audit.models import Verification, VerificationState
from orchestrator.models import AuditEvent, WorkflowInstance

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def can_view_trail(user: User | AnonymousUser) -> bool:
    """Whether ``user`` may see the whole trail, export it and verify it: an active user holding
    ``orchestrator.view_trail`` (superusers hold every permission; no demo group has it)."""
    return bool(user.is_authenticated and user.is_active and user.has_perm("orchestrator.view_trail"))


@dataclass(frozen=True)
class AuditFilters:
    """What the timeline, an export or the API asks for; every field optional ("" / None: no filter).

    ``actor``: an actor label as stored ("user:alice", "system:worker", "system", "anonymous") or a bare username
    (read as "user:<name>"). ``action``: an exact action ("task.completed"), or a prefix ending in "."
    ("task."). ``workflow``: a workflow name; ``instance_id``; ``subject_type`` and ``subject_id``;
    ``since`` / ``until``: aware datetimes, since inclusive, until exclusive; ``q``: text searched in reasons
    and comments (case-insensitive); ``request_id``: every event one request caused.
    """

    actor: str = ""
    action: str = ""
    workflow: str = ""
    instance_id: int | None = None
    subject_type: str = ""
    subject_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    q: str = ""
    request_id: str = ""

    def is_empty(self) -> bool:
        return self == AuditFilters()

    def as_params(self) -> dict[str, str]:
        """The filters as query-string parameters (the timeline form's names), empty ones left out."""
        params = {
            "actor": self.actor,
            "action": self.action,
            "workflow": self.workflow,
            "instance": "" if self.instance_id is None else str(self.instance_id),
            "subject_type": self.subject_type,
            "subject_id": "" if self.subject_id is None else str(self.subject_id),
            "since": "" if self.since is None else self.since.isoformat(),
            "until": "" if self.until is None else self.until.isoformat(),
            "q": self.q,
            "request_id": self.request_id,
        }
        return {key: value for key, value in params.items() if value}


def audit_events_filtered(filters: AuditFilters) -> QuerySet[AuditEvent]:
    """The events matching ``filters``, newest first by ``(occurred_at, id)``; not yet sliced or paged.

    Returns a lazy QuerySet (page it with ``keyset_page``, or stream it with ``.iterator()`` for an export).
    """
    events = AuditEvent.objects.all()
    if filters.actor:
        label = (
            filters.actor
            if ":" in filters.actor or filters.actor in ("system", "anonymous")
            else f"user:{filters.actor}"
        )
        events = events.filter(actor_label=label)
    if filters.action:
        if filters.action.endswith("."):
            events = events.filter(action__startswith=filters.action)
        else:
            events = events.filter(action=filters.action)
    if filters.workflow:
        # A subquery rather than a join: the planner can read the few instances of a workflow by its index and the
        # events of each, or walk the time index and probe, whichever the statistics say is cheaper.
        events = events.filter(
            instance_id__in=WorkflowInstance.objects.filter(workflow_name=filters.workflow).values("pk")
        )
    if filters.instance_id is not None:
        events = events.filter(instance_id=filters.instance_id)
    if filters.subject_type:
        events = events.filter(subject_type=filters.subject_type)
    if filters.subject_id is not None:
        events = events.filter(subject_id=filters.subject_id)
    if filters.since is not None:
        events = events.filter(occurred_at__gte=filters.since)
    if filters.until is not None:
        events = events.filter(occurred_at__lt=filters.until)
    if filters.q:
        events = events.filter(reason__icontains=filters.q)
    if filters.request_id:
        events = events.filter(request_id=filters.request_id)
    return events.order_by("-occurred_at", "-id")


class BadCursor(ValueError):
    """A page cursor that is not one this site handed out (edited, cut, or from another version)."""


def encode_cursor(event: AuditEvent) -> str:
    """The opaque cursor of the page boundary at ``event``: base64 of ``[occurred_at in UTC ISO, id]``."""
    raw = json.dumps([event.occurred_at.astimezone(UTC).isoformat(), event.pk], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, int]:
    """``(occurred_at, id)`` from a cursor made by ``encode_cursor``; raises ``BadCursor`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        at, pk = json.loads(raw)
        when = parse_datetime(at) if isinstance(at, str) else None
        # In UTC: an edited offset PostgreSQL refuses (beyond +/-15:59) or one that puts the time past year 9999
        # is a damaged link here, not a database error there.
        when = when.astimezone(UTC) if when is not None and when.tzinfo is not None else None
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, OverflowError):
        raise BadCursor("That page link is damaged; showing the newest events.") from None
    if when is None or not isinstance(pk, int) or isinstance(pk, bool) or not 1 <= pk <= 2**63 - 1:
        raise BadCursor("That page link is damaged; showing the newest events.")
    return when, pk


@dataclass
class AuditPage:
    """One page of the timeline: its events (newest first), and cursors to the older and newer pages ("" when
    there is none)."""

    events: list[AuditEvent]
    older: str = ""
    newer: str = ""
    errors: list[str] = field(default_factory=list)


def keyset_page(events: QuerySet[AuditEvent], *, after: str = "", before: str = "", size: int = PAGE_SIZE) -> AuditPage:
    """A page of ``events`` (as ``audit_events_filtered`` orders them): the ``size`` events older than the cursor
    ``after``, or newer than ``before``, or the newest ones. Two queries at most (the page with one row more to
    know whether there is another, and for a ``before`` page a one-row probe of the newer side).

    A damaged cursor is not an error: the newest page comes back with the message in ``errors``.
    """
    size = max(1, min(MAX_PAGE_SIZE, size))
    errors: list[str] = []
    boundary: tuple[datetime, int] | None = None
    newer_side = False
    try:
        if before:
            boundary, newer_side = decode_cursor(before), True
        elif after:
            boundary = decode_cursor(after)
    except BadCursor as exc:
        errors.append(str(exc))
    if boundary is None:
        rows = list(events[: size + 1])
        return AuditPage(rows[:size], encode_cursor(rows[size - 1]) if len(rows) > size else "", "", errors)
    at, pk = boundary
    if not newer_side:
        # The redundant occurred_at__lte starts the index range at the cursor; the OR only sorts out the ties.
        rows = list(
            events.filter(Q(occurred_at__lt=at) | Q(occurred_at=at, id__lt=pk), occurred_at__lte=at)[: size + 1]
        )
        page = rows[:size]
        older = encode_cursor(page[-1]) if len(rows) > size else ""
        return AuditPage(page, older, encode_cursor(page[0]) if page else "", errors)
    ascending = events.filter(Q(occurred_at__gt=at) | Q(occurred_at=at, id__gt=pk), occurred_at__gte=at).order_by(
        "occurred_at", "id"
    )
    rows = list(ascending[: size + 1])
    page = list(reversed(rows[:size]))
    newer = encode_cursor(page[0]) if len(rows) > size else ""
    return AuditPage(page, encode_cursor(page[-1]) if page else "", newer, errors)


def verification_status() -> tuple[Verification | None, Verification | None]:
    """``(verification_latest(), verification_last_finished())`` in one statement (a UNION ALL of the two one-row
    queries): every audit page shows both, and a round trip is a visible part of a one-row timeline page. SQLite (the
    demo) refuses a LIMIT inside a compound statement, so there the two are read one after the other."""
    if not connection.features.supports_slicing_ordering_in_compound:
        return verification_latest_query().first(), verification_finished_query().first()
    latest = verification_latest_query().annotate(which=Value(0, output_field=IntegerField()))[:1]
    finished = verification_finished_query().annotate(which=Value(1, output_field=IntegerField()))[:1]
    found: list[Verification | None] = [None, None]
    for run in latest.union(finished, all=True):
        found[run.which] = run
    return found[0], found[1]


def verification_latest_query() -> QuerySet[Verification]:
    return Verification.objects.order_by("-requested_at", "-pk")


def verification_finished_query() -> QuerySet[Verification]:
    return Verification.objects.filter(state__in=(VerificationState.PASSED, VerificationState.FAILED)).order_by(
        "-finished_at", "-pk"
    )


def verification_latest() -> Verification | None:
    """The most recent verification run, whatever its state (None before the first)."""
    return verification_latest_query().first()


def verification_last_finished() -> Verification | None:
    """The most recent run that reached a verdict (passed or failed)."""
    return verification_finished_query().first()


def chain_counts() -> dict[str, Any]:
    """How many instance chains and standalone chains there are, from their head rows (not the events)."""
    from orchestrator.models import AuditChain

    return {
        "instances": WorkflowInstance.objects.filter(audit_seq__gt=0).count(),
        "standalone": list(AuditChain.objects.filter(seq__gt=0).order_by("name").values_list("name", "seq")),
    }
