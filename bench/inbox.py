"""Inbox benchmark: server time of "My tasks" and "Team queue" with 100,000 open tasks and 1,000,000 audit events.

    .venv/bin/python bench/inbox.py [--tasks 100000] [--mine 2000] [--audit 1000000] [--requests 200] [--keep]

Seeds a dedicated PostgreSQL database (``baton_inbox_bench``) with SQL ``generate_series`` (fast, but the seeded
audit rows carry placeholder hashes: this database measures reads, it is not a valid audit trail), then times
the real views in-process through Django's test client, which runs the whole request stack (middleware,
session, context processors with the navigation counts, templates) without a network hop. It prints p50/p95/max
per page and the SQL queries per page at page sizes 10, 25 and 100.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_NAME = "baton_inbox_bench"


def setup_env(keep: bool) -> None:
    os.environ.update(
        DATABASE_URL=f"postgres://root@127.0.0.1:5432/{DB_NAME}",
        REDIS_URL=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"),
        BATON_SECRET_KEY="bench",
        BATON_AUDIT_KEYS="bench:bench-audit-key-not-for-production",
        DJANGO_SETTINGS_MODULE="baton_site.settings",
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


SEED_SQL = """
INSERT INTO orchestrator_workflowinstance
    (id, workflow_name, workflow_version, state, title, business_key, data, initiator_id, input_hash, outcome,
     error, created_at, updated_at, audit_seq, audit_head)
SELECT g, 'bench_approval', 1, 'waiting', 'Bench request #' || g, 'BK-' || g,
       jsonb_build_object('amount', g %% 5000, 'customer', 'Customer ' || (g %% 997)),
       %(initiator)s, '', '', '', now() - (g || ' seconds')::interval, now(), 10, md5(g::text)
FROM generate_series(1, %(tasks)s) AS g;

INSERT INTO orchestrator_steprun
    (id, instance_id, name, kind, state, attempt, max_attempts, created_at, started_at, result, error, error_type)
SELECT g, g, 'approve', 'human', 'running', 0, 1, now(), now(), '{}', '', ''
FROM generate_series(1, %(tasks)s) AS g;

INSERT INTO approvals_humantask
    (id, instance_id, step_id, kind, title, description, state, priority, assignee_id, quorum, approvals, due_at,
     escalation_level, created_at, claimed_at, decision, comment, form_data)
SELECT g, g, g, 'approval', 'Approve Bench request #' || g, '',
       CASE WHEN g <= %(mine)s THEN 'claimed' ELSE 'open' END,
       g %% 4,
       CASE WHEN g <= %(mine)s THEN %(user)s ELSE NULL END,
       1, 0,
       CASE WHEN g %% 10 = 0 THEN NULL ELSE now() + ((g %% 2000) - 300 || ' minutes')::interval END,
       0, now() - (g || ' seconds')::interval,
       CASE WHEN g <= %(mine)s THEN now() ELSE NULL END,
       '', '', '{}'
FROM generate_series(1, %(tasks)s) AS g;

INSERT INTO approvals_taskcandidate (task_id, group_id)
SELECT g, %(group)s FROM generate_series(1, %(tasks)s) AS g;

INSERT INTO orchestrator_auditevent
    (chain, seq, prev_hash, hash, occurred_at, actor_label, action, instance_id, subject_type, subject_id,
     from_state, to_state, reason, payload, request_meta)
SELECT 'instance:' || i, s, md5((i * 100 + s - 1)::text), md5((i * 100 + s)::text), now(), 'system:bench',
       'step.started', i, 'step', i, 'scheduled', 'running', '', '{}', '{}'
FROM generate_series(1, %(tasks)s) AS i, generate_series(1, %(per_instance)s) AS s;

SELECT setval(pg_get_serial_sequence('orchestrator_workflowinstance', 'id'), %(tasks)s);
SELECT setval(pg_get_serial_sequence('orchestrator_steprun', 'id'), %(tasks)s);
SELECT setval(pg_get_serial_sequence('approvals_humantask', 'id'), %(tasks)s);
"""


def seed(tasks: int, mine: int, audit: int) -> tuple[int, int]:
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    # Production settings serve hashed static names from the manifest, as `make web` does.
    call_command("collectstatic", interactive=False, verbosity=0)
    group, _ = Group.objects.get_or_create(name="approvers")
    user, _ = User.objects.get_or_create(username="bench-user")
    user.groups.add(group)
    initiator, _ = User.objects.get_or_create(username="bench-initiator")
    if not User.objects.filter(username="bench-user").exists() or not _seeded(tasks):
        started = time.perf_counter()
        params = {
            "tasks": tasks,
            "mine": mine,
            "user": user.pk,
            "group": group.pk,
            "initiator": initiator.pk,
            "per_instance": max(1, audit // tasks),
        }
        with connection.cursor() as cursor:
            for statement in [s.strip() for s in SEED_SQL.split(";") if s.strip()]:
                cursor.execute(statement, params)
            cursor.execute("ANALYZE")
        print(
            f"seeded {tasks} tasks ({mine} mine), {params['per_instance'] * tasks} audit events "
            f"in {time.perf_counter() - started:.1f} s"
        )
    return user.pk, group.pk


def _seeded(tasks: int) -> bool:
    from approvals.models import HumanTask

    return HumanTask.objects.count() >= tasks


def measure(user_id: int, requests: int) -> list[dict[str, object]]:
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, setup_test_environment

    # Lets the client see response.context (template rendering is instrumented, as in every Django test).
    setup_test_environment()
    client = Client()
    client.force_login(User.objects.get(pk=user_id))
    pages = {
        "My tasks": "/inbox/?tab=mine",
        "Team queue": "/inbox/?tab=queue",
        "Team queue, by priority": "/inbox/?tab=queue&sort=priority",
        "Team queue, overdue": "/inbox/?tab=queue&due=overdue",
        "Team queue, page 2 (keyset)": None,
        "Team queue, search": "/inbox/?tab=queue&q=BK-98765",
    }
    first = client.get("/inbox/?tab=queue")
    cursor = first.context["next_params"]["after"]
    pages["Team queue, page 2 (keyset)"] = f"/inbox/?tab=queue&after={cursor}"
    rows = []
    for name, url in pages.items():
        assert url is not None
        for _ in range(10):
            client.get(url)  # warm-up: plans, template cache
        timings = []
        for _ in range(requests):
            started = time.perf_counter()
            response = client.get(url)
            timings.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        queries = {}
        for size in (10, 25, 100):
            with CaptureQueriesContext(connection) as ctx:
                response = client.get(f"{url}&size={size}")
            queries[size] = len(ctx.captured_queries)
            shown = len(response.context["page"].tasks)
        timings.sort()
        rows.append(
            {
                "page": name,
                "p50": statistics.median(timings),
                "p95": timings[int(len(timings) * 0.95) - 1],
                "max": timings[-1],
                "queries": queries,
                "rows@100": shown,
            }
        )
    return rows


def revision() -> str:
    """The measured revision, "+dirty" when the work tree differs from it."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"{rev}+dirty" if git("status", "--porcelain", "--untracked-files=no") else rev


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--mine", type=int, default=2_000)
    parser.add_argument("--audit", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="reuse the seeded database of an earlier run")
    args = parser.parse_args()
    setup_env(args.keep)
    import django

    django.setup()
    user_id, _ = seed(args.tasks, args.mine, args.audit)
    load_before = os.getloadavg()
    rows = measure(user_id, args.requests)
    load_after = os.getloadavg()
    print()
    print(
        f"revision {revision()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average (1/5/15 min) "
        f"{'/'.join(f'{v:.2f}' for v in load_before)} before the requests, "
        f"{'/'.join(f'{v:.2f}' for v in load_after)} after"
    )
    print(f"| page | p50 ms | p95 ms | max ms | SQL queries at size 10 / 25 / 100 |  ({args.requests} requests each)")
    print("| --- | ---: | ---: | ---: | --- |")
    for row in rows:
        q = row["queries"]
        assert isinstance(q, dict)
        print(
            f"| {row['page']} | {row['p50']:.1f} | {row['p95']:.1f} | {row['max']:.1f} | {q[10]} / {q[25]} / {q[100]} |"
        )


if __name__ == "__main__":
    main()
