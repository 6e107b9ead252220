"""A step that fails while an upstream outage is on, for the operator tests that need a step to die (its retries
spent) and then succeed once the outage is over: retry, pause and resume (``test_instance_ops.py``,
``test_pause_deadlines.py``). A test's fixture turns ``outage["on"]`` on and back off at its end."""

from __future__ import annotations

from orchestrator.dsl import StepContext

outage = {"on": False}


def flaky(ctx: StepContext) -> dict:
    """Raise ``ConnectionError`` while the outage is on; else succeed with ``{"synced": True}``."""
    if outage["on"]:
        raise ConnectionError("upstream is down")
    return {"synced": True}


def noop(ctx: StepContext) -> None:
    """A step that does nothing: what follows the flaky one."""
    return None
