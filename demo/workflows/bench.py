"""Flows for ``make bench``: one automated step then a person; ten automated steps in a row; and one step whose
service is down while the process says so (``bench/console_bulk.py``: instances to retry in bulk)."""

from __future__ import annotations

import os

from orchestrator.dsl import Human, Retry, StepContext, Task, Workflow
from orchestrator.registry import register


def noop(ctx: StepContext) -> None:
    return None


bench_approval = register(
    Workflow(
        name="bench_approval",
        version=1,
        title="Benchmark: step then approval",
        owner="Baton maintainers",
        criticality="low",
        description="start -> automated step -> human approval -> end",
        steps=[
            Task("prepare", noop, timeout=30),
            Human("approve", candidate_groups=["approvers"], task_title="Approve {title}"),
        ],
    )
)

bench_chain = register(
    Workflow(
        name="bench_chain",
        version=1,
        title="Benchmark: ten automated steps",
        owner="Baton maintainers",
        criticality="low",
        description="ten automated steps in a row",
        steps=[Task(f"step_{i}", noop, timeout=30) for i in range(1, 11)],
    )
)


class BenchServiceDown(ConnectionError):
    """The benchmark's outside service is down (``BENCH_SERVICE_DOWN`` set in this process's environment)."""


def call_service(ctx: StepContext) -> None:
    if os.environ.get("BENCH_SERVICE_DOWN"):
        raise BenchServiceDown("the bench service is down")
    return None


bench_flaky = register(
    Workflow(
        name="bench_flaky",
        version=1,
        title="Benchmark: one call to a service that was down",
        owner="Baton maintainers",
        criticality="low",
        description="one automated call, no retry: it fails while the service is down and succeeds once it is back",
        steps=[Task("call", call_service, retry=Retry(max_attempts=1), timeout=30)],
    )
)
