"""The Celery app. Tasks only carry ids; PostgreSQL holds the state (docs/architecture.md)."""

import os
import time

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "baton_site.settings")

app = Celery("baton", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.on_configure.connect
def settings_loaded_or_exit(sender: Celery, **_kwargs: object) -> None:
    """Just before Celery first reads its configuration (Django's settings): a refused setting stops ``celery -A
    baton_site worker``, ``beat`` or any other command with one line and exit status 2, not Celery's traceback
    (orchestrator/startup.py). Not at import: this module is imported with the ``baton_site`` package, which
    tests/settings.py and manage.py import before the settings may load. A no-op where the settings are loaded
    already (web processes, the demo's one-process server)."""
    from orchestrator.startup import load_settings_or_exit

    load_settings_or_exit("celery")


@app.on_after_configure.connect
def resolve_config_once(sender: Celery, **_kwargs: object) -> None:
    """Look every Celery setting up once, at configuration time, and keep the answers where lookups look first.

    Celery reads its settings through Django's lazy settings object, trying several spellings of each name with
    an exception per miss: 13 us per lookup of a setting left at its default, and a publish makes seven, about
    a quarter of its CPU here (bench/README.md). The settings do not change while a process runs.
    """
    from celery.app.defaults import SETTING_KEYS

    conf = sender.conf
    resolved = {}
    for key in SETTING_KEYS:
        try:
            # The first spelling Celery tries for a setting under the CELERY namespace.
            resolved[f"CELERY_{key.upper()}"] = conf[key]
        except KeyError:
            continue
    conf.update(resolved)


app.autodiscover_tasks(["orchestrator", "automation", "console"])


@worker_ready.connect
def sweep_at_start(**_kwargs: object) -> None:
    """A fresh worker sweeps once at once: messages lost while no worker ran are found straight away."""
    from orchestrator.tasks import sweep

    sweep.delay()


# --- the database session of a worker process -----------------------------------------------------------
# A process keeps its PostgreSQL session across tasks (settings.CELERY_DB_REUSE_MAX keeps Celery's fix-up from
# closing it after each one). Kept blindly, a session that PostgreSQL dropped (a restart, a failover, an idle
# timeout) failed every later message of its process within a millisecond, so that process took most of the work
# and lost it. Here a session is checked before use when it sat idle, and closed after any task that left it
# broken or overran its soft time limit: the next task opens a fresh one.

# A session used less than this many seconds ago is not checked before the next task: a busy worker pays no round
# trip, and a session that died in between fails one task, which step_run retries after closing it.
CHECK_AFTER_IDLE = 1.0
_session = {"used": 0.0, "started": 0.0}


@task_prerun.connect
def database_session_checked(task: object, **_kwargs: object) -> None:
    """Before a task: drop a session that saw errors or is too old, and check one that sat idle (Django's
    ``close_if_unusable_or_obsolete`` and health check, settings.DATABASES ``CONN_HEALTH_CHECKS``)."""
    from django.db import connections

    if getattr(getattr(task, "request", None), "is_eager", False):
        return
    now = time.monotonic()
    _session["started"] = now
    for conn in connections.all(initialized_only=True):
        conn.close_if_unusable_or_obsolete()
        if conn.connection is not None and now - _session["used"] < CHECK_AFTER_IDLE:
            conn.health_check_done = True  # type: ignore[attr-defined]  # checked by use a moment ago


@task_postrun.connect
def database_session_released(task: object, **_kwargs: object) -> None:
    """After a task: close a session it left broken, or any session when the task ran past its soft time limit
    (the limit's exception may have landed in the middle of a statement, leaving the session out of step)."""
    from django.db import connections

    request = getattr(task, "request", None)
    if getattr(request, "is_eager", False):
        return
    now = time.monotonic()
    _hard, soft = getattr(request, "timelimit", None) or (None, None)
    overran = soft is not None and now - _session["started"] >= soft
    for conn in connections.all(initialized_only=True):
        if overran:
            conn.close()
        else:
            conn.close_if_unusable_or_obsolete()
    _session["used"] = now
