"""Set-up shared by the bench scripts: environment, a fresh database and Redis db, migrations, users, the worker.

Nothing here imports Django at module level: the environment must be in place before the settings load.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
CELERY = str(VENV_BIN / "celery")

PG_SERVER = "postgres://root@127.0.0.1:5432"
# A lane or person sharing the machine gives the bench a database, Redis db and worker log of its own (like the
# other bench scripts' BENCH_REDIS_URL); the defaults are the bench's own.
DB_NAME = os.environ.get("BENCH_DB_NAME", "baton_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
WORKER_LOG = Path(os.environ.get("BENCH_WORKER_LOG", "/tmp/baton-bench-worker.log"))

BENCH_FLOWS = "demo.workflows.bench"

INITIATOR = "bench-initiator"
APPROVER_GROUP = "approvers"


def configure_env(*, pg_server: str = PG_SERVER, db_name: str = DB_NAME, redis_url: str = REDIS_URL) -> dict[str, str]:
    """Point this process (and the worker it starts) at the bench database and Redis db."""
    env = {
        "DATABASE_URL": f"{pg_server}/{db_name}",
        "REDIS_URL": redis_url,
        "BATON_SECRET_KEY": "bench",
        "BATON_AUDIT_KEYS": "bench:bench-audit-key-not-for-production",
        "DJANGO_SETTINGS_MODULE": "baton_site.settings",
        "BATON_LOG_LEVEL": "WARNING",
        # The benchmark flows are not in the product catalog; the bench (and its worker) registers them.
        "BATON_WORKFLOW_MODULES": ",".join(
            dict.fromkeys([*filter(None, os.environ.get("BATON_WORKFLOW_MODULES", "").split(",")), BENCH_FLOWS])
        ),
    }
    os.environ.update(env)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return env


def reset_database(*, pg_server: str = PG_SERVER, db_name: str = DB_NAME, keep: bool = False) -> str:
    """Drop and recreate the bench database (or only create it when missing, with ``keep``)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db_name]).fetchone() is not None
        if exists and keep:
            return "kept"
        if exists:
            # FORCE ends the sessions still open on this database (only ever the bench's own).
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db_name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db_name)))
        return "recreated" if exists else "created"


def flush_redis(redis_url: str = REDIS_URL) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()


def migrate() -> None:
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        check=True,
        env=os.environ.copy(),
    )


def ensure_users(approvers: int) -> tuple[Any, list[Any]]:
    """The initiator and ``approvers`` users in the group the bench workflow's human step names."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    user_model = get_user_model()
    group, _ = Group.objects.get_or_create(name=APPROVER_GROUP)
    initiator, _ = user_model.objects.get_or_create(username=INITIATOR)
    people = []
    for i in range(1, approvers + 1):
        user, _ = user_model.objects.get_or_create(username=f"bench-approver-{i}")
        user.groups.add(group)
        people.append(user)
    return initiator, people


class Worker:
    """One real Celery worker process (prefork unless told), in its own session so Ctrl+C reaches only the bench."""

    def __init__(
        self, concurrency: int = 2, log_path: Path = WORKER_LOG, pool: str = "prefork", extra: Sequence[str] = ()
    ) -> None:
        self.concurrency = concurrency
        self.pool = pool
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.command = [
            CELERY,
            "-A",
            "baton_site",
            "worker",
            "-Q",
            "baton",
            "--concurrency",
            str(concurrency),
            "--pool",
            pool,
            "--loglevel",
            "WARNING",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            *extra,
        ]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 60.0) -> float:
        """Start the worker and wait until it answers a ping; return the seconds it took."""
        from baton_site.celery import app

        began = time.monotonic()
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env=os.environ.copy(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        while time.monotonic() - began < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the worker exited with {self.proc.returncode}; see {self.log_path}:\n{self.tail()}"
                )
            replies = app.control.ping(timeout=0.5)
            if replies:
                return time.monotonic() - began
        self.stop()
        raise RuntimeError(f"the worker did not answer within {timeout:.0f} s; see {self.log_path}")

    def children(self) -> list[int]:
        """The pool processes (the prefork children) of the worker."""
        if not self.proc:
            return []
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM); SIGKILL to the worker's own process group if it hangs."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def machine_busy(seconds: float = 2.0) -> float:
    """Share of all CPUs busy over ``seconds`` (from /proc/stat)."""

    def read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        total = sum(fields[:8])
        return total - fields[3] - fields[4], total

    busy0, total0 = read()
    time.sleep(seconds)
    busy1, total1 = read()
    return (busy1 - busy0) / max(1, total1 - total0)


def wait_idle(threshold: float = 0.15, max_wait: float = 300.0) -> float:
    """Wait (up to ``max_wait`` s) until other work on this shared machine leaves it mostly idle; return the share."""
    deadline = time.monotonic() + max_wait
    busy = machine_busy()
    while busy > threshold and time.monotonic() < deadline:
        print(f"    machine {busy:.0%} busy with other work; waiting for a quieter moment", flush=True)
        busy = machine_busy(5.0)
    return busy
