"""Workers recover by themselves: a real worker process, on a PostgreSQL cluster and a Redis server of the test's
own (the shared ones are never restarted), keeps working after either is restarted under it.

The deployment here is separate from the test database: instances are started by ``manage.py shell`` in a
subprocess and watched with plain SQL.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from orchestrator.logformat import MAX_CHAIN, MAX_FRAMES
from tests.conftest import CELERY, ROOT, WORKER_ENV
from tests.ports import free_port

pytestmark = pytest.mark.worker

# The newest installed PostgreSQL's server binaries.
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), default=Path("/nonexistent"))
# The most lines one log record may take: MAX_CHAIN tracebacks of MAX_FRAMES frames (file line, code line, carets)
# plus their headers. Records that repeated earlier errors grew past this without bound.
RECORD_BOUND = MAX_CHAIN * (3 * MAX_FRAMES + 4) + 5


def as_postgres(*args: str, timeout: float = 60) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=timeout)


class PrivateDeployment:
    """A PostgreSQL cluster, a Redis server and a ``celery worker -B`` of this test's own."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pgdata = workdir / "pgdata"
        self.pg_port, self.redis_port = free_port(), free_port()
        self.database_url = f"postgres://root@127.0.0.1:{self.pg_port}/baton"
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.worker_log = workdir / "worker.log"
        self.redis: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.hostname = f"recovery-{os.getpid()}@localhost"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **WORKER_ENV,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "BATON_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(ROOT),
        }

    # PostgreSQL
    def pg_init(self) -> None:
        as_postgres(str(PG_BIN / "initdb"), "-D", str(self.pgdata), "-U", "root", "--auth=trust", "-E", "UTF8")
        self.pg_ctl("start")
        with psycopg.connect(f"postgresql://root@127.0.0.1:{self.pg_port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE baton")
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=self.env(),
            check=True,
            timeout=120,
        )

    def pg_ctl(self, action: str) -> None:
        options = f"-p {self.pg_port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        as_postgres(
            str(PG_BIN / "pg_ctl"), action, "-D", str(self.pgdata), "-m", "fast", "-w", "-o", options,
            "-l", str(self.workdir / "postgres.log"),
        )  # fmt: skip

    # Redis
    def redis_start(self) -> None:
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.redis_port), timeout=0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("the private Redis did not start")

    def redis_stop(self) -> None:
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(timeout=10)
            self.redis = None

    # the worker
    def worker_start(self) -> None:
        command = [
            str(CELERY), "-A", "baton_site", "worker", "-Q", "baton", "-c", "2", "-n", self.hostname,
            "--without-mingle", "--without-gossip", "-B", "-s", str(self.workdir / "beat-schedule"),
            "--scheduler", "celery.beat:PersistentScheduler", "--loglevel", "INFO",
        ]  # fmt: skip
        with self.worker_log.open("ab") as log:
            self.worker = subprocess.Popen(
                command, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.wait(self.answers_ping, 60, "the worker to answer a ping")

    def answers_ping(self) -> bool:
        from celery import Celery

        with Celery(broker=self.redis_url, set_as_current=False) as app:
            replies = app.control.ping(destination=[self.hostname], timeout=0.5)
        return any(self.hostname in reply for reply in replies)

    def worker_stop(self) -> None:
        if self.worker is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.worker.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.worker.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait(timeout=10)
        self.worker = None

    # work
    def start_instances(self, count: int) -> list[int]:
        code = (
            "from orchestrator.services.instances import instance_start; "
            f"print(*[instance_start('bench_chain', {{}}).pk for _ in range({count})])"
        )
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", code],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return [int(pk) for pk in done.stdout.strip().splitlines()[-1].split()]

    def states(self, ids: list[int]) -> dict[int, str]:
        try:
            with psycopg.connect(self.database_url.replace("postgres://", "postgresql://"), connect_timeout=2) as conn:
                rows = conn.execute(
                    "SELECT id, state FROM orchestrator_workflowinstance WHERE id = ANY(%s)", [ids]
                ).fetchall()
        except psycopg.OperationalError:
            return {}
        return dict(rows)

    def wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.worker is not None and self.worker.poll() is not None:
                pytest.fail(f"the worker exited while waiting for {what}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout}s waiting for {what}:\n{self.log_tail()}", pytrace=False)
            time.sleep(0.2)

    def wait_completed(self, ids: list[int], timeout: float) -> float:
        started = time.monotonic()
        self.wait(
            lambda: set(self.states(ids).values()) == {"completed"} and len(self.states(ids)) == len(ids),
            timeout,
            f"instances {ids} to complete (now {self.states(ids)})",
        )
        return time.monotonic() - started

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.worker_log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self.worker_stop()
        self.redis_stop()
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.pg_ctl("stop")


@pytest.fixture
def deployment() -> Iterator[PrivateDeployment]:
    if not (PG_BIN / "initdb").exists() or shutil.which("redis-server") is None:
        pytest.skip("needs PostgreSQL 15's initdb and redis-server")
    workdir = Path(tempfile.mkdtemp(prefix="baton-recovery-"))
    shutil.chown(workdir, "postgres")
    workdir.chmod(0o777)
    private = PrivateDeployment(workdir)
    try:
        private.pg_init()
        private.redis_start()
        private.worker_start()
        yield private
    finally:
        private.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def longest_log_record(log: str) -> int:
    """Lines in the longest log record (a record starts with its timestamp, settings.LOGGING's format)."""
    longest = current = 0
    for line in log.splitlines():
        if re.match(r"\d{4}-\d\d-\d\d \d\d:", line):
            current = 0
        current += 1
        longest = max(longest, current)
    return longest


def test_new_work_completes_after_postgresql_restarts_under_the_worker(deployment):
    """Each pool process kept its dead session and failed every message with "the connection is lost", so no new
    instance completed until the worker was restarted by hand."""
    # given: a worker whose processes all hold a PostgreSQL session
    deployment.wait_completed(deployment.start_instances(4), 30)

    # when: PostgreSQL restarts under the running worker
    deployment.pg_ctl("restart")
    after = deployment.start_instances(4)

    # then: new work completes within seconds, without touching the worker
    took = deployment.wait_completed(after, 30)
    assert took < 30
    assert deployment.worker.poll() is None
    # and the log did not pile up: no record repeats earlier errors (it held every earlier traceback)
    log = deployment.worker_log.read_text(errors="replace")
    assert longest_log_record(log) <= RECORD_BOUND, log[-5000:]


def test_work_in_flight_and_new_work_complete_after_redis_restarts_under_the_worker(deployment):
    """Steps finishing while Redis is down cannot publish their successors: the sweep re-sends those once it is
    back, and new work runs without restarting the worker."""
    # given: work in flight
    during = deployment.start_instances(12)

    # when: Redis restarts empty (no persistence) under the running worker, a few seconds later
    time.sleep(0.5)
    deployment.redis_stop()
    time.sleep(3)
    deployment.redis_start()
    after = deployment.start_instances(4)

    # then
    deployment.wait_completed(during + after, 50)
    assert deployment.worker.poll() is None
    log = deployment.worker_log.read_text(errors="replace")
    assert longest_log_record(log) <= RECORD_BOUND, log[-5000:]
