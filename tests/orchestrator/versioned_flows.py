"""``versioned_demo`` at two versions, for the version-pinning tests.

The worker process imports this module through ``BATON_WORKFLOW_MODULES`` (see ``tests/conftest.py``), and the
test process imports it directly: a worker only knows the workflows of the modules it loaded.
"""

from __future__ import annotations

from demo.workflows.simulated import call
from orchestrator.dsl import Human, Retry, StepContext, Task, Workflow
from orchestrator.registry import register

NAME = "versioned_demo"


def prepare(ctx: StepContext) -> dict:
    return {"prepared": call("versioned", "prepare", ctx.idempotency_key)}


def finish_v1(ctx: StepContext) -> dict:
    call("versioned", "finish_v1", ctx.idempotency_key)
    return {"finished_by": "v1"}


def double_check(ctx: StepContext) -> dict:
    call("versioned", "double_check", ctx.idempotency_key)
    return {"double_checked": True}


def finish_v2(ctx: StepContext) -> dict:
    call("versioned", "finish_v2", ctx.idempotency_key)
    return {"finished_by": "v2"}


QUICK = Retry(max_attempts=2, backoff=0.1)

V1 = register(
    Workflow(
        name=NAME,
        version=1,
        steps=[
            Task("prepare", prepare, retry=QUICK, timeout=10),
            Human("review", candidate_groups=["approvers"]),
            Task("finish", finish_v1, retry=QUICK, timeout=10),
        ],
    )
)

# v2 adds a step after the review and finishes through other code.
V2 = register(
    Workflow(
        name=NAME,
        version=2,
        steps=[
            Task("prepare", prepare, retry=QUICK, timeout=10),
            Human("review", candidate_groups=["approvers"]),
            Task("double_check", double_check, retry=QUICK, timeout=10),
            Task("finish", finish_v2, retry=QUICK, timeout=10),
        ],
    )
)
