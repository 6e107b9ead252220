"""Serve Baton from one process: the ASGI server, a Celery worker thread and a beat thread (embedded mode).

With REDIS_URL unset the broker is ``memory://`` and the channel layer is in-process, so the worker and beat
must live in this process to see its messages (docs/architecture.md, "Two modes, same code").
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Serve the dashboard with an embedded Celery worker and beat (demo / single-process mode)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--concurrency", type=int, default=2)
        parser.add_argument("--no-worker", action="store_true", help="serve only (a worker runs elsewhere)")

    def handle(self, *args: Any, **options: Any) -> None:
        # daphne.server installs Twisted's asyncio reactor on import; it must come before any other reactor.
        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server

        from baton_site.asgi import application

        if not options["no_worker"]:
            start_worker_thread(options["concurrency"])
            start_beat_thread()
        self.stdout.write(self.style.SUCCESS(f"Baton is serving at http://{options['host']}:{options['port']}/"))
        Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=options["host"], port=options["port"]),
            signal_handlers=True,
            verbosity=0,
        ).run()


def start_worker_thread(concurrency: int) -> threading.Thread:
    """A real Celery worker (thread pool) consuming this process's memory:// broker."""
    from baton_site.celery import app

    worker = app.WorkController(
        pool_cls="threads",
        concurrency=concurrency,
        queues=[settings.CELERY_TASK_DEFAULT_QUEUE],
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="WARNING",
    )
    thread = threading.Thread(target=worker.start, name="baton-worker", daemon=True)
    thread.start()
    return thread


def start_beat_thread() -> Any:
    """Beat as a thread, with the database scheduler given explicitly (else DB schedules never fire)."""
    from celery.beat import EmbeddedService
    from django_celery_beat.schedulers import DatabaseScheduler

    from baton_site.celery import app

    beat = EmbeddedService(app, thread=True, scheduler_cls=DatabaseScheduler)
    beat.start()  # type: ignore[union-attr]
    return beat
