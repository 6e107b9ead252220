"""Seams for apps above the engine (``automation``: scheduled starts, webhooks), so the engine imports none of them.

- ``unit_finishing``: sent by ``Unit.finish`` (only when a receiver is connected and the unit audited something),
  inside the unit's transaction and before its one write. A receiver reads ``unit.events`` (the audit events about
  to be written) and may append rows to ``unit.inserts``: they are written in the same statement as the events, so
  they exist exactly when the events do (a transactional outbox) and cost no round trip.
- ``sweep_extension(name, work)``: ``work(now, report)`` runs in every pass of the one sweep, after the engine's own
  work; it returns counts (``{"fired": 2}``) reported under ``report.extensions[name]``. It must isolate its own
  items (``engine.isolated``); an exception escaping it is logged and counted, and the pass goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.dispatch import Signal

unit_finishing = Signal()

SweepWork = Callable[[datetime, Any], dict[str, int]]
_extensions: dict[str, SweepWork] = {}


def sweep_extension(name: str, work: SweepWork) -> None:
    """Register ``work`` to run in every sweep under ``name`` (registering a name again replaces it)."""
    _extensions[name] = work


def sweep_extensions() -> dict[str, SweepWork]:
    """The registered sweep work, by name, in registration order."""
    return dict(_extensions)
