"""What one pass of the sweep did (:class:`SweepReport`). A module of its own, importing nothing of the engine, so
the engine's port (``orchestrator.ports``, ``HumanTasks.tasks_sweep``) names the type without importing the sweep,
which imports the port (no import cycle, types included)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SweepReport:
    """What one pass did: steps dispatched, leases expired, pauses ended, the task deadlines' counts
    (the human side's ``tasks_sweep``, ``orchestrator.ports``), the claims it took back from people no longer able
    to act (its ``tasks_release_unfit``), and ``errors``: due items whose handling raised (each logged,
    audited on its instance and skipped; the pass went on)."""

    dispatched: int = 0
    leases_expired: int = 0
    resumed: int = 0
    tasks: dict[str, int] = field(default_factory=dict)
    unfit: dict[str, int] = field(default_factory=dict)
    # The signal waits timed out and kept signals handed on (orchestrator/services/signals.py), and the counts of
    # the apps' sweep work by name (orchestrator/events.py).
    signals: dict[str, int] = field(default_factory=dict)
    extensions: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: int = 0
    rolled_up: int = 0
