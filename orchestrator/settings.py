"""Django settings for Baton.

Two modes, same code (docs/architecture.md):
- embedded (no DATABASE_URL / REDIS_URL): SQLite, Celery on ``memory://``, in-memory channel layer,
  everything in one process started by ``manage.py baton_embedded``;
- real: PostgreSQL from DATABASE_URL, Redis from REDIS_URL, separate web, worker and beat processes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dj_database_url

import baton_assets

BASE_DIR = Path(__file__).resolve().parent.parent
# Local state of the embedded mode (SQLite, collected static files): the checkout's .baton/, or, for an installed
# copy (whose BASE_DIR is site-packages), .baton/ in the directory it is started from.
DATA_DIR = BASE_DIR / ".baton" if (BASE_DIR / "manage.py").is_file() else Path.cwd() / ".baton"


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
        "DIRS": [baton_assets.TEMPLATES_DIR],
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
    DATA_DIR.mkdir(exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("BATON_SQLITE_PATH", str(DATA_DIR / "baton.sqlite3")),
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
STATIC_ROOT = Path(os.environ.get("BATON_STATIC_ROOT", DATA_DIR / "staticfiles"))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns on every start when it is missing
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
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

EMAIL_BACKEND = os.environ.get("BATON_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = os.environ.get("BATON_FROM_EMAIL", "baton@localhost")


# --- Channels -------------------------------------------------------------------------------------------
if REDIS_URL:
    # Pub/sub: a web process subscribes to the groups its sockets are in, and a sender's whole commit goes out
    # in one pipelined PUBLISH round trip (orchestrator/realtime.py). The list-based RedisChannelLayer cost the
    # sender two Redis commands and a thread hand-over per group, a quarter of a worker's step.
    CHANNEL_LAYERS: dict[str, dict[str, Any]] = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [os.environ.get("BATON_CHANNELS_REDIS_URL", REDIS_URL)]},
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
# Websocket origins allowed besides ALLOWED_HOSTS (see orchestrator/asgi.py).
BATON_DEMO = env_bool("BATON_DEMO", default=EMBEDDED)
# Absolute address of the dashboard, for links in e-mails.
BATON_BASE_URL = os.environ.get("BATON_BASE_URL", "http://127.0.0.1:8000")

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
    },
}
