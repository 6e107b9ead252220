"""The worker alone: how fast one worker drains a backlog of automated steps (no starts competing for the CPU).

    .venv/bin/python bench/drain.py                                   # 1,500 bench_approval instances
    .venv/bin/python bench/drain.py --n 1500 -- --prefetch-multiplier 4   # extra celery worker options after --

Recreates the bench database (baton_bench) and Redis db 13, starts N instances with no worker running (their
messages wait in Redis), then starts one prefork worker (concurrency 2) and waits until all N wait on their
approval. Prints steps/s from the step rows (first claim to last record), the mean time from a step's claim to
its record's lock, and the wall time per step of each pool process. Used to compare worker settings in turns.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("worker_args", nargs="*", help="more celery worker options (after --)")
    args = parser.parse_args()
    harness.configure_env()
    harness.reset_database(keep=False)
    harness.flush_redis()
    harness.migrate()

    import django

    django.setup()
    from django.db import connection

    from orchestrator.models import InstanceState, WorkflowInstance
    from orchestrator.services.instances import instance_start

    initiator, _ = harness.ensure_users(4)
    for _ in range(args.n):
        instance_start("bench_approval", {}, initiator=initiator)
    worker = harness.Worker(args.concurrency, extra=args.worker_args)
    worker.start()
    try:
        while WorkflowInstance.objects.filter(state=InstanceState.WAITING).count() < args.n:
            time.sleep(0.05)
    finally:
        worker.stop()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at)),"
            " avg(extract(epoch FROM finished_at - started_at)) * 1000"
            " FROM orchestrator_steprun WHERE name = 'prepare'"
        )
        steps, span, inner = cursor.fetchone()
    rate = steps / float(span)
    print(
        f"worker {' '.join(args.worker_args) or '(settings)'}: {steps} steps drained at {rate:.0f}/s; claim to"
        f" record's lock {float(inner):.2f} ms; {args.concurrency / rate * 1000:.2f} ms per step per pool process"
    )
    harness.flush_redis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
