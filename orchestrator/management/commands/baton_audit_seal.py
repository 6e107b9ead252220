"""Seal the audit chain heads outside the database now (beat does it every BATON_AUDIT_SEAL_INTERVAL minutes)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from orchestrator.audit_seals import seal


class Command(BaseCommand):
    help = "Write a signed seal of the audit chain heads to BATON_AUDIT_SEAL_PATH (or the log, or --path)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--full", action="store_true", help="seal every chain, not only those changed lately")
        parser.add_argument("--path", help="append to this file instead of BATON_AUDIT_SEAL_PATH")

    def handle(self, *args: Any, **options: Any) -> None:
        count = seal(full=options["full"], path=options["path"])
        self.stdout.write(self.style.SUCCESS(f"sealed {count} chain heads"))
