"""Every variable of README's settings table, given junk: the start stops with ``ImproperlyConfigured`` naming the
variable, or the documented default applies (an empty value is "not set"). Never a ``ValueError`` from ``int()``,
never a silently different value, never a fault that waits for the first request or e-mail."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.orchestrator.test_settings import PRODUCTION, ROOT, refusal, settings_in, start

# Variables that only matter with Redis (production mode) are tried with the production settings.
NEEDS_REDIS = {"BATON_VISIBILITY_TIMEOUT", "BATON_CHANNELS_REDIS_URL", "REDIS_URL", "DATABASE_URL"}


def env_for(name: str, value: str) -> dict[str, str]:
    return {**(PRODUCTION if name in NEEDS_REDIS else {}), name: value}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        # Whole numbers: int() used to raise a bare ValueError, and -5, 0 or a huge number were taken as given
        # (a huge BATON_PAUSE_MAX_DAYS overflowed the first pause: a 500; a negative batch a SQL error per sweep).
        ("BATON_PAUSE_MAX_DAYS", "abc"),
        ("BATON_PAUSE_MAX_DAYS", "-5"),
        ("BATON_PAUSE_MAX_DAYS", "0"),
        ("BATON_PAUSE_MAX_DAYS", "99999999999"),
        ("BATON_PAUSE_MAX_DAYS", "1.5"),
        ("BATON_SWEEP_BATCH", "lots"),
        ("BATON_SWEEP_BATCH", "0"),
        ("BATON_SWEEP_BATCH", "-1"),
        ("BATON_MAX_RESULT_BYTES", "1MB"),
        ("BATON_MAX_RESULT_BYTES", "-1"),
        ("BATON_MAX_RESULT_BYTES", "0"),
        ("BATON_ROLLUP_BATCH", "nan"),
        ("BATON_ROLLUP_BATCH", "0"),
        ("BATON_VISIBILITY_TIMEOUT", "an hour"),
        ("BATON_VISIBILITY_TIMEOUT", "0"),
        # Minutes: nan, inf and negative numbers were stored as the beat's schedule.
        ("BATON_AUDIT_SEAL_INTERVAL", "abc"),
        ("BATON_AUDIT_SEAL_INTERVAL", "-5"),
        ("BATON_AUDIT_SEAL_INTERVAL", "nan"),
        ("BATON_AUDIT_SEAL_INTERVAL", "inf"),
        ("BATON_LIVE_RECHECK", "soon"),
        ("BATON_HSTS_SECONDS", "0.5"),
        ("BATON_HSTS_SECONDS", "-1"),
        # Booleans: anything but a yes or a no word used to be read as "no", silently.
        ("BATON_DEBUG", "ture"),
        ("BATON_SECURE_COOKIES", "2"),
        ("BATON_BEHIND_PROXY", "yes please"),
        ("BATON_DEMO_APP", "maybe"),
        ("BATON_WEBHOOK_ALLOW_PRIVATE", "y"),
        ("BATON_PREPARED_STATEMENTS", "disable"),
        ("BATON_HSTS_PRELOAD", "preload"),
        # Formats: each used to fail later (first e-mail, first form post, first task) or as Django's own
        # message naming the Django setting, not the variable.
        ("BATON_TIME_ZONE", "Mars/Olympus"),
        ("BATON_TIME_ZONE", "utc"),
        ("BATON_LOG_LEVEL", "LOUD"),
        ("BATON_EMAIL_BACKEND", "nope.Backend"),
        ("BATON_EMAIL_BACKEND", "smtp"),
        ("BATON_EMAIL_BACKEND", "django.core.mail.backends.smpt.EmailBackend"),
        ("BATON_FROM_EMAIL", "not an address"),
        ("BATON_BASE_URL", "baton.example.com"),
        ("BATON_BASE_URL", "ftp://baton.example.com"),
        ("BATON_CSRF_TRUSTED_ORIGINS", "baton.example.com"),
        ("BATON_CHANNEL_PREFIX", "a b"),
        ("BATON_CHANNELS_REDIS_URL", "redis-host:6379"),
        ("REDIS_URL", "localhost:6379"),
        ("DATABASE_URL", "db.example.com/baton"),
        # Paths: SQLite said "unable to open database file" at the first query; the static root a FileNotFoundError.
        ("BATON_SQLITE_PATH", "/nonexistent/folder/baton.sqlite3"),
        ("BATON_STATIC_ROOT", "/proc/no-such-folder"),
        # The Makefile's: gunicorn said "Value must be positive: -3" naming no variable, and started with 0 workers.
        ("BATON_WEB_WORKERS", "0"),
        ("BATON_WEB_WORKERS", "-3"),
        ("BATON_WEB_WORKERS", "many"),
        ("BATON_WEB_TIMEOUT", "-5"),
        ("BATON_WEB_GRACEFUL_TIMEOUT", "soon"),
        ("BATON_PORT", "99999"),
        ("BATON_LIVE_PORT", "http"),
        ("BATON_WORKER_CONCURRENCY", "0"),
        # The Makefile's address: "a host" gave gunicorn "--bind a host:8000" (its own error, about "host:8000"), a
        # port in it "--bind 127.0.0.1:9000:8000", a URL "--bind http://0.0.0.0:8000".
        ("BATON_BIND", "not a host"),
        ("BATON_BIND", "127.0.0.1:9000"),
        ("BATON_BIND", "http://0.0.0.0"),
        ("BATON_BIND", "-b"),
    ],
)
def test_a_junk_value_stops_the_start_naming_the_variable(name, value):
    # when
    message = refusal(env_for(name, value))

    # then
    assert name in message


@pytest.mark.parametrize(
    ("name", "setting", "default"),
    [
        ("BATON_PAUSE_MAX_DAYS", "BATON_PAUSE_MAX_DAYS", 90),
        ("BATON_SWEEP_BATCH", "BATON_SWEEP_BATCH", 500),
        ("BATON_MAX_RESULT_BYTES", "BATON_MAX_RESULT_BYTES", 1048576),
        ("BATON_ROLLUP_BATCH", "BATON_ROLLUP_BATCH", 5000),
        ("BATON_AUDIT_SEAL_INTERVAL", "BATON_AUDIT_SEAL_INTERVAL", 5.0),
        ("BATON_LIVE_RECHECK", "BATON_LIVE_RECHECK", 5.0),
        ("BATON_AUDIT_VERIFY_AT", "BATON_AUDIT_VERIFY_AT", "02:30"),
        ("BATON_TIME_ZONE", "TIME_ZONE", "UTC"),
        ("BATON_LOG_LEVEL", "BATON_LOG_LEVEL", "INFO"),
        ("BATON_EMAIL_BACKEND", "EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend"),
        ("BATON_FROM_EMAIL", "DEFAULT_FROM_EMAIL", "baton@localhost"),
        ("BATON_BASE_URL", "BATON_BASE_URL", "http://127.0.0.1:8000"),
        ("BATON_DEBUG", "DEBUG", True),
        ("BATON_DEMO", "BATON_DEMO", True),
    ],
)
def test_an_empty_value_is_the_documented_default(name, setting, default):
    # when: set but empty, as `export BATON_X=` or an empty line of an env file leaves it
    found = settings_in({name: ""}, setting)

    # then
    assert found[setting] == default


@pytest.mark.parametrize(
    ("name", "setting", "default", "env"),
    [
        ("BATON_BIND", "BATON_BIND", "127.0.0.1", {}),
        # a seal path of blanks was a file named " " in the directory the worker started in, not the log
        ("BATON_AUDIT_SEAL_PATH", "BATON_AUDIT_SEAL_PATH", "", {}),
        # blanks were refused as a malformed key list ("'' is not"), in demo mode where the variable is optional
        ("BATON_AUDIT_KEYS", "BATON_AUDIT_KEYS", [["demo", "baton-demo-audit-key-not-for-production"]], {}),
        # empty was Django's own name, test_<database>, not the documented test_baton
        ("BATON_TEST_DB_NAME", "DATABASES", "test_baton", PRODUCTION),
    ],
)
@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_value_is_the_documented_default(name, setting, default, env, blank):
    """README, settings: "A variable set but empty is the default", blanks included (an env file's trailing space)."""
    # when
    found = settings_in({**env, name: blank}, setting)[setting]

    # then
    if setting == "DATABASES":
        found = found["default"]["TEST"]["NAME"]
    assert found == default


@pytest.mark.parametrize(
    ("value", "bind"), [(" 10.1.2.3 ", "10.1.2.3"), ("baton-web.internal", "baton-web.internal"), ("::", "::")]
)
def test_an_address_to_listen_on_is_read_as_meant(value, bind):
    assert settings_in({"BATON_BIND": value}, "BATON_BIND")["BATON_BIND"] == bind


@pytest.mark.parametrize("name", ["BATON_SECRET_KEY", "BATON_AUDIT_KEYS"])
def test_a_production_secret_of_blanks_only_is_missing(name):
    # when: "   " used to pass the check and become the site's secret key
    message = refusal({**PRODUCTION, name: "   "})

    # then
    assert name in message


@pytest.mark.parametrize(("value", "token"), [("s3cret\n", "s3cret"), ("  ", "")])
def test_the_metrics_token_is_read_as_the_header_token_is(value, token):
    # when: a token read from a file kept its line break, and no scrape could ever match it (401 for ever)
    found = settings_in({"BATON_METRICS_TOKEN": value}, "BATON_METRICS_TOKEN")

    # then
    assert found["BATON_METRICS_TOKEN"] == token


def test_empty_paths_are_the_default_places_not_the_current_directory():
    # when: BATON_STATIC_ROOT= used to collect the static files into the directory the process started in
    found = settings_in({"BATON_STATIC_ROOT": "", "BATON_SQLITE_PATH": ""}, "STATIC_ROOT", "DATABASES")

    # then
    assert found["STATIC_ROOT"].endswith(".baton/staticfiles")
    assert "baton.sqlite3" in found["DATABASES"]["default"]["NAME"]


def test_an_empty_channels_redis_url_is_the_redis_url():
    # when: it used to be one empty host for the channel layer
    found = settings_in({**PRODUCTION, "BATON_CHANNELS_REDIS_URL": ""}, "CHANNEL_LAYERS")

    # then
    assert found["CHANNEL_LAYERS"]["default"]["CONFIG"]["hosts"] == [PRODUCTION["REDIS_URL"]]


@pytest.mark.parametrize(
    ("name", "value", "setting", "expected"),
    [
        # people write lower case; logging only knows upper case and refused the start without naming anything
        ("BATON_LOG_LEVEL", "debug", "BATON_LOG_LEVEL", "DEBUG"),
        ("BATON_DEBUG", " Off ", "DEBUG", False),
        ("BATON_DEMO_APP", "NO", "BATON_DEMO_APP", False),
        ("BATON_PAUSE_MAX_DAYS", " 30 ", "BATON_PAUSE_MAX_DAYS", 30),
        ("BATON_AUDIT_SEAL_INTERVAL", "0", "BATON_AUDIT_SEAL_INTERVAL", 0.0),
        ("BATON_FROM_EMAIL", "Baton <baton@example.com>", "DEFAULT_FROM_EMAIL", "Baton <baton@example.com>"),
        ("BATON_TIME_ZONE", "Europe/Berlin", "TIME_ZONE", "Europe/Berlin"),
        # hstspreload.org's two years: refused by a one-year bound
        ("BATON_HSTS_SECONDS", "63072000", "SECURE_HSTS_SECONDS", 63072000),
        # "a, b" is how people write lists: " b" used to be imported as a module named " b"
        ("BATON_WORKFLOW_MODULES", "demo.workflows.bench, ", "BATON_WORKFLOW_MODULES", ["demo.workflows.bench"]),
    ],
)
def test_a_reasonable_value_is_read_as_meant(name, value, setting, expected):
    assert settings_in({name: value}, setting)[setting] == expected


def test_a_range_is_given_in_plain_numbers():
    # when: the bound of a year read "3.1536e+07"
    message = refusal({"BATON_SWEEP_INTERVAL": "99999999999"})

    # then
    assert "from 0.1 to 31536000" in message


def test_a_workflow_module_that_cannot_be_imported_stops_the_start_naming_the_variable():
    # when: a process starts (django.setup imports the workflow modules)
    done = start({"BATON_WORKFLOW_MODULES": "acme_flows.workflowz"}, command="check")

    # then
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "BATON_WORKFLOW_MODULES" in last
    assert "acme_flows.workflowz" in last


def test_the_first_workflow_exports_of_the_readme_start_baton():
    """README, "Your first workflow", step 3: its `export` lines are all a newcomer sets before `baton-admin migrate`.
    They lacked BATON_AUDIT_KEYS, so the first command was refused (tests/test_installed.py sets it itself)."""
    # given: the export lines, evaluated by the shell as a reader's would
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Your first workflow\n", 1)[1].split("\n## ", 1)[0]
    exports = [line.strip() for line in section.splitlines() if line.strip().startswith("export ")]
    assert exports
    shell = subprocess.run(
        ["bash", "-c", "\n".join([*exports, "env -0"])], env={"PATH": os.environ["PATH"]}, capture_output=True
    )
    env = dict(item.split("=", 1) for item in shell.stdout.decode().split("\0") if item and "=" in item)

    # when
    done = start(
        {name: value for name, value in env.items() if name.startswith(("BATON_", "DATABASE_", "REDIS_"))}, "DEBUG"
    )

    # then
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1]


def test_a_database_url_with_blanks_around_it_is_read_as_meant():
    # when: pasted with a space (it used to be refused as the unknown scheme " postgres")
    found = settings_in({**PRODUCTION, "DATABASE_URL": " postgres://baton@db.invalid/baton\n"}, "DATABASES")

    # then
    assert found["DATABASES"]["default"]["HOST"] == "db.invalid"


SCHEMATHESIS_TESTS = "tests/api/test_schemathesis.py"


@pytest.mark.parametrize(
    ("name", "value"), [("BATON_SCHEMATHESIS_EXAMPLES", "lots"), ("BATON_SCHEMATHESIS_RANDOM", "sometimes")]
)
def test_a_tests_only_variable_given_junk_stops_the_run_naming_it(name, value):
    """The table's tests-only variables are read as the settings read theirs: ``int()`` stopped the collection
    with a bare ``ValueError`` naming no variable, and a switch other than ``1`` (``true``) was silently off."""
    # when: pytest collects the module that reads them
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", SCHEMATHESIS_TESTS],
        env={**os.environ, name: value},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )

    # then
    assert done.returncode != 0
    assert f"{name}=" in done.stdout + done.stderr
    assert "ValueError" not in done.stdout + done.stderr
