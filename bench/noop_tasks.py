"""What Celery itself costs per task here: publish, hand-over, ack, with a step message that finds nothing to do.

    .venv/bin/python bench/noop_tasks.py                 # 3,000 messages
    .venv/bin/python bench/noop_tasks.py -- --pool threads   # extra celery worker options after --

Uses the bench database (baton_bench, as the last bench left it) and Redis db 13. Starts one worker
(concurrency 2), publishes N ``step_run`` messages for step ids that do not exist (each costs the worker one
short transaction: BEGIN, the lock-and-read SELECT, COMMIT), waits until the queue is empty, and prints the
publisher's CPU per message and, from /proc, the worker's, PostgreSQL's and Redis's CPU per task.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import sysinfo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("worker_args", nargs="*", help="more celery worker options (after --)")
    args = parser.parse_args()
    env = harness.configure_env()

    import django

    django.setup()
    import redis

    from orchestrator.tasks import step_run

    worker = harness.Worker(2, extra=args.worker_args)
    worker.start()
    queue = redis.Redis.from_url(env["REDIS_URL"])
    try:
        time.sleep(1)
        before = sysinfo.cpu_snapshot(worker.pid)
        began = time.perf_counter()
        cpu_began = time.process_time()
        for i in range(args.n):
            step_run.apply_async(args=(10**12 + i,))
        publish_cpu = time.process_time() - cpu_began
        while queue.llen("baton") > 0:
            time.sleep(0.05)
        time.sleep(0.5)  # the last tasks finish after their message left the list
        cpu = sysinfo.cpu_delta(before, sysinfo.cpu_snapshot(worker.pid))
        wall = time.perf_counter() - began
    finally:
        worker.stop()
    per = {k: round(cpu.get(k, 0.0) / args.n * 1000, 3) for k in ("worker", "postgres", "redis")}
    print(
        f"worker {' '.join(args.worker_args) or '(settings)'}: {args.n} no-op tasks in {wall:.2f} s; CPU ms per"
        f" task: publisher {publish_cpu / args.n * 1000:.3f}, worker {per['worker']}, postgres {per['postgres']},"
        f" redis {per['redis']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
