"""The engine's locks and definitions: every write to an instance starts here.

Lock order, everywhere: the instance row first (``SELECT ... FOR UPDATE``), then its steps and tasks. Every write
to a step or a human task happens under its instance's lock, so the instance row is the one mutex of an instance,
and its audit chain head lives on it.
"""

from __future__ import annotations

from orchestrator import registry, rows
from orchestrator.audit import Actor
from orchestrator.dsl import Workflow
from orchestrator.models import ACTIVE_INSTANCE_STATES, InstanceState, StepRun, WorkflowInstance
from orchestrator.services.unit import FENCE, Fenced

WORKER = Actor.system("worker")
SWEEPER = Actor.system("sweeper")


# States in which a finishing step may still end, fail or compensate the instance (a pause only holds new work).
LIVE_STATES = (*ACTIVE_INSTANCE_STATES, InstanceState.PAUSED)


class EngineError(Exception):
    """A workflow cannot go on as defined (an unknown node, a decision that loops)."""


def definition_of(instance: WorkflowInstance) -> Workflow:
    """The definition the instance is pinned to; raises ``registry.UnknownWorkflow`` if it is not registered."""
    return registry.get(instance.workflow_name, instance.workflow_version)


def definition_or_none(instance: WorkflowInstance) -> Workflow | None:
    """The definition the instance is pinned to, or None when that version is not registered (its module is gone).

    Raises nothing of its own.
    """
    try:
        return definition_of(instance)
    except registry.UnknownWorkflow:
        return None


def definition_unavailable(instance: WorkflowInstance) -> str:
    """The reason recorded, audited and shown for an instance whose definition is not registered. Raises nothing."""
    return f"definition {instance.workflow_name} v{instance.workflow_version} is not available"


def lock_instance(instance_id: int) -> WorkflowInstance:
    """Lock and return the instance row (the mutex for everything that instance owns).

    Raises ``WorkflowInstance.DoesNotExist`` when there is no such instance.
    """
    instance = rows.get(WorkflowInstance, instance_id, lock=True)
    if instance is None:
        raise WorkflowInstance.DoesNotExist(f"no instance {instance_id}")
    return instance


def lock_step(step_id: int, *, skip_locked: bool = False) -> tuple[WorkflowInstance, StepRun] | None:
    """Lock the instance owning ``step_id`` and read both rows in one statement; None if there is no such step
    (or, with ``skip_locked``, its instance is locked).

    When the statement had to wait for the lock, PostgreSQL re-reads the locked instance row but not the joined
    step row, which may then be stale: the step's next write therefore goes through :func:`step_save`, fenced on
    the state and attempt read here, and a stale read ends in :class:`Fenced`, never in a lost update.

    Raises nothing of its own.
    """
    lock = rows.lock_clause(of="i")
    if lock and skip_locked:
        lock += " SKIP LOCKED"
    return _read_step(step_id, lock)


def read_step(step_id: int) -> tuple[WorkflowInstance, StepRun] | None:
    """The step and its instance as they are now, read in one statement without a lock.

    Raises nothing of its own.
    """
    return _read_step(step_id, "")


def _read_step(step_id: int, lock: str) -> tuple[WorkflowInstance, StepRun] | None:
    found = rows.select(
        [(WorkflowInstance, "i"), (StepRun, "s")],
        f"FROM {WorkflowInstance._meta.db_table} i JOIN {StepRun._meta.db_table} s ON s.instance_id = i.id"
        f" WHERE s.id = %s{lock}",
        [step_id],
    )
    if not found:
        return None
    instance, step = found[0]
    step._read_as = (step.state, step.attempt)
    return instance, step


def step_save(step: StepRun, fields: list[str]) -> None:
    """Write ``fields`` of a step read by :func:`lock_step`, only if its state and attempt are still as read.

    Raises :class:`~orchestrator.services.unit.Fenced` when the step moved on.
    """
    if not rows.update(step, fields, where=FENCE, params=step._read_as):
        raise Fenced.of(step)
    step._read_as = (step.state, step.attempt)
