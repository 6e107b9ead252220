"""The API's own data: per-user access tokens and the idempotency keys of starts made through the API."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models

from orchestrator.models import WorkflowInstance


class ApiToken(models.Model):
    """A personal access token. Only the SHA-256 of the secret is stored: the secret is shown once, at creation.

    The secret has 256 random bits, so a plain (fast) hash is safe to look up by: nobody can guess a preimage, and
    a slow password hash would cost every API request tens of milliseconds. ``prefix`` is the first characters of
    the token as typed, shown on the page so a person can tell their tokens apart.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    # Written at most once a minute per token (api/authentication.py): a write per request would cost every call.
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "-created_at"], name="api_token_user_created")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def is_usable(self, now: datetime) -> bool:
        """Neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def status(self, now: datetime) -> str:
        """ "active", "expired" or "revoked" at ``now`` (for the page and the command)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


class IdempotencyKey(models.Model):
    """A start made with an ``Idempotency-Key`` header: the key, who sent it, the request's hash and the instance.

    Keys are scoped per client (the authenticated user): two clients may use the same key for different starts.
    The unique constraint, not a cache, decides a race: of concurrent starts with one key exactly one inserts
    this row; the others wait for its transaction and then read its instance (api/services.py).
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200)
    request_hash = models.CharField(max_length=64)
    instance = models.ForeignKey(WorkflowInstance, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="api_idempotency_user_key_unique")]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.key}"
