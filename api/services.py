"""The API's own write: a start with an ``Idempotency-Key`` (the engine's ``instance_start`` does the start)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from api.models import IdempotencyKey
from orchestrator.models import WorkflowInstance
from orchestrator.registry import UnknownWorkflow
from orchestrator.services.instances import InvalidInput, instance_start

# Visible ASCII, as HTTP header values are; the column's width.
KEY_MAX = 200


class IdempotencyKeyReused(Exception):
    """The key was used before by this client with another request body (422)."""

    def __init__(self, instance_id: int) -> None:
        super().__init__(
            f"This Idempotency-Key was used for instance {instance_id} with another request body. "
            "Use a new key for a new start, or send the same body to get that instance."
        )
        self.instance_id = instance_id


class IdempotencyKeyBusy(Exception):
    """A concurrent request with the same key is still in flight and its outcome cannot be read yet (409)."""


def body_hash(body: dict[str, Any]) -> str:
    """SHA-256 (hex) of the request body in canonical JSON: the same body however its keys or spaces were sent."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Started:
    """What a start answered: the instance, and whether this request created it (False: a replay)."""

    instance: WorkflowInstance
    created: bool


def _replay(user: User, key: str, request_hash: str) -> WorkflowInstance | None:
    found = IdempotencyKey.objects.filter(user=user, key=key).select_related("instance__initiator").first()
    if found is None:
        return None
    if found.request_hash != request_hash:
        raise IdempotencyKeyReused(found.instance_id)
    return found.instance


def api_instance_start(
    user: User,
    workflow: str,
    data: dict[str, Any],
    *,
    version: int | None = None,
    business_key: str = "",
    key: str | None = None,
    request_hash: str = "",
    request_meta: dict[str, Any] | None = None,
) -> Started:
    """Start ``workflow`` (``version``, default latest) with ``data`` for ``user``; with ``key`` at most once per
    (user, key): a repeat with the same ``request_hash`` returns the first instance (``created`` False).

    The key's row is inserted in the start's own statement, with its audit events, with no look-up before: a repeat
    (or a concurrent duplicate, once the first commits) fails that INSERT on the unique index, rolls its own
    start back (nothing of it was dispatched: dispatches run after commit) and returns the first instance. A
    repeat thus costs a start that is rolled back; a new key, the common case, one statement less.

    Raises IdempotencyKeyReused (same key, other body), IdempotencyKeyBusy, and what ``instance_start`` raises
    (InvalidInput, UnknownWorkflow).
    """
    if key is None:
        instance = instance_start(
            workflow, data, initiator=user, business_key=business_key, version=version, request_meta=request_meta
        )
        return Started(instance, True)
    # No look-up first: a new key (nearly every request) costs only its INSERT. A key seen before fails that
    # INSERT on the unique index, which rolls this start back (nothing of it was dispatched) and replays.
    try:
        with transaction.atomic():
            # No savepoint of the start's own: any error rolls this whole transaction back, the key's row with it.
            # The key's row rides in the start's statement with its audit events (no round trip of its own).
            instance = instance_start(
                workflow,
                data,
                initiator=user,
                business_key=business_key,
                version=version,
                request_meta=request_meta,
                savepoint=False,
                with_rows=lambda started: [
                    IdempotencyKey(user=user, key=key, request_hash=request_hash, instance=started)
                ],
            )
    except IntegrityError:
        replayed = _replay(user, key, request_hash)
        if replayed is None:
            raise IdempotencyKeyBusy("Another request with this Idempotency-Key is in flight; retry shortly.") from None
        return Started(replayed, False)
    except (InvalidInput, UnknownWorkflow):
        # A key used before answers as before, whatever this body would do now: the first instance for the same
        # body (even if the start form changed since), 422 for another body.
        replayed = _replay(user, key, request_hash)
        if replayed is None:
            raise
        return Started(replayed, False)
    return Started(instance, True)
