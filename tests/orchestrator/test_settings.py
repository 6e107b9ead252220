"""Configuration says what it does: the mode, start-up refusals, the sweep interval, TLS behind a proxy, and the
README's table of variables (README, "Production")."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import RequestFactory, override_settings
from django.utils.crypto import get_random_string

from orchestrator.accounts import request_meta

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {
    "DATABASE_URL": "postgres://baton@db.invalid/baton",
    "REDIS_URL": "redis://redis.invalid:6379/0",
    "BATON_SECRET_KEY": "a-key-of-our-own-" + "x" * 40,
    "BATON_AUDIT_KEYS": "k1:" + "y" * 40,
}


def start(env: dict[str, str], *names: str, command: str = "") -> subprocess.CompletedProcess[str]:
    """Load baton_site.settings in a fresh interpreter with only ``env`` (no variable leaks in from the tests)
    and print the settings ``names`` as JSON, or run ``manage.py command``."""
    clean = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "baton_site.settings"}
    if command:
        args = [sys.executable, str(ROOT / "manage.py"), *command.split()]
    else:
        code = (
            "from django.conf import settings; import json; "
            f"print(json.dumps({{n: getattr(settings, n, None) for n in {list(names)!r}}}, default=str))"
        )
        args = [sys.executable, "-c", code]
    return subprocess.run(args, env={**clean, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60)


def settings_in(env: dict[str, str], *names: str) -> dict:
    done = start(env, *names)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def refusal(env: dict[str, str]) -> str:
    done = start(env, "DEBUG")
    assert done.returncode != 0, f"started with {env}: {done.stdout}"
    assert "ImproperlyConfigured" in done.stderr
    return done.stderr.strip().splitlines()[-1]


# --- the mode -------------------------------------------------------------------------------------------


def test_nothing_set_is_the_demo_with_debug_and_the_public_key():
    # when
    found = settings_in({}, "BATON_MODE", "DEBUG", "SECRET_KEY", "EMBEDDED", "CELERY_BROKER_URL")

    # then
    assert found["BATON_MODE"] == "demo"
    assert found["DEBUG"] is True
    assert found["SECRET_KEY"] == "baton-embedded-demo-key-not-for-production"
    assert found["CELERY_BROKER_URL"].startswith("memory://")


@pytest.mark.parametrize(
    ("env", "named", "not_named"),
    [
        # DATABASE_URL alone used to give DEBUG, the public key and an in-memory broker no worker sees.
        ({"DATABASE_URL": PRODUCTION["DATABASE_URL"]}, ["REDIS_URL", "BATON_SECRET_KEY"], ["DATABASE_URL"]),
        ({"REDIS_URL": PRODUCTION["REDIS_URL"]}, ["DATABASE_URL", "BATON_SECRET_KEY"], ["REDIS_URL"]),
        # BATON_DEBUG=1 used to start on the public key.
        (
            {"DATABASE_URL": PRODUCTION["DATABASE_URL"], "REDIS_URL": PRODUCTION["REDIS_URL"], "BATON_DEBUG": "1"},
            ["BATON_SECRET_KEY"],
            ["DATABASE_URL", "REDIS_URL"],
        ),
        ({"BATON_MODE": "production"}, ["DATABASE_URL", "REDIS_URL", "BATON_SECRET_KEY"], []),
        (
            {**PRODUCTION, "BATON_SECRET_KEY": "baton-embedded-demo-key-not-for-production"},
            ["BATON_SECRET_KEY of your own"],
            ["DATABASE_URL", "REDIS_URL"],
        ),
        ({"BATON_MODE": "prod"}, ["BATON_MODE='prod'"], []),
    ],
)
def test_a_half_configured_production_start_is_refused_naming_everything_missing(env, named, not_named):
    # when
    message = refusal(env)

    # then
    for name in named:
        assert name in message
    for name in not_named:
        assert f"{name} (" not in message


def test_a_complete_production_start_has_no_debug_and_its_own_key():
    found = settings_in(PRODUCTION, "BATON_MODE", "DEBUG", "SECRET_KEY", "SESSION_COOKIE_SECURE", "BATON_DEMO")

    assert found == {
        "BATON_MODE": "production",
        "DEBUG": False,
        "SECRET_KEY": PRODUCTION["BATON_SECRET_KEY"],
        "SESSION_COOKIE_SECURE": True,
        "BATON_DEMO": False,
    }


def test_the_demo_may_be_chosen_explicitly_on_postgresql_without_redis():
    found = settings_in({"BATON_MODE": "demo", "DATABASE_URL": PRODUCTION["DATABASE_URL"]}, "DEBUG", "EMBEDDED")

    assert found == {"DEBUG": True, "EMBEDDED": True}


# --- the demo app and the channel layer -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "installed"),
    [({}, True), (PRODUCTION, False), ({**PRODUCTION, "BATON_DEMO_APP": "1"}, True), ({"BATON_DEMO_APP": "0"}, False)],
    ids=["demo mode", "production", "production with BATON_DEMO_APP=1", "demo mode with BATON_DEMO_APP=0"],
)
def test_the_demo_app_is_installed_in_demo_mode_and_in_production_only_when_asked(env, installed):
    found = settings_in(env, "INSTALLED_APPS", "BATON_WORKFLOW_MODULES")

    assert ("demo" in found["INSTALLED_APPS"]) is installed
    assert found["BATON_WORKFLOW_MODULES"] == []  # the demo workflows come with the app, not by name


@pytest.mark.parametrize(
    ("value", "backend"),
    [
        (None, "channels_redis.pubsub.RedisPubSubChannelLayer"),
        ("pubsub", "channels_redis.pubsub.RedisPubSubChannelLayer"),
        (" Redis ", "channels_redis.core.RedisChannelLayer"),
    ],
)
def test_the_channel_layer_is_chosen_by_baton_channel_layer(value, backend):
    env = PRODUCTION if value is None else {**PRODUCTION, "BATON_CHANNEL_LAYER": value}

    layer = settings_in(env, "CHANNEL_LAYERS")["CHANNEL_LAYERS"]["default"]

    assert layer["BACKEND"] == backend
    assert layer["CONFIG"]["hosts"] == [PRODUCTION["REDIS_URL"]]


def test_an_unknown_channel_layer_is_refused_naming_the_choices():
    message = refusal({**PRODUCTION, "BATON_CHANNEL_LAYER": "rabbitmq"})

    assert "BATON_CHANNEL_LAYER='rabbitmq'" in message
    assert "pubsub" in message
    assert "redis" in message


# --- durations ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0.5", "1.5", "0.25", "2", "7.125"])
def test_the_sweep_interval_is_kept_as_given(value):
    found = settings_in({"BATON_SWEEP_INTERVAL": value}, "BATON_SWEEP_INTERVAL", "CELERY_BEAT_SCHEDULE")

    assert found["BATON_SWEEP_INTERVAL"] == float(value)
    assert found["CELERY_BEAT_SCHEDULE"]["baton-sweep"]["schedule"] == float(value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BATON_SWEEP_INTERVAL", "0"),
        ("BATON_SWEEP_INTERVAL", "-1"),
        ("BATON_SWEEP_INTERVAL", "0.01"),
        ("BATON_SWEEP_INTERVAL", "nan"),
        ("BATON_SWEEP_INTERVAL", "inf"),
        ("BATON_SWEEP_INTERVAL", "1s"),
        ("BATON_SWEEP_INTERVAL", "3000.5"),
        ("BATON_REDISPATCH_AFTER", "soon"),
        ("BATON_LEASE_GRACE", "-5"),
        ("BATON_HSTS_SECONDS", "a year"),
    ],
)
def test_a_duration_that_cannot_be_honoured_is_refused_at_start(name, value):
    message = refusal({name: value})

    assert f"{name}=" in message


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("seconds", "every", "period"),
    [(0.5, 500_000, "microseconds"), (1.5, 1_500_000, "microseconds"), (2.0, 2, "seconds")],
)
def test_beat_stores_the_sweep_interval_exactly(seconds, every, period):
    """django-celery-beat's own entry stored 0.5 s as 0 s and 1.5 s as 1 s."""
    from baton_site.celery import app
    from orchestrator.beat import ModelEntry

    # when
    entry = ModelEntry.from_entry("baton-sweep", app=app, task="orchestrator.tasks.sweep", schedule=seconds)

    # then
    assert (entry.model.interval.every, entry.model.interval.period) == (every, period)
    assert entry.schedule.run_every == timedelta(seconds=seconds)


def test_beat_runs_with_the_exact_scheduler():
    from django.conf import settings

    assert settings.CELERY_BEAT_SCHEDULER == "orchestrator.beat:DatabaseScheduler"
    assert "beat --scheduler orchestrator.beat:DatabaseScheduler" in (ROOT / "Makefile").read_text()
    # and every command README gives (its "Install it in your own project" named django-celery-beat's own, which
    # stores 0.5 s as 0 s)
    readme = (ROOT / "README.md").read_text()
    assert set(re.findall(r"--scheduler\s+(\S+?)`?\s", readme)) == {"orchestrator.beat:DatabaseScheduler"}


# --- demo accounts --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_demo_data_is_refused_in_production_unless_forced(django_user_model):
    # given: the tests run in production mode (DATABASE_URL and REDIS_URL set)
    from django.conf import settings

    assert settings.BATON_MODE == "production"

    # when / then
    with pytest.raises(CommandError, match="--force"):
        call_command("baton_demo_data")
    assert not django_user_model.objects.filter(username="manager").exists()

    # when forced
    call_command("baton_demo_data", "--force")

    # then
    assert django_user_model.objects.filter(username="manager").exists()


# --- TLS and a proxy ------------------------------------------------------------------------------------


def test_behind_a_proxy_https_is_believed_only_when_configured():
    direct = settings_in(PRODUCTION, "SECURE_PROXY_SSL_HEADER", "SECURE_SSL_REDIRECT")
    proxied = settings_in({**PRODUCTION, "BATON_BEHIND_PROXY": "1"}, "SECURE_PROXY_SSL_HEADER", "SECURE_SSL_REDIRECT")

    assert direct == {"SECURE_PROXY_SSL_HEADER": None, "SECURE_SSL_REDIRECT": False}
    assert proxied == {"SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"], "SECURE_SSL_REDIRECT": True}


def _make_line(target: str, program: str, env: dict[str, str]) -> str:
    """The command ``make <target>`` would run for ``program``, with the shell's expansions done under ``env``."""
    done = subprocess.run(["make", "-n", target], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True)
    line = done.stdout.split(program, 1)[1].replace("\\\n", " ")
    return subprocess.run(
        ["bash", "-c", f"echo {line}"], env={**os.environ, **env}, capture_output=True, text=True
    ).stdout


def test_make_web_live_passes_proxy_headers_to_daphne_only_behind_a_proxy():
    assert "--proxy-headers" in _make_line("web-live", "bin/daphne", {"BATON_BEHIND_PROXY": "1"})
    assert "--proxy-headers" in _make_line("web-live", "bin/daphne", {"BATON_BEHIND_PROXY": "Yes"})
    assert "--proxy-headers" not in _make_line("web-live", "bin/daphne", {"BATON_BEHIND_PROXY": "0"})


def test_make_web_serves_http_with_gunicorn_workers_per_core_unless_told():
    # given: no BATON_WEB_WORKERS, then 7
    default = _make_line("web", "bin/gunicorn", {"BATON_WEB_WORKERS": ""}).split()
    told = _make_line("web", "bin/gunicorn", {"BATON_WEB_WORKERS": "7", "BATON_PORT": "9001"}).split()

    # then: one per core + 1 by default, the WSGI application, where told
    assert default[default.index("--workers") + 1] == str(os.cpu_count() + 1)
    assert told[told.index("--workers") + 1] == "7"
    assert "127.0.0.1:9001" in told
    assert told[-1] == "baton_site.wsgi:application"


def test_the_makefile_reads_blank_and_padded_values_as_the_settings_do():
    """The settings take a blank value for the default and strip a padded one (``env_int``, ``env_bool``); the
    Makefile passed them to gunicorn, daphne and celery as they were: ``BATON_WEB_WORKERS=' '`` (an env file's
    trailing space) gave ``--workers --worker-class`` and gunicorn's own error, ``BATON_BEHIND_PROXY=' 1'`` a
    Django behind a proxy and a daphne that ignored the proxy's headers."""
    # given values the settings accept: blank (the default) or padded
    blank = {name: " " for name in ("BATON_PORT", "BATON_WEB_WORKERS", "BATON_WEB_TIMEOUT", "BATON_LIVE_PORT")}
    padded = {"BATON_PORT": " 9001 ", "BATON_WEB_GRACEFUL_TIMEOUT": "45 ", "BATON_WORKER_CONCURRENCY": " 3"}

    # when make reads them
    web = _make_line(
        "web", "bin/gunicorn", {**blank, "BATON_WEB_GRACEFUL_TIMEOUT": padded["BATON_WEB_GRACEFUL_TIMEOUT"]}
    )
    told = _make_line("web", "bin/gunicorn", {"BATON_PORT": padded["BATON_PORT"]}).split()
    live = _make_line("web-live", "bin/daphne", {**blank, "BATON_BEHIND_PROXY": " 1 "}).split()
    worker = _make_line("worker", "bin/celery", padded).split()

    # then each is the default, or the value without its spaces
    argv = web.split()
    assert argv[argv.index("--workers") + 1] == str(os.cpu_count() + 1)
    assert argv[argv.index("--timeout") + 1] == "60"
    assert argv[argv.index("--graceful-timeout") + 1] == "45"
    assert argv[argv.index("--bind") + 1] == "127.0.0.1:8000"
    assert told[told.index("--bind") + 1] == "127.0.0.1:9001"
    assert live[live.index("-p") + 1] == "8001"
    assert "--proxy-headers" in live
    assert worker[worker.index("--concurrency") + 1] == "3"


@pytest.mark.parametrize(
    ("value", "gunicorn", "daphne"),
    [
        # blank: gunicorn got "--bind :8000", which listens on every interface, not the default 127.0.0.1; daphne
        # got "-b -p 8001"
        (" ", "127.0.0.1:8000", "127.0.0.1"),
        ("", "127.0.0.1:8000", "127.0.0.1"),
        (" 10.1.2.3 ", "10.1.2.3:8000", "10.1.2.3"),
        # an IPv6 address: gunicorn needs it in brackets before the port ("::1:8000" is no address), daphne bare
        ("::1", "[::1]:8000", "::1"),
        ("[::1]", "[::1]:8000", "[::1]"),
    ],
)
def test_make_web_and_web_live_listen_where_baton_bind_says(value, gunicorn, daphne):
    # when
    web = _make_line("web", "bin/gunicorn", {"BATON_BIND": value, "BATON_PORT": ""}).split()
    live = _make_line("web-live", "bin/daphne", {"BATON_BIND": value}).split()

    # then
    assert web[web.index("--bind") + 1] == gunicorn
    assert live[live.index("-b") + 1] == daphne


@pytest.mark.parametrize(("behind_proxy", "expected"), [(False, "10.0.0.9"), (True, "203.0.113.7")])
def test_the_audit_records_the_forwarded_address_only_behind_a_proxy(behind_proxy, expected):
    # given: a client that claims to be 198.51.100.1, behind a proxy at 10.0.0.9 that saw 203.0.113.7
    request = RequestFactory().post(
        "/tasks/1/claim/", REMOTE_ADDR="10.0.0.9", HTTP_X_FORWARDED_FOR="198.51.100.1, 203.0.113.7"
    )

    # when
    with override_settings(BATON_BEHIND_PROXY=behind_proxy):
        meta = request_meta(request)

    # then
    assert meta["ip"] == expected


def documented_production_env() -> dict[str, str]:
    """The ``export`` lines of README's production block, with a real random key for ``...``."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- production-env", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    env = {}
    for line in block.splitlines():
        if line.startswith("export "):
            for pair in shlex.split(line.removeprefix("export ")):
                name, value = pair.split("=", 1)
                env[name] = value
    env["BATON_SECRET_KEY"] = get_random_string(60)
    env["BATON_AUDIT_KEYS"] = "k1:" + get_random_string(40)  # the README's line makes one with openssl
    return env


def test_check_deploy_passes_with_the_documented_production_settings():
    # given
    env = documented_production_env()
    assert env["BATON_BEHIND_PROXY"] == "1"

    # when
    done = start(env, command="check --deploy --fail-level WARNING")

    # then
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_check_deploy_warns_without_them():
    done = start(PRODUCTION, command="check --deploy --fail-level WARNING")

    assert done.returncode != 0
    assert "SECURE_HSTS_SECONDS" in done.stderr + done.stdout


DOCS = ["README.md", "docs/architecture.md", "docs/console.md", "docs/access-matrix.md", "bench/README.md"]


def test_every_make_target_the_docs_name_runs_something():
    """``make typecheck`` was declared phony with no recipe: it answered "Nothing to be done" and exit status 0, so
    a check run with it passed without type-checking anything."""
    # given: every `make <target>` the documentation names, and the Makefile's own phony list
    named = set()
    for doc in DOCS:
        named |= set(re.findall(r"`make ([a-z][a-z-]*)", (ROOT / doc).read_text()))
    phony = set(re.search(r"^\.PHONY: (.+)$", (ROOT / "Makefile").read_text(), re.M)[1].split())
    assert {"demo", "test", "web", "worker", "typecheck"} <= named  # the scan finds them at all

    # when / then: each is a target with a recipe (-B: as if nothing were up to date, so `install` shows its own)
    for target in sorted(named | phony):
        done = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, f"make {target}: {done.stderr}"
        assert "Nothing to be done" not in done.stdout, f"make {target} does nothing"


# --- the README's table ---------------------------------------------------------------------------------

ENV_READ = re.compile(
    r"""(?:environ\.get|environ\.setdefault|environ\[|getenv|env_bool|env_seconds|env_int|env_text|env_list)\(?\s*["'](BATON_[A-Z0-9_]+)"""
)
MAKE_READ = re.compile(r"\$\$\{(BATON_[A-Z0-9_]+)|\$\((BATON_[A-Z0-9_]+)\)")


def test_every_variable_the_code_reads_is_in_the_readme_table():
    # given
    files = subprocess.run(["git", "ls-files", "*.py", "Makefile", ".ci/run"], cwd=ROOT, capture_output=True, text=True)
    read: dict[str, str] = {}
    for name in files.stdout.split():
        text = (ROOT / name).read_text()
        for match in [*ENV_READ.finditer(text), *(MAKE_READ.finditer(text) if not name.endswith(".py") else [])]:
            read.setdefault(next(g for g in match.groups() if g), name)
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `BATON_")]
    documented = set(re.findall(r"`(BATON_[A-Z0-9_]+)`", "\n".join(row.split("|")[1] for row in rows)))

    # then
    assert len(read) > 20  # the scan finds the reads at all
    missing = {name: where for name, where in read.items() if name not in documented}
    assert not missing, f"read but not in README's table: {missing}"


def test_every_variable_in_the_readme_table_is_read_by_the_code():
    # given: the table's names, and every read of the code (settings, apps, tests, Makefile, CI)
    files = subprocess.run(["git", "ls-files", "*.py", "Makefile", ".ci/run"], cwd=ROOT, capture_output=True, text=True)
    read = set()
    for name in files.stdout.split():
        text = (ROOT / name).read_text()
        for match in [*ENV_READ.finditer(text), *(MAKE_READ.finditer(text) if not name.endswith(".py") else [])]:
            read.add(next(g for g in match.groups() if g))
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `BATON_")]
    documented = set(re.findall(r"`(BATON_[A-Z0-9_]+)`", "\n".join(row.split("|")[1] for row in rows)))

    # then: a row of the table whose variable nothing reads would promise a setting that does nothing
    assert documented - read == set()


# The Django setting a variable sets, where it is not the variable's own name.
SETTING_OF = {
    "BATON_HSTS_SECONDS": "SECURE_HSTS_SECONDS",
    "BATON_HSTS_INCLUDE_SUBDOMAINS": "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "BATON_HSTS_PRELOAD": "SECURE_HSTS_PRELOAD",
    "BATON_VISIBILITY_TIMEOUT": "CELERY_BROKER_TRANSPORT_OPTIONS",
}
TESTS_ONLY = {"BATON_SCHEMATHESIS_EXAMPLES", "BATON_SCHEMATHESIS_RANDOM"}  # read by tests/api, not the settings


def test_every_number_the_readme_table_gives_as_a_default_is_the_code_s():
    """A row whose default is a plain number (a count, a duration, a 0/1 switch) says what a production start with
    the variable unset uses: a default changed in the code and not in the table would go unnoticed."""
    # given: the table's rows with a number for their default
    rows = [line.split("|") for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `BATON_")]
    documented = {
        name: float(default)
        for _, names, default, *_ in rows
        for name, default in [(names.strip().strip("`"), default.strip().strip("`"))]
        if re.fullmatch(r"[0-9.]+", default) and name not in TESTS_ONLY
    }
    assert len(documented) > 20  # the table is read at all

    # when: a production start with none of them set
    found = settings_in(PRODUCTION, *{SETTING_OF.get(name, name) for name in documented})

    # then
    for name, default in documented.items():
        value = found[SETTING_OF.get(name, name)]
        if name == "BATON_VISIBILITY_TIMEOUT":
            value = value["visibility_timeout"]
        assert value is not None, f"{name}: no such setting"
        assert float(value) == default, f"{name}: README says {default:g}, the code uses {value}"


def test_host_lists_with_spaces_after_the_commas_are_understood():
    # given: the way people write lists ("a, b")
    env = {
        "BATON_ALLOWED_HOSTS": " baton.example.com , www.example.com ,",
        "BATON_CSRF_TRUSTED_ORIGINS": "https://baton.example.com, https://www.example.com",
    }

    # when
    found = settings_in(env, "ALLOWED_HOSTS", "CSRF_TRUSTED_ORIGINS")

    # then: no entry keeps a space (Django would compare " www.example.com" with the Host header and refuse it)
    assert found["ALLOWED_HOSTS"] == ["baton.example.com", "www.example.com"]
    assert found["CSRF_TRUSTED_ORIGINS"] == ["https://baton.example.com", "https://www.example.com"]


@pytest.mark.parametrize("value", ["", " ", ",", " , "])
def test_production_with_no_allowed_host_is_refused_at_start(value):
    # when: every request would be answered 400 (DEBUG is off), so the start is refused naming the variable
    message = refusal({**PRODUCTION, "BATON_ALLOWED_HOSTS": value})

    # then
    assert "BATON_ALLOWED_HOSTS" in message
