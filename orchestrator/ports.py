"""The engine's port to the human side: what it asks of whoever keeps people's tasks.

The engine never imports the app that implements it (docs/architecture.md, "Layers"). That app (``approvals``)
registers its implementation in its ``AppConfig.ready()`` with :func:`register_human_tasks`; the engine calls
:func:`human_tasks` when a workflow reaches a person. With nothing registered a workflow that never reaches a
human step still runs; one that does raises :class:`HumanTasksMissing` naming what to add to
``INSTALLED_APPS``.

Every method runs inside the caller's transaction, under the instance's lock (the engine's lock order), and
writes through the caller's :class:`~orchestrator.services.unit.Unit` (audit events, live events, rows that go
with them), so the human side's writes commit or roll back with the engine's.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:  # types only: the port is below the services that implement and call it
    from django.contrib.auth.models import User
    from django.db.models import QuerySet

    from orchestrator.dsl import Human
    from orchestrator.models import StepRun
    from orchestrator.services.sweep_report import SweepReport
    from orchestrator.services.unit import Unit


class HumanTasksMissing(ImproperlyConfigured):
    """A workflow reached a person, but no app registered the human side of the engine."""


class HumanTasks(Protocol):
    """The human-task side of the engine. ``unit`` is the engine's unit of work on the locked instance."""

    def task_open(self, unit: Unit, step: StepRun, node: Human) -> None:
        """Start a human step: insert the new (unsaved) ``step`` with its task and candidates; audit both.

        Raises what the database raises for a value it refuses; the engine records it as the step's failure.
        """

    def escalation_open(self, unit: Unit, step: StepRun, *, reason: str) -> None:
        """Open an escalation for the operators about ``step`` (a dead step or compensation); ``reason`` is
        audited.

        Raises nothing of its own.
        """

    def tasks_cancel_for_steps(self, unit: Unit, step_ids: list[int], reason: str) -> None:
        """Cancel the open tasks of ``step_ids`` (steps the engine skipped or put back in the queue).

        Raises nothing of its own.
        """

    def tasks_cancel_for_instance(self, unit: Unit, reason: str) -> None:
        """Cancel every open task of the unit's instance, escalations included. Raises nothing of its own."""

    def tasks_shift_deadlines(self, unit: Unit, paused_at: datetime, held: Any) -> None:
        """On resume: move the open tasks' deadlines on by ``held``, an SQL expression of the time each was held
        since ``paused_at``.

        Raises nothing of its own.
        """

    def tasks_sweep(self, now: datetime, *, report: SweepReport) -> dict[str, int]:
        """Fire the task deadlines due at ``now``, each item in its own transaction (``sweep.isolated``); the
        counts join the sweep's report.

        Raises only what the database raises outside an item's own transaction.
        """

    def tasks_release_unfit(self, now: datetime) -> dict[str, int]:
        """Take back claims of people who may no longer act; ``{"released": n, "escalated": n}``.

        Raises nothing of its own.
        """

    def sees_instance(self, user: User, instance_id: int) -> bool:
        """True if ``user`` sees the instance through one of its tasks (the instance page's third rule).

        Raises nothing of its own.
        """

    def instance_ids_seen(self, user: User) -> QuerySet[Any]:
        """The ids of the instances ``user`` sees through one of their tasks (:meth:`sees_instance`'s rule), as a
        subquery (one ``instance_id`` column) for a list of instances.

        Raises nothing of its own.
        """

    def tasks_open_counts(self, now: datetime) -> dict[str, int]:
        """Tasks waiting for a person (open, claimed or escalated) and those of them overdue at ``now`` (aware) by the
        rule Incidents lists (past their SLA, less those held by their instance's pause): ``{"open": n, "overdue":
        m}``, for the dashboard and /metrics. Costs what is open, not every task ever made.

        Raises nothing of its own.
        """

    def live_counts(self, user: User) -> dict[str, int]:
        """The counts a page's navigation shows (``{"inbox": n, "unread": n, ...}``), read fresh.

        Raises nothing of its own.
        """


_human_tasks: HumanTasks | None = None


def register_human_tasks(implementation: HumanTasks) -> None:
    """Make ``implementation`` the engine's human side (called once, from an ``AppConfig.ready()``). Registering
    again replaces it. Raises nothing."""
    global _human_tasks
    _human_tasks = implementation


def human_tasks() -> HumanTasks:
    """The registered human side. Raises :class:`HumanTasksMissing` when no app registered one."""
    if _human_tasks is None:
        raise HumanTasksMissing(
            "No human-task app is registered with the engine: add 'approvals' to INSTALLED_APPS (after "
            "'orchestrator'), or register another implementation of orchestrator.ports.HumanTasks in an "
            "AppConfig.ready()."
        )
    return _human_tasks


def human_tasks_or_none() -> HumanTasks | None:
    """The registered human side, or None: for callers that have nothing to ask of it when there is none (a
    sweep with no tasks to look at, an instance page without tasks). Raises nothing."""
    return _human_tasks
