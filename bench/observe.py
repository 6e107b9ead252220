"""The dashboard, the catalog and /metrics at 10,000 to 1,000,000 instances (5 step runs each), and the roll-up
pass that feeds them.

    .venv/bin/python bench/observe.py                         # 10k, 100k, 1M; several minutes of bulk loading
    .venv/bin/python bench/observe.py --stages 10000 100000   # a shorter curve
    .venv/bin/python bench/observe.py --keep                  # leave the database for inspection
    .venv/bin/python bench/observe.py --reuse                 # time the pages again on the kept database

It makes its own PostgreSQL database (``baton_bench_observe``), dropped at the end unless ``--keep``, and uses
Redis db 7 only for the health and metrics reads (nothing is written there). Instances, step runs and their audit
events are bulk-inserted with ``generate_series`` (they are data for the readers, not work for the engine; their
hash chains are not valid and nothing verifies them), spread over the last 30 days: 90 % completed, 3 % failed,
2 % compensated, 2 % cancelled, 2 % waiting, 1 % running. At each stage the roll-up pass catches up with the new
events (timed), then each page is requested ``--requests`` times through Django's test client as an operator
(server time in the process, templates rendered; no network), with its SQL statements counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness

DB_NAME = "baton_bench_observe"
REDIS_URL = "redis://127.0.0.1:6379/7"
STEPS = ("reserve_inventory", "charge_payment", "approval_needed", "ship", "notify_customer")

# Per instance id g: workflow, version, final state and duration (deterministic, so a stage adds to the last).
INSTANCES_SQL = """
INSERT INTO orchestrator_workflowinstance
    (id, workflow_name, workflow_version, state, title, business_key, data, input_hash, outcome, error,
     created_at, updated_at, finished_at, audit_seq, audit_head)
SELECT g,
       CASE WHEN g %% 3 = 0 THEN 'expense_approval' ELSE 'order_fulfilment' END,
       CASE WHEN g %% 3 = 0 THEN 2 ELSE 1 END,
       CASE WHEN g %% 100 < 90 THEN 'completed' WHEN g %% 100 < 93 THEN 'failed' WHEN g %% 100 < 95 THEN 'compensated'
            WHEN g %% 100 < 97 THEN 'cancelled' WHEN g %% 100 < 99 THEN 'waiting' ELSE 'running' END,
       'Bench ' || g, 'BK-' || g, '{"amount": "10.00"}'::jsonb, '', '', '',
       now() - make_interval(secs => (g::bigint * 7919 %% 2592000)),
       now() - make_interval(secs => (g::bigint * 7919 %% 2592000)) + make_interval(secs => 1 + g %% 600),
       CASE WHEN g %% 100 < 97 THEN now() - make_interval(secs => (g::bigint * 7919 %% 2592000))
            + make_interval(secs => 1 + g %% 600) END,
       2, ''
FROM generate_series(%(first)s, %(last)s) AS g
"""

STEPS_SQL = """
INSERT INTO orchestrator_steprun
    (id, instance_id, name, kind, state, attempt, max_attempts, started_at, finished_at, created_at, result, error,
     error_type)
SELECT (i.id - 1) * 5 + k, i.id, (ARRAY['reserve_inventory','charge_payment','approval_needed','ship',
        'notify_customer'])[k], 'task', 'succeeded', 1, 3,
       i.created_at + make_interval(secs => k), i.created_at + make_interval(secs => k + 0.2 + (i.id %% 7) * 0.1),
       i.created_at, '{}'::jsonb, '', ''
FROM orchestrator_workflowinstance i CROSS JOIN generate_series(1, 5) AS k
WHERE i.id BETWEEN %(first)s AND %(last)s
"""

EVENTS_SQL = """
INSERT INTO orchestrator_auditevent
    (chain, seq, prev_hash, hash, key_id, occurred_at, actor_label, action, instance_id, subject_type, subject_id,
     from_state, to_state, reason, payload, request_meta)
SELECT 'instance:' || i.id, 1, '', 'bench', 'bench', i.created_at, 'system:bench', 'instance.started', i.id,
       'instance', i.id, '', 'running', '', '{}'::jsonb, '{}'::jsonb
FROM orchestrator_workflowinstance i WHERE i.id BETWEEN %(first)s AND %(last)s
UNION ALL
SELECT 'instance:' || s.instance_id, 1 + (s.id - 1) %% 5 + 1, '', 'bench', 'bench', s.finished_at, 'system:worker',
       'step.succeeded', s.instance_id, 'step', s.id, 'running', 'succeeded', '', '{}'::jsonb, '{}'::jsonb
FROM orchestrator_steprun s WHERE s.instance_id BETWEEN %(first)s AND %(last)s AND s.instance_id <= %(step_events)s
UNION ALL
SELECT 'instance:' || i.id, 8, '', 'bench', 'bench', COALESCE(i.finished_at, i.updated_at), 'system:worker',
       'instance.' || i.state, i.id, 'instance', i.id, 'running', i.state, '', '{}'::jsonb, '{}'::jsonb
FROM orchestrator_workflowinstance i WHERE i.id BETWEEN %(first)s AND %(last)s AND i.state <> 'running'
"""


def load(first: int, last: int, step_events: int, chunk: int = 100_000) -> float:
    """Bulk-insert instances ``first..last`` with their steps and events (step events only for instances up to
    ``step_events``); returns seconds."""
    from django.db import connection, transaction

    started = time.perf_counter()
    for low in range(first, last + 1, chunk):
        high = min(last, low + chunk - 1)
        with transaction.atomic(), connection.cursor() as cursor:
            for statement in (INSTANCES_SQL, STEPS_SQL, EVENTS_SQL):
                cursor.execute(statement, {"first": low, "last": high, "step_events": step_events})
        print(f"  loaded instances {low:,}..{high:,}", flush=True)
    with connection.cursor() as cursor:
        for table in ("orchestrator_workflowinstance", "orchestrator_steprun"):
            # A fixed table name from the tuple above, not input.
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")  # noqa: S608
        cursor.execute("ANALYZE")
    return time.perf_counter() - started


def catch_up(batch: int) -> dict[str, float]:
    """Run roll-up passes until every event is folded; passes, events and seconds."""
    from django.db.models import Max

    from orchestrator import rollups
    from orchestrator.models import AuditEvent, RollupCursor

    newest = AuditEvent.objects.aggregate(m=Max("id"))["m"] or 0
    started = time.perf_counter()
    passes = events = 0
    while (RollupCursor.objects.filter(name=rollups.CURSOR).values_list("position", flat=True).first() or 0) < newest:
        events += rollups.rollup_pass(batch=batch)
        passes += 1
    seconds = time.perf_counter() - started
    return {"passes": passes, "events": events, "seconds": round(seconds, 2), "events_per_s": round(events / seconds)}


def fill_by_sql() -> dict[str, float]:
    """Fill the roll-up tables from the loaded rows with SQL aggregates and move the cursor past every event: what
    the fold would have written, for a stage whose catch-up (folding millions of events at the rate the smaller
    stages measure) would outlast the run. Step durations are left out (the pages do not read them)."""
    from collections import defaultdict

    from django.db import connection, transaction
    from django.db.models import Max

    from orchestrator import rollups
    from orchestrator.models import AuditEvent, InstanceStateCount, RollupCursor, WorkflowHourStats

    started = time.perf_counter()
    bounds = [float(b) for b in rollups.DURATION_BUCKETS]
    with transaction.atomic(), connection.cursor() as cursor:
        InstanceStateCount.objects.all().delete()
        WorkflowHourStats.objects.all().delete()
        cursor.execute(
            "INSERT INTO orchestrator_instancestatecount (workflow_name, workflow_version, state, count) "
            "SELECT workflow_name, workflow_version, state, count(*) FROM orchestrator_workflowinstance "
            "GROUP BY 1, 2, 3"
        )
        rows: dict = defaultdict(
            lambda: {
                "started": 0,
                "completed": 0,
                "failed": 0,
                "compensated": 0,
                "cancelled": 0,
                "durations": rollups.empty_histogram(),
                "duration_sum": 0.0,
            }
        )
        cursor.execute(
            "SELECT workflow_name, date_trunc('hour', created_at), count(*) FROM orchestrator_workflowinstance "
            "GROUP BY 1, 2"
        )
        for name, hour, n in cursor.fetchall():
            rows[(name, hour)]["started"] += n
        cursor.execute(
            "SELECT workflow_name, date_trunc('hour', finished_at), state, "
            "width_bucket(extract(epoch FROM finished_at - created_at)::float8, %s::float8[]), count(*), "
            "sum(extract(epoch FROM finished_at - created_at)) FROM orchestrator_workflowinstance "
            "WHERE finished_at IS NOT NULL GROUP BY 1, 2, 3, 4",
            [bounds],
        )
        for name, hour, state, bucket, n, total in cursor.fetchall():
            row = rows[(name, hour)]
            row[state] += n
            if state == "completed":
                row["durations"][min(bucket, len(rollups.DURATION_BUCKETS))] += n
                row["duration_sum"] += float(total)
        spans = rollups._by_span(
            {
                key: {**value, "operator_retries": 0, "step_retries": 0, "step_durations": {}}
                for key, value in rows.items()
            }
        )
        WorkflowHourStats.objects.bulk_create(
            [WorkflowHourStats(workflow_name=k[0], span=k[1], hour=k[2], **v) for k, v in spans.items()],
            batch_size=2000,
        )
        newest = AuditEvent.objects.aggregate(m=Max("id"))["m"] or 0
        RollupCursor.objects.filter(name=rollups.CURSOR).update(
            position=newest, pending_position=newest, pending_xids=[]
        )
    return {"seconds": round(time.perf_counter() - started, 1), "rows": len(spans)}


def pass_cost(batch: int, repeats: int = 20) -> dict[str, float]:
    """What a sweep pays for the roll-up: a pass with nothing new, and a pass folding ``batch`` fresh events
    (events of already-loaded instances inserted again, so the fold has real rows to join)."""
    from django.db import connection

    from orchestrator import rollups

    idle = []
    for _ in range(repeats):
        started = time.perf_counter()
        rollups.rollup_pass(batch=batch)
        idle.append((time.perf_counter() - started) * 1000)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO orchestrator_auditevent (chain, seq, prev_hash, hash, key_id, occurred_at, actor_label, "
            "action, instance_id, subject_type, subject_id, from_state, to_state, reason, payload, request_meta) "
            "SELECT chain, seq + 100, '', 'bench', 'bench', now(), actor_label, action, instance_id, subject_type, "
            "subject_id, from_state, from_state, reason, payload, request_meta FROM orchestrator_auditevent "
            "WHERE action = 'step.succeeded' ORDER BY id DESC LIMIT %s",
            [batch],
        )
    rollups.rollup_pass(batch=batch)  # looks
    started = time.perf_counter()
    folded = rollups.rollup_pass(batch=batch)
    full = (time.perf_counter() - started) * 1000
    return {"idle_ms_p50": round(statistics.median(idle), 2), "full_pass_ms": round(full, 1), "folded": folded}


def time_pages(requests: int) -> dict[str, dict[str, float]]:
    """p50/p95 server time (ms) and SQL statements of each page, as an operator."""
    from django.contrib.auth.models import Group, Permission, User
    from django.db import connection
    from django.test import Client

    operators, _ = Group.objects.get_or_create(name="operators")
    operators.permissions.set(
        Permission.objects.filter(
            codename__in=["view_workflowinstance", "operate_workflowinstance", "add_workflowinstance"]
        )
    )
    user, _ = User.objects.get_or_create(username="bench-operator")
    user.groups.add(operators)
    client = Client()
    client.force_login(user)
    token = {"HTTP_AUTHORIZATION": "Bearer bench-metrics"}
    pages = {
        "dashboard 24h": ("/dashboard/", {}),
        "dashboard 7d": ("/dashboard/?window=7d", {}),
        "dashboard 30d": ("/dashboard/?window=30d", {}),
        "catalog": ("/workflows/", {}),
        "workflow page": ("/workflows/expense_approval/", {}),
        "/metrics": ("/metrics", token),
    }
    results = {}
    for name, (path, headers) in pages.items():
        client.get(path, **headers)  # warm
        times = []
        statements: list[str] = []

        def count(execute, sql, params, many, context, statements=statements):  # type: ignore[no-untyped-def]
            statements.append(sql)
            return execute(sql, params, many, context)

        # Counted at the connection's execute wrapper: every statement the request sends, whatever logs it.
        with connection.execute_wrapper(count):
            response = client.get(path, **headers)
        assert response.status_code == 200, (path, response.status_code)
        cpu = []
        for _ in range(requests):
            started, started_cpu = time.perf_counter(), time.process_time()
            client.get(path, **headers)
            times.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - started_cpu) * 1000)
        times.sort()
        cpu.sort()
        results[name] = {
            "p50_ms": round(statistics.median(times), 1),
            "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 1),
            "queries": len(statements),
            # This process's CPU per request: less sensitive than the wall clock to other people's work.
            "cpu_p50_ms": round(statistics.median(cpu), 1),
            "cpu_p95_ms": round(cpu[max(0, int(len(cpu) * 0.95) - 1)], 1),
        }
        print(
            f"    {name:15} p50 {results[name]['p50_ms']:7.1f} ms  p95 {results[name]['p95_ms']:7.1f} ms  "
            f"cpu p50 {results[name]['cpu_p50_ms']:6.1f} ms p95 {results[name]['cpu_p95_ms']:6.1f} ms",
            flush=True,
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--catch-up-batch", type=int, default=50_000)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="time the pages again on the database an earlier --keep run left (loads nothing, drops nothing)",
    )
    parser.add_argument(
        "--fold-upto",
        type=int,
        default=100_000,
        help="stages above this many instances fill the roll-ups with SQL instead of folding every event",
    )
    parser.add_argument(
        "--step-events-upto",
        type=int,
        default=100_000,
        help="write step.succeeded audit events only for instances up to this id (the 1M stage's 5M step events "
        "would take the roll-up's catch-up, not the pages, half an hour on a shared machine)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import os

    # The demo's two workflows give the catalog and the dashboard real definitions (and need the demo app).
    os.environ.setdefault("BATON_DEMO_APP", "1")
    os.environ.setdefault("BATON_WORKFLOW_MODULES", "demo.workflows.order_fulfilment,demo.workflows.expense_approval")
    harness.configure_env(db_name=DB_NAME, redis_url=REDIS_URL)

    os.environ["BATON_METRICS_TOKEN"] = "bench-metrics"
    os.environ["BATON_ALLOWED_HOSTS"] = "testserver,127.0.0.1"
    os.environ["BATON_SECURE_COOKIES"] = "0"
    if not args.reuse:
        print(f"database {DB_NAME}: {harness.reset_database(db_name=DB_NAME)}", flush=True)
    report: dict = {"stages": []}
    try:
        harness.migrate()
        import django

        django.setup()
        from django.test.utils import override_settings

        # Pages render their static links without a collectstatic manifest (the bench serves no files).
        override_settings(
            STORAGES={
                "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
                "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
            }
        ).enable()
        from bench.sysinfo import machine_info
        from orchestrator import rollups

        report["machine"] = machine_info(concurrency=0)
        rollups.rollup_pass()
        loaded = 0
        if args.reuse:
            from bench.harness import machine_busy
            from orchestrator.models import WorkflowInstance

            instances = WorkflowInstance.objects.count()
            print(f"reusing {instances:,} instances", flush=True)
            busy = machine_busy(2.0)
            pages = time_pages(args.requests)
            print(f"  machine busy before/after: {busy:.0%} / {machine_busy(2.0):.0%}", flush=True)
            report["stages"].append({"instances": instances, "reused": True, "pages": pages})
        for target in [] if args.reuse else sorted(args.stages):
            print(f"stage {target:,} instances", flush=True)
            load_s = load(loaded + 1, target, args.step_events_upto)
            loaded = target
            folded = {"filled_by_sql": fill_by_sql()} if target > args.fold_upto else catch_up(args.catch_up_batch)
            print(f"  loaded in {load_s:.0f} s; roll-up caught up: {folded}", flush=True)
            cost = pass_cost(5000)
            print(f"  sweep's roll-up pass: {cost}", flush=True)
            from bench.harness import machine_busy

            busy = machine_busy(2.0)
            pages = time_pages(args.requests)
            busy_after = machine_busy(2.0)
            print(f"  machine busy before/after the page timings: {busy:.0%} / {busy_after:.0%}", flush=True)
            report["stages"].append(
                {
                    "instances": target,
                    "step_runs": target * 5,
                    "load_s": round(load_s),
                    "catch_up": folded,
                    "pass": cost,
                    "pages": pages,
                }
            )
    finally:
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str))
        if not (args.keep or args.reuse):
            from django.db import connections

            connections.close_all()
            import psycopg
            from psycopg import sql

            with psycopg.connect(f"{harness.PG_SERVER}/postgres", autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB_NAME)))
            print(f"database {DB_NAME} dropped", flush=True)
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
