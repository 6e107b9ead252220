"""Workflows whose step outcomes cannot be recorded, for the worker tests of ``test_worker_integration.py``.

The worker process imports this module through ``BATON_WORKFLOW_MODULES`` (see ``tests/conftest.py``); the test
process imports it in a fixture. Each handler records its call in ``DemoLedger`` (``calls`` counts repeats), so
the test reads from the database how often the worker ran it.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from django.db import connection

from demo.workflows.simulated import call
from orchestrator.dsl import Decision, Retry, StepContext, Task, Workflow
from orchestrator.registry import register, unregister

# Attempts left and a lease that runs out within seconds: a re-run, if there were one, would show quickly.
RETRYING = Retry(max_attempts=3, backoff=0.1)


def returns_a_datetime(ctx: StepContext) -> dict:
    call("faults", "act", ctx.idempotency_key)
    return {"at": datetime.now(UTC)}


def returns_plain_data(ctx: StepContext) -> dict:
    call("faults", "act", ctx.idempotency_key)
    return {"acted": True}


def route(data: dict) -> str:
    return "eu" if data["region"] == "eu" else "us"  # the instance has no region: KeyError


UNRECORDABLE = register(Workflow("fault_unrecordable", 1, [Task("act", returns_a_datetime, retry=RETRYING, timeout=2)]))
UNROUTABLE = register(
    Workflow(
        "fault_unroutable",
        1,
        [
            Task("act", returns_plain_data, retry=RETRYING, timeout=2),
            Decision("route", route, choices=["eu", "us"]),
            Task("eu", returns_plain_data),
            Task("us", returns_plain_data),
        ],
    )
)


def sleeps_in_a_query(ctx: StepContext) -> dict:
    # Past the step's 1 s timeout: the soft time limit fires while psycopg waits for PostgreSQL's answer.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(20)")
    return {"slept": True}


SLEEPS_IN_A_QUERY = register(
    Workflow("fault_sleeps_in_a_query", 1, [Task("act", sleeps_in_a_query, retry=Retry(max_attempts=1), timeout=1)])
)


def loses_its_session(ctx: StepContext) -> dict:
    # PostgreSQL ends this process's session in the middle of the handler (a restart or a failover would).
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    return {"done": True}


LOSES_ITS_SESSION = register(
    Workflow("fault_loses_its_session", 1, [Task("act", loses_its_session, retry=Retry(max_attempts=1), timeout=1)])
)


def pays_while_undeployed(ctx: StepContext) -> dict:
    call("faults", "pay", ctx.idempotency_key)
    # The deployment changes under the running handler: its definition is gone from this worker when the outcome
    # is recorded, and back half a second later (noted in the ledger), so that an operator's retry runs on.
    unregister(UNDEPLOYED_MIDWAY.name, UNDEPLOYED_MIDWAY.version)
    threading.Timer(0.5, _deploy_again, [ctx.instance_id]).start()
    return {"paid": 120}


def _deploy_again(instance_id: int) -> None:
    register(UNDEPLOYED_MIDWAY)
    call("faults", "deployed again", str(instance_id))
    connection.close()  # this thread's own session


def ships(ctx: StepContext) -> dict:
    call("faults", "ship", ctx.idempotency_key)
    return {"shipped": ctx.data["paid"]}


UNDEPLOYED_MIDWAY = register(
    Workflow(
        "fault_undeployed_midway",
        1,
        [Task("pay", pays_while_undeployed, retry=RETRYING, timeout=1), Task("ship", ships, timeout=1)],
    )
)
FLOWS = (UNRECORDABLE, UNROUTABLE, SLEEPS_IN_A_QUERY, LOSES_ITS_SESSION, UNDEPLOYED_MIDWAY)
