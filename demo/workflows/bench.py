"""Flows for ``make bench``: one automated step then a person; and ten automated steps in a row."""

from __future__ import annotations

from orchestrator.dsl import Human, StepContext, Task, Workflow
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
