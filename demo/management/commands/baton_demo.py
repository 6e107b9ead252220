"""`make demo`: migrate the embedded database, load the demo data once, and serve."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from demo.data import DEMO_USERS
from demo.management.commands.baton_serve import check_address_free, listen_port


class Command(BaseCommand):
    help = "Migrate, load demo data (idempotent) and serve Baton in embedded mode."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=listen_port, default=8000)

    def handle(self, *args: Any, **options: Any) -> None:
        """Migrate, load the demo data and serve; ``CommandError`` first when the address cannot be listened on."""
        check_address_free(options["host"], options["port"])
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write(f"Database: {settings.DATABASES['default']['NAME']}")
        call_command("baton_demo_data")
        url = f"http://{options['host']}:{options['port']}/"
        self.stdout.write("")
        self.stdout.write(self.style.SUCCESS(f"Open {url}"))
        self.stdout.write("Demo logins (demo only), password 'demo':")
        for username, role in DEMO_USERS:
            self.stdout.write(f"  {username:<9} {role}")
        self.stdout.write("Stop with Ctrl+C. Start afresh with `make clean-demo`.")
        call_command("baton_serve", host=options["host"], port=options["port"])
