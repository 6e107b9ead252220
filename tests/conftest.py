"""Fixtures shared by every test package.

- ``users``: the demo cast (approvers, managers, operators, an admin), built with factories.
- ``run_steps``: drains automated work in-process, without Celery, through the engine's own entry points.
- ``register_workflow``: registers a test-only definition and removes it afterwards.
- ``broker``: reads what was published to the Redis broker (to prove a dispatch happened after commit).
- ``celery_worker``: a REAL ``celery worker -B`` process on the test database and Redis db 14 (under pytest-xdist,
  its process's: tests/settings.py); only for tests marked ``@pytest.mark.worker`` and
  ``@pytest.mark.django_db(transaction=True)``.
- ``wait_for``: polls a predicate and, on timeout, fails with the instance's steps, audit trail and worker log.
- ``serve_make_web``: ``make web`` itself (gunicorn, as production runs it) on the test database and a free port.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import connection
from django.utils import timezone

from orchestrator import registry
from orchestrator.dsl import Workflow
from orchestrator.models import DISPATCHABLE_STEP_STATES, AuditEvent, StepRun, WorkflowInstance
from orchestrator.services.steps import _run_handler, step_claim, step_execute, step_record
from tests.factories import GroupFactory, SuperUserFactory, UserFactory
from tests.ports import free_port as _free_port

ROOT = Path(__file__).resolve().parent.parent
CELERY = ROOT / ".venv" / "bin" / "celery"
# Workflow modules the worker process imports besides the shipped ones (it cannot see test-registered flows).
WORKER_EXTRA_WORKFLOW_MODULES = [
    "tests.orchestrator.versioned_flows",
    "tests.orchestrator.fault_flows",
    "tests.orchestrator.ops_flows",
    "tests.api.signal_flows",
    "tests.api.signal_edge_flows",
]
RUN_STEPS_GUARD = 500
WORKER_ENV = {
    "BATON_SWEEP_INTERVAL": "0.5",
    "BATON_REDISPATCH_AFTER": "3",
    "BATON_LEASE_GRACE": "1",
    # The webhook tests' receivers listen on 127.0.0.1.
    "BATON_WEBHOOK_ALLOW_PRIVATE": "1",
    # Operator alerts are tested by calling them (tests/console/test_alerts.py); beat's pass would add notifications
    # to other tests' counts.
    "BATON_ALERT_INTERVAL": "3600",
}


# --- flushing between transactional tests ----------------------------------------------------------------

FLUSH_ATTEMPTS = 5


def _is_lock_conflict(error: BaseException | None) -> bool:
    """True for PostgreSQL's deadlock (40P01) or lock-not-available (55P03), however deeply it is chained."""
    while error is not None:
        if getattr(error, "sqlstate", None) in {"40P01", "55P03"}:
            return True
        error = error.__cause__ or error.__context__
    return False


def flush_retrying(flush: Callable[[], None], attempts: int = FLUSH_ATTEMPTS, pause: float = 0.2) -> None:
    """Run ``flush`` (one teardown's TRUNCATE of every table), again after a lock conflict, up to ``attempts`` times.

    A worker test leaves the real worker (and its 0.5 s beat sweep) running while the tables are flushed: TRUNCATE
    takes each table's exclusive lock in turn, and a sweep holding a row lock on one table while it waits for
    another can deadlock with it. PostgreSQL then cancels one of the two, and when that is the flush the next test
    would start on the last one's rows. Any other error is raised at once."""
    for attempt in range(1, attempts + 1):
        try:
            flush()
            return
        except Exception as error:
            if attempt == attempts or not _is_lock_conflict(error):
                raise
            time.sleep(pause * attempt)


def _install_flush_retry() -> None:
    from django.test import TransactionTestCase

    teardown = TransactionTestCase._fixture_teardown  # type: ignore[attr-defined]  # private in the stubs

    def _fixture_teardown(self: TransactionTestCase) -> None:
        flush_retrying(lambda: teardown(self))

    setattr(TransactionTestCase, "_fixture_teardown", _fixture_teardown)  # noqa: B010


_install_flush_retry()


# --- broker ---------------------------------------------------------------------------------------------


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


@pytest.fixture(scope="session", autouse=True)
def _clean_broker() -> None:
    """Messages left in this process's Redis database by an earlier run must never reach this run's worker."""
    _redis().flushdb()


class Broker:
    """What the after-commit dispatches published to the ``baton`` queue in Redis."""

    queue = "baton"

    def __init__(self) -> None:
        self.client = _redis()

    def clear(self) -> None:
        self.client.delete(self.queue)

    def step_ids(self) -> list[int]:
        """Step ids of the ``step_run`` messages waiting in the queue, oldest first."""
        ids = []
        for raw in reversed(self.client.lrange(self.queue, 0, -1)):
            message = json.loads(raw)
            if message["headers"].get("task") != "orchestrator.tasks.step_run":
                continue
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            ids.append(int(args[0]))
        return ids

    def time_limits(self, queue: str | None = None) -> dict[int, tuple[float | None, float | None]]:
        """``{step id: (soft, hard)}`` time limits of the ``step_run`` messages waiting in ``queue``."""
        limits = {}
        for raw in self.client.lrange(queue or self.queue, 0, -1):
            message = json.loads(raw)
            if message["headers"].get("task") == "orchestrator.tasks.step_run":
                hard, soft = message["headers"].get("timelimit") or (None, None)
                limits[int(json.loads(base64.b64decode(message["body"]))[0][0])] = (soft, hard)
        return limits


@pytest.fixture
def broker() -> Broker:
    """The Redis queue, emptied for this test (no worker consumes it outside ``worker`` tests)."""
    client = Broker()
    client.clear()
    return client


# --- people ---------------------------------------------------------------------------------------------


@pytest.fixture
def users(db: None) -> SimpleNamespace:
    """staff and staff2 (approvers), manager (managers), operator (operators), admin (superuser); password "demo"."""
    approvers = GroupFactory(name="approvers")
    managers = GroupFactory(name="managers")
    operators = GroupFactory(name="operators")
    return SimpleNamespace(
        approvers=approvers,
        managers=managers,
        operators=operators,
        staff=UserFactory(username="staff", groups=[approvers]),
        staff2=UserFactory(username="staff2", groups=[approvers]),
        manager=UserFactory(username="manager", groups=[managers]),
        operator=UserFactory(username="operator", groups=[operators]),
        admin=SuperUserFactory(username="admin"),
    )


# --- workflows ------------------------------------------------------------------------------------------


@pytest.fixture
def register_workflow() -> Iterator[Callable[[Workflow], Workflow]]:
    """Register test-only definitions; each is unregistered when the test ends."""
    added: list[Workflow] = []

    def register(workflow: Workflow) -> Workflow:
        registry.register(workflow)
        added.append(workflow)
        return workflow

    yield register
    for workflow in reversed(added):
        registry.unregister(workflow.name, workflow.version)


# --- running steps in-process ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    """One pass of ``run_steps`` over one step: what it was and what the engine answered."""

    step_id: int
    name: str
    kind: str
    attempt: int
    result: str


def _execute_at(step_id: int, now: Any) -> str:
    """``step_execute`` with the claim taken at ``now`` (a clock moved forward to a back-off's due time)."""
    claim = step_claim(step_id, now=now)
    if claim is None:
        return "not runnable"
    # The handler runs exactly as on a worker: outside any engine transaction, then fenced by its attempt.
    outcome = _run_handler(claim)
    return step_record(claim.step_id, claim.attempt, outcome)


@pytest.fixture
def run_steps(db: None) -> Callable[..., list[Ran]]:
    """Drain automated work without Celery.

    ``run_steps(instance=None, *, advance=False, limit=None)`` repeatedly picks the earliest dispatchable step
    (scheduled or failed) of ``instance`` (or of any instance) and runs it through ``step_execute``, the
    same entry point as the Celery task, until nothing due is left or ``limit`` steps ran. With
    ``advance=True`` steps due in the future (retry back-off, timers) run too: their claim is taken at
    ``due_at``, as if the clock had moved there, so back-off costs no sleeping. A step the engine refuses (a
    paused or cancelled instance) is left alone. Returns what ran, in order; more than 500 steps without a
    ``limit`` fails the test (a looping workflow).
    """

    def run(
        instance: WorkflowInstance | int | None = None, *, advance: bool = False, limit: int | None = None
    ) -> list[Ran]:
        ran: list[Ran] = []
        refused: set[int] = set()
        while True:
            now = timezone.now()
            steps = StepRun.objects.filter(state__in=DISPATCHABLE_STEP_STATES).exclude(pk__in=refused)
            if instance is not None:
                steps = steps.filter(instance_id=getattr(instance, "pk", instance))
            if not advance:
                steps = steps.filter(due_at__lte=now)
            step = steps.order_by("due_at", "id").first()
            if step is None or (limit is not None and len(ran) >= limit):
                return ran
            if len(ran) >= RUN_STEPS_GUARD:
                raise AssertionError(f"run_steps: more than {RUN_STEPS_GUARD} steps ran; is a workflow looping?")
            if step.due_at is None or step.due_at <= now:
                result = step_execute(step.pk)
            else:
                result = _execute_at(step.pk, step.due_at)
            if result == "not runnable":
                refused.add(step.pk)
            step.refresh_from_db()
            ran.append(Ran(step.pk, step.name, step.kind, step.attempt, result))

    return run


# --- describing an instance (failure messages) ----------------------------------------------------------


def describe_instance(instance: WorkflowInstance | int | None) -> str:
    """A readable dump of an instance: state, steps, tasks and audit actions."""
    if instance is None:
        return ""
    instance_id = getattr(instance, "pk", instance)
    current = WorkflowInstance.objects.filter(pk=instance_id).first()
    if current is None:
        return f"instance {instance_id}: gone"
    lines = [
        f"instance {current.pk} {current.workflow_name}@v{current.workflow_version}: {current.state} "
        f"outcome={current.outcome!r} error={current.error[:200]!r}",
        "steps:",
    ]
    for step in current.steps.order_by("id"):
        error = step.error.strip().splitlines()[0][:120] if step.error.strip() else ""
        lines.append(
            f"  #{step.pk} {step.name} [{step.kind}] {step.state} attempt={step.attempt}/{step.max_attempts} "
            f"due={step.due_at} lease={step.lease_expires_at} {error}"
        )
    from approvals.models import HumanTask

    lines.append("tasks:")
    for task in HumanTask.objects.filter(instance_id=current.pk).order_by("id"):
        lines.append(f"  #{task.pk} {task.kind} {task.state} {task.title!r}")
    actions = AuditEvent.objects.filter(instance_id=current.pk).order_by("seq").values_list("seq", "action")
    lines.append("audit: " + ", ".join(f"{seq}:{action}" for seq, action in actions))
    return "\n".join(lines)


# --- the real worker ------------------------------------------------------------------------------------


class WorkerProcess:
    """A ``celery worker -B`` subprocess in its own session, so it (pool and beat included) dies as a group."""

    def __init__(self, database_url: str, workdir: Path) -> None:
        self.database_url = database_url
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "worker.log"
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def env(self) -> dict[str, str]:
        modules = [*settings.BATON_WORKFLOW_MODULES, *WORKER_EXTRA_WORKFLOW_MODULES]
        return {
            **os.environ,
            **WORKER_ENV,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": settings.REDIS_URL,
            # The prefix is derived from DATABASE_URL, which names the test database here: keep this process's.
            "BATON_CHANNEL_PREFIX": settings.BATON_CHANNEL_PREFIX,
            "BATON_WORKFLOW_MODULES": ",".join(dict.fromkeys(modules)),
            "BATON_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(ROOT),
        }

    def start(self, *, flush_broker: bool = True, timeout: float = 60.0) -> None:
        """Start a worker and wait until it answers a ping."""
        assert not self.running, "a worker is already running"
        if flush_broker:
            _redis().flushdb()  # messages published by in-process tests must not run again here
        self.starts += 1
        self.hostname = f"baton-test-{os.getpid()}-{self.starts}@localhost"
        command = [
            str(CELERY),
            "-A",
            "baton_site",
            "worker",
            "-Q",
            "baton",
            "-c",
            "2",
            "-n",
            self.hostname,
            "--without-mingle",
            "--without-gossip",
            "-B",
            "-s",
            str(self.workdir / "beat-schedule"),
            # The database scheduler loses its rows when transactional tests flush the tables, and its
            # integer IntervalSchedule cannot hold the 0.5 s sweep interval; the file scheduler has neither issue.
            "--scheduler",
            "celery.beat:PersistentScheduler",
            "--loglevel",
            "INFO",
        ]
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts}: {' '.join(command)}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        from baton_site.celery import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"the worker exited with {self.process.returncode}:\n{self.log_tail()}")
            replies = app.control.ping(destination=[self.hostname], timeout=0.5)
            if any(self.hostname in reply for reply in replies):
                return
        self.stop()
        raise RuntimeError(f"the worker did not answer a ping within {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crashed machine would: no shutdown, no acks."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM to the group), then SIGKILL whatever is left."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # beat or pool children that outlived the main process
        self.process.wait(timeout=10)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


_worker: WorkerProcess | None = None


def _database_url() -> str:
    db = connection.settings_dict
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@dataclass
class WebServer:
    """A running ``make web``: its port and the log of gunicorn (access log and errors)."""

    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


# Starts of `make web` on a new port when the one picked was taken before gunicorn could listen on it.
WEB_PORT_ATTEMPTS = 3


def _start_make_web(log: Path, environ: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            ["make", "--no-print-directory", "web"],
            cwd=Path(__file__).resolve().parent.parent,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=60)


@contextlib.contextmanager
def serve_make_web(log_dir: Path, **env: str) -> Iterator[WebServer]:
    """``make web`` with two gunicorn processes on a free port, the test database and Redis, and ``env`` on top;
    yields once it listens, stops the whole process group after. The caller needs the test database set up (a
    ``django_db(transaction=True)`` test, or ``django_db_setup`` for a longer-lived server).

    Ready when gunicorn itself logs that it listens on the port, not when something answers there: the port is
    picked free and let go, and another process (pytest-xdist's next, starting its own server) may take it before
    gunicorn binds; a server that answered there was then taken for this one. Then gunicorn cannot listen, exits,
    and `make web` starts again on another port (``WEB_PORT_ATTEMPTS`` in all)."""
    for attempt in range(1, WEB_PORT_ATTEMPTS + 1):
        port = _free_port()
        environ = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": _database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "BATON_CHANNEL_PREFIX": settings.BATON_CHANNEL_PREFIX,
            "BATON_PORT": str(port),
            "BATON_WEB_WORKERS": "2",
            **env,
        }
        log = log_dir / f"web-{port}.log"
        process = _start_make_web(log, environ)
        listening = re.compile(rf"Listening at: \S+:{port} \(")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if listening.search(log.read_text(errors="replace")):
                break
            if process.poll() is not None:
                break
            time.sleep(0.2)
        if process.poll() is None and listening.search(log.read_text(errors="replace")):
            break
        _stop(process)
        text = log.read_text(errors="replace")
        if "Connection in use" not in text or attempt == WEB_PORT_ATTEMPTS:
            pytest.fail(f"make web did not listen on port {port}:\n{text[-3000:]}")
    try:
        yield WebServer(port, log)
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def _worker_process(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One worker for the session, started lazily; stopped before the test database is dropped."""
    global _worker
    _worker = WorkerProcess(_database_url(), tmp_path_factory.mktemp("celery-worker"))
    yield _worker
    _worker.stop()
    _worker = None


@pytest.fixture
def celery_worker(request: pytest.FixtureRequest, _worker_process: WorkerProcess) -> WorkerProcess:
    """A running real worker (with beat sweeping every 0.5 s). Tests may ``kill()`` and ``start()`` it."""
    if request.node.get_closest_marker("worker") is None:
        pytest.fail("celery_worker is only for tests marked @pytest.mark.worker")
    if not _worker_process.running:
        _worker_process.start()
    return _worker_process


@pytest.fixture(autouse=True)
def _no_stray_worker(request: pytest.FixtureRequest) -> None:
    """Outside ``worker`` tests no worker may consume the messages in-process tests publish after commit."""
    if _worker is not None and _worker.running and request.node.get_closest_marker("worker") is None:
        _worker.stop()


@pytest.fixture(autouse=True)
def _baton_stays_the_current_celery_app() -> Iterator[None]:
    """A test that builds its own Celery app must not leave it current: ``shared_task`` tasks publish through
    the current app, so every later test in the process would send its steps to that app's broker. CI saw it:
    a private deployment's ``Celery(broker=...)`` outlived its Redis, and a worker test further down the same
    xdist process timed out with every publish refused. The app is put back and the test that moved it fails."""
    from celery import current_app
    from celery._state import set_default_app

    from baton_site.celery import app

    yield
    moved = current_app._get_current_object()
    if moved is not app:
        app.set_current()
        set_default_app(app)
        pytest.fail(f"the test left Celery app {moved.main or moved!r} current; build it with set_as_current=False")


# --- waiting --------------------------------------------------------------------------------------------


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """``wait_for(predicate, timeout=20, interval=0.1, instance=None, what="")`` returns the predicate's value.

    On timeout it fails with ``what``, the instance's steps, tasks and audit actions, and the worker's log tail.
    """

    def wait(
        predicate: Callable[[], Any],
        timeout: float = 20.0,
        interval: float = 0.1,
        *,
        instance: WorkflowInstance | int | None = None,
        what: str = "",
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = predicate()
            except ObjectDoesNotExist:
                value = None
            if value:
                return value
            if time.monotonic() >= deadline:
                report = [f"timed out after {timeout}s waiting for {what or getattr(predicate, '__name__', '?')}"]
                report.append(describe_instance(instance))
                if _worker is not None:
                    report.append("worker log:\n" + _worker.log_tail())
                pytest.fail("\n".join(part for part in report if part), pytrace=False)
            time.sleep(interval)

    return wait
