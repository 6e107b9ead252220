"""Test settings: the real settings, pointed at real PostgreSQL and Redis unless the environment says otherwise."""

import os
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DATABASE_URL", "postgres://root@127.0.0.1:5432/baton")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")


def _redis_url_of_this_process(url: str, xdist_worker: str) -> str:
    """The Redis URL for pytest-xdist's process ``xdist_worker`` ("gw0", "gw1", ...): its own database, the given
    one's number minus the process's (14, 13, ... 7 for `make test`'s eight at most), so that two processes' tests
    never read each other's broker messages, live news or cache. Each process also gets its own test database
    (pytest-django adds "_gw0"). The number is where redis-py reads it: the query's ``db`` when given, else the
    path's (a ``unix://`` URL's path is the socket's).

    Decision: counting down, and never round. Counting up from 14 wrapped round to 0, 1, ... at the third process,
    and each process flushes its database at the start: database 0 is where a developer's own Baton keeps its broker
    queue (README's example). Raises ``ImproperlyConfigured`` when the process would need a number below 0."""
    parts = urlsplit(url)
    query = parse_qs(parts.query, keep_blank_values=True)
    in_query = "db" in query or parts.scheme == "unix"
    given = query.get("db", [""])[0] if in_query else parts.path.strip("/")
    number = int(given or 0)
    index = int(xdist_worker.removeprefix("gw") or 0)
    if number - index < 0:
        raise ImproperlyConfigured(
            f"REDIS_URL={url}: pytest-xdist process {xdist_worker} would need Redis database {number - index}; each "
            f"process uses its own, counting down from the URL's ({number}, {number - 1}, ...). Give a URL with a "
            "higher database number, or run fewer processes (BATON_TEST_PROCESSES)."
        )
    if in_query:
        query["db"] = [str(number - index)]
        # Only the query replaced: urlunsplit would write "unix:///run/redis.sock" as "unix:/run/redis.sock".
        return url.split("?", 1)[0] + "?" + urlencode(query, doseq=True)
    return urlunsplit(parts._replace(path=f"/{number - index}"))


# Set once, in the pytest process: the worker and web server processes a test starts inherit the environment,
# PYTEST_XDIST_WORKER included, and must take the URL as given, not move it again.
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("BATON_TEST_REDIS_MOVED") != "1":
    os.environ["REDIS_URL"] = _redis_url_of_this_process(os.environ["REDIS_URL"], os.environ["PYTEST_XDIST_WORKER"])
    os.environ["BATON_TEST_REDIS_MOVED"] = "1"
    # `make web` collects the static files before it serves: two processes' servers must not copy into one folder.
    os.environ.setdefault(
        "BATON_STATIC_ROOT",
        os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            ".baton",
            f"staticfiles-{os.environ['PYTEST_XDIST_WORKER']}",
        ),
    )
os.environ.setdefault("BATON_SECRET_KEY", "baton-tests-only")
os.environ.setdefault("BATON_AUDIT_KEYS", "tests:baton-tests-only-audit-key-not-for-production")
os.environ.setdefault("BATON_DEBUG", "1")
os.environ.setdefault("BATON_METRICS_TOKEN", "tests-metrics-token")
# A test session has no beat: the sweep runs when a test calls it, so /health/ready allows an hour since the last
# one (tests/orchestrator/test_metrics.py sets its own bound to test lateness).
os.environ.setdefault("BATON_READY_SWEEP_AGE", "3600")
# The tests run in production mode (DATABASE_URL is set) with the demo app, whose workflows and ledger they use,
# and the benchmark flows.
os.environ.setdefault("BATON_DEMO_APP", "1")
os.environ.setdefault("BATON_WORKFLOW_MODULES", "demo.workflows.bench")

from baton_site.settings import *  # noqa: E402, F403  (the environment above must be set first)

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
