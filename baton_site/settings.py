"""Django settings for Baton.

Two modes, same code (docs/architecture.md), chosen by ``BATON_MODE`` (README, "Production"):
- demo: SQLite unless DATABASE_URL is set, Celery on ``memory://`` and an in-memory channel layer unless REDIS_URL is
  set, everything in one process started by ``manage.py baton_demo``, the public demo key, DEBUG on;
- production: PostgreSQL from DATABASE_URL, Redis from REDIS_URL, a secret key of its own, separate web, worker and
  beat processes. A production start that lacks any of them is refused, naming everything missing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import math
import os
import re
import socket
import zoneinfo
from collections.abc import Mapping
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

import baton_assets

BASE_DIR = Path(__file__).resolve().parent.parent
# Local state of the embedded mode (SQLite, collected static files): the checkout's .baton/, or, for an installed
# copy (whose BASE_DIR is site-packages), .baton/ in the directory it is started from.
DATA_DIR = BASE_DIR / ".baton" if (BASE_DIR / "manage.py").is_file() else Path.cwd() / ".baton"


TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


def env_text(name: str, default: str) -> str:
    """A text setting from the environment, stripped; unset or empty is ``default`` (README, "Production": an empty
    value means "not set", so ``BATON_STATIC_ROOT=`` is the default folder, never the current directory)."""
    return os.environ.get(name, "").strip() or default


def env_bool(name: str, default: bool = False) -> bool:
    """A boolean from the environment: 1/true/yes/on or 0/false/no/off (any case); unset or empty is ``default``.

    Anything else (``ture``, ``2``) stops the start with ``ImproperlyConfigured`` naming the variable: read as
    false, a typo in ``BATON_SECURE_COOKIES`` or ``BATON_BEHIND_PROXY`` would silently change security."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise ImproperlyConfigured(f"{name}={os.environ[name]!r}: give 1, true, yes, on or 0, false, no, off.")


def env_list(name: str, default: str) -> list[str]:
    """A comma-separated list from the environment, each entry stripped and empty ones dropped: "a, b" is how
    people write lists, and Django compares " b" with the Host header character by character."""
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_int(name: str, default: int, *, minimum: int, maximum: int) -> int:
    """A whole number from the environment; unset or empty is ``default``. Junk, fractions and values outside
    [``minimum``, ``maximum``] stop the start with ``ImproperlyConfigured`` naming the variable, never a
    ``ValueError`` from ``int()`` or a value that fails at the first request that uses it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}={raw!r} is not a whole number: give one from {minimum} to {maximum}."
        ) from None
    if not minimum <= value <= maximum:
        raise ImproperlyConfigured(f"{name}={raw!r}: give a whole number from {minimum} to {maximum}.")
    return value


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


def is_listen_address(value: str) -> bool:
    """Whether ``value`` is an address a server can listen on: an IPv4 or IPv6 address (bare or in brackets) or a
    host name (RFC 1123 labels). A port, a scheme or a space is not (the Makefile appends ``:$BATON_PORT``)."""
    try:
        ipaddress.ip_address(value[1:-1] if value.startswith("[") and value.endswith("]") else value)
    except ValueError:
        return HOST_NAME.fullmatch(value) is not None
    return True


# --- Mode and start-up checks ---------------------------------------------------------------------------
def env_seconds(
    name: str, default: float, *, minimum: float, maximum: float = 86_400 * 365, unit: str = "seconds"
) -> float:
    """A duration (in ``unit``) from the environment, as a float; unset or empty is ``default``. Junk, NaN,
    infinities and values outside [``minimum``, ``maximum``] stop the start with a message naming the variable
    (never a silent truncation)."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number of {unit}.") from None
    if not math.isfinite(value) or not minimum <= value <= maximum:
        # .15g: 31536000, not 3.1536e+07, for the person reading the message
        raise ImproperlyConfigured(f"{name}={raw!r}: give a number of {unit} from {minimum:.15g} to {maximum:.15g}.")
    return value


def without_credentials(url: str) -> str:
    """``url`` with whatever stands before its last ``@`` (after the scheme's ``//``) shown as ``***``: the user
    and password of ``redis://:secret@host``, for a message that quotes a URL. By position, not by parsing: a
    URL refused for being malformed may not parse, and a password may hold ``@``, ``/`` or ``#`` unquoted."""
    start = url.find("//") + 2 if "//" in url else 0
    at = url.rfind("@")
    return url if at < start else f"{url[:start]}***{url[at:]}"


def redis_url(name: str, value: str) -> str:
    """``value`` if it is a Redis URL (``redis://``, ``rediss://`` or ``unix://``), else ``ImproperlyConfigured``
    naming ``name``: a wrong URL would otherwise surface only when the first task or live event is sent. The
    message quotes the value without its credentials (it goes to a terminal or a log)."""
    if value and urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
        raise ImproperlyConfigured(
            f"{name}={without_credentials(value)!r}: give a Redis URL, redis://host:6379/0 (or rediss://, unix://)."
        )
    return value


DATABASE_URL = os.environ.get("DATABASE_URL", "").strip()
REDIS_URL = redis_url("REDIS_URL", os.environ.get("REDIS_URL", "").strip())
# Explicit, or by the one rule: no DATABASE_URL and no REDIS_URL is the demo, anything else is production.
BATON_MODE = os.environ.get("BATON_MODE", "").strip().lower() or ("production" if DATABASE_URL or REDIS_URL else "demo")
DEMO_SECRET_KEY = "baton-embedded-demo-key-not-for-production"  # noqa: S105 (public on purpose, demo only)
_missing = []
if BATON_MODE not in {"demo", "production"}:
    _missing.append(f"BATON_MODE={BATON_MODE!r} (give demo or production)")
if BATON_MODE == "production":
    if not DATABASE_URL:
        _missing.append("DATABASE_URL (the PostgreSQL database)")
    if not REDIS_URL:
        _missing.append("REDIS_URL (without it the broker is in-memory: no separate worker would see any work)")
    if not os.environ.get("BATON_SECRET_KEY", "").strip():  # blanks only are no key (a template's empty line)
        _missing.append("BATON_SECRET_KEY (BATON_DEBUG does not replace it)")
    elif os.environ["BATON_SECRET_KEY"] == DEMO_SECRET_KEY:
        _missing.append("BATON_SECRET_KEY of your own (the demo key is public)")
    if not os.environ.get("BATON_AUDIT_KEYS", "").strip():
        _missing.append("BATON_AUDIT_KEYS (the audit trail's HMAC keys, id:secret; never the demo key)")
    if not env_list("BATON_ALLOWED_HOSTS", "127.0.0.1,localhost"):
        # Set but empty: with DEBUG off Django would answer every request 400 without saying why.
        _missing.append("BATON_ALLOWED_HOSTS (set but empty: give the host names the site answers to)")
if _missing:
    raise ImproperlyConfigured(
        f"Baton will not start in {BATON_MODE} mode; missing or wrong: "
        + "; ".join(_missing)
        + ". Set them (README, Production), or BATON_MODE=demo for the single-process demo."
    )
# One process with an in-memory broker and channel layer: only the demo may run without Redis.
EMBEDDED = not REDIS_URL
DEBUG = env_bool("BATON_DEBUG", default=BATON_MODE == "demo")
# Kept as given (stripping would change a deployment's key and sign everyone out); blanks only are no key.
_secret_key = os.environ.get("BATON_SECRET_KEY", "")
SECRET_KEY = _secret_key if _secret_key.strip() else DEMO_SECRET_KEY
# --- end of mode and start-up checks -------------------------------------------------------------------

ALLOWED_HOSTS = env_list("BATON_ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("BATON_CSRF_TRUSTED_ORIGINS", "")
for _origin in CSRF_TRUSTED_ORIGINS:
    # Django checks this only in `manage.py check`, which gunicorn never runs: an origin without its scheme would
    # then silently match nothing, and every form post from that host would fail with a CSRF error.
    if urlsplit(_origin).scheme not in {"http", "https"} or not urlsplit(_origin).netloc:
        raise ImproperlyConfigured(
            f"BATON_CSRF_TRUSTED_ORIGINS: {_origin!r} is not an origin; give scheme and host, https://{_origin}."
        )

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "django_celery_beat",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    # Before the engine: its baton_verify_audit extends the engine's with --file (audit/management/commands).
    "audit",
    "orchestrator",
    "approvals",
    "console",
    "automation",
    "api",
]
# The demo (its ledger table, workflows, users and commands: demo/) is part of demo mode only. A production
# database that never installs it has no demo table; BATON_DEMO_APP=1 adds it to a production deployment.
BATON_DEMO_APP = env_bool("BATON_DEMO_APP", default=BATON_MODE == "demo")
if BATON_DEMO_APP:
    INSTALLED_APPS.append("demo")

MIDDLEWARE = [
    # First: a page that failed on an unreachable database answers 503 with Retry-After (orchestrator/middleware.py).
    "orchestrator.middleware.DatabaseUnavailableMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # A query string past Baton's limit: 414, problem+json under /api/ (orchestrator/middleware.py).
    "orchestrator.middleware.QueryLengthMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Posted line breaks as LF, so a textarea's limit counts them as the page did (orchestrator/middleware.py).
    "orchestrator.middleware.TypedLineBreaksMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Who is acting, for the audit of account changes made through any page (orchestrator/accounts.py).
    "orchestrator.accounts.CurrentRequestMiddleware",
    # The signed-in person's time zone, from the session, for every date shown and typed (approvals/timezones.py).
    "approvals.timezones.UserTimeZoneMiddleware",
    # The API's answers in UTC whatever that zone (api/middleware.py).
    "api.middleware.ApiTimesInUtc",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "orchestrator.middleware.FriendlyErrorPagesMiddleware",  # friendly 404/500 under DEBUG too (the demo)
]

ROOT_URLCONF = "baton_site.urls"
ASGI_APPLICATION = "baton_site.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [baton_assets.TEMPLATES_DIR],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "approvals.context_processors.nav_counts",
                "approvals.context_processors.time_zone",
            ],
        },
    },
]

if DATABASE_URL:
    try:
        DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=600, conn_health_checks=True)}
    except ValueError as _error:  # dj_database_url's UnknownSchemeError and malformed URLs
        raise ImproperlyConfigured(
            f"DATABASE_URL is not a database URL ({_error}); give postgres://user@host:5432/name."
        ) from None
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # JIT compiles plans whose estimated cost is high, even when LIMIT makes them cheap: on the team queue
        # at 100,000 tasks it added about 100 ms to a 3 ms query. Short OLTP queries never win from it.
        DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c jit=off"
    # An explicit test name: the Channels live server and worker subprocesses must find the same database.
    DATABASES["default"]["TEST"] = {"NAME": env_text("BATON_TEST_DB_NAME", "test_baton")}
else:
    DATA_DIR.mkdir(exist_ok=True)
    _sqlite_path = env_text("BATON_SQLITE_PATH", str(DATA_DIR / "baton.sqlite3"))
    if _sqlite_path != ":memory:" and not Path(_sqlite_path).parent.is_dir():
        # SQLite said only "unable to open database file", at the first query.
        raise ImproperlyConfigured(
            f"BATON_SQLITE_PATH={_sqlite_path!r}: the folder {str(Path(_sqlite_path).parent)!r} does not exist."
        )
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _sqlite_path,
            # WAL lets the web thread read while the worker thread writes; IMMEDIATE takes the write lock at
            # BEGIN so two writers queue on the busy timeout instead of failing on lock upgrade.
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The JSON API (api/): its DRF and drf-spectacular settings live beside it (api/conf.py).
from api import conf as api_conf  # noqa: E402

REST_FRAMEWORK = api_conf.REST_FRAMEWORK
SPECTACULAR_SETTINGS = api_conf.SPECTACULAR_SETTINGS

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "console:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
TIME_ZONE = env_text("BATON_TIME_ZONE", "UTC")
try:
    zoneinfo.ZoneInfo(TIME_ZONE)
except (zoneinfo.ZoneInfoNotFoundError, ValueError):
    raise ImproperlyConfigured(
        f"BATON_TIME_ZONE={TIME_ZONE!r} is not a time zone: give an IANA name such as UTC or Europe/Berlin."
    ) from None
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(env_text("BATON_STATIC_ROOT", str(DATA_DIR / "staticfiles")))
try:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns on every start when it is missing
except OSError as _error:
    raise ImproperlyConfigured(
        f"BATON_STATIC_ROOT={str(STATIC_ROOT)!r}: the folder cannot be created ({_error.strerror or _error})."
    ) from None
STATICFILES_DIRS = [baton_assets.STATIC_DIR]
WHITENOISE_USE_FINDERS = DEBUG
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # htmx reads the token from the page, not the cookie; kept default for admin.
SESSION_COOKIE_SECURE = env_bool("BATON_SECURE_COOKIES", default=not DEBUG and not EMBEDDED)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# A stale form (signed out in another tab) gets a friendly page saying to reload, not Django's bare one.
CSRF_FAILURE_VIEW = "orchestrator.middleware.csrf_failure"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
# --- TLS and a proxy in front (README, "Production") ------------------------------------------------------
# Only behind a proxy that terminates TLS and sets these headers itself may they be believed: then the request
# counts as https when the proxy says so, and the audit keeps the address the proxy saw
# (orchestrator/accounts.py, request_meta).
BATON_BEHIND_PROXY = env_bool("BATON_BEHIND_PROXY")
if BATON_BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("BATON_SSL_REDIRECT", default=BATON_BEHIND_PROXY and SESSION_COOKIE_SECURE)
# Off by default: a browser remembers HSTS for this long, so turn it on once https works (README).
# Whole seconds, up to ten years: hstspreload.org asks for two (63072000), which a one-year bound refused.
SECURE_HSTS_SECONDS = env_int("BATON_HSTS_SECONDS", 0, minimum=0, maximum=86_400 * 365 * 10)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("BATON_HSTS_INCLUDE_SUBDOMAINS")
SECURE_HSTS_PRELOAD = env_bool("BATON_HSTS_PRELOAD")
# --- end of TLS and proxy --------------------------------------------------------------------------------

EMAIL_BACKEND = env_text("BATON_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
# Checked at start, not at the first notification (which a worker would only log): Django's own backends by their
# module, another by its top-level package, which find_spec finds without running it (a site's own package may
# read the settings when imported, and these are still loading). The class itself is imported at the first mail.
_email_module, _, _email_class = EMAIL_BACKEND.rpartition(".")
try:
    _email_found = bool(_email_module) and (
        importlib.util.find_spec(_email_module if _email_module.startswith("django.") else _email_module.split(".")[0])
        is not None
    )
except (ImportError, ValueError):
    _email_found = False
if not _email_found or not _email_class:
    raise ImproperlyConfigured(
        f"BATON_EMAIL_BACKEND={EMAIL_BACKEND!r}: give the dotted path of a mail backend class, such as "
        "django.core.mail.backends.smtp.EmailBackend."
    )
DEFAULT_FROM_EMAIL = env_text("BATON_FROM_EMAIL", "baton@localhost")
if "@" not in parseaddr(DEFAULT_FROM_EMAIL)[1]:
    raise ImproperlyConfigured(
        f"BATON_FROM_EMAIL={DEFAULT_FROM_EMAIL!r}: give an e-mail address, baton@example.com "
        "or Baton <baton@example.com>."
    )


# --- Channels -------------------------------------------------------------------------------------------
LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1", "[::1]"}


def derived_channel_prefix(database: Mapping[str, Any], redis_url: str, *, machine: str | None = None) -> str:
    """A channel-name prefix unique to one deployment: ``baton.<12 hex>.`` from where its data lives.

    ``database`` is a ``DATABASES`` entry (HOST, PORT, NAME are used; user and password are not: another role on
    the same database is the same deployment) and ``redis_url`` the channel layer's Redis URL (host, port or
    socket path, and database number; options such as ``socket_timeout`` are not). Redis pub/sub ignores the
    database number, so two deployments on one Redis server would hear each other's live events without it.
    A database on this machine (no host, loopback, a socket directory) is a different database on every machine,
    so then ``machine`` (default: this host's name) is part of the identity too.
    """
    url = urlsplit(redis_url)
    db = url.path.strip("/") if url.scheme != "unix" else ""
    db = db or parse_qs(url.query).get("db", ["0"])[0]
    where = url.path if url.scheme == "unix" else f"{(url.hostname or '').lower()}:{url.port or 6379}"
    db_host = str(database.get("HOST") or "").lower()
    if db_host in LOCAL_HOSTS or db_host.startswith("127.") or db_host.startswith("/"):
        db_host = f"{db_host}@{machine if machine is not None else socket.gethostname()}"
    identity = "|".join(
        [
            db_host,
            str(database.get("PORT") or (5432 if "postgresql" in str(database.get("ENGINE")) else "")),
            str(database.get("NAME") or ""),
            where,
            db.lstrip("0") or "0",
        ]
    )
    return f"baton.{hashlib.sha256(identity.encode()).hexdigest()[:12]}."


# Every Redis channel name starts with this (the channel layer's and orchestrator/realtime.py's publisher's).
# Set it when one deployment's processes reach the same database or Redis under different addresses.
# The live channel layer's Redis: REDIS_URL unless set (an empty value too, not an empty host list).
BATON_CHANNELS_REDIS_URL = redis_url("BATON_CHANNELS_REDIS_URL", env_text("BATON_CHANNELS_REDIS_URL", REDIS_URL))
BATON_CHANNEL_PREFIX = env_text("BATON_CHANNEL_PREFIX", "") or derived_channel_prefix(
    DATABASES["default"], BATON_CHANNELS_REDIS_URL
)
if not re.fullmatch(r"[A-Za-z0-9._-]{1,60}", BATON_CHANNEL_PREFIX):
    raise ImproperlyConfigured("BATON_CHANNEL_PREFIX: 1 to 60 letters, digits, dots, dashes or underscores.")
# Which Redis channel layer carries live events (README, "Production"): "pubsub", channels_redis's pub/sub layer
# with Baton's pipelined publisher, or "redis", channels_redis's standard list-based RedisChannelLayer, which
# senders reach through its own group_send (for a Redis that must not carry pub/sub, or a site's other Channels
# code that wants that layer).
CHANNEL_LAYER_BACKENDS = {
    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    "redis": "channels_redis.core.RedisChannelLayer",
}
BATON_CHANNEL_LAYER = os.environ.get("BATON_CHANNEL_LAYER", "pubsub").strip().lower() or "pubsub"
if BATON_CHANNEL_LAYER not in CHANNEL_LAYER_BACKENDS:
    raise ImproperlyConfigured(
        f"BATON_CHANNEL_LAYER={BATON_CHANNEL_LAYER!r}: give pubsub (the default, channels_redis's pub/sub layer) or "
        "redis (channels_redis's standard RedisChannelLayer)."
    )
if REDIS_URL:
    # Pub/sub: a web process subscribes to the groups its sockets are in, and a sender's whole commit goes out
    # in one pipelined PUBLISH round trip (orchestrator/realtime.py). The list-based RedisChannelLayer cost the
    # sender two Redis commands and a thread hand-over per group, a quarter of a worker's step.
    CHANNEL_LAYERS: dict[str, dict[str, Any]] = {
        "default": {
            "BACKEND": CHANNEL_LAYER_BACKENDS[BATON_CHANNEL_LAYER],
            "CONFIG": {
                "hosts": [BATON_CHANNELS_REDIS_URL],
                "prefix": BATON_CHANNEL_PREFIX,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}}

# --- Celery ---------------------------------------------------------------------------------------------
# PostgreSQL decides state; a message only says "look at step X". These settings make a message survive a
# killed worker (acks late + reject on loss) and keep one message per worker process at a time.
CELERY_BROKER_URL = REDIS_URL or "memory://localhost/"
if REDIS_URL:
    # kombu's Redis transport, keeping one Redis client per channel instead of one per call (orchestrator/broker.py).
    CELERY_BROKER_TRANSPORT = "orchestrator.broker:Transport"
CELERY_BROKER_TRANSPORT_OPTIONS = (
    dict[str, float](
        {
            # Longer than any step timeout: on Redis an unacked message is redelivered after this many seconds.
            "visibility_timeout": env_int("BATON_VISIBILITY_TIMEOUT", 3600, minimum=1, maximum=86_400 * 365),
            # Bounds on connecting and on each answer. kombu's default is to wait for ever: a Redis that accepts the
            # connection and never answers (hung, behind a partition) held a publish, and with it a web request's
            # after-commit dispatch, until the web timeout killed the request (a 500 for a start that was committed).
            # A timeout is a connection error to kombu, so the publish is retried, then logged; the sweep re-sends.
            # Above kombu's 1 s BRPOP wait, which a worker's consumer must outlast.
            "socket_timeout": 2.0,
            "socket_connect_timeout": 2.0,
        }
    )
    if REDIS_URL
    else {"polling_interval": 0.01}
)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_DEFAULT_QUEUE = "baton"
CELERY_BEAT_SCHEDULER = "orchestrator.beat:DatabaseScheduler"
# Keep the worker's PostgreSQL session across tasks: a new session per task halves throughput. This keeps
# Celery's own Django fix-up from closing it after every task; baton_site/celery.py checks and closes a broken
# or stale session instead (README, "Production").
CELERY_DB_REUSE_MAX = 100_000

# Kept as given (0.5 stays 0.5): orchestrator/beat.py stores a fractional interval in microseconds, which
# django-celery-beat's integer column can hold up to 2147 s; whole seconds have no such bound.
BATON_SWEEP_INTERVAL = env_seconds("BATON_SWEEP_INTERVAL", 1.0, minimum=0.1)
if int(BATON_SWEEP_INTERVAL) != BATON_SWEEP_INTERVAL and BATON_SWEEP_INTERVAL > 2147:
    raise ImproperlyConfigured(
        f"BATON_SWEEP_INTERVAL={BATON_SWEEP_INTERVAL:g}: above 2147 s give whole seconds (the schedule table stores "
        "a fractional interval in microseconds, in a 32-bit column)."
    )
# The console's periodic work: bulk jobs no worker is working are sent again; operators are told what failed.
BATON_ALERT_INTERVAL = env_seconds("BATON_ALERT_INTERVAL", 60.0, minimum=1.0)
CELERY_BEAT_SCHEDULE = {
    "baton-sweep": {"task": "orchestrator.tasks.sweep", "schedule": BATON_SWEEP_INTERVAL},
    "console-bulk-jobs-resume": {"task": "console.tasks.bulk_jobs_resume", "schedule": 30.0},
    "console-operator-alerts": {"task": "console.tasks.operator_alerts", "schedule": BATON_ALERT_INTERVAL},
}
# Operator alerts: at most one message of a kind per this many seconds (a storm of failures is one message).
BATON_ALERT_THROTTLE = env_seconds("BATON_ALERT_THROTTLE", 300.0, minimum=0.0)
# A failed instance nobody acted on for this long is called out on the Incidents page.
BATON_INCIDENT_IDLE_SECONDS = env_seconds("BATON_INCIDENT_IDLE_SECONDS", 3600.0, minimum=1.0)
# How far ahead a pause may end (a typo'd year is refused; longer holds should be cancellations).
# Ten years at most: a larger number overflowed the date arithmetic of the first pause (a 500, not a message).
BATON_PAUSE_MAX_DAYS = env_int("BATON_PAUSE_MAX_DAYS", 90, minimum=1, maximum=3650)

# --- Baton ----------------------------------------------------------------------------------------------
# None by default: the demo workflows come with the demo app (demo/apps.py); the benchmark flows
# (demo.workflows.bench) are added by the tests and `make bench` only. "a, b" is read as two modules.
BATON_WORKFLOW_MODULES = env_list("BATON_WORKFLOW_MODULES", "")
# A scheduled step whose message has not been picked up after this long is dispatched again by the sweep.
BATON_REDISPATCH_AFTER = env_seconds("BATON_REDISPATCH_AFTER", 30.0, minimum=0.1)
# Extra time on top of a step's timeout before its lease counts as lost.
BATON_LEASE_GRACE = env_seconds("BATON_LEASE_GRACE", 5.0, minimum=0.1)
BATON_SWEEP_BATCH = env_int("BATON_SWEEP_BATCH", 500, minimum=1, maximum=100_000)
# Webhooks (automation/webhooks.py): a subscription to an address in a private, loopback, link-local or reserved
# range is refused unless this is on (a receiver on the same network, tests); each delivery waits this long.
BATON_WEBHOOK_ALLOW_PRIVATE = env_bool("BATON_WEBHOOK_ALLOW_PRIVATE", default=False)
BATON_WEBHOOK_TIMEOUT = env_seconds("BATON_WEBHOOK_TIMEOUT", 10.0, minimum=0.5, maximum=60.0)
# The largest step result (bytes of JSON) the engine records; a larger one is a permanent failure of the step.
# At least 1 KiB (below that nearly every step would fail for good); at most 100 MiB (PostgreSQL's jsonb holds
# 255 MB, and every result is read and written whole by the worker).
BATON_MAX_RESULT_BYTES = env_int("BATON_MAX_RESULT_BYTES", 1_048_576, minimum=1024, maximum=100 * 1024 * 1024)
# The engine's hot-path statements are prepared once per PostgreSQL session (orchestrator/rows.py). Turn off behind
# a proxy that cannot carry prepared statements (PgBouncer before 1.21 in transaction mode).
BATON_PREPARED_STATEMENTS = env_bool("BATON_PREPARED_STATEMENTS", default=True)
# Seconds between an open live socket's re-checks of its session and user (orchestrator/consumers.py): the bound
# on how long a socket can outlive a sign-out or a lost access whose recheck message went missing.
# Below half a second every socket would query the database many times a second; above an hour (or inf) a missed
# sign-out would keep a socket open that long.
BATON_LIVE_RECHECK = env_seconds("BATON_LIVE_RECHECK", 5.0, minimum=0.5, maximum=3600)
# Websocket origins allowed besides ALLOWED_HOSTS (see baton_site/asgi.py).
BATON_DEMO = env_bool("BATON_DEMO", default=BATON_MODE == "demo")
# Absolute address of the dashboard, for links in e-mails.
BATON_BASE_URL = env_text("BATON_BASE_URL", "http://127.0.0.1:8000")
if urlsplit(BATON_BASE_URL).scheme not in {"http", "https"} or not urlsplit(BATON_BASE_URL).netloc:
    # Links in e-mails are this plus a path: without the scheme and host no mail client would open them.
    raise ImproperlyConfigured(
        f"BATON_BASE_URL={BATON_BASE_URL!r}: give the site's absolute address, such as https://baton.example.com."
    )


# --- Audit trail keys and seals (docs/architecture.md, "Audit trail") ------------------------------------------
def parse_audit_keys(text: str) -> list[tuple[str, str]]:
    """``"id:secret,id:secret"`` as ``[(id, secret), ...]``, current (signing) key first.

    An id is 1 to 16 of ``A-Z a-z 0-9 _ . -`` (it is stored with every event); a secret has at least 32
    characters. Raises ``ImproperlyConfigured`` naming the fault, so a bad value stops the start with one line
    (orchestrator/startup.py), not the first audit. The message names a key by its position, and by its id only once
    the id is a valid one: a secret pasted without its ``id:`` would otherwise be echoed in part to the terminal.
    """
    keys: list[tuple[str, str]] = []
    for number, item in enumerate((part.strip() for part in text.split(",")), start=1):
        key_id, colon, secret = item.partition(":")
        rule = "give id:secret,... with ids of 1-16 letters, digits, '_', '.', '-' and secrets of 32+ characters"
        if not item:
            raise ImproperlyConfigured(f"BATON_AUDIT_KEYS: key {number} is empty (a stray comma?); {rule}.")
        if not colon:
            raise ImproperlyConfigured(
                f"BATON_AUDIT_KEYS: key {number} has no ':' between an id and a secret (not shown: it may be a "
                f"secret); {rule}."
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,16}", key_id):
            raise ImproperlyConfigured(
                f"BATON_AUDIT_KEYS: the id of key {number} is not 1-16 letters, digits, '_', '.', '-' (not shown: "
                f"it may be part of a secret); {rule}."
            )
        if len(secret) < 32:
            raise ImproperlyConfigured(
                f"BATON_AUDIT_KEYS: the secret of key {key_id!r} has fewer than 32 characters; {rule}."
            )
        if key_id in dict(keys):
            raise ImproperlyConfigured(f"BATON_AUDIT_KEYS names key {key_id!r} twice; give each key its own id.")
        keys.append((key_id, secret))
    return keys


# The demo and tests sign with a fixed, clearly fake key; production must bring its own (kept out of the database
# and apart from BATON_SECRET_KEY, so whoever holds one does not hold the other; README, "Production").
# The start-up checks above refuse production without BATON_AUDIT_KEYS, so only the demo signs with this one.
# Blanks only are "not set" (README): in demo mode the demo key, in production refused above.
BATON_AUDIT_KEYS = parse_audit_keys(env_text("BATON_AUDIT_KEYS", "demo:baton-demo-audit-key-not-for-production"))
# Signed seals of the chain heads go to this file (JSON Lines, appended and fsynced), or to the log when empty
# (blanks too: they were a file named " " in the worker's directory).
BATON_AUDIT_SEAL_PATH = env_text("BATON_AUDIT_SEAL_PATH", "")
# Minutes between seals of the chains that changed (beat); 0 turns the periodic seal off. A full seal runs daily.
BATON_AUDIT_SEAL_INTERVAL = env_seconds("BATON_AUDIT_SEAL_INTERVAL", 5.0, minimum=0, maximum=1440, unit="minutes")
if BATON_AUDIT_SEAL_INTERVAL > 0:
    CELERY_BEAT_SCHEDULE["baton-audit-seal"] = {
        "task": "orchestrator.tasks.audit_seal",
        "schedule": BATON_AUDIT_SEAL_INTERVAL * 60,
    }
    CELERY_BEAT_SCHEDULE["baton-audit-seal-full"] = {
        "task": "orchestrator.tasks.audit_seal",
        "schedule": 24 * 3600.0,
        "kwargs": {"full": True},
    }

# Every chain verified once a day, by default at 02:30 in TIME_ZONE (audit/tasks.py); "off" turns it off, "HH:MM"
# moves it. The result is on the chain status page (/audit/chains/), and a failure is logged as an error.
CELERY_TIMEZONE = TIME_ZONE  # crontab entries read in the site's zone, as people read the schedule
BATON_AUDIT_VERIFY_AT = env_text("BATON_AUDIT_VERIFY_AT", "02:30").lower()
if BATON_AUDIT_VERIFY_AT != "off":
    _verify_at = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", BATON_AUDIT_VERIFY_AT)
    if _verify_at is None:
        raise ImproperlyConfigured(f"BATON_AUDIT_VERIFY_AT={BATON_AUDIT_VERIFY_AT!r}: give HH:MM (24-hour) or off.")
    CELERY_BEAT_SCHEDULE["baton-audit-verify"] = {
        "task": "audit.tasks.verification_scheduled",
        "schedule": crontab(hour=int(_verify_at[1]), minute=int(_verify_at[2])),
    }

# Any case (people write "debug"); Python's logging knows only the upper-case names and refused the start with
# "Unable to configure root logger", naming neither the variable nor the level.
BATON_LOG_LEVEL = env_text("BATON_LOG_LEVEL", "INFO").upper()
if BATON_LOG_LEVEL not in {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}:
    raise ImproperlyConfigured(f"BATON_LOG_LEVEL={BATON_LOG_LEVEL!r}: give DEBUG, INFO, WARNING, ERROR or CRITICAL.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        # Tracebacks bounded in chain and frames: errors during an outage must not repeat the ones before them.
        "plain": {
            "()": "orchestrator.logformat.BoundedFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": BATON_LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "celery": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        # Seals logged instead of written to BATON_AUDIT_SEAL_PATH must not vanish under a quieter log level.
        "baton.audit.seal": {"level": "INFO"},
    },
}

# --- the Makefile's process settings (README, "Production") ------------------------------------------------
# Read by `make web`, `make web-live` and `make worker` in the shell, checked here as well: `make web` runs migrate
# (these settings) before gunicorn, and the other processes load them at start, so a junk value stops there naming
# the variable, not as gunicorn's "Value must be positive" or as a gunicorn with no worker process at all.
# An empty value is the default, as the Makefile's ${VAR:-default} reads it.
# One sync process per core keeps every core on Django, and one more covers a process waiting on PostgreSQL; more
# only take turns on the same cores (bench/README.md, "How many web processes": on 2 cores 5 processes served 14-18 %
# fewer API starts than 3 at 1 ms more CPU each).
BATON_WEB_WORKERS = env_int("BATON_WEB_WORKERS", (os.cpu_count() or 1) + 1, minimum=1, maximum=1024)
BATON_WEB_TIMEOUT = env_int("BATON_WEB_TIMEOUT", 60, minimum=1, maximum=86_400)
BATON_WEB_GRACEFUL_TIMEOUT = env_int("BATON_WEB_GRACEFUL_TIMEOUT", 30, minimum=1, maximum=86_400)
BATON_PORT = env_int("BATON_PORT", 8000, minimum=1, maximum=65535)
BATON_BIND = env_text("BATON_BIND", "127.0.0.1")
if not is_listen_address(BATON_BIND):
    raise ImproperlyConfigured(
        f"BATON_BIND={BATON_BIND!r}: give the address to listen on, without a port or scheme: 127.0.0.1 (this "
        "machine only), 0.0.0.0 (every interface), ::1 or a host name. The port is BATON_PORT."
    )
BATON_LIVE_PORT = env_int("BATON_LIVE_PORT", 8001, minimum=1, maximum=65535)
BATON_WORKER_CONCURRENCY = env_int("BATON_WORKER_CONCURRENCY", 2, minimum=1, maximum=1024)

# --- observation: roll-ups, /metrics, health ------------------------------------------------------------
# Most audit events one sweep folds into the dashboard's roll-ups (orchestrator/rollups.py); a backlog is caught up
# over the following sweeps.
BATON_ROLLUP_BATCH = env_int("BATON_ROLLUP_BATCH", 5000, minimum=1, maximum=1_000_000)
# Bearer token that /metrics requires (`Authorization: Bearer <token>`); empty: /metrics answers 404.
# Stripped as the Authorization header's token is (orchestrator/metrics.py): a token read from a file with its line
# break used to answer every scrape 401; blanks only are no token (404).
BATON_METRICS_TOKEN = env_text("BATON_METRICS_TOKEN", "")
# /health/ready answers 503 when the sweep has not run for this many seconds (and it is not the first minute).
BATON_READY_SWEEP_AGE = env_seconds("BATON_READY_SWEEP_AGE", 60.0, minimum=1.0)
