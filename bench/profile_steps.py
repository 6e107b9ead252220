"""Profile the engine in-process (no worker): where does one start, one step and one decision spend their time?

    .venv/bin/python bench/profile_steps.py --n 500            # cProfile of each service, top functions
    .venv/bin/python bench/profile_steps.py --n 500 --no-profile   # plain wall time per call only
    .venv/bin/python bench/profile_steps.py --no-profile --drop-index console_instance_data   # an index's write cost
    .venv/bin/python bench/profile_steps.py --no-profile --add-index "x ON orchestrator_steprun (name)"  # a new one

Recreates the bench database (baton_bench) and uses Redis db 13. The worker must
not be running: the steps are executed here, and their Celery messages stay in Redis (flushed at the end).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import sysinfo

DUMP_DIR: str | None = None  # --dump: where each profile is written


def wal_position() -> int:
    """PostgreSQL's WAL insert position in bytes: what a run wrote, whatever the machine's speed meanwhile."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
        return int(cursor.fetchone()[0])


def timed(label: str, items: list[Any], fn: Callable[[Any], Any], profile: bool, top: int) -> float:
    # CPU time, not wall time: other people's processes share this machine, and waiting is not work.
    profiler = cProfile.Profile(time.process_time) if profile else None
    wal_before = wal_position()
    cpu_before = sysinfo.cpu_snapshot(None)
    began = time.perf_counter()
    if profiler:
        profiler.enable()
    for item in items:
        fn(item)
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - began
    cpu = sysinfo.cpu_delta(cpu_before, sysinfo.cpu_snapshot(None))
    per = elapsed / len(items) * 1000
    n = len(items)
    wal = (wal_position() - wal_before) / n
    print(
        f"\n== {label}: {n} calls, wall {per:.2f} ms per call ({n / elapsed:.0f}/s, one thread); CPU ms per call:"
        f" this process {cpu.get('bench', 0) / n * 1000:.2f}, postgres {cpu.get('postgres', 0) / n * 1000:.2f},"
        f" redis {cpu.get('redis', 0) / n * 1000:.2f}; other processes used {cpu.get('other', 0):.1f} CPU s"
        f" (machine busy {cpu['machine_busy']:.0%}); WAL {wal:,.0f} bytes per call"
    )
    if profiler:
        if DUMP_DIR:
            profiler.dump_stats(str(Path(DUMP_DIR) / (label.split("(")[0].replace(".", "_") + ".prof")))
        for key in ("tottime", "cumulative"):
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats(key).print_stats(top)
            lines = out.getvalue().splitlines()
            start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
            print(f"-- top {top} by {key} (CPU seconds, cProfile's overhead included):")
            print("\n".join(lines[start : start + top + 1]))
    return per


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--dump", metavar="DIR", help="also write each profile to DIR/<service>.prof (pstats)")
    parser.add_argument(
        "--no-broadcast",
        action="store_true",
        help="replace the live broadcast (one pipelined Redis PUBLISH per commit) with a no-op, to see what it costs",
    )
    parser.add_argument(
        "--no-publish",
        action="store_true",
        help="replace the Celery publish (apply_async to Redis) with a no-op, to see what it costs",
    )
    parser.add_argument("--db", default=harness.DB_NAME, help="the database to recreate (default: %(default)s)")
    parser.add_argument("--redis", default=harness.REDIS_URL, help="the Redis URL (default: %(default)s)")
    parser.add_argument(
        "--drop-index",
        action="append",
        default=[],
        metavar="NAME",
        help="drop this index after migrating, to measure what it costs the engine's writes (repeatable)",
    )
    parser.add_argument(
        "--add-index",
        action="append",
        default=[],
        metavar="DEFINITION",
        help='create this index after migrating (what follows CREATE INDEX, e.g. "x ON t (c) WHERE ..."), to'
        " measure what a proposed index would cost the engine's writes (repeatable; this bench database only)",
    )
    parser.add_argument(
        "--data",
        default="{}",
        help="each instance's start data, as JSON (business data: what a GIN index on the data has to index)",
    )
    args = parser.parse_args()
    global DUMP_DIR
    DUMP_DIR = args.dump
    harness.configure_env(db_name=args.db, redis_url=args.redis)
    harness.reset_database(db_name=args.db, keep=False)
    harness.migrate()
    start_data = json.loads(args.data)

    import django

    django.setup()
    from approvals.models import HumanTask
    from approvals.services.tasks import task_decide
    from orchestrator.models import StepRun, StepState
    from orchestrator.services import steps as step_services
    from orchestrator.services import unit
    from orchestrator.services.instances import instance_start

    if args.no_broadcast:
        unit.send_now = lambda groups, event: None  # type: ignore[assignment]
    if args.no_publish:
        unit.send_step = lambda step_id, options: None  # type: ignore[assignment]

    if args.drop_index:
        from django.db import connection

        with connection.cursor() as cursor:
            for name in args.drop_index:
                cursor.execute(f'DROP INDEX "{name}"')
                print(f"dropped index {name}")
    if args.add_index:
        from django.db import connection

        with connection.cursor() as cursor:
            for definition in args.add_index:
                cursor.execute(f"CREATE INDEX {definition}")  # typed by whoever runs the bench, on its own database
                print(f"created index {definition}")
    initiator, approvers = harness.ensure_users(4)
    profile = not args.no_profile
    # Warm up caches (content types, the group, the registry) outside the measurement.
    warm = instance_start("bench_approval", {}, initiator=initiator)
    step_services.step_execute(StepRun.objects.get(instance=warm, state=StepState.SCHEDULED).pk)

    started: list[Any] = []
    timed(
        "instance_start(bench_approval)",
        list(range(args.n)),
        lambda _: started.append(instance_start("bench_approval", dict(start_data), initiator=initiator)),
        profile,
        args.top,
    )
    steps = list(
        StepRun.objects.filter(instance__in=started, state=StepState.SCHEDULED)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    timed("step_services.step_execute(prepare)", steps, step_services.step_execute, profile, args.top)
    tasks = list(HumanTask.objects.filter(instance__in=started).order_by("pk").values_list("pk", flat=True))
    timed(
        "task_decide(approve)",
        tasks,
        lambda t: task_decide(t, approvers[t % len(approvers)], "approve"),
        profile,
        args.top,
    )
    table_writes()
    harness.flush_redis(args.redis)
    return 0


def table_writes() -> None:
    """What the run wrote to the instance and step tables, from this database's own statistics (unlike the WAL,
    which is the whole cluster's and counts other databases' writes on a shared server): updates, how many were
    heap-only (no index touched), and the size of the tables' indexes."""
    import time as _time

    from django.db import connection

    _time.sleep(1)  # the statistics collector reports at most every 500 ms
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        for table in ("orchestrator_workflowinstance", "orchestrator_steprun"):
            cursor.execute(
                "SELECT n_tup_upd, n_tup_hot_upd, pg_indexes_size(relid) FROM pg_stat_user_tables WHERE relname = %s",
                [table],
            )
            updates, hot, index_bytes = cursor.fetchone()
            print(
                f"== {table}: {updates} updates, {hot} heap-only ({hot / max(updates, 1):.0%});"
                f" indexes {index_bytes:,} bytes"
            )


if __name__ == "__main__":
    sys.exit(main())
