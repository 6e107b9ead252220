"""`make demo` (``baton_demo``) and ``baton_serve`` on a port that cannot be listened on: a clear ``CommandError``
before anything starts, never "Baton is serving" followed by daphne's log line and exit status 0 (README, "Quick
start": "Port 8000 taken? `make demo PORT=8001`")."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


@pytest.mark.parametrize("command", ["baton_serve", "baton_demo"])
def test_a_taken_port_is_a_command_error_naming_it_and_the_way_out(taken_port, command):
    # given
    args = ["--no-worker"] if command == "baton_serve" else []

    # when / then: refused before migrations, demo data, worker threads or daphne
    with pytest.raises(CommandError, match=rf"port {taken_port} on 127.0.0.1 is taken.*PORT="):
        call_command(command, "--port", str(taken_port), *args)


@pytest.mark.parametrize("command", ["baton_serve", "baton_demo"])
@pytest.mark.parametrize("port", ["99999", "0", "-5", "eighty"])
def test_a_port_out_of_range_is_refused_naming_the_option(command, port):
    with pytest.raises(CommandError, match="--port"):
        call_command(command, f"--port={port}")


def test_the_command_line_exits_non_zero_on_a_taken_port(taken_port):
    # when: as `make demo PORT=...` runs it
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "baton_serve", "--no-worker", "--port", str(taken_port)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # then
    assert done.returncode == 1
    assert f"port {taken_port} on 127.0.0.1 is taken" in done.stderr
    assert "Baton is serving" not in done.stdout
