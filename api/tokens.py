"""API tokens: create (the secret is returned once), revoke, list, and look one up by the secret a client sends.

Every creation and revocation is one event of the audit trail's standalone ``api_tokens`` chain, with who did it
(the owner on their page, or "system:command" from ``manage.py baton_api_token``) and the request it came from.
This module is the only writer of those events: nothing else records a token's creation or revocation.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from api.models import ApiToken
from api.permissions import MODEL_BACKEND_ONLY
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
    a deactivated owner). Marks it used (at most once per ``LAST_USED_EVERY``).

    On PostgreSQL with Django's own permission backend the same statement reads the user's permissions (their
    own and their groups'), kept on the user as ``ModelBackend`` keeps them (``_perm_cache``), so the request's
    role checks (``has_perm``) ask no second statement: read fresh on every request, as before.
    """
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    now = now or timezone.now()
    if connection.vendor == "postgresql" and list(settings.AUTHENTICATION_BACKENDS) == MODEL_BACKEND_ONLY:
        token = _token_with_permissions(hash_secret(secret))
    else:
        # ``key_hash`` is unique: ``[:1]`` without ``first()``'s ORDER BY, a quarter less CPU for the ORM to build.
        token = next(iter(ApiToken.objects.select_related("user").filter(key_hash=hash_secret(secret))[:1]), None)
    if token is None or not token.is_usable(now) or not token.user.is_active:
        return None
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_EVERY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def refusal(secret: str, now: datetime | None = None) -> str:
    """Why ``secret`` authenticates nobody (:func:`token_for_secret` answered None), said to whoever sent it: not a
    token Baton issued, revoked, expired (with when), or its account deactivated. Only the holder of the secret
    can ask about a token, and a secret is 256 random bits: telling its holder that it expired says nothing to
    anyone guessing. One "unknown, revoked or expired" for all of them sent the owner of a nightly integration
    hunting for a typo in a token that had simply reached its expiry date. Reads the token by its hash; raises
    nothing of its own."""
    now = now or timezone.now()
    token = None
    if secret.startswith(TOKEN_PREFIX) and len(secret) <= 200:
        token = ApiToken.objects.select_related("user").filter(key_hash=hash_secret(secret)).first()
    if token is None:
        return "This is not a token Baton issued: check that it was copied whole, with its baton_ prefix."
    again = "; create a new one on your API tokens page (/api/tokens/) or with manage.py baton_api_token create."
    if token.revoked_at is not None:
        return f"The token {token.prefix}... was revoked at {_when(token.revoked_at)}{again}"
    if token.expires_at is not None and token.expires_at <= now:
        return f"The token {token.prefix}... expired at {_when(token.expires_at)}{again}"
    if not token.user.is_active:
        return f"The token {token.prefix}... belongs to a deactivated account; it authenticates nobody."
    return "The token is unknown, revoked or expired, or its user is inactive."  # usable again meanwhile


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _token_with_permissions(key_hash: str) -> ApiToken | None:
    """The token with ``key_hash``, its user, and (unless a superuser, who has every permission) the user's
    permissions as ``ModelBackend`` caches them: one statement, models built from its row."""
    token_fields, user_fields, sql = _token_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql, [key_hash])
        row = cursor.fetchone()
    if row is None:
        return None
    split = len(token_fields)
    token = ApiToken.from_db(connection.alias, token_fields, row[:split])
    user = User.from_db(connection.alias, user_fields, row[split : split + len(user_fields)])
    if not user.is_superuser:
        # What ModelBackend.get_all_permissions would load: "app_label.codename" of the user's and groups' own.
        user._perm_cache = set(row[-1])  # type: ignore[attr-defined]
    token.user = user
    return token


@functools.cache
def _token_sql() -> tuple[list[str], list[str], str]:
    """(token field names, user field names, the statement), worked out once from the models: building the
    ORM's select_related query cost about a fifth of a start's CPU in the web process, on every request."""
    quote = connection.ops.quote_name
    token_fields = [field.attname for field in ApiToken._meta.concrete_fields]
    user_fields = [field.attname for field in User._meta.concrete_fields]
    columns = [f"t.{quote(field.column)}" for field in ApiToken._meta.concrete_fields]
    columns += [f"u.{quote(field.column)}" for field in User._meta.concrete_fields]
    permissions, content_types = quote(Permission._meta.db_table), quote(ContentType._meta.db_table)
    user_perms = quote(Permission.user_set.through._meta.db_table)
    group_perms = quote(Permission.group_set.through._meta.db_table)
    user_groups = quote(User.groups.through._meta.db_table)
    user_fk = quote(ApiToken._meta.get_field("user").column)
    # Only the models' table and column names are formatted in: the secret's hash is the one parameter.
    perms = (
        f"ARRAY(SELECT ct.app_label || '.' || p.codename FROM {permissions} p "  # noqa: S608
        f"JOIN {content_types} ct ON ct.id = p.content_type_id WHERE p.id IN ("
        f"SELECT up.permission_id FROM {user_perms} up WHERE up.user_id = u.id UNION "
        f"SELECT gp.permission_id FROM {group_perms} gp JOIN {user_groups} ug ON ug.group_id = gp.group_id "
        "WHERE ug.user_id = u.id))"
    )
    sql = (
        f"SELECT {', '.join(columns)}, {perms} FROM {quote(ApiToken._meta.db_table)} t "  # noqa: S608
        f"JOIN {quote(User._meta.db_table)} u ON u.id = t.{user_fk} "
        f"WHERE t.{quote(ApiToken._meta.get_field('key_hash').column)} = %s LIMIT 1"
    )
    return token_fields, user_fields, sql
