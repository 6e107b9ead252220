"""API tokens: create (the secret is returned once), revoke, list, and look one up by the secret a client sends.

Every creation and revocation is one event of the audit trail's standalone ``api_tokens`` chain, with who did it
(the owner on their page, or "system:command" from ``manage.py baton_api_token``) and the request it came from.
This module is the only writer of those events: nothing else records a token's creation or revocation.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from api.models import ApiToken
from orchestrator.accounts import current_request_meta
from orchestrator.audit import Actor, append_standalone
from orchestrator.audit_actions import AuditAction
from orchestrator.inputs import HORIZON, check_text

TOKENS_CHAIN = "api_tokens"
# "baton_" marks the string as a Baton token (secret scanners can match it); the rest is 256 random bits.
TOKEN_PREFIX = "baton_"  # noqa: S105 (the public prefix of every token)
PREFIX_SHOWN = len(TOKEN_PREFIX) + 6
NAME_MAX = 100
# A person may hold this many usable tokens at once: more is a script leaking them, not a person.
ACTIVE_MAX = 50
# last_used_at is written at most this often per token: one write per API call would cost every call.
LAST_USED_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class NewToken:
    """A token just created: the row, and the secret, which exists nowhere else and is shown once."""

    token: ApiToken
    secret: str


def hash_secret(secret: str) -> str:
    """The stored form of a token's secret (hex SHA-256 of its UTF-8 bytes)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def token_create(
    user: User,
    name: str,
    *,
    expires_at: datetime | None = None,
    actor: Actor | None = None,
    request_meta: dict[str, Any] | None = None,
) -> NewToken:
    """Create a token for ``user`` named ``name`` (1-100 characters, no NUL), usable until ``expires_at``
    (None: until revoked; otherwise in the future and within about ten years).

    ``actor`` defaults to the user (their own page); a command passes ``Actor.system("command")``. Returns the
    row and the secret. Raises ValidationError for a bad name or expiry, an inactive user, or more than
    ``ACTIVE_MAX`` usable tokens.
    """
    name = check_text(name, "Name", NAME_MAX)
    if not name:
        raise ValidationError("Name: give the token a name, such as the script or system that will use it.")
    now = timezone.now()
    if expires_at is not None:
        if timezone.is_naive(expires_at):
            expires_at = timezone.make_aware(expires_at)
        if expires_at <= now:
            raise ValidationError("Expires: enter a time in the future.")
        if expires_at > now + HORIZON:
            raise ValidationError(f"Expires: at most {HORIZON.days} days from now.")
    if not user.is_active:
        raise ValidationError(f"{user.get_username()} is deactivated and cannot hold API tokens.")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        # The user's row lock keeps two concurrent creations from both passing the count below.
        User.objects.select_for_update().filter(pk=user.pk).first()
        if usable_tokens(user, now).count() >= ACTIVE_MAX:
            raise ValidationError(f"You already hold {ACTIVE_MAX} usable tokens: revoke one you no longer use first.")
        token = ApiToken.objects.create(
            user=user, name=name, prefix=secret[:PREFIX_SHOWN], key_hash=hash_secret(secret), expires_at=expires_at
        )
        append_standalone(
            TOKENS_CHAIN,
            actor=actor or Actor.of(user),
            action=AuditAction.TOKEN_CREATED,
            subject_type="api_token",
            subject_id=token.pk,
            payload={
                "user": user.get_username(),
                "user_id": user.pk,
                "name": name,
                "prefix": token.prefix,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
            request_meta=request_meta if request_meta is not None else current_request_meta(),
        )
    return NewToken(token, secret)


def token_revoke(
    token_id: int,
    *,
    owner: User | None,
    actor: Actor,
    request_meta: dict[str, Any] | None = None,
) -> ApiToken:
    """Revoke token ``token_id``; with ``owner``, only one of theirs (anyone else's is "not found", as if it did
    not exist). Revoking a revoked token changes nothing and writes nothing. Raises ApiToken.DoesNotExist."""
    with transaction.atomic():
        tokens = ApiToken.objects.select_for_update()
        if owner is not None:
            tokens = tokens.filter(user=owner)
        token = tokens.select_related("user").get(pk=token_id)
        if token.revoked_at is not None:
            return token
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        append_standalone(
            TOKENS_CHAIN,
            actor=actor,
            action=AuditAction.TOKEN_REVOKED,
            subject_type="api_token",
            subject_id=token.pk,
            payload={
                "user": token.user.get_username(),
                "user_id": token.user_id,
                "name": token.name,
                "prefix": token.prefix,
            },
            request_meta=request_meta if request_meta is not None else current_request_meta(),
        )
    return token


def tokens_of(user: User) -> QuerySet[ApiToken]:
    """The user's tokens, newest first (revoked and expired ones included: the page shows what happened)."""
    return ApiToken.objects.filter(user=user).order_by("-created_at", "-id")


def usable_tokens(user: User, now: datetime) -> QuerySet[ApiToken]:
    """The user's tokens that are neither revoked nor expired at ``now``."""
    from django.db.models import Q

    return ApiToken.objects.filter(user=user, revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )


def token_for_secret(secret: str, now: datetime | None = None) -> ApiToken | None:
    """The usable token whose secret is ``secret``, with its user loaded, or None (unknown, revoked, expired, or
    a deactivated owner). Marks it used (at most once per ``LAST_USED_EVERY``)."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    now = now or timezone.now()
    # ``key_hash`` is unique: ``[:1]`` without ``first()``'s ORDER BY, a quarter less CPU for the ORM to build.
    token = next(iter(ApiToken.objects.select_related("user").filter(key_hash=hash_secret(secret))[:1]), None)
    if token is None or not token.is_usable(now) or not token.user.is_active:
        return None
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token
