"""SQL statements per service call, counted in-process with CaptureQueriesContext (never through the worker)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("BEGIN", "SELECT", "INSERT", "UPDATE", "DELETE", "SAVEPOINT", "RELEASE", "COMMIT", "ROLLBACK", "WITH")


@dataclass
class Count:
    """The statements one call sent, as Django logged them (Django 5.2 logs BEGIN and COMMIT too): each is one
    round trip to PostgreSQL."""

    label: str
    statements: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.statements)

    @property
    def by_kind(self) -> dict[str, int]:
        counter: Counter[str] = Counter()
        for sql in self.statements:
            word = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"
            counter[word if word in KINDS else "OTHER"] += 1
        return dict(counter)

    @property
    def commits(self) -> int:
        return self.by_kind.get("COMMIT", 0)

    def line(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.by_kind.items()))
        return f"{self.label:<34} {self.total:>4} statements ({kinds}); {self.commits} commit(s)"


def count(label: str, fn: Callable[[], Any]) -> tuple[Any, Count]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        result = fn()
    return result, Count(label, [q["sql"] for q in ctx.captured_queries])


@dataclass
class QueryReport:
    approval: list[Count]
    chain_start: Count
    chain_steps: list[Count]

    @property
    def approval_total(self) -> int:
        return sum(c.total for c in self.approval)

    @property
    def approval_commits(self) -> int:
        return sum(c.commits for c in self.approval)

    @property
    def chain_total(self) -> int:
        return self.chain_start.total + sum(c.total for c in self.chain_steps)

    @property
    def chain_step_avg(self) -> float:
        return sum(c.total for c in self.chain_steps) / len(self.chain_steps)

    def as_dict(self) -> dict[str, Any]:
        return {
            "approval": {c.label: {"total": c.total, **c.by_kind} for c in self.approval},
            "approval_total": self.approval_total,
            "approval_commits": self.approval_commits,
            "chain_start": self.chain_start.total,
            "chain_steps": [c.total for c in self.chain_steps],
            "chain_step_avg": round(self.chain_step_avg, 2),
            "chain_total": self.chain_total,
            "chain_commits": self.chain_start.commits + sum(c.commits for c in self.chain_steps),
        }


def _scheduled_step(instance_id: int) -> int:
    from orchestrator.models import StepRun, StepState

    return StepRun.objects.filter(instance_id=instance_id, state=StepState.SCHEDULED).values_list("pk", flat=True)[0]


def measure(initiator: Any, approver: Any, *, warmups: int = 1) -> QueryReport:
    """Count statements for one bench_approval instance (start, prepare step, decision) and one bench_chain.

    Run with the worker stopped: the steps' Celery messages wait in Redis and the steps run here, in-process.
    A warm-up instance first, so one-off lookups (content types, the approvers group) do not count.
    """
    from approvals.models import HumanTask
    from approvals.services.tasks import task_decide
    from orchestrator.models import WorkflowInstance
    from orchestrator.services import steps
    from orchestrator.services.instances import instance_start

    approval: list[Count] = []
    for _ in range(warmups + 1):
        instance, c_start = count(
            "instance_start(bench_approval)", lambda: instance_start("bench_approval", {}, initiator=initiator)
        )
        step_id = _scheduled_step(instance.pk)
        outcome, c_step = count("step_execute(prepare)", lambda step_id=step_id: steps.step_execute(step_id))
        assert outcome == "succeeded", outcome
        task_id = HumanTask.objects.filter(instance=instance).values_list("pk", flat=True)[0]
        _, c_decide = count("task_decide(approve)", lambda task_id=task_id: task_decide(task_id, approver, "approve"))
        state = WorkflowInstance.objects.values_list("state", flat=True).get(pk=instance.pk)
        assert state == "completed", state
        approval = [c_start, c_step, c_decide]

    chain_start: Count | None = None
    chain_steps: list[Count] = []
    for _ in range(warmups + 1):
        instance, chain_start = count(
            "instance_start(bench_chain)", lambda: instance_start("bench_chain", {}, initiator=initiator)
        )
        chain_steps = []
        for i in range(1, 11):
            step_id = _scheduled_step(instance.pk)
            outcome, c = count(f"step_execute(step_{i})", lambda step_id=step_id: steps.step_execute(step_id))
            assert outcome == "succeeded", outcome
            chain_steps.append(c)
        state = WorkflowInstance.objects.values_list("state", flat=True).get(pk=instance.pk)
        assert state == "completed", state
    assert chain_start is not None
    return QueryReport(approval, chain_start, chain_steps)
