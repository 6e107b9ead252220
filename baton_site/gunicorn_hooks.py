"""gunicorn's configuration hooks for ``make web`` (``--config python:baton_site.gunicorn_hooks``). The settings
themselves (workers, timeouts, limits) are on the Makefile's command line, where operators read them; command-line
settings win over this module's anyway.

Loaded by gunicorn's arbiter before Django is set up: imports stay inside the hooks.
"""

from __future__ import annotations

from typing import Any


def post_worker_init(worker: Any) -> None:
    """Each worker, once its application is loaded: hand its ``notify`` (the "alive" report the worker timeout
    watches) to :mod:`orchestrator.heartbeat`, so a long streamed response keeps reporting while it makes
    progress. ``worker`` is gunicorn's worker object."""
    from orchestrator import heartbeat

    heartbeat.serve_worker(worker.notify)
