"""A plain install of Baton, run from outside the repository, and a user's own workflow package beside it.

Given a wheel built from this checkout, installed (not editable) with ``constraints.txt`` into a fresh virtualenv,
started from a temporary directory with no ``PYTHONPATH`` and no manage.py, on its own PostgreSQL database and a
private Redis:
- ``baton-admin check``, ``migrate`` and ``collectstatic`` work, and daphne serves the pages, their static files
  and the admin (templates, static files and migrations travelled inside the wheel);
- a workflow package written in a temporary folder and pip-installed into that virtualenv is found through its
  ``baton.workflows`` entry point alone (``BATON_WORKFLOW_MODULES`` is empty), started with ``baton_start``, its
  human task shows in the approver's inbox, and after the approval a real Celery worker runs it to the end.

Slow (a wheel build from a copy of the checkout and a virtualenv install from pip's cache, about a minute): marked
``installed``.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from django.conf import settings
from psycopg import sql

from tests.ports import free_port

pytestmark = [pytest.mark.installed, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "installed-baton-pass-42"
STATIC_LINK = re.compile(r'(?:href|src)="(/static/[^"]+)"')


def _run(command: list[str], *, env: dict[str, str] | None = None, cwd: Path, timeout: float = 300) -> str:
    """Run ``command``; fail the test with its output when it exits non-zero. Returns its stdout."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def _wait(
    predicate: Callable[[], Any],
    what: str,
    timeout: float = 60.0,
    log: Path | None = None,
    describe: Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something true; fail naming ``what``, ``describe()`` and a log's tail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log and log.exists() else ""
            state = describe() if describe else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{state}\n{tail}", pytrace=False)
        time.sleep(0.2)


@dataclass
class Installed:
    """The installed copy: its virtualenv, the directory it runs in, its environment and its database."""

    venv: Path
    run_dir: Path
    env: dict[str, str]
    database: dict[str, Any]
    processes: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def admin(self, *args: str, extra_env: dict[str, str] | None = None) -> str:
        """``baton-admin ARGS`` from the run directory; returns its stdout."""
        return _run([self.bin("baton-admin"), *args], env={**self.env, **(extra_env or {})}, cwd=self.run_dir)

    def start(self, name: str, command: list[str]) -> Path:
        """Start a long-running process in its own session; returns its log file. Stopped by ``stop_all``."""
        log_path = self.run_dir / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command, cwd=self.run_dir, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes.append((process, log_path))
        return log_path

    def stop_all(self) -> None:
        for process, _log in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        self.processes.clear()

    def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of a read on the installed copy's database (the test looks; it never writes there)."""
        with psycopg.connect(**self.database, autocommit=True) as conn:
            return conn.execute(statement, params).fetchall()  # type: ignore[arg-type]


def _admin_connection() -> dict[str, Any]:
    db = settings.DATABASES["default"]
    return {
        "host": db["HOST"] or "127.0.0.1",
        "port": int(db["PORT"] or 5432),
        "user": db["USER"],
        "password": db.get("PASSWORD") or None,
        "dbname": "postgres",
    }


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of this module's own: the installed worker must never meet the messages other tests publish."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"

    def answers() -> bool:
        with contextlib.suppress(redis.ConnectionError):
            return bool(redis.Redis.from_url(url).ping())
        return False

    try:
        _wait(answers, "the private redis-server", timeout=20)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, private_redis: str) -> Iterator[Installed]:
    """Baton built as a wheel, installed with constraints.txt into a new virtualenv, migrated on its own database."""
    base = tmp_path_factory.mktemp("installed")
    # Built from a copy: an in-tree build reuses the checkout's build/ folder, whose stale files would go into
    # the wheel and hide a file that packaging no longer takes.
    source = base / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", ".baton", "build", "*.egg-info", "__pycache__", "test-results"),
    )
    wheels = base / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(source)], cwd=base)
    (wheel,) = wheels.glob("baton_hitl-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=base)
    # --no-compile: byte-compiling every installed package took about 10 s of this setup; the processes below compile
    # what they import as they import it, and what the tests check (files travelled, entry points, pages) is the same.
    _run(
        [
            str(venv / "bin" / "pip"),
            "install",
            "--quiet",
            "--no-compile",
            "-c",
            str(ROOT / "constraints.txt"),
            str(wheel),
        ],
        cwd=base,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )

    database = {**_admin_connection(), "dbname": f"{settings.DATABASES['default']['TEST']['NAME']}_installed"}
    with psycopg.connect(**_admin_connection(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database["dbname"])))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database["dbname"])))
    credentials = database["user"] + (f":{database['password']}" if database["password"] else "")

    run_dir = base / "run"  # outside the repository: nothing here but what the processes write
    run_dir.mkdir()
    # Built from nothing (not os.environ): the tests' own DJANGO_SETTINGS_MODULE, BATON_DEBUG and PYTHONPATH must
    # not leak into the installed copy.
    env = {
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(base),
        "LANG": "C.UTF-8",
        "DATABASE_URL": f"postgres://{credentials}@{database['host']}:{database['port']}/{database['dbname']}",
        "REDIS_URL": private_redis,
        "BATON_SECRET_KEY": "installed-baton-tests-only",
        "BATON_AUDIT_KEYS": "installed:installed-baton-tests-only-audit-key",
        "BATON_DEBUG": "0",
        "BATON_SECURE_COOKIES": "0",  # the test speaks plain HTTP to daphne
        "BATON_STATIC_ROOT": str(base / "staticfiles"),
        # No module named: the user's workflows must come through their entry point.
        "BATON_WORKFLOW_MODULES": "",
    }
    copy = Installed(venv=venv, run_dir=run_dir, env=env, database=database)
    try:
        yield copy
    finally:
        copy.stop_all()
        with psycopg.connect(**_admin_connection(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database["dbname"])))
        shutil.rmtree(base, ignore_errors=True)


class Browser:
    """A cookie-keeping HTTP client for the installed server (standard library only)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str) -> tuple[int, str, str]:
        """GET ``path`` following redirects; returns (status, final path, body)."""
        # The base URL is the test's own http://127.0.0.1 server.
        return self._open(urllib.request.Request(self.base_url + path))  # noqa: S310

    def post(self, path: str, form: dict[str, str]) -> tuple[int, str, str]:
        """POST ``form`` with the CSRF token of the cookie jar; follows the redirect."""
        token = next(c.value for c in self.jar if c.name == "csrftoken")
        body = urllib.parse.urlencode({**form, "csrfmiddlewaretoken": token}).encode()
        return self._open(urllib.request.Request(self.base_url + path, data=body, method="POST"))  # noqa: S310

    def _open(self, request: urllib.request.Request) -> tuple[int, str, str]:
        try:
            with self.opener.open(request, timeout=30) as response:
                final = urllib.parse.urlsplit(response.geturl()).path
                return response.status, final, response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, urllib.parse.urlsplit(error.url).path, error.read().decode(errors="replace")

    def log_in(self, username: str) -> None:
        status, _path, _body = self.get("/login/")
        assert status == 200
        status, path, body = self.post("/login/", {"username": username, "password": PASSWORD})
        # Home sends each role to its own start page (the inbox, or the instances for those who see them all).
        assert status == 200, f"signing in as {username} answered {status}:\n{body[:2000]}"
        assert path != "/login/", f"signing in as {username} was refused:\n{body[:2000]}"


def readme_first_workflow(language: str) -> str:
    """The ``language`` code block of README's "Your first workflow", as a reader copies it (the list's indent
    taken off): the package this test installs is the one README tells people to write, so the two cannot drift."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Your first workflow") :]
    section = section[: section.index("\n## ", 1)]
    block = re.search(rf"^( *)```{language}\n(.*?)^\1```$", section, re.M | re.S)
    assert block, f"README's Your first workflow has no {language} block"
    return textwrap.dedent(block[2])


ACME_PYPROJECT = readme_first_workflow("toml")
ACME_WORKFLOWS = readme_first_workflow("python")


@pytest.fixture(scope="module")
def acme_package(installed: Installed) -> Path:
    """Acme's own workflow package, written in a temporary folder and pip-installed (not editable) beside Baton.

    Installed before any Baton process starts: like a deployment, each process loads its workflows at start-up.
    """
    package = installed.run_dir.parent / "acme"
    (package / "acme_flows").mkdir(parents=True)
    (package / "pyproject.toml").write_text(ACME_PYPROJECT)
    (package / "acme_flows" / "__init__.py").write_text("")
    (package / "acme_flows" / "workflows.py").write_text(ACME_WORKFLOWS)
    _run([installed.bin("pip"), "install", "--quiet", "--no-deps", str(package)], cwd=installed.run_dir)
    return package


@pytest.fixture(scope="module")
def server(installed: Installed, acme_package: Path) -> str:
    """The installed copy migrated, its static files collected, served by its own daphne; returns the base URL."""
    installed.admin("migrate", "--noinput")
    installed.admin("collectstatic", "--noinput", "--verbosity", "0")
    port = free_port()
    log = installed.start(
        "daphne", [installed.bin("daphne"), "-b", "127.0.0.1", "-p", str(port), "baton_site.asgi:application"]
    )

    def listening() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
        return False

    _wait(listening, "daphne to listen", timeout=60, log=log)
    return f"http://127.0.0.1:{port}"  # stopped with the installed copy's other processes


def test_installed_copy_runs_from_its_own_files(installed: Installed) -> None:
    """Given the installed copy, its code, templates and static files are the virtualenv's, not the checkout's."""
    where = installed.admin(
        "shell",
        "--no-imports",
        "-c",
        "import orchestrator, approvals, baton_assets; "
        "print(orchestrator.__file__); print(approvals.__file__); "
        "print(baton_assets.TEMPLATES_DIR); print(baton_assets.STATIC_DIR)",
    )
    paths = where.split()
    assert len(paths) == 4
    for path in paths:
        assert path.startswith(str(installed.venv)), f"{path} is not inside the installed virtualenv"
    assert (Path(paths[2]) / "base.html").is_file()
    assert (Path(paths[3]) / "baton" / "live.js").is_file()
    # Every template and static file of the checkout travelled into the wheel.
    for source, copy in ((ROOT / "templates", Path(paths[2])), (ROOT / "static", Path(paths[3]))):
        missing = [
            str(f.relative_to(source))
            for f in source.rglob("*")
            if f.is_file() and not (copy / f.relative_to(source)).is_file()
        ]
        assert not missing, f"missing from the installed copy: {missing}"
    assert "System check identified no issues" in installed.admin("check")


def test_installed_copy_serves_pages_static_files_and_admin(installed: Installed, server: str) -> None:
    """Given the installed copy migrated and served by daphne, when an admin browses, every page answers 200."""
    installed.admin(
        "createsuperuser",
        "--noinput",
        "--username",
        "boss",
        "--email",
        "boss@example.com",
        extra_env={"DJANGO_SUPERUSER_PASSWORD": PASSWORD},
    )
    browser = Browser(server)

    status, _path, login_page = browser.get("/login/")
    assert status == 200
    assert "Sign in to Baton" in login_page
    assets = set(STATIC_LINK.findall(login_page))
    assert any(a.endswith(".css") for a in assets), assets
    assert any(a.endswith(".js") for a in assets), assets

    browser.log_in("boss")
    pages = ["/inbox/", "/instances/", "/workflows/", "/escalations/", "/notifications/", "/admin/"]
    for page in pages:
        status, path, body = browser.get(page)
        assert (status, path) == (200, page), f"{page} answered {status} at {path}:\n{body[:2000]}"
        assets |= set(STATIC_LINK.findall(body))
    assert "Site administration" in browser.get("/admin/")[2]
    assert any(a.startswith("/static/admin/") for a in assets), "the admin's own static files are not linked"
    for asset in sorted(assets):
        status, _path, body = browser.get(asset)
        assert status == 200, f"{asset} answered {status}"
        assert body, f"{asset} is empty"


def test_users_workflow_package_runs_to_the_end(installed: Installed, server: str) -> None:
    """Given Acme's own package installed beside Baton, its workflow starts, waits for a person and completes."""
    installed.admin(
        "shell",
        "--no-imports",
        "-c",
        "from django.contrib.auth.models import Group, User; "
        f"u = User.objects.create_user('ada', password='{PASSWORD}'); "
        "u.groups.add(Group.objects.get_or_create(name='acme-approvers')[0])",
    )
    worker_log = installed.start(
        "worker",
        [
            installed.bin("celery"),
            "-A",
            "baton_site",
            "worker",
            "-Q",
            "baton",
            "-c",
            "1",
            "--without-mingle",
            "--without-gossip",
            "-B",
            "-s",
            str(installed.run_dir / "beat-schedule"),
            "--scheduler",
            "celery.beat:PersistentScheduler",
            "--loglevel",
            "INFO",
        ],
    )

    # When Acme starts an instance from the command line (the web process learnt of it from the entry point too).
    instance_id = int(installed.admin("baton_start", "acme_greeting", "--data", json.dumps({"person": "Ada"})).strip())
    browser = Browser(server)
    browser.log_in("ada")
    assert "acme_greeting" in browser.get("/workflows/")[2]

    # Then the worker runs the first step and the approval reaches Ada's inbox.
    def task_in_inbox() -> str | None:
        body = browser.get("/inbox/?tab=queue")[2]
        if "Approve: Greeting for Ada" not in body:
            return None
        found = re.search(r'href="/tasks/(\d+)/"', body)
        return found.group(1) if found else None

    def describe() -> str:
        instance = installed.query("SELECT state, error FROM orchestrator_workflowinstance WHERE id = %s", instance_id)
        steps = installed.query(
            "SELECT name, state, attempt, error FROM orchestrator_steprun WHERE instance_id = %s ORDER BY id",
            instance_id,
        )
        return f"instance {instance_id}: {instance}\nsteps: {steps}"

    task_id = _wait(task_in_inbox, "the approval in Ada's inbox", timeout=90, log=worker_log, describe=describe)
    status, _path, task_page = browser.get(f"/tasks/{task_id}/")
    assert status == 200
    assert "Hello Ada" in task_page  # the business data the worker's step wrote

    # When Ada approves it, then the worker runs the last step and the instance completes.
    status, _path, _body = browser.post(f"/tasks/{task_id}/decide/", {"decision": "approve", "comment": ""})
    assert status == 200

    def finished() -> tuple[Any, ...] | None:
        rows = installed.query(
            "SELECT state, data FROM orchestrator_workflowinstance WHERE id = %s AND state = 'completed'", instance_id
        )
        return rows[0] if rows else None

    _state, data = _wait(finished, f"instance {instance_id} to complete", timeout=90, log=worker_log, describe=describe)
    assert data["greeting"] == "Hello Ada"
    assert data["filed_as"].startswith("Hello Ada / ")
    steps = installed.query(
        "SELECT name, state FROM orchestrator_steprun WHERE instance_id = %s ORDER BY id", instance_id
    )
    assert steps == [("greet", "succeeded"), ("approve_greeting", "succeeded"), ("file_it", "succeeded")]
    assert installed.admin("baton_verify_audit")
