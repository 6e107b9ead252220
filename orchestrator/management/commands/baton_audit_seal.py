"""Seal the audit chain heads outside the database now (beat does it every BATON_AUDIT_SEAL_INTERVAL minutes)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from orchestrator.audit_seals import seal


class Command(BaseCommand):
    help = "Write a signed seal of the audit chain heads to BATON_AUDIT_SEAL_PATH (or the log, or --path)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--full", action="store_true", help="seal every chain, not only those changed lately")
        parser.add_argument("--path", help="append to this file instead of BATON_AUDIT_SEAL_PATH")

    def handle(self, *args: Any, **options: Any) -> None:
        target = options["path"] if options["path"] is not None else settings.BATON_AUDIT_SEAL_PATH
        try:
            count = seal(full=options["full"], path=options["path"])
        except OSError as exc:  # a missing directory, a directory, no permission, a full disk
            raise CommandError(f"cannot write seals to {target}: {exc.strerror or exc}") from exc
        self.stdout.write(self.style.SUCCESS(f"sealed {count} chain heads"))
