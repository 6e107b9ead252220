"""A bad setting stops every entry point with one line and exit status 2 (orchestrator/startup.py; README,
"Production"): manage.py, baton-admin, gunicorn, daphne, the Celery worker and beat, each run as the real process
with a bad environment. The line names the variable and shows no secret; any other error keeps its traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
# Long enough for a loaded two-core CI machine; a process that loops (gunicorn booting worker after worker) or
# starts serving instead of stopping fails the test on this timeout.
TIMEOUT = 60
SECRET_KEY = "s3cret-key-" + "k" * 40
AUDIT_SECRET = "aud1t-secret-" + "a" * 40
DB_PASSWORD = "db-pa55word"
PRODUCTION = {
    "DATABASE_URL": f"postgres://baton:{DB_PASSWORD}@db.invalid/baton",
    "REDIS_URL": "redis://redis.invalid:6379/0",
    "BATON_SECRET_KEY": SECRET_KEY,
    "BATON_AUDIT_KEYS": f"k1:{AUDIT_SECRET}",
}
JUNK = {"BATON_WEB_TIMEOUT": "abc"}
GUNICORN_AS_MAKE_WEB = [
    str(BIN / "gunicorn"),
    "--config",
    "python:baton_site.gunicorn_hooks",
    "--bind",
    "127.0.0.1:0",
    "--workers",
    "1",
    "baton_site.wsgi:application",
]


def run(args: list[str], env: dict[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    """Run ``args`` from the checkout with only ``env`` (nothing leaks in from the test session: its
    DJANGO_SETTINGS_MODULE, BATON_* and database names) and the project's settings module."""
    clean = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "baton_site.settings",
    }
    return subprocess.run(args, env={**clean, **env}, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)


def manage(*command: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *command]


def refusal_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one "Baton cannot start" line of a refused start, after checking what every refusal shares: exit
    status 2, no traceback, the line printed once."""
    assert done.returncode == 2, f"exit {done.returncode}: {done.stderr}"
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "Baton cannot start" in line]
    assert len(lines) == 1, done.stderr
    return lines[0]


# --- manage.py ---------------------------------------------------------------------------------------------


def test_manage_py_check_with_a_junk_value_prints_one_line_and_exits_2(tmp_path):
    # given
    env = JUNK

    # when
    done = run(manage("check"), env, tmp_path)

    # then: that line alone, naming the variable, the settings module and where the settings are listed
    line = refusal_line(done)
    assert done.stderr.strip().splitlines() == [line]
    assert line.startswith("Baton cannot start: BATON_WEB_TIMEOUT='abc'")
    assert "settings: baton_site.settings" in line
    assert 'README, "Production"' in line


@pytest.mark.parametrize("command", [["migrate", "--noinput"], ["createsuperuser", "--noinput"], ["help"]])
def test_every_manage_py_command_refuses_the_same_way(tmp_path, command):
    # when
    done = run(manage(*command), JUNK, tmp_path)

    # then
    assert "BATON_WEB_TIMEOUT" in refusal_line(done)


def test_a_redis_url_that_is_not_one_is_refused_without_its_password(tmp_path):
    # given: a URL with credentials and the wrong scheme
    env = {**PRODUCTION, "REDIS_URL": "http://:r3dis-pa55@redis.invalid:6379/0"}

    # when
    done = run(manage("check"), env, tmp_path)

    # then
    line = refusal_line(done)
    assert "REDIS_URL" in line
    assert "r3dis-pa55" not in done.stderr
    assert "***@redis.invalid:6379/0" in line


def test_production_without_a_secret_key_is_refused_showing_no_other_secret(tmp_path):
    # given
    env = {name: value for name, value in PRODUCTION.items() if name != "BATON_SECRET_KEY"}

    # when
    done = run(manage("check"), env, tmp_path)

    # then
    line = refusal_line(done)
    assert "BATON_SECRET_KEY" in line
    assert "production mode" in line
    for secret in (AUDIT_SECRET, DB_PASSWORD):
        assert secret not in done.stderr


@pytest.mark.parametrize(
    "keys",
    [
        pytest.param(AUDIT_SECRET, id="secret-without-its-id"),
        pytest.param(f"k1:{AUDIT_SECRET},{AUDIT_SECRET[:20]}", id="second-key-too-short-without-id"),
        pytest.param("k1:" + AUDIT_SECRET[:20], id="short-secret"),
    ],
)
def test_a_malformed_audit_key_list_is_refused_without_showing_a_secret(tmp_path, keys):
    # given
    env = {**PRODUCTION, "BATON_AUDIT_KEYS": keys}

    # when
    done = run(manage("check"), env, tmp_path)

    # then: the start was a RuntimeError's traceback quoting the secret's first 16 characters
    line = refusal_line(done)
    assert "BATON_AUDIT_KEYS" in line
    assert AUDIT_SECRET[:8] not in done.stderr
    assert SECRET_KEY not in done.stderr


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"postgres://baton:{DB_PASSWORD}@db.invalid:port/baton", id="port-not-a-number"),
        pytest.param(f"postgres://baton:{DB_PASSWORD}#x@db.invalid/baton", id="unquoted-hash"),
        pytest.param(f"postgres://baton:{DB_PASSWORD}/x@db.invalid/baton", id="unquoted-slash"),
        pytest.param(f"postgress://baton:{DB_PASSWORD}@db.invalid/baton", id="unknown-scheme"),
    ],
)
def test_a_malformed_database_url_is_refused_without_its_password(tmp_path, url):
    # given
    env = {**PRODUCTION, "DATABASE_URL": url}

    # when
    done = run(manage("check"), env, tmp_path)

    # then
    assert "DATABASE_URL" in refusal_line(done)
    assert DB_PASSWORD not in done.stderr


def test_manage_py_checks_the_settings_module_its_command_line_names(tmp_path):
    # given: the environment names a module that does not exist; --settings the real one
    env = {**JUNK, "DJANGO_SETTINGS_MODULE": "baton_site.no_such_settings"}

    # when
    done = run(manage("check", "--settings=baton_site.settings"), env, tmp_path)

    # then: --settings was read first, as Django reads it
    line = refusal_line(done)
    assert "BATON_WEB_TIMEOUT" in line
    assert "settings: baton_site.settings" in line


def test_a_good_configuration_still_runs_the_command(tmp_path):
    # given: the demo, nothing set
    # when
    done = run(manage("check"), {}, tmp_path)

    # then
    assert done.returncode == 0, done.stderr
    assert "no issues" in done.stdout


def test_baton_admin_refuses_as_manage_py_does(tmp_path):
    # given: the installed copy's command (pyproject.toml, [project.scripts])
    # when
    done = run([str(BIN / "baton-admin"), "check"], JUNK, tmp_path)

    # then
    line = refusal_line(done)
    assert "BATON_WEB_TIMEOUT" in line
    assert "(baton-admin;" in line


# --- the traceback when it is wanted, and errors that are not settings -----------------------------------------


def test_baton_startup_traceback_shows_the_refusal_with_its_traceback(tmp_path):
    # given
    env = {**JUNK, "BATON_STARTUP_TRACEBACK": "1"}

    # when
    done = run(manage("check"), env, tmp_path)

    # then: Python's own report of the exception, from settings.py
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert "baton_site/settings.py" in done.stderr
    assert "ImproperlyConfigured: BATON_WEB_TIMEOUT='abc'" in done.stderr
    assert "Baton cannot start" not in done.stderr


def test_an_error_that_is_not_a_setting_keeps_its_traceback(tmp_path):
    # given: a settings module that cannot be imported (a packaging fault, not a value to correct)
    env = {"DJANGO_SETTINGS_MODULE": "baton_site.no_such_settings"}

    # when
    done = run(manage("check"), env, tmp_path)

    # then
    assert done.returncode == 1
    assert "Traceback" in done.stderr
    assert "ModuleNotFoundError" in done.stderr
    assert "Baton cannot start" not in done.stderr


# --- gunicorn (make web) ------------------------------------------------------------------------------------


def test_gunicorn_as_make_web_runs_it_stops_in_the_master_before_any_worker(tmp_path):
    # given
    pidfile = tmp_path / "gunicorn.pid"

    # when
    done = run([*GUNICORN_AS_MAKE_WEB, "--pid", str(pidfile)], JUNK, tmp_path)

    # then: the master's own line, last; no worker was booted, nothing listened, no pid file stays behind
    line = refusal_line(done)
    assert "BATON_WEB_TIMEOUT" in line
    assert "(gunicorn;" in line
    assert done.stderr.strip().splitlines()[-1] == line
    assert "Booting worker" not in done.stderr
    assert "Listening at" not in done.stderr
    assert not pidfile.exists()


def test_gunicorn_without_baton_s_hooks_stops_after_the_first_worker(tmp_path):
    # given: gunicorn started on the WSGI module alone (no --config), so each worker meets the refusal. One worker:
    # with several, gunicorn itself sometimes prints a traceback of its own (the second worker's exit, reaped while
    # the master is already halting, raises its HaltServer again), whatever made the workers fail; the master's
    # hook (the test above) is what keeps `make web` clear of that.
    args = [
        str(BIN / "gunicorn"),
        "--bind",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--no-control-socket",
        "baton_site.wsgi:application",
    ]

    # when
    done = run(args, JUNK, tmp_path)

    # then: gunicorn's "worker failed to boot" status (3), which stops the master instead of booting more
    # workers into the same refusal; the worker's line is there, without a traceback
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    assert "Baton cannot start: BATON_WEB_TIMEOUT='abc'" in done.stderr
    assert "(baton_site.wsgi;" in done.stderr
    assert "Worker failed to boot" in done.stderr


# --- daphne (make web-live) ----------------------------------------------------------------------------------


def test_daphne_stops_with_one_line(tmp_path):
    # when
    done = run([str(BIN / "daphne"), "-b", "127.0.0.1", "-p", "0", "baton_site.asgi:application"], JUNK, tmp_path)

    # then
    line = refusal_line(done)
    assert "BATON_WEB_TIMEOUT" in line
    assert "(baton_site.asgi;" in line


# --- Celery (make worker, make beat) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["worker", "-Q", "baton", "--concurrency", "1", "--loglevel", "INFO"], id="worker"),
        pytest.param(["beat", "--scheduler", "orchestrator.beat:DatabaseScheduler", "--loglevel", "INFO"], id="beat"),
    ],
)
def test_celery_stops_with_one_line(tmp_path, command):
    # given: production, so that a worker that did start would try Redis rather than exit on its own
    env = {**PRODUCTION, **JUNK}

    # when
    done = run([str(BIN / "celery"), "-A", "baton_site", *command], env, tmp_path)

    # then
    line = refusal_line(done)
    assert "BATON_WEB_TIMEOUT" in line
    assert "(celery;" in line
    assert SECRET_KEY not in done.stderr


def test_celery_reads_django_s_settings_through_the_check(tmp_path):
    # given: a good demo configuration
    # when: a command that prints Celery's configuration, read from Django's settings
    done = run([str(BIN / "celery"), "-A", "baton_site", "report"], {}, tmp_path)

    # then: the settings loaded, and the CELERY_ ones reached Celery
    assert done.returncode == 0, done.stderr
    assert "CELERY_TASK_DEFAULT_QUEUE: 'baton'" in done.stdout
