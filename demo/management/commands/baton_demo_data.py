"""Load the demo users and instances (once: running it again changes nothing)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from demo.data import load_demo


class Command(BaseCommand):
    help = "Create demo users and instances of every demo workflow in every interesting state."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--force", action="store_true", help="load them in production mode too (accounts with password 'demo')"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.BATON_MODE != "demo" and not options["force"]:
            # The demo accounts share one public password: in production they would be open doors.
            raise CommandError(
                f"Refused in {settings.BATON_MODE} mode: the demo accounts have the public password 'demo'. "
                "Pass --force to load them anyway."
            )
        created = load_demo(log=self.stdout.write)
        self.stdout.write(f"Demo data: {'loaded' if created else 'already present, left as it is'}.")
