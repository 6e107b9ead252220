"""Deliver a signal to a waiting instance from the command line (scripts, a first try-out, an operator's repair)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from orchestrator.audit import Actor
from orchestrator.inputs import unique_keys
from orchestrator.services.signals import SignalError, signal_deliver


class Command(BaseCommand):
    help = (
        "Deliver EVENT with --payload (a JSON object) to the instance named by --instance (its id) or --business-key, "
        "under --id (the signal's id: delivering the same id again changes nothing). Prints what happened: consumed "
        "(a waiting step took it), kept (the instance has not reached a step waiting for it yet) or repeat."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("event", help="the event's name, as the workflow's Signal node declares it")
        parser.add_argument("--id", required=True, dest="signal_id", help="the signal's id, unique per instance")
        parser.add_argument("--instance", type=int, default=None, help="the instance's id")
        parser.add_argument("--business-key", default=None, help="the business key of one open instance")
        parser.add_argument("--workflow", default=None, help="with --business-key: only this workflow's instances")
        parser.add_argument("--payload", default="{}", help="a JSON object merged into the instance data")

    def handle(self, *args: Any, **options: Any) -> None:
        """Deliver it; every refusal is a ``CommandError`` (exit status 1) saying what was wrong."""
        try:
            payload = json.loads(options["payload"], object_pairs_hook=unique_keys)
        except (ValueError, RecursionError) as error:  # RecursionError: nested too deeply; ValueError: a key twice
            raise CommandError(f"--payload is not JSON: {error}") from None
        try:
            delivery = signal_deliver(
                event=options["event"],
                signal_id=options["signal_id"],
                payload=payload,
                instance_id=options["instance"],
                business_key=options["business_key"],
                workflow=options["workflow"],
                actor=Actor.system("command"),
            )
        except SignalError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(delivery.outcome)
        self.stderr.write(f"Signal {delivery.signal.signal_id} to instance {delivery.instance_id}: {delivery.outcome}.")
