"""Console benchmark: server time and SQL queries of the instance list (each filter), Incidents and the instance
page, from 10,000 to 1,000,000 instances (5 step runs each: 5,000,000 at the top).

    .venv/bin/python bench/console.py [--sizes 10000,100000,1000000] [--requests 60] [--keep] [--json FILE]
    .venv/bin/python bench/console.py --explain /incidents/      # each statement's plan, on the kept database

Seeds a dedicated PostgreSQL database (``baton_bench_ops``; dropped at the end unless ``--keep``) with SQL
``generate_series``, in stages: at each size it adds the instances up to that size, runs VACUUM (ANALYZE), and times
the real views in-process through Django's test client (the whole request stack: middleware, session, context
processors, templates; no network hop) as an operator. It prints p50/p95/max per page and the SQL queries per
page, and the queries must be the same at every size.

The data: two workflows, states as a busy deployment has them (85 % completed, 8 % waiting on a person, 3 %
running, 2 % failed with one of a few errors, 1 % cancelled, 1 % compensated, 1 % paused), business data with a
customer (997 distinct), an amount and a city (20), five step runs per instance, a human task per waiting
instance (an eighth of them overdue), and a retry storm (steps failing again and again). Audit events (20 each,
placeholder hashes: this database measures reads, it is not a valid trail) are seeded for one instance in a
thousand, the ones whose page is timed: the page reads an instance's events by its index, whatever the others'.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_NAME = "baton_bench_ops"
STEPS = 5
# Instances start 7 s apart, ending now: a million covers about 81 days.
SPACING_SECONDS = 7


def settings_module() -> str:
    return "baton_site.settings" if (ROOT / "baton_site" / "settings.py").exists() else "orchestrator.settings"


def setup_env(keep: bool) -> None:
    os.environ.update(
        DATABASE_URL=f"postgres://root@127.0.0.1:5432/{DB_NAME}",
        REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/6"),
        BATON_SECRET_KEY="bench",
        BATON_AUDIT_KEYS="bench:bench-audit-key-not-for-production",
        DJANGO_SETTINGS_MODULE=settings_module(),
        BATON_LOG_LEVEL="WARNING",
        BATON_ALLOWED_HOSTS="testserver,127.0.0.1",
    )
    import psycopg

    with psycopg.connect("postgres://root@127.0.0.1:5432/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB_NAME]).fetchone()
        if exists and not keep:
            conn.execute(f"DROP DATABASE {DB_NAME} WITH (FORCE)")
            exists = None
        if not exists:
            conn.execute(f"CREATE DATABASE {DB_NAME}")


def drop_database() -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect("postgres://root@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")


# %(lo)s < g <= %(hi)s; %(top)s is the largest size of the run (ids and times are laid out for it).
SEED_SQL = """
INSERT INTO orchestrator_workflowinstance
    (id, workflow_name, workflow_version, state, title, business_key, data, initiator_id, input_hash, outcome,
     error, created_at, updated_at, finished_at, paused_until, audit_seq, audit_head)
SELECT g,
       CASE WHEN g %% 5 < 3 THEN 'order_fulfilment' ELSE 'expense_approval' END,
       CASE WHEN g %% 5 = 4 THEN 2 ELSE 1 END,
       CASE WHEN g %% 100 < 2 THEN 'failed' WHEN g %% 100 = 2 THEN 'cancelled' WHEN g %% 100 = 3 THEN 'compensated'
            WHEN g %% 100 < 7 THEN 'running' WHEN g %% 100 < 15 THEN 'waiting' WHEN g %% 100 = 15 THEN 'paused'
            ELSE 'completed' END,
       'Order O-' || g || ' for Customer ' || (g %% 997), 'BK-' || g,
       jsonb_build_object('order_id', 'O-' || g, 'customer', 'Customer ' || (g %% 997), 'amount', g %% 5000,
                          'address', jsonb_build_object('city', 'City ' || (g %% 20))),
       %(initiator)s, '', '',
       CASE WHEN g %% 100 = 0 THEN 'charge_payment failed: card declined (code ' || (g %% 7) || ')'
            WHEN g %% 100 = 1 THEN 'ship failed: carrier timeout after 30 s' ELSE '' END,
       now() - ((%(top)s - g) * %(spacing)s || ' seconds')::interval,
       now() - ((%(top)s - g) * %(spacing)s - 60 || ' seconds')::interval,
       CASE WHEN g %% 100 IN (2, 3) OR g %% 100 >= 16
            THEN now() - ((%(top)s - g) * %(spacing)s - 60 || ' seconds')::interval END,
       CASE WHEN g %% 100 = 15 THEN now() + ((g %% 3) - 1 || ' hours')::interval END,
       20, md5(g::text)
FROM generate_series(%(lo)s + 1, %(hi)s) AS g;

INSERT INTO orchestrator_steprun
    (id, instance_id, name, kind, state, attempt, max_attempts, due_at, lease_expires_at, started_at, finished_at,
     created_at, result, error, error_type)
SELECT (g - 1) * 5 + k, g,
       (ARRAY['reserve_inventory', 'charge_payment', 'approval_needed', 'ship', 'notify_customer'])[k],
       CASE WHEN k = 5 AND g %% 100 BETWEEN 7 AND 14 THEN 'human' ELSE 'task' END,
       CASE WHEN k < 5 THEN 'succeeded'
            WHEN g %% 100 < 2 THEN 'dead'
            WHEN g %% 100 IN (2, 3) THEN 'skipped'
            WHEN g %% 100 = 4 THEN 'running'
            WHEN g %% 100 = 5 THEN 'failed'
            WHEN g %% 100 = 6 THEN 'scheduled'
            WHEN g %% 100 < 15 THEN 'running'
            WHEN g %% 100 = 15 THEN 'scheduled'
            ELSE 'succeeded' END,
       CASE WHEN k = 5 AND g %% 100 = 5 THEN 6 ELSE 1 END, 8,
       CASE WHEN k = 5 AND g %% 100 IN (5, 6, 15) THEN now() + interval '1 minute' END,
       CASE WHEN k = 5 AND g %% 100 = 4 THEN now() + interval '1 hour' END,
       now() - ((%(top)s - g) * %(spacing)s - k || ' seconds')::interval,
       CASE WHEN k < 5 OR g %% 100 < 4 OR g %% 100 >= 16
            THEN now() - ((%(top)s - g) * %(spacing)s - k - 1 || ' seconds')::interval END,
       now() - ((%(top)s - g) * %(spacing)s - k || ' seconds')::interval,
       '{}',
       CASE WHEN k = 5 AND g %% 100 = 0 THEN 'card declined (code ' || (g %% 7) || ')'
            WHEN k = 5 AND g %% 100 = 1 THEN 'carrier timeout after 30 s' ELSE '' END,
       CASE WHEN k = 5 AND g %% 100 < 2 THEN 'ServiceUnavailable' ELSE '' END
FROM generate_series(%(lo)s + 1, %(hi)s) AS g, generate_series(1, 5) AS k;

INSERT INTO approvals_humantask
    (id, instance_id, step_id, kind, title, description, state, priority, assignee_id, quorum, approvals, due_at,
     escalation_level, created_at, decision, comment, form_data)
SELECT g, g, (g - 1) * 5 + 5, 'approval', 'Approve order O-' || g, '', 'open', 1, NULL, 1, 0,
       now() + ((CASE WHEN g %% 100 = 7 THEN -2 ELSE 4 END) || ' hours')::interval, 0, now(), '', '', '{}'
FROM generate_series(%(lo)s + 1, %(hi)s) AS g WHERE g %% 100 BETWEEN 7 AND 14;

INSERT INTO orchestrator_auditevent
    (chain, seq, prev_hash, hash, key_id, occurred_at, actor_label, action, instance_id, subject_type, subject_id,
     from_state, to_state, reason, payload, request_meta)
SELECT 'instance:' || g, s, md5((g * 100 + s - 1)::text), md5((g * 100 + s)::text), 'bench',
       now() - ((%(top)s - g) * %(spacing)s - s || ' seconds')::interval, 'system:worker',
       CASE WHEN s %% 4 = 1 THEN 'step.started' WHEN s %% 4 = 2 THEN 'step.failed'
            WHEN s %% 4 = 3 THEN 'step.started' ELSE 'step.succeeded' END,
       g, 'step', (g - 1) * 5 + 1 + (s - 1) / 4,
       '', '', 'attempt',
       CASE WHEN s %% 4 = 2 THEN jsonb_build_object('attempt', 1, 'error_type', 'ServiceUnavailable',
            'error', E'simulated outage\\n\\nTraceback (most recent call last):\\n  File "/srv/baton/x.py", line 1')
            ELSE jsonb_build_object('attempt', 1 + (s %% 4) / 3) END,
       jsonb_build_object('worker', 'bench/1')
FROM generate_series(%(lo)s + 1, %(hi)s) AS g, generate_series(1, 20) AS s WHERE g %% 1000 = 500;

SELECT setval(pg_get_serial_sequence('orchestrator_workflowinstance', 'id'), %(hi)s);
SELECT setval(pg_get_serial_sequence('orchestrator_steprun', 'id'), %(hi)s * 5);
SELECT setval(pg_get_serial_sequence('approvals_humantask', 'id'), %(hi)s)
"""


def prepare() -> Any:
    import django

    django.setup()
    from django.contrib.auth.models import Group, Permission, User
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)
    operators, _ = Group.objects.get_or_create(name="operators")
    operators.permissions.set(
        Permission.objects.filter(
            content_type__app_label="orchestrator",
            codename__in=["add_workflowinstance", "view_workflowinstance", "operate_workflowinstance"],
        )
    )
    operator, _ = User.objects.get_or_create(username="bench-operator")
    operator.groups.add(operators)
    User.objects.get_or_create(username="bench-initiator")
    return operator


def seed(lo: int, hi: int, top: int) -> float:
    from django.contrib.auth.models import User
    from django.db import connection

    initiator = User.objects.get(username="bench-initiator")
    params = {"lo": lo, "hi": hi, "top": top, "spacing": SPACING_SECONDS, "initiator": initiator.pk}
    started = time.perf_counter()
    with connection.cursor() as cursor:
        for statement in [s.strip() for s in SEED_SQL.split(";\n") if s.strip()]:
            cursor.execute(statement, params)
        # VACUUM as well: autovacuum would have, on a real server (this one runs with it off), and without a
        # visibility map no read is index-only and the planner costs every index scan as if it visits the table.
        cursor.execute("VACUUM (ANALYZE)")
    return time.perf_counter() - started


def pages(size: int, top: int) -> dict[str, str]:
    """The pages timed at ``size`` instances (the newest day's window, a key and an instance that exist)."""
    from datetime import timedelta

    from django.utils import timezone

    day_end = timezone.now() - timedelta(days=1)
    window = f"started_from={(day_end - timedelta(days=1)):%Y-%m-%dT%H:%M}&started_to={day_end:%Y-%m-%dT%H:%M}"
    sampled = size - size % 1000 - 500  # an instance with a seeded audit trail
    return {
        "list": "/instances/",
        "list state=failed": "/instances/?state=failed",
        "list workflow+version": "/instances/?workflow=order_fulfilment&version=1",
        "list started between (a day)": f"/instances/?{window}",
        "list error text": "/instances/?error=carrier",
        "list business key": f"/instances/?business_key=BK-{size // 2}",
        "list data customer (1/997)": "/instances/?data_path=customer&data_value=Customer+17",
        "list data address.city (1/20)": "/instances/?data_path=address.city&data_value=City+3",
        "list page 2 (keyset)": "",
        "incidents": "/incidents/",
        "instance page": f"/instances/{sampled}/",
    }


def measure(operator: Any, size: int, top: int, requests: int) -> list[dict[str, Any]]:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    if not getattr(measure, "ready", False):
        setup_test_environment()
        measure.ready = True  # type: ignore[attr-defined]
    client = Client()
    client.force_login(operator)
    urls = pages(size, top)
    first = client.get("/instances/")
    urls["list page 2 (keyset)"] = f"/instances/?after={first.context['page'].next_cursor}"
    rows = []
    for name, url in urls.items():
        for _ in range(5):
            response = client.get(url)  # warm-up: plans, template cache
            assert response.status_code == 200, (url, response.status_code)
        timings, cpu, sql = [], [], []
        for _ in range(requests):
            started, started_cpu = time.perf_counter(), time.process_time()
            with CaptureQueriesContext(connection) as ctx:
                client.get(url)
            timings.append((time.perf_counter() - started) * 1000)
            # This process's CPU (Python: view, template) and the SQL's wall time: on a machine shared with other
            # work the wall clock includes waiting for a core, these two say where the time goes.
            cpu.append((time.process_time() - started_cpu) * 1000)
            sql.append(sum(float(q["time"]) for q in ctx.captured_queries) * 1000)
        timings.sort()
        rows.append(
            {
                "size": size,
                "page": name,
                "p50": round(statistics.median(timings), 1),
                "p95": round(timings[max(0, int(len(timings) * 0.95) - 1)], 1),
                "max": round(timings[-1], 1),
                "queries": len(ctx.captured_queries),
                "cpu_p50": round(statistics.median(cpu), 1),
                "sql_p50": round(statistics.median(sql), 1),
                "sql_p95": round(sorted(sql)[max(0, int(len(sql) * 0.95) - 1)], 1),
            }
        )
        r = rows[-1]
        print(
            f"{size:>9,} {name:<32} p50 {r['p50']:>7} p95 {r['p95']:>7} ms | cpu p50 {r['cpu_p50']:>6} | "
            f"sql p50 {r['sql_p50']:>6} p95 {r['sql_p95']:>6} ms | {r['queries']} q",
            flush=True,
        )
    return rows


def explain(operator: Any, url: str, slower_than_ms: float = 0.0) -> None:
    """Print every SQL statement one request of ``url`` runs, each with its ``EXPLAIN (ANALYZE, BUFFERS)`` plan
    (the statements are run again for the plan; the page's own run warmed the cache). Statements faster than
    ``slower_than_ms`` in the page's run are listed by time only."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    setup_test_environment()
    client = Client()
    client.force_login(operator)
    client.get(url)  # warm-up
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    print(f"{url}: {len(ctx.captured_queries)} statements")
    for number, query in enumerate(ctx.captured_queries, 1):
        took = float(query["time"]) * 1000
        print(f"\n--- {number}: {took:.1f} ms\n{query['sql']}")
        if took < slower_than_ms or not query["sql"].lstrip().upper().startswith(("SELECT", "WITH")):
            continue
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query['sql']}")
            print("\n".join(row[0] for row in cursor.fetchall()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards (and reuse one)")
    parser.add_argument("--json", help="write every row to this file")
    parser.add_argument(
        "--explain",
        metavar="URL",
        help="on the kept database (implies --keep, seeds nothing): print each statement of one request of URL "
        "with its EXPLAIN (ANALYZE, BUFFERS), e.g. --explain /incidents/",
    )
    parser.add_argument("--explain-over", type=float, default=0.0, help="plan only statements slower than this (ms)")
    args = parser.parse_args()
    if args.explain:
        setup_env(keep=True)
        explain(prepare(), args.explain, args.explain_over)
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    setup_env(args.keep)
    results: list[dict[str, Any]] = []
    try:
        operator = prepare()
        seeded = 0
        from orchestrator.models import WorkflowInstance

        seeded = WorkflowInstance.objects.count()
        for size in sizes:
            if size > seeded:
                took = seed(seeded, size, sizes[-1])
                print(f"seeded {size - seeded:,} instances and {(size - seeded) * STEPS:,} step runs in {took:.0f} s")
                seeded = size
            results += measure(operator, size, sizes[-1], args.requests)
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        if not args.keep:
            drop_database()
            print(f"dropped {DB_NAME}")


if __name__ == "__main__":
    main()
