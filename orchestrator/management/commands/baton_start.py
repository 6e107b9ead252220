"""Start an instance of a registered workflow from the command line (scripts, cron, a first try-out)."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from orchestrator import registry
from orchestrator.inputs import unique_keys, unstorable
from orchestrator.services import instances


class Command(BaseCommand):
    help = (
        "Start an instance of WORKFLOW with --data (a JSON object) as its input; --user names the initiator "
        "(who may then not decide it). Prints the new instance's id."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("workflow", help="the workflow's name; its latest version starts")
        parser.add_argument("--data", default="{}", help="the input, a JSON object, e.g. '{\"amount\": 120}'")
        parser.add_argument("--user", default="", help="username of the initiator (default: none, a system start)")
        parser.add_argument("--key", default=None, help="idempotency key: the same key starts one instance only")

    def handle(self, *args: Any, **options: Any) -> None:
        """Start the instance; every refusal is a ``CommandError`` (exit status 1) saying what was wrong."""
        try:
            data = json.loads(options["data"], object_pairs_hook=unique_keys)
        except (ValueError, RecursionError) as error:  # RecursionError: nested too deeply; ValueError: a key twice
            raise CommandError(f"--data is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise CommandError(f"--data must be a JSON object, not {type(data).__name__}")
        initiator = None
        if options["user"]:
            # A NUL (or a lone surrogate: argv bytes that are not UTF-8) reached PostgreSQL and came back as a
            # DataError's traceback; no user can be named so.
            user = options["user"]
            initiator = None if unstorable(user) else get_user_model().objects.filter(username=user).first()
            if initiator is None:
                raise CommandError(f"no user named {options['user']!r}")
        try:
            instance = instances.instance_start(
                options["workflow"], data, initiator=initiator, idempotency_key=options["key"]
            )
        except registry.UnknownWorkflow:
            known = ", ".join(w.name for w in registry.latest_all()) or "none"
            raise CommandError(
                f"no workflow named {options['workflow']!r} is registered (registered: {known})"
            ) from None
        except instances.InvalidInput as error:
            raise CommandError(f"the input was refused: {error}") from None
        except instances.IdempotencyConflict as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"{instance.pk}")
        self.stderr.write(f"Started {instance} (instance {instance.pk}).")
