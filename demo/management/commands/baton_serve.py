"""Serve Baton from one process: the ASGI server, a Celery worker thread and a beat thread (embedded mode).

With REDIS_URL unset the broker is ``memory://`` and the channel layer is in-process, so the worker and beat
must live in this process to see its messages (docs/architecture.md, "Two modes, same code").
"""

from __future__ import annotations

import argparse
import errno
import socket
import threading
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser


def listen_port(text: str) -> int:
    """``--port``: a TCP port, 1 to 65535 (argparse's type; a wrong one is an error naming the option)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1 to 65535)") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1 to 65535)")
    return port


def positive_int(text: str) -> int:
    """``--concurrency``: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give at least 1")
    return value


def check_address_free(host: str, port: int) -> None:
    """Raise ``CommandError`` when ``host:port`` cannot be listened on (taken by another program, or an address
    this machine does not have), before migrations, demo data or worker threads start.

    daphne itself only logs such a failure and returns, so the command used to print "Baton is serving" and end
    with exit status 0 (README, "Quick start": `make demo PORT=8001` when 8000 is taken)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise CommandError(f"cannot listen on {host}:{port}: {error.strerror} (give another --host)") from None
    family, kind, proto, _name, address = addresses[0]
    with socket.socket(family, kind, proto) as probe:
        # As Twisted does when it listens: a port left in TIME_WAIT by a stopped server is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise CommandError(
                    f"port {port} on {host} is taken by another program: stop it, or choose another port "
                    f"(make demo PORT={port + 1 if port < 65535 else 8001}, or --port)."
                ) from None
            raise CommandError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


class Command(BaseCommand):
    help = "Serve the dashboard with an embedded Celery worker and beat (demo / single-process mode)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=listen_port, default=8000)
        parser.add_argument("--concurrency", type=positive_int, default=2)
        parser.add_argument("--no-worker", action="store_true", help="serve only (a worker runs elsewhere)")

    def handle(self, *args: Any, **options: Any) -> None:
        """Serve until stopped; ``CommandError`` (exit status 1) when the address cannot be listened on."""
        check_address_free(options["host"], options["port"])
        # daphne.server installs Twisted's asyncio reactor on import; it must come before any other reactor.
        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server

        from baton_site.asgi import application

        if not options["no_worker"]:
            start_worker_thread(options["concurrency"])
            start_beat_thread()
        self.stdout.write(self.style.SUCCESS(f"Baton is serving at http://{options['host']}:{options['port']}/"))
        server = Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=options["host"], port=options["port"]),
            signal_handlers=True,
            verbosity=0,
        )
        server.run()
        if not server.listening_addresses:
            # Taken between the check above and daphne's own listen: daphne logged it and returned.
            raise CommandError(f"could not listen on {options['host']}:{options['port']} (see the log above)")


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
