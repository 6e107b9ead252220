"""Django settings for Baton.

Two modes, same code (docs/architecture.md):
- embedded (no DATABASE_URL / REDIS_URL): SQLite, Celery on ``memory://``, in-memory channel layer,
  everything in one process started by ``manage.py baton_embedded``;
- real: PostgreSQL from DATABASE_URL, Redis from REDIS_URL, separate web, worker and beat processes.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def _missing(name: str) -> str:
    raise RuntimeError(f"Set {name} when running with REDIS_URL (production mode).")


def env_bool(name: str, default: bool = False) -> bool:
    """Read a boolean from the environment ("1", "true", "yes" are true)."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


DATABASE_URL = os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")
EMBEDDED = not REDIS_URL

DEBUG = env_bool("BATON_DEBUG", default=EMBEDDED)
# The embedded demo gets a fixed, clearly fake key; real deployments must set one.
SECRET_KEY = os.environ.get("BATON_SECRET_KEY") or (
    "baton-embedded-demo-key-not-for-production" if EMBEDDED or DEBUG else ""
)
if not SECRET_KEY:
    raise RuntimeError("Set BATON_SECRET_KEY when running with REDIS_URL (production mode).")

ALLOWED_HOSTS = [h for h in os.environ.get("BATON_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("BATON_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

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
    "orchestrator",
    "approvals",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "orchestrator.urls"
ASGI_APPLICATION = "orchestrator.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "approvals.context_processors.nav_counts",
            ],
        },
    },
]

if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=600, conn_health_checks=True)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # JIT compiles plans whose estimated cost is high, even when LIMIT makes them cheap: on the team queue
        # at 100,000 tasks it added about 100 ms to a 3 ms query. Short OLTP queries never win from it.
        DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c jit=off"
    # An explicit test name: the Channels live server and worker subprocesses must find the same database.
    DATABASES["default"]["TEST"] = {"NAME": os.environ.get("BATON_TEST_DB_NAME", "test_baton")}
else:
    (BASE_DIR / ".baton").mkdir(exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("BATON_SQLITE_PATH", str(BASE_DIR / ".baton" / "baton.sqlite3")),
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

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en"
TIME_ZONE = os.environ.get("BATON_TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(os.environ.get("BATON_STATIC_ROOT", BASE_DIR / ".baton" / "staticfiles"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns on every start when it is missing
STATICFILES_DIRS = [BASE_DIR / "static"]
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
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

EMAIL_BACKEND = os.environ.get("BATON_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = os.environ.get("BATON_FROM_EMAIL", "baton@localhost")


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
BATON_CHANNEL_PREFIX = os.environ.get("BATON_CHANNEL_PREFIX") or derived_channel_prefix(
    DATABASES["default"], os.environ.get("BATON_CHANNELS_REDIS_URL", REDIS_URL)
)
if not re.fullmatch(r"[A-Za-z0-9._-]{1,60}", BATON_CHANNEL_PREFIX):
    raise RuntimeError("BATON_CHANNEL_PREFIX: 1 to 60 letters, digits, dots, dashes or underscores.")
if REDIS_URL:
    # Pub/sub: a web process subscribes to the groups its sockets are in, and a sender's whole commit goes out
    # in one pipelined PUBLISH round trip (orchestrator/realtime.py). The list-based RedisChannelLayer cost the
    # sender two Redis commands and a thread hand-over per group, a quarter of a worker's step.
    CHANNEL_LAYERS: dict[str, dict[str, Any]] = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [os.environ.get("BATON_CHANNELS_REDIS_URL", REDIS_URL)],
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
    # Longer than any step timeout: on Redis an unacked message is redelivered after this many seconds.
    dict[str, float]({"visibility_timeout": int(os.environ.get("BATON_VISIBILITY_TIMEOUT", "3600"))})
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
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Keep the worker's PostgreSQL session across tasks: a new session per task halves throughput.
CELERY_DB_REUSE_MAX = 100_000

BATON_SWEEP_INTERVAL = float(os.environ.get("BATON_SWEEP_INTERVAL", "1.0"))
CELERY_BEAT_SCHEDULE = {
    "baton-sweep": {"task": "orchestrator.tasks.sweep", "schedule": BATON_SWEEP_INTERVAL},
}

# --- Baton ----------------------------------------------------------------------------------------------
BATON_WORKFLOW_MODULES = [
    m
    for m in os.environ.get(
        "BATON_WORKFLOW_MODULES",
        # The benchmark flows (orchestrator.workflows.bench) are added by the tests and `make bench` only.
        "orchestrator.workflows.order_fulfilment,orchestrator.workflows.expense_approval",
    ).split(",")
    if m
]
# A scheduled step whose message has not been picked up after this long is dispatched again by the sweep.
BATON_REDISPATCH_AFTER = float(os.environ.get("BATON_REDISPATCH_AFTER", "30"))
# Extra time on top of a step's timeout before its lease counts as lost.
BATON_LEASE_GRACE = float(os.environ.get("BATON_LEASE_GRACE", "5"))
BATON_SWEEP_BATCH = int(os.environ.get("BATON_SWEEP_BATCH", "500"))
# The engine's hot-path statements are prepared once per PostgreSQL session (orchestrator/rows.py). Turn off behind
# a proxy that cannot carry prepared statements (PgBouncer before 1.21 in transaction mode).
BATON_PREPARED_STATEMENTS = env_bool("BATON_PREPARED_STATEMENTS", default=True)
# Seconds between an open live socket's re-checks of its session and user (orchestrator/consumers.py): the bound
# on how long a socket can outlive a sign-out or a lost access whose recheck message went missing.
# Below half a second every socket would query the database many times a second; above an hour (or inf) a missed
# sign-out would keep a socket open that long.
try:
    BATON_LIVE_RECHECK = float(os.environ.get("BATON_LIVE_RECHECK", "5"))
except ValueError:
    BATON_LIVE_RECHECK = float("nan")
if not 0.5 <= BATON_LIVE_RECHECK <= 3600:
    raise RuntimeError("BATON_LIVE_RECHECK must be a number of seconds from 0.5 to 3600.")
# Websocket origins allowed besides ALLOWED_HOSTS (see orchestrator/asgi.py).
BATON_DEMO = env_bool("BATON_DEMO", default=EMBEDDED)
# Absolute address of the dashboard, for links in e-mails.
BATON_BASE_URL = os.environ.get("BATON_BASE_URL", "http://127.0.0.1:8000")


# --- Audit trail keys and seals (docs/architecture.md, "Audit trail") ------------------------------------------
def parse_audit_keys(text: str) -> list[tuple[str, str]]:
    """``"id:secret,id:secret"`` as ``[(id, secret), ...]``, current (signing) key first.

    An id is 1 to 16 of ``A-Z a-z 0-9 _ . -`` (it is stored with every event); a secret has at least 32
    characters. Raises ``RuntimeError`` naming the fault, so a bad value stops the start, not the first audit.
    """
    keys: list[tuple[str, str]] = []
    for item in (part.strip() for part in text.split(",")):
        key_id, _, secret = item.partition(":")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,16}", key_id) or len(secret) < 32:
            raise RuntimeError(
                "BATON_AUDIT_KEYS must be 'id:secret,...' with ids of 1-16 letters, digits, '_', '.', '-' and "
                f"secrets of at least 32 characters; {key_id[:16]!r} is not"
            )
        if key_id in dict(keys):
            raise RuntimeError(f"BATON_AUDIT_KEYS names key {key_id!r} twice")
        keys.append((key_id, secret))
    return keys


# The demo and tests sign with a fixed, clearly fake key; production must bring its own (kept out of the database
# and apart from BATON_SECRET_KEY, so whoever holds one does not hold the other; README, "Production").
BATON_AUDIT_KEYS = parse_audit_keys(
    os.environ.get("BATON_AUDIT_KEYS")
    or ("demo:baton-demo-audit-key-not-for-production" if EMBEDDED or DEBUG else "")
    or _missing("BATON_AUDIT_KEYS")
)
# Signed seals of the chain heads go to this file (JSON Lines, appended and fsynced), or to the log when empty.
BATON_AUDIT_SEAL_PATH = os.environ.get("BATON_AUDIT_SEAL_PATH", "")
# Minutes between seals of the chains that changed (beat); 0 turns the periodic seal off. A full seal runs daily.
BATON_AUDIT_SEAL_INTERVAL = float(os.environ.get("BATON_AUDIT_SEAL_INTERVAL", "5"))
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

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("BATON_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "celery": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
        # Seals logged instead of written to BATON_AUDIT_SEAL_PATH must not vanish under a quieter log level.
        "baton.audit.seal": {"level": "INFO"},
    },
}
