"""gunicorn's configuration hooks for ``make web`` (``--config python:baton_site.gunicorn_hooks``). The settings
themselves (workers, timeouts, limits) are on the Makefile's command line, where operators read them; command-line
settings win over this module's anyway.

Loaded by gunicorn's arbiter before Django is set up: imports stay inside the hooks.
"""

from __future__ import annotations

from typing import Any


def on_starting(server: Any) -> None:
    """The master, before it listens or forks a worker: load the settings, so that a refused setting stops gunicorn
    with one line and exit status 2 (orchestrator/startup.py). Without this each worker met the refusal while
    importing the application, printed its traceback and exited 3, and the master stopped on "Worker failed to
    boot", the setting's line buried above. ``server`` is gunicorn's arbiter; its pid file, created just before this
    hook, is removed on the way out, so that no stale file names a master that never ran.

    Decision: the workers then inherit the loaded settings when forked (as they already inherit baton_site.celery,
    imported with this module) instead of each executing settings.py; the application itself is still imported by
    each worker. So a HUP, which forks new workers from this master, does not re-read a changed settings.py:
    restart gunicorn after changing it."""
    from orchestrator.startup import load_settings_or_exit

    try:
        load_settings_or_exit("gunicorn")
    except SystemExit:
        if getattr(server, "pidfile", None) is not None:
            server.pidfile.unlink()
        raise


def post_worker_init(worker: Any) -> None:
    """Each worker, once its application is loaded: hand its ``notify`` (the "alive" report the worker timeout
    watches) to :mod:`orchestrator.heartbeat`, so a long streamed response keeps reporting while it makes
    progress. ``worker`` is gunicorn's worker object."""
    from orchestrator import heartbeat

    heartbeat.serve_worker(worker.notify)
