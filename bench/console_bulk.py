"""A bulk retry of 10,000 failed instances through the real Celery worker: how long until every one is retried
and has finished, and with what outcome.

    .venv/bin/python bench/console_bulk.py                       # 10,000 instances, a worker of 2 processes
    .venv/bin/python bench/console_bulk.py --instances 2000 --concurrency 4 --keep

Recreates its own database (``baton_bench_console``; dropped at the end unless ``--keep``) and uses Redis db 6.
Seeding goes through the engine in this process: ``bench_flaky`` instances (demo/workflows/bench.py) whose one
call fails, without retries, while ``BENCH_SERVICE_DOWN`` is set here, so each ends failed. Then the service is
"back" (the worker starts without that variable), and the operator's path runs as the console runs it: a dry
run over ``workflow=bench_flaky&state=failed`` (``console.services.bulk_dry_run``), a confirmation with a reason
(``bulk_confirm``), and the worker doing the job (``console.tasks.bulk_job_work``) and then the retried steps.
It reports the time to the dry run's count, to the last item acted on (the job's progress bar at 100 %), and to
the last retried instance finishing, with the outcome counts the job page shows (``console.selectors.bulk_progress``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

DB_NAME = "baton_bench_console"
REDIS_URL = "redis://127.0.0.1:6379/6"


def seed(count: int) -> float:
    """``count`` failed bench_flaky instances, made by the engine in this process; returns the seconds it took."""
    from orchestrator.models import InstanceState, StepRun, WorkflowInstance
    from orchestrator.services import unit
    from orchestrator.services.instances import instance_start
    from orchestrator.services.steps import step_execute

    real_send = unit.send_step
    unit.send_step = lambda step_id, options: None  # the steps run here: no message for a worker to find later
    os.environ["BENCH_SERVICE_DOWN"] = "1"
    began = time.perf_counter()
    try:
        for n in range(count):
            instance = instance_start("bench_flaky", {"n": n})
            step_execute(StepRun.objects.filter(instance=instance).values_list("pk", flat=True).get())
            if (n + 1) % 1000 == 0:
                print(f"  seeded {n + 1:,} ({time.perf_counter() - began:.0f} s)", flush=True)
    finally:
        del os.environ["BENCH_SERVICE_DOWN"]
        unit.send_step = real_send
    failed = WorkflowInstance.objects.filter(workflow_name="bench_flaky", state=InstanceState.FAILED).count()
    assert failed == count, f"{failed} of {count} instances failed"
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=2, help="the worker's processes (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    harness.configure_env(db_name=DB_NAME, redis_url=REDIS_URL)
    harness.reset_database(db_name=DB_NAME, keep=False)
    harness.migrate()

    import django

    django.setup()
    from django.contrib.auth.models import User

    from console.models import BulkJob
    from console.selectors import InstanceFilter, bulk_progress
    from console.services import bulk_confirm, bulk_dry_run

    operator = User.objects.create_superuser("bench-operator", "ops@example.com", "bench")
    print(f"seeding {args.instances:,} failed instances through the engine...", flush=True)
    print(f"seeded in {seed(args.instances):.0f} s", flush=True)
    harness.flush_redis(REDIS_URL)
    worker = harness.Worker(concurrency=args.concurrency, log_path=Path("/tmp/baton-bench-console-bulk-worker.log"))
    worker.start()
    print(f"worker up ({args.concurrency} processes); {os.getloadavg()[0]:.1f} load average", flush=True)
    try:
        began = time.perf_counter()
        job = bulk_dry_run(operator, "retry", InstanceFilter(workflow="bench_flaky", state="failed"))
        counted = time.perf_counter() - began
        print(f"dry run: exactly {job.total:,} in {counted:.2f} s", flush=True)
        began = time.perf_counter()
        bulk_confirm(job.pk, operator, reason="the service is back")
        acted_at = None
        deadline = began + args.timeout
        while time.perf_counter() < deadline:
            time.sleep(1.0)
            job = BulkJob.objects.get(pk=job.pk)
            progress = bulk_progress(job)
            elapsed = time.perf_counter() - began
            if acted_at is None and progress.acted == job.total:
                acted_at = elapsed
            if int(elapsed) % 15 == 0:
                print(
                    f"  {elapsed:5.0f} s: acted on {progress.acted:,} ({progress.percent} %), completed "
                    f"{progress.completed:,}, failed again {progress.failed_again:,}, still going "
                    f"{progress.still_going:,}",
                    flush=True,
                )
            if acted_at is not None and progress.still_going == 0:
                break
        else:
            print(f"gave up after {args.timeout:.0f} s; see {worker.log_path}")
            return 1
        finished = time.perf_counter() - began
        print(
            f"\n{job.total:,} instances: dry run {counted:.2f} s; every item acted on after {acted_at:.1f} s "
            f"(job {job.state}); every retried instance finished after {finished:.1f} s "
            f"({job.total / finished:.0f} instances/s).\n"
            f"outcome: retried {progress.done:,} (then completed {progress.completed:,}, failed again "
            f"{progress.failed_again:,}), skipped {progress.skipped:,}, errors {progress.error:,}; "
            f"load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    finally:
        worker.stop()
        harness.flush_redis(REDIS_URL)
        if not args.keep:
            import psycopg
            from django.db import connections

            connections.close_all()
            with psycopg.connect(f"{harness.PG_SERVER}/postgres", autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
