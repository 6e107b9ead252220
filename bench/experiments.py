"""A/B experiments on the worker's hot path, in-process, measured in CPU time (this process + its PostgreSQL backend).

    .venv/bin/python bench/experiments.py [--steps 600] [--round 50]

Nothing in the engine is changed: each variant swaps a function for the duration of its rounds only. Variants run
in interleaved rounds over fresh ``prepare`` steps of ``bench_approval``, so other load on this shared machine
hits all of them alike. CPU time, not wall time, because the machine is shared.

  baseline      steps.step_execute as it is
  no-broadcast  the live broadcast (a Redis PUBLISH per commit, after commit) replaced by a no-op
  lean-claim    the claim as ONE conditional UPDATE ... RETURNING (rule 2) instead of a transaction that
                locks the instance, reads instance and step through the ORM, saves both and writes an audit event;
                the "step.started" audit event is then not written (it would move into the record transaction)
  no-settle-q   settle without its EXISTS query when the unit scheduled no work and the flow has no parallel
  combined      lean-claim + no-settle-q + no-broadcast

Recreates the bench database (baton_bench); the worker must NOT be running.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import sysinfo


def backend_cpu(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    rest = raw[raw.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / sysinfo.TICKS


def lean_claim(step_id: int) -> Any:
    """Claim with one statement: state, due time and the instance's state in the WHERE clause; attempt bumped."""
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from orchestrator import registry
    from orchestrator.dsl import StepContext, Task
    from orchestrator.services.steps import Claim

    now = timezone.now()
    node_timeout = 30.0  # the bench flows' Task timeout; the engine would take it from the node
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE orchestrator_steprun s
               SET state = 'running', attempt = s.attempt + 1, started_at = %(now)s,
                   lease_expires_at = %(now)s + make_interval(secs => %(lease)s)
              FROM orchestrator_workflowinstance i
             WHERE s.id = %(id)s AND s.state IN ('scheduled', 'failed') AND (s.due_at IS NULL OR s.due_at <= %(now)s)
               AND i.id = s.instance_id
               AND i.state = ANY(CASE WHEN s.kind = 'compensation' THEN ARRAY['compensating']
                                      ELSE ARRAY['running', 'waiting'] END)
         RETURNING s.attempt, s.kind, s.name, i.id, i.workflow_name, i.workflow_version, i.data, i.business_key
            """,
            {"id": step_id, "now": now, "lease": node_timeout + settings.BATON_LEASE_GRACE},
        )
        row = cursor.fetchone()
    if row is None:
        return None
    attempt, kind, name, instance_id, wf_name, wf_version, data, business_key = row
    node = registry.get(wf_name, wf_version).node(name)
    assert isinstance(node, Task)
    context = StepContext(
        instance_id=instance_id,
        step=name,
        attempt=attempt,
        data=json.loads(data) if isinstance(data, str) else dict(data),  # Django leaves jsonb as text
        idempotency_key=f"{instance_id}:{name}:{step_id}",
        business_key=business_key,
    )
    return Claim(step_id, attempt, kind, node, context)


@contextmanager
def variant(name: str) -> Iterator[None]:
    from orchestrator.dsl import Parallel
    from orchestrator.services import locks, steps, unit

    # Patched where they are looked up: step_execute calls step_claim, and _record calls settle, in steps.
    saved = (unit.send_now, steps.step_claim, steps.settle)
    original_settle = steps.settle

    def settle_without_query(u: Any) -> None:
        workflow = locks.definition_of(u.instance)
        if not u.scheduled_work and not any(isinstance(n, Parallel) for n in workflow.nodes.values()):
            from orchestrator.audit_actions import AuditAction
            from orchestrator.models import ACTIVE_INSTANCE_STATES, InstanceState

            instance = u.instance
            if instance.state in ACTIVE_INSTANCE_STATES and instance.state == InstanceState.RUNNING:
                instance.settle(False)
                u.audit(
                    "instance",
                    instance.pk,
                    InstanceState.RUNNING,
                    instance.state,
                    action=AuditAction.INSTANCE_WAITING,
                )
            return
        original_settle(u)

    try:
        if name in ("no-broadcast", "combined"):
            unit.send_now = lambda groups, event: None
        if name in ("lean-claim", "combined"):
            steps.step_claim = lambda step_id, now=None: lean_claim(step_id)
        if name in ("no-settle-q", "combined"):
            steps.settle = settle_without_query
        yield
    finally:
        unit.send_now, steps.step_claim, steps.settle = saved


VARIANTS = ["baseline", "no-broadcast", "lean-claim", "no-settle-q", "combined"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600, help="prepare steps per variant")
    parser.add_argument("--round", type=int, default=50, help="steps per round (variants alternate by round)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument(
        "--server-side-binding",
        action="store_true",
        help="run every variant with DATABASES OPTIONS server_side_binding=True (psycopg prepares repeated SQL)",
    )
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    assert set(variants) <= set(VARIANTS), variants
    harness.configure_env()
    harness.reset_database(keep=False)
    harness.migrate()

    import django

    django.setup()
    from django.conf import settings
    from django.db import connection

    if args.server_side_binding:
        settings.DATABASES["default"].setdefault("OPTIONS", {})["server_side_binding"] = True
        connection.settings_dict.setdefault("OPTIONS", {})["server_side_binding"] = True
        connection.close()

    from approvals.models import HumanTask
    from orchestrator.models import StepRun, StepState, WorkflowInstance
    from orchestrator.services import steps
    from orchestrator.services.instances import instance_start

    initiator, _ = harness.ensure_users(4)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pg_pid = cursor.fetchone()[0]

    total = args.steps * len(variants)
    print(f"creating {total} bench_approval instances (their prepare steps are the work)...", flush=True)
    ids = [instance_start("bench_approval", {}, initiator=initiator).pk for _ in range(total + 20)]
    step_ids = list(
        StepRun.objects.filter(instance_id__in=ids, state=StepState.SCHEDULED)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    for step_id in step_ids[:20]:  # warm-up
        steps.step_execute(step_id)
    step_ids = step_ids[20:]

    samples: dict[str, list[float]] = {v: [] for v in variants}
    wall: dict[str, list[float]] = {v: [] for v in variants}
    python: dict[str, list[float]] = {v: [] for v in variants}
    position = 0
    rounds = args.steps // args.round
    for r in range(rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for name in order:
            batch = step_ids[position : position + args.round]
            position += args.round
            with variant(name):
                c0, p0, w0 = time.process_time(), backend_cpu(pg_pid), time.perf_counter()
                for step_id in batch:
                    outcome = steps.step_execute(step_id)
                    assert outcome == "succeeded", (name, outcome)
                c1, p1, w1 = time.process_time(), backend_cpu(pg_pid), time.perf_counter()
            samples[name].append(((c1 - c0) + (p1 - p0)) / len(batch) * 1000)
            wall[name].append((w1 - w0) / len(batch) * 1000)
            python[name].append((c1 - c0) / len(batch) * 1000)
        print(f"round {r + 1}/{rounds} done", flush=True)

    # Every variant must leave the same end state: the instance waiting on its approval task.
    waiting = WorkflowInstance.objects.filter(pk__in=ids, state="waiting").count()
    tasks = HumanTask.objects.filter(instance_id__in=ids).count()
    print(f"\ninstances waiting: {waiting}, approval tasks: {tasks} (of {len(ids)})")
    base = statistics.median(samples[variants[0]])
    print(f"\nCPU ms per step_execute (this process incl. its threads + its PostgreSQL backend), median of {rounds}")
    print("rounds; wall ms for reference (the machine is shared):")
    print(f"server_side_binding: {connection.settings_dict.get('OPTIONS', {}).get('server_side_binding', False)}")
    for name in variants:
        med = statistics.median(samples[name])
        print(
            f"  {name:<13} {med:6.2f} ms CPU  ({(med - base) / base:+.0%} vs {variants[0]})"
            f"   of which Python {statistics.median(python[name]):6.2f}   wall {statistics.median(wall[name]):6.2f} ms"
            f"   (CPU spread {min(samples[name]):.2f}-{max(samples[name]):.2f})"
        )
    harness.flush_redis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
