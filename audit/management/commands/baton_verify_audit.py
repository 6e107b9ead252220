"""``baton_verify_audit``, extended with ``--file``: verify an export offline (audit/exports.py).

The audit app is listed before the engine in INSTALLED_APPS, so this command replaces the engine's own, which it
extends: without ``--file`` it verifies the database exactly as before.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from audit.exports import detect_kind, read_csv, read_jsonl, verify_export
from orchestrator.management.commands.baton_verify_audit import SHOWN
from orchestrator.management.commands.baton_verify_audit import Command as DatabaseCommand


class Command(DatabaseCommand):
    help = DatabaseCommand.help + (
        " With --file PATH, verify an export (CSV or JSON Lines) offline instead, with the audit keys only; exits "
        "1 naming each edited, deleted or moved line."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--file",
            metavar="PATH",
            help="an export of the audit pages or the API (.csv or .jsonl) to verify without the database",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options.get("file"):
            self.verify_file(options["file"])
            return
        super().handle(*args, **options)

    def verify_file(self, path: str) -> None:
        """Check the export at ``path``; CommandError (exit 1) listing ``line N: problem`` for each problem."""
        try:
            handle = open(path, encoding="utf-8", newline="")  # noqa: SIM115 (closed by the with below)
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc}") from exc
        with handle:
            try:
                kind = detect_kind(path, handle.read(1))
                handle.seek(0)
                report = verify_export(read_csv(handle) if kind == "csv" else read_jsonl(handle))
            except UnicodeDecodeError as exc:
                raise CommandError(f"{path} is not UTF-8 text: {exc}") from exc
        about = f"export {report.export_id} made {report.generated_at}" if report.export_id else "no export record"
        summary = f"{path}: {report.events} events ({kind}, {about})"
        if report.problems:
            lines = [f"line {line}: {message}" for line, message in report.problems]
            for line in lines:
                self.stderr.write(line)
            more = f"\n... and {len(lines) - SHOWN} more" if len(lines) > SHOWN else ""
            raise CommandError(f"{summary}: {len(lines)} problems:\n" + "\n".join(lines[:SHOWN]) + more)
        self.stdout.write(self.style.SUCCESS(f"{summary}: every line verifies; none missing, none moved."))
