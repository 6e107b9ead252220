"""Load the demo users and instances (once: running it again changes nothing)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from orchestrator.demo import load_demo


class Command(BaseCommand):
    help = "Create demo users and instances of every demo workflow in every interesting state."

    def handle(self, *args: Any, **options: Any) -> None:
        created = load_demo(log=self.stdout.write)
        self.stdout.write(f"Demo data: {'loaded' if created else 'already present, left as it is'}.")
