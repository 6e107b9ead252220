"""Create, list and revoke API tokens from the command line (for service accounts, and for admins helping a user).

    manage.py baton_api_token create alice --name "billing sync" [--expires-in-days 90]
    manage.py baton_api_token list alice
    manage.py baton_api_token revoke 42

``create`` prints the token once, on a line of its own (a script can read the last line); each creation and
revocation goes into the audit trail's ``api_tokens`` chain as done by "system:command".
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from api.models import ApiToken
from api.tokens import token_create, token_revoke, tokens_of
from orchestrator.audit import Actor
from orchestrator.inputs import unstorable

ACTOR = Actor.system("command")


class Command(BaseCommand):
    help = "Create, list or revoke a user's API tokens."

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="action", required=True)
        create = commands.add_parser("create", help="Create a token and print it (once).")
        create.add_argument("username")
        create.add_argument("--name", required=True, help="What will use the token.")
        create.add_argument("--expires-in-days", type=int, default=None, help="Days until it stops working.")
        listing = commands.add_parser("list", help="A user's tokens (never their secrets).")
        listing.add_argument("username")
        revoke = commands.add_parser("revoke", help="Revoke a token by its id.")
        revoke.add_argument("token_id", type=int)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            self._create(options["username"], options["name"], options["expires_in_days"])
        elif action == "list":
            self._list(options["username"])
        else:
            self._revoke(options["token_id"])

    def _user(self, username: str) -> Any:
        # argv bytes that are not UTF-8 arrive as lone surrogates, which the driver cannot send: no user has them.
        user = None if unstorable(username) else get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        return user

    def _create(self, username: str, name: str, days: int | None) -> None:
        if days is not None and not 1 <= days <= 3650:
            raise CommandError("--expires-in-days: from 1 to 3650.")
        expires = timezone.now() + timedelta(days=days) if days else None
        try:
            new = token_create(self._user(username), name, expires_at=expires, actor=ACTOR)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        until = f"until {new.token.expires_at:%Y-%m-%d %H:%M %Z}" if new.token.expires_at else "without expiry"
        # The secret alone on standard output, so `TOKEN=$(... create ...)` captures it; this line, on standard error,
        # reads whole whether the token follows it on a terminal or was captured.
        self.stderr.write(
            f"Token {new.token.pk} “{new.token.name}” for {username}, {until}. "
            "Its secret is on standard output, shown this once: keep it now."
        )
        self.stdout.write(new.secret)

    def _list(self, username: str) -> None:
        now = timezone.now()
        for token in tokens_of(self._user(username)):
            expires = f"{token.expires_at:%Y-%m-%d %H:%M %Z}" if token.expires_at else "never"
            used = f"{token.last_used_at:%Y-%m-%d %H:%M %Z}" if token.last_used_at else "never"
            self.stdout.write(
                f"{token.pk}\t{token.prefix}…\t{token.status(now)}\texpires {expires}\tlast used {used}\t{token.name}"
            )

    def _revoke(self, token_id: int) -> None:
        asked = timezone.now()
        try:
            token = token_revoke(token_id, owner=None, actor=ACTOR)
        except ApiToken.DoesNotExist:
            raise CommandError(f"No token with id {token_id}.") from None
        whose = f"token {token.pk} “{token.name}” of {token.user.get_username()}"
        if token.revoked_at is not None and token.revoked_at < asked:
            # token_revoke changes nothing for a revoked token: saying "Revoked" again would claim a change (and an
            # audit event) that did not happen.
            self.stdout.write(f"The {whose} was revoked already, at {token.revoked_at:%Y-%m-%d %H:%M %Z}.")
            return
        self.stdout.write(f"Revoked {whose}.")
