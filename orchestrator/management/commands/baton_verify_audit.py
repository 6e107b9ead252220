"""Verify every audit hash chain and name the first broken link."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from orchestrator.audit import verify_chain
from orchestrator.models import AuditEvent


class Command(BaseCommand):
    help = "Verify the audit trail's hash chains; exit 1 naming the first broken link."

    def handle(self, *args: Any, **options: Any) -> None:
        chains = AuditEvent.objects.order_by().values_list("chain", flat=True).distinct()
        checked = 0
        for chain in chains.iterator():
            events = list(AuditEvent.objects.filter(chain=chain).order_by("seq"))
            broken = verify_chain(events)
            if broken is not None:
                raise CommandError(
                    f"chain {broken.chain} is broken at seq {broken.seq} (event id {broken.event_id}): {broken.problem}"
                )
            checked += len(events)
        self.stdout.write(self.style.SUCCESS(f"{len(chains)} chains, {checked} events: all links verify."))
