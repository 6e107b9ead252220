"""`make test` runs the suite in several pytest-xdist processes: each must have its own test database and Redis
database, handed on to the workers and servers its tests start (tests/settings.py, tests/browser/live.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from tests.conftest import ROOT
from tests.settings import _redis_url_of_this_process


@pytest.mark.parametrize(
    ("url", "worker", "expected"),
    [
        ("redis://127.0.0.1:6379/14", "gw0", "redis://127.0.0.1:6379/14"),
        ("redis://127.0.0.1:6379/14", "gw1", "redis://127.0.0.1:6379/13"),
        # the eighth process, the most `make test` starts: down to 7, never round to 0 (where a developer's own
        # Baton keeps its broker queue, README's example) to flush it
        ("redis://127.0.0.1:6379/14", "gw7", "redis://127.0.0.1:6379/7"),
        # a password and options are kept
        ("redis://:s3cret@cache:6380/3?socket_timeout=5", "gw1", "redis://:s3cret@cache:6380/2?socket_timeout=5"),
        # the number in the query wins over the path for redis-py: that is the one to move
        ("redis://127.0.0.1:6379/0?db=9", "gw1", "redis://127.0.0.1:6379/0?db=8"),
        # a socket: the path is the socket's, the number is in the query
        ("unix:///run/redis/redis.sock?db=12", "gw2", "unix:///run/redis/redis.sock?db=10"),
    ],
)
def test_each_process_gets_its_own_redis_database(url, worker, expected):
    assert _redis_url_of_this_process(url, worker) == expected


@pytest.mark.parametrize(
    ("url", "worker"),
    [
        ("redis://127.0.0.1:6379/1", "gw2"),  # past database 0: it used to wrap round to 15
        ("redis://127.0.0.1:6379", "gw1"),  # no number is database 0
        ("unix:///run/redis/redis.sock", "gw1"),  # it used to stop the run with int("run/redis/redis.sock")
    ],
)
def test_a_process_with_no_database_left_stops_the_run_saying_how_to_give_one(url, worker):
    with pytest.raises(ImproperlyConfigured, match=r"REDIS_URL.*higher database number.*BATON_TEST_PROCESSES"):
        _redis_url_of_this_process(url, worker)


def _settings_seen_by_a_child(environ: dict[str, str]) -> str:
    code = "from django.conf import settings; print(settings.REDIS_URL)"
    done = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        env={**environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_a_process_started_by_a_test_keeps_the_redis_database_of_its_test_process():
    # given: a pytest-xdist process's environment as its tests hand it to a worker or `make web`
    environ = {key: value for key, value in os.environ.items() if key not in {"BATON_TEST_REDIS_MOVED"}}
    environ.update(PYTEST_XDIST_WORKER="gw1", REDIS_URL="redis://127.0.0.1:6379/10")

    # when: the test process reads its settings, then a process it starts reads them with what it was handed
    moved = _settings_seen_by_a_child(environ)
    child = _settings_seen_by_a_child({**environ, "REDIS_URL": moved, "BATON_TEST_REDIS_MOVED": "1"})

    # then: moved once, in the test process only
    assert moved == "redis://127.0.0.1:6379/9"
    assert child == moved


@pytest.mark.django_db
def test_this_process_uses_the_database_and_redis_of_its_own(request):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        pytest.skip("run in one process (BATON_TEST_PROCESSES=0): nothing to keep apart")
    assert connection.settings_dict["NAME"].endswith(f"_{worker}")
    assert os.environ["BATON_TEST_REDIS_MOVED"] == "1"
    assert settings.STATIC_ROOT.name == f"staticfiles-{worker}"


@pytest.mark.django_db(transaction=True)
def test_make_web_on_a_port_taken_meanwhile_is_started_on_another_not_mistaken_for_the_taker(tmp_path, monkeypatch):
    """``serve_make_web`` picks a free port, lets it go, and starts `make web` on it: another process (pytest-xdist's
    next one, starting its own server) may take the port in between. It waited only until something answered on the
    port, so it took the other server for its own (a test then met the other process's database), or failed when
    gunicorn could not listen. It waits for its own gunicorn to say it listens, and starts again on another port."""
    import tests.conftest as conftest

    # given: the first port it picks is taken by another program by the time `make web` starts
    taker = socket.socket()
    taker.bind(("127.0.0.1", 0))
    taker.listen()
    taken = taker.getsockname()[1]
    ports = iter([taken])
    real_free_port = conftest._free_port
    monkeypatch.setattr(conftest, "_free_port", lambda: next(ports, None) or real_free_port())

    # when
    try:
        with conftest.serve_make_web(tmp_path, BATON_WEB_WORKERS="1") as server:
            # then: its own server, on another port, answering
            assert server.port != taken
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health/live", timeout=10) as answer:
                assert answer.status == 200
    finally:
        taker.close()


def test_ports_picked_for_test_servers_are_each_process_s_own_and_outside_the_ephemeral_range(monkeypatch):
    """A port picked by binding port 0 could be handed to another process (an xdist neighbour's bind(0), any
    outgoing connection) before the test's server bound it; tests/ports.py picks from a block of its own."""
    from tests import ports

    # given: this process as gw1, its neighbour gw2
    low = ports._ephemeral_low()
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")

    # when: several picks, one port of the block held by a listener meanwhile
    first = ports.free_port()
    with socket.socket() as held:
        try:
            held.bind(("127.0.0.1", first + 1))
            held.listen()
        except OSError:
            pass  # in use already (under xdist the real gw1 may run a server on it): held all the same
        picked = [first] + [ports.free_port() for _ in range(3)]

    # then: all in gw1's block, below the kernel's ephemeral range, distinct, the held one skipped
    block = range(ports.BASE + ports.BLOCK, ports.BASE + 2 * ports.BLOCK)
    assert all(port in block for port in picked), picked
    assert block.stop <= low
    assert len(set(picked)) == len(picked)
    assert first + 1 not in picked
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw2")
    assert ports.free_port() >= block.stop
