"""/health/ready's database reads are bounded: a database host that accepts TCP and then never answers (before the
start-up completes, or in the middle of a session, the database check's or the sweep check's) makes the probe answer
503 in about two seconds, not hang.

PostgreSQL is replaced by a real loopback TCP listener (no mock of psycopg): ``Listener`` below either never says a
word, or relays the start-up to the real server and then swallows everything the server says. The probe runs in a
thread of its own, as a web server's request thread would, so a probe that hangs fails the test instead of hanging
the test run.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection, connections
from django.test import Client

from orchestrator import rollups

BOUND = 6.0  # seconds: generous over the two-second check, and far under a hung probe
READY_FOR_QUERY = b"Z\x00\x00\x00\x05"  # the server's ReadyForQuery message: the session's start-up is over


class Listener:
    """A loopback TCP listener standing in for PostgreSQL.

    Without ``upstream`` it accepts and never answers (a host whose database hangs before the start-up). With
    ``upstream`` (host, port) it relays both ways until the server said ReadyForQuery, then drops everything the
    server says (a session whose server stopped answering: the kernel still acknowledges every byte), or relays
    everything with ``freeze=False`` (the tests' control that the relay itself works). With ``freeze_on`` it
    relays everything until a client sends a message holding those bytes (a query naming a table), then drops
    everything the server says on that session (a server that stops answering in the middle of one check).
    """

    def __init__(
        self, upstream: tuple[str, int] | None = None, *, freeze: bool = True, freeze_on: bytes | None = None
    ) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.setblocking(False)
        self.port = self.server.getsockname()[1]
        self.upstream = upstream
        self.freeze = freeze
        self.freeze_on = freeze_on
        self.accepted = 0
        self.swallowed = 0  # bytes of the server's answers dropped after the start-up
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fake-postgres", daemon=True)

    def __enter__(self) -> Listener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.server, selectors.EVENT_READ, None)
        peers: dict[socket.socket, dict[str, Any]] = {}
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self.server:
                        client, _ = self.server.accept()
                        self.accepted += 1
                        peers[client] = {"to": None, "from_server": False}
                        selector.register(client, selectors.EVENT_READ)
                        if self.upstream:
                            server = socket.create_connection(self.upstream)
                            peers[client]["to"] = server
                            peers[server] = {"to": client, "from_server": True, "seen": b"", "ready": False}
                            selector.register(server, selectors.EVENT_READ)
                        continue
                    peer = peers.get(sock)
                    if peer is None:
                        continue
                    try:
                        data = sock.recv(65536)
                        if data and not peer["from_server"]:
                            if peer["to"] is not None:
                                if self.freeze_on and self.freeze_on in data:
                                    peers[peer["to"]]["ready"] = True
                                peer["to"].sendall(data)
                        elif data and peer["ready"]:
                            self.swallowed += len(data)
                        elif data:
                            peer["to"].sendall(data)
                            peer["seen"] += data
                            peer["ready"] = self.freeze and READY_FOR_QUERY in peer["seen"]
                    except OSError:  # a reset by either end: the same as its end of file
                        data = b""
                    if not data:
                        for end in (sock, peer["to"]):
                            if end is not None and end in peers:
                                selector.unregister(end)
                                peers.pop(end)
                                end.close()
        finally:
            for sock in list(peers):
                sock.close()
            self.server.close()
            selector.close()


@contextmanager
def database_at(monkeypatch: pytest.MonkeyPatch, listener: Listener) -> Iterator[None]:
    """Point the database settings (what the check reads, and what a new request thread connects with) at
    ``listener``. TLS is off so the relay can see where the start-up ends."""
    settings_dict = connection.settings_dict
    monkeypatch.setitem(settings_dict, "HOST", "127.0.0.1")
    monkeypatch.setitem(settings_dict, "PORT", str(listener.port))
    monkeypatch.setitem(settings_dict, "OPTIONS", {**settings_dict["OPTIONS"], "sslmode": "disable"})
    yield


def probe_in_a_request_thread() -> tuple[Any, float]:
    """GET /health/ready from a thread of its own, as a web server's request thread; returns (response or None if
    it hung past BOUND, seconds taken). The thread closes its own database sessions so none outlives the test."""
    answer: dict[str, Any] = {}

    def run() -> None:
        try:
            answer["response"] = Client().get("/health/ready")
        except Exception as exc:  # the old check let the database error through, or the listener closed on it
            answer["error"] = exc
        finally:
            connections.close_all()

    started = time.monotonic()
    thread = threading.Thread(target=run, name="probe", daemon=True)
    thread.start()
    thread.join(BOUND)
    return answer.get("response"), time.monotonic() - started


def assert_not_ready_on_the_database_only(response: Any, took: float) -> None:
    assert response is not None, f"/health/ready did not answer within {BOUND} s"
    assert took < BOUND
    assert response.status_code == 503
    assert response["Retry-After"]
    checks = response.json()["checks"]
    assert checks["database"]["ok"] is False
    assert checks["database"]["detail"] == "no answer within 2 s"
    assert 1500 <= checks["database"]["ms"] < BOUND * 1000
    # the other checks still report
    assert checks["broker"]["ok"] is True
    assert checks["channel_layer"]["ok"] is True
    assert checks["sweep"] == {"ok": False, "detail": "database unreachable", "ms": 0.0}
    assert "127.0.0.1" not in response.content.decode()


@pytest.mark.django_db
class TestDatabaseCheckIsBounded:
    def test_a_host_that_accepts_and_never_answers_the_start_up_is_not_ready_within_the_bound(self, monkeypatch):
        # given a database host that accepts TCP and never says a word
        rollups.rollup_pass()
        with Listener() as silent, database_at(monkeypatch, silent):
            # when a load balancer probes
            response, took = probe_in_a_request_thread()

        # then the probe answers 503 naming the database, in about two seconds
        assert silent.accepted >= 1
        assert_not_ready_on_the_database_only(response, took)

    def test_a_session_whose_server_stops_answering_is_not_ready_within_the_bound(self, monkeypatch):
        # given the real PostgreSQL behind a relay that lets the start-up through, then drops every answer
        rollups.rollup_pass()
        real = (connection.settings_dict["HOST"] or "127.0.0.1", int(connection.settings_dict["PORT"] or 5432))
        with Listener(upstream=real) as frozen, database_at(monkeypatch, frozen):
            # when a load balancer probes
            response, took = probe_in_a_request_thread()

        # then the session was made and its query went unanswered, and the probe answers 503 in about two seconds
        assert frozen.accepted >= 1
        assert frozen.swallowed > 0
        assert_not_ready_on_the_database_only(response, took)

    def test_through_a_relay_that_passes_everything_the_database_check_answers(self, monkeypatch):
        # given the same relay, passing everything (the control: the relay itself is not what fails above)
        real = (connection.settings_dict["HOST"] or "127.0.0.1", int(connection.settings_dict["PORT"] or 5432))
        with Listener(upstream=real, freeze=False) as relay, database_at(monkeypatch, relay):
            # when
            response, took = probe_in_a_request_thread()

        # then
        assert relay.accepted >= 1
        assert response is not None
        assert took < BOUND
        database = response.json()["checks"]["database"]
        assert database["ok"] is True
        assert database["detail"] == "answers"


@pytest.mark.django_db
class TestSweepCheckIsBounded:
    def test_a_server_that_stops_answering_the_sweeps_read_is_not_ready_within_the_bound(self, monkeypatch):
        # given the real PostgreSQL behind a relay that passes everything until the sweep check reads its cursor
        # table, then drops every answer on that session (the database check before it answered)
        real = (connection.settings_dict["HOST"] or "127.0.0.1", int(connection.settings_dict["PORT"] or 5432))
        with Listener(upstream=real, freeze=False, freeze_on=b"rollupcursor") as relay, database_at(monkeypatch, relay):
            # when a load balancer probes
            response, took = probe_in_a_request_thread()

        # then the sweep's read went unanswered, and the probe answers 503 naming the sweep, in about two seconds
        assert relay.swallowed > 0
        assert response is not None, f"/health/ready did not answer within {BOUND} s"
        assert took < BOUND
        assert response.status_code == 503
        checks = response.json()["checks"]
        assert checks["database"]["ok"] is True
        assert checks["sweep"]["ok"] is False
        assert checks["sweep"]["detail"] == "no answer within 2 s"
        assert 1500 <= checks["sweep"]["ms"] < BOUND * 1000
        assert "127.0.0.1" not in response.content.decode()

    @pytest.mark.django_db(transaction=True)  # the check reads on a session of its own: the sweep must be committed
    def test_through_a_relay_that_passes_everything_the_sweep_check_answers(self, monkeypatch):
        # given a sweep that just ran, and the same relay passing everything (the control)
        rollups.rollup_pass()
        real = (connection.settings_dict["HOST"] or "127.0.0.1", int(connection.settings_dict["PORT"] or 5432))
        with Listener(upstream=real, freeze=False) as relay, database_at(monkeypatch, relay):
            # when
            response, took = probe_in_a_request_thread()

        # then
        assert response is not None
        assert took < BOUND
        assert response.status_code == 200, response.json()
        sweep = response.json()["checks"]["sweep"]
        assert sweep["ok"] is True
        assert sweep["detail"].endswith(" s ago")
