"""A three-step flow for the console's actions on a real worker (``test_worker_operations.py``).

The worker process imports this module through ``BATON_WORKFLOW_MODULES`` (``tests/conftest.py``). Every handler
records its call in ``DemoLedger`` (``calls`` counts repeats), so a test reads from the database how often the
worker ran each step; ``fail_pay: N`` in the data fails the first N attempts of ``pay`` (``true``: every one).
"""

from __future__ import annotations

import time

from demo.workflows.simulated import call, maybe_fail
from orchestrator.dsl import Retry, StepContext, Task, Workflow
from orchestrator.registry import register


def book(ctx: StepContext) -> dict:
    return {"booking": call("ops", "book", ctx.idempotency_key)}


def unbook(ctx: StepContext) -> dict:
    return {"unbooked": call("ops", "unbook", ctx.idempotency_key)}


def pay(ctx: StepContext) -> dict:
    maybe_fail(ctx, "fail_pay")
    return {"payment": call("ops", "pay", ctx.idempotency_key)}


def slow_pay(ctx: StepContext) -> dict:
    """Pay after a while: long enough for an operator to act while the worker runs it."""
    time.sleep(1.5)
    return {"payment": call("ops", "pay", ctx.idempotency_key)}


def confirm(ctx: StepContext) -> dict:
    return {"confirmed": call("ops", "confirm", ctx.idempotency_key), "saw_payment": ctx.data.get("payment")}


OPS_REDRIVE = register(
    Workflow(
        "ops_redrive",
        1,
        [
            Task("book", book, compensate=unbook, timeout=5),
            Task("pay", pay, retry=Retry(max_attempts=2, backoff=0.2, jitter=0), timeout=5),
            Task("confirm", confirm, timeout=5),
        ],
    )
)
# The same, with a slow back-off on pay: a pause taken between its attempts holds the next one.
OPS_SLOW = register(
    Workflow(
        "ops_slow",
        1,
        [
            Task("book", book, compensate=unbook, timeout=5),
            Task("pay", pay, retry=Retry(max_attempts=20, backoff=2, multiplier=1, jitter=0), timeout=5),
            Task("confirm", confirm, timeout=5),
        ],
    )
)
# A payment that takes a moment: an operator's cancel lands while the worker runs it.
OPS_CANCEL_MIDWAY = register(
    Workflow(
        "ops_cancel_midway",
        1,
        [
            Task("pay", slow_pay, retry=Retry(max_attempts=1), timeout=10),
            Task("confirm", confirm, timeout=5),
        ],
    )
)
