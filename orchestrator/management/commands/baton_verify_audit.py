"""Verify every audit chain against its stored head (and optionally seals), naming each broken chain."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from orchestrator.audit import Sealed, chain_name, verify_trail
from orchestrator.audit_seals import read_seals

SHOWN = 50


class Command(BaseCommand):
    help = (
        "Verify the audit trail: every chain's links, keys and stored head, and with --seals the heads sealed "
        "outside the database. Exits 1 naming chain, seq and problem of each broken chain."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--chain", help="verify only this chain (e.g. accounts, instance:42)")
        parser.add_argument("--instance", type=int, help="verify only this instance's chain")
        parser.add_argument("--seals", metavar="PATH", help="a seal file (JSON Lines) to check the chains against")

    def handle(self, *args: Any, **options: Any) -> None:
        chain = options["chain"] or (chain_name(options["instance"]) if options["instance"] is not None else None)
        problems: list[str] = []
        sealed: Sealed = {}
        if options["seals"]:
            try:
                seals = read_seals(options["seals"])
            except OSError as exc:
                raise CommandError(f"cannot read seals from {options['seals']}: {exc}") from exc
            sealed, problems = seals.sealed, list(seals.problems)
            self.stdout.write(f"{seals.lines} seal lines read from {options['seals']}.")
            if seals.lines == 0:
                # Asked to check against seals and given none (a file truncated to nothing, or only junk): passing
                # would claim a check that did not happen.
                problems.append(f"no valid seal in {options['seals']}: nothing to check the chains against")
        report = verify_trail(chain, sealed)
        problems += [str(broken) for broken in report.breaks]
        summary = f"{report.chains} chains, {report.events} events ({report.legacy} legacy, unkeyed)"
        self.stdout.write(f"Legacy boundary: {report.legacy_note}.")
        if problems:
            for problem in problems:
                self.stderr.write(problem)
            shown = "\n".join(problems[:SHOWN])
            more = f"\n... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
            raise CommandError(f"{summary}: {len(problems)} problems:\n{shown}{more}")
        if chain is not None and report.chains == 0:
            raise CommandError(f"chain {chain} has no events")
        self.stdout.write(self.style.SUCCESS(f"{summary}: all links, keys and heads verify."))
