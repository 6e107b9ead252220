"""The audit trail at a million events: the admins' timeline per filter, a full export, a full verification.

    .venv/bin/python bench/audit.py                    # 1,000,000 events in a fresh database baton_bench_audit
    .venv/bin/python bench/audit.py --events 100000    # smaller
    .venv/bin/python bench/audit.py --keep             # leave the database for a look afterwards
    .venv/bin/python bench/audit.py --seed-only        # only write (and keep) the database; measure with --reuse
    .venv/bin/python bench/audit.py --reuse --keep --only-verify       # verify_trail() on the kept database
    .venv/bin/python bench/audit.py --reuse --keep --skip-timeline --exports csv   # the CSV export, then verify

It drops and recreates its own PostgreSQL database (``--db``, default ``baton_bench_audit``), migrates it, writes
users, instances and a valid trail (every event HMAC-signed and chained exactly as the engine writes it, heads
on the instance and AuditChain rows) with COPY, runs ANALYZE, and then measures:

1. the timeline page (``GET /audit/`` through Django's full request path: middleware, session, the keyset query,
   the template) for each filter, ``--requests`` times with varying values, first pages and deep pages;
2. exporting every event as JSON Lines and as CSV through the ASGI application (the path daphne serves), in a
   child process whose peak resident memory (``ru_maxrss``) is reported;
3. ``verify_trail()`` over every chain, in a child process (time and peak memory).

Targets (issue 11): timeline p95 <= 100 ms for each filter; export peak memory < 200 MB; verification < 60 s.
The database is dropped at the end unless ``--keep``. Figures and the machine go to bench/README.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

AUDIT_KEY = "bench:" + "b" * 48
WORKFLOWS = [("order_fulfilment", 0.60), ("expense_approval", 0.35), ("bench_rare", 0.05)]
USERS = 200
# One instance's chain: (action, subject, from, to, by a person?) -- the shape of an approval run.
INSTANCE_EVENTS = [
    ("instance.started", "instance", "", "running", True),
    ("step.created", "step1", "", "pending", False),
    ("step.scheduled", "step1", "pending", "scheduled", False),
    ("step.started", "step1", "scheduled", "running", False),
    ("step.succeeded", "step1", "running", "succeeded", False),
    ("step.created", "step2", "", "pending", False),
    ("step.scheduled", "step2", "pending", "scheduled", False),
    ("step.started", "step2", "scheduled", "running", False),
    ("task.opened", "task", "", "open", False),
    ("instance.waiting", "instance", "running", "waiting", False),
    ("task.claimed", "task", "open", "claimed", True),
    ("task.completed", "task", "claimed", "completed", True),
    ("step.succeeded", "step2", "running", "succeeded", False),
    ("instance.resumed", "instance", "waiting", "running", False),
    ("step.created", "step3", "", "pending", False),
    ("step.scheduled", "step3", "pending", "scheduled", False),
    ("step.succeeded", "step3", "scheduled", "succeeded", False),
    ("instance.completed", "instance", "running", "completed", False),
]
COMMENTS = ["Approved, invoice PO-{n} matches", "Checked against budget line {n}", "ok", "Fine by me", ""]


def environment(db: str) -> dict[str, str]:
    return {
        "DATABASE_URL": f"postgres://root@127.0.0.1:5432/{db}",
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/3"),
        "BATON_SECRET_KEY": "bench-audit",
        "BATON_AUDIT_KEYS": AUDIT_KEY,
        "DJANGO_SETTINGS_MODULE": "baton_site.settings",
        "BATON_LOG_LEVEL": "WARNING",
        "BATON_AUDIT_SEAL_INTERVAL": "0",
        "BATON_ALLOWED_HOSTS": "127.0.0.1,localhost",
        # Production mode serves static files from a manifest: collected once into this directory.
        "BATON_STATIC_ROOT": f"/tmp/{db}-static",
    }


def recreate(db: str) -> None:
    import psycopg

    with psycopg.connect("postgres://root@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')


def drop(db: str) -> None:
    import psycopg

    with psycopg.connect("postgres://root@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def setup_django() -> None:
    import django

    django.setup()


# --- data -------------------------------------------------------------------------------------------------


def populate(events_target: int, seed: int = 7) -> dict[str, Any]:
    """Users, instances and a valid trail of about ``events_target`` events; returns what the timings ask for."""
    from django.contrib.auth.models import User
    from django.db import connection, transaction

    from orchestrator.audit import ACCESS_CHAIN, ACCOUNTS_CHAIN, Actor, _event
    from orchestrator.models import AuditChain

    rng = random.Random(seed)
    admin = User.objects.create_superuser("admin", "admin@example.com", "bench")
    people = User.objects.bulk_create([User(username=f"u{n}", password="!") for n in range(1, USERS + 1)])
    people_ids = [u.pk for u in people]
    number_of = {pk: n for n, pk in enumerate(people_ids, start=1)}
    per_instance = len(INSTANCE_EVENTS)
    standalone_each = events_target // 20  # accounts and access: a tenth of the trail together
    instances = max(1, (events_target - 2 * standalone_each) // per_instance)
    start = datetime(2026, 10, 1, tzinfo=UTC)
    span = timedelta(days=60)
    step_every = span / instances
    with connection.cursor() as cursor:
        cursor.execute("SELECT COALESCE(MAX(id), 0) FROM orchestrator_workflowinstance")
        first_instance = cursor.fetchone()[0] + 1
    # Read before the COPY starts: no other statement can run on the connection while it is open.
    known_heads = {name: (seq, head) for name, seq, head in AuditChain.objects.values_list("name", "seq", "head")}
    written = 0
    sample: dict[str, Any] = {"instances": [], "request_ids": [], "subjects": [], "comments": []}
    t0 = time.monotonic()
    atomic = transaction.atomic()  # one transaction: the events' foreign keys are checked at its commit
    atomic.__enter__()
    connection.ensure_connection()
    raw = connection.connection  # psycopg connection under Django's
    with raw.cursor() as cur:
        instance_rows = []
        heads = []
        with cur.copy(
            "COPY orchestrator_auditevent (chain, seq, prev_hash, hash, key_id, occurred_at, actor_id, actor_label, "
            "action, instance_id, subject_type, subject_id, from_state, to_state, reason, payload, request_meta, "
            "request_id) FROM STDIN"
        ) as copy:

            def put(event: Any) -> None:
                copy.write_row(
                    (
                        event.chain,
                        event.seq,
                        event.prev_hash,
                        event.hash,
                        event.key_id,
                        event.occurred_at,
                        event.actor_id,
                        event.actor_label,
                        event.action,
                        event.instance_id,
                        event.subject_type,
                        event.subject_id,
                        event.from_state,
                        event.to_state,
                        event.reason,
                        json.dumps(event.payload),
                        json.dumps(event.request_meta),
                        event.request_id,
                    )
                )

            for i in range(instances):
                pk = first_instance + i
                roll, workflow = rng.random(), WORKFLOWS[-1][0]
                acc = 0.0
                for name, share in WORKFLOWS:
                    acc += share
                    if roll < acc:
                        workflow = name
                        break
                at = start + step_every * i
                initiator = rng.choice(people_ids)
                decider = rng.choice([p for p in people_ids[:50] if p != initiator])
                task_id, step_base = pk, pk * 3
                seq, head = 0, ""
                for offset, (action, subject, before, after, human) in enumerate(INSTANCE_EVENTS):
                    seq += 1
                    who = initiator if action == "instance.started" else decider
                    actor = Actor(f"user:u{number_of[who]}", who) if human else Actor.system("worker")
                    if subject == "instance":
                        subject_type, subject_id = "instance", pk
                    elif subject == "task":
                        subject_type, subject_id = "task", task_id
                    else:
                        subject_type, subject_id = "step", step_base + int(subject[-1]) - 1
                    reason = ""
                    if action == "task.completed":
                        reason = rng.choice(COMMENTS).format(n=pk)
                    meta = (
                        {
                            "ip": f"10.{pk % 250}.{pk % 7}.{offset}",
                            "user_agent": "Mozilla/5.0 (bench)",
                            "path": f"/tasks/{task_id}/decide/",
                            "request_id": f"{pk:012x}{offset:04x}{rng.getrandbits(64):016x}",
                        }
                        if human
                        else {}
                    )
                    event = _event(
                        f"instance:{pk}",
                        seq,
                        head,
                        pk,
                        now=at + timedelta(seconds=offset * 7),
                        actor=actor,
                        action=action,
                        subject_type=subject_type,
                        subject_id=subject_id,
                        from_state=before,
                        to_state=after,
                        reason=reason,
                        payload={"workflow": workflow} if action == "instance.started" else {},
                        request_meta=meta,
                    )
                    head = event.hash
                    put(event)
                    if i % 997 == 0 and event.request_id:
                        sample["request_ids"].append(event.request_id)
                    if i % 991 == 0 and action == "task.completed" and "PO-" in reason:
                        sample["comments"].append(f"PO-{pk}")
                written += seq
                instance_rows.append((pk, workflow, at, initiator, seq, head))
                if i % 1009 == 0:
                    sample["instances"].append(pk)
                    sample["subjects"].append(task_id)
            for chain, actions in (
                (ACCOUNTS_CHAIN, ["user.created", "user.groups_added", "user.password_changed", "user.deactivated"]),
                (ACCESS_CHAIN, ["access.signed_in", "access.signed_out", "access.sign_in_failed", "access.refused"]),
            ):
                # The chain may have begun already (creating the admin is itself an accounts event).
                seq, head = known_heads.get(chain, (0, ""))
                chain_step = span / standalone_each
                for n in range(standalone_each):
                    seq += 1
                    written += 1
                    who = rng.choice(people_ids)
                    event = _event(
                        chain,
                        seq,
                        head,
                        None,
                        now=start + chain_step * n,
                        actor=Actor.of(admin) if chain == ACCOUNTS_CHAIN else Actor(f"user:u{who % USERS + 1}", None),
                        action=actions[n % len(actions)],
                        subject_type="user",
                        subject_id=who,
                        payload={"user": f"u{who}"},
                        from_state="",
                        to_state="",
                        reason="",
                        request_meta={"ip": "192.0.2.10", "user_agent": "Mozilla/5.0 (bench)", "path": "/login/"},
                    )
                    head = event.hash
                    put(event)
                heads.append((chain, seq, head))
        with cur.copy(
            "COPY orchestrator_workflowinstance (id, workflow_name, workflow_version, state, title, business_key, "
            "data, initiator_id, input_hash, outcome, error, created_at, updated_at, audit_seq, audit_head) "
            "FROM STDIN"
        ) as copy:
            for pk, workflow, at, initiator, seq, head in instance_rows:
                copy.write_row(
                    (
                        pk,
                        workflow,
                        1,
                        "completed",
                        f"{workflow} {pk}",
                        "",
                        "{}",
                        initiator,
                        "",
                        "",
                        "",
                        at,
                        at,
                        seq,
                        head,
                    )
                )
        for chain, seq, head in heads:
            cur.execute(
                "INSERT INTO orchestrator_auditchain (name, seq, head) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET seq = EXCLUDED.seq, head = EXCLUDED.head",
                (chain, seq, head),
            )
        cur.execute(
            "SELECT setval(pg_get_serial_sequence('orchestrator_workflowinstance', 'id'), "
            "(SELECT MAX(id) FROM orchestrator_workflowinstance))"
        )
    atomic.__exit__(None, None, None)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    sample["written"] = written
    sample["seconds"] = time.monotonic() - t0
    sample["admin"] = admin.pk
    sample["people"] = people_ids
    return sample


# --- measurements ----------------------------------------------------------------------------------------


def timeline(sample: dict[str, Any], requests: int) -> list[dict[str, Any]]:
    """p50/p95/max of GET /audit/ per filter, first pages and pages deep into the result."""
    from django.contrib.auth.models import User
    from django.test import Client

    from orchestrator.models import AuditEvent

    rng = random.Random(11)
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(User.objects.get(pk=sample["admin"]))
    client.get("/audit/")  # warm: templates, session
    middle = AuditEvent.objects.order_by("-occurred_at", "-id")[len(sample["instances"]) * 500]
    from audit.selectors import encode_cursor

    deep = encode_cursor(middle)
    day = datetime(2026, 10, 1, tzinfo=UTC)
    filters: dict[str, Any] = {
        "none": lambda: {},
        "none, deep page": lambda: {"after": deep},
        "actor (a person)": lambda: {"actor": f"u{rng.randint(1, USERS)}"},
        "actor system:worker, deep page": lambda: {"actor": "system:worker", "after": deep},
        "action (exact)": lambda: {"action": rng.choice(["task.completed", "instance.started", "access.refused"])},
        "action (prefix step.)": lambda: {"action": "step."},
        "workflow (60 %)": lambda: {"workflow": "order_fulfilment"},
        "workflow (5 %)": lambda: {"workflow": "bench_rare"},
        "instance": lambda: {"instance": rng.choice(sample["instances"])},
        "subject (task id)": lambda: {"subject_type": "task", "subject_id": rng.choice(sample["subjects"])},
        "date range (one day)": lambda: {
            "since": (d := day + timedelta(days=rng.randint(0, 58))).strftime("%Y-%m-%dT%H:%M"),
            "until": (d + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
        },
        "text search (rare: PO number)": lambda: {"q": rng.choice(sample["comments"] or ["PO-1"])},
        "text search (common: budget)": lambda: {"q": "budget"},
        "request id": lambda: {"request_id": rng.choice(sample["request_ids"])},
        "action + date range": lambda: {
            "action": "task.completed",
            "since": (d := day + timedelta(days=rng.randint(0, 58))).strftime("%Y-%m-%dT%H:%M"),
            "until": (d + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
        },
    }
    from audit.forms import AuditFilterForm
    from audit.selectors import audit_events_filtered, keyset_page

    def p95(values: list[float]) -> float:
        values = sorted(values)
        return round(values[max(0, int(len(values) * 0.95 + 0.5) - 1)], 1)

    results = []
    for name, params in filters.items():
        pages: list[float] = []
        queries: list[float] = []
        shown = 0
        for _ in range(requests):
            query = params()
            began = time.perf_counter()
            response = client.get("/audit/", query)
            pages.append((time.perf_counter() - began) * 1000)
            assert response.status_code == 200, (name, query, response.status_code)
            shown += response.content.count(b'<li class="audit-event')
            # The same page's database part alone: the keyset query through the selector, rows fetched.
            form = AuditFilterForm(query)
            assert form.is_valid(), form.errors
            began = time.perf_counter()
            keyset_page(audit_events_filtered(form.filters()).select_related("instance"), after=query.get("after", ""))
            queries.append((time.perf_counter() - began) * 1000)
        row = {
            "filter": name,
            "page_p50_ms": round(statistics.median(pages), 1),
            "page_p95_ms": p95(pages),
            "query_p50_ms": round(statistics.median(queries), 1),
            "query_p95_ms": p95(queries),
            "rows_per_page": round(shown / requests, 1),
        }
        results.append(row)
        print(
            f"  {name:32s} page p50 {row['page_p50_ms']:6.1f} p95 {row['page_p95_ms']:6.1f} ms | "
            f"query p50 {row['query_p50_ms']:6.1f} p95 {row['query_p95_ms']:6.1f} ms | {row['rows_per_page']} rows",
            flush=True,
        )
    return results


def export_child(kind: str, admin_id: int) -> None:
    """In a child process: GET /audit/export/<kind>/ through the ASGI application, the body thrown away."""
    setup_django()
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.asgi import get_asgi_application

    admin = User.objects.get(pk=admin_id)
    session = SessionStore()
    session["_auth_user_id"] = str(admin.pk)
    session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    session["_auth_user_hash"] = admin.get_session_auth_hash()
    session.create()
    app = get_asgi_application()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/audit/export/{kind}/",
        "raw_path": f"/audit/export/{kind}/".encode(),
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"cookie", f"sessionid={session.session_key}".encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    got = {"bytes": 0, "lines": 0, "status": 0, "first_byte": 0.0}
    began = time.monotonic()

    asked = {"body": False}

    async def receive() -> dict[str, Any]:
        if not asked["body"]:  # the request's (empty) body first, as a server sends it
            asked["body"] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)  # then no disconnect: the client reads to the end
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            got["status"] = message["status"]
        elif message["type"] == "http.response.body":
            body = message.get("body", b"")
            if body and not got["first_byte"]:
                got["first_byte"] = time.monotonic() - began
            got["bytes"] += len(body)
            got["lines"] += body.count(b"\n")

    asyncio.run(app(scope, receive, send))
    print(
        json.dumps(
            {
                "kind": kind,
                "status": got["status"],
                "seconds": round(time.monotonic() - began, 1),
                "first_byte_s": round(got["first_byte"], 2),
                "megabytes": round(got["bytes"] / 1e6, 1),
                "lines": got["lines"],
                "rss_before_mb": round(before / 1024, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


def verify_child() -> None:
    setup_django()
    from orchestrator.audit import verify_trail

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.monotonic()
    report = verify_trail()
    print(
        json.dumps(
            {
                "seconds": round(time.monotonic() - began, 1),
                "events": report.events,
                "chains": report.chains,
                "breaks": len(report.breaks),
                "first_break": str(report.breaks[0]) if report.breaks else "",
                "rss_before_mb": round(before / 1024, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


def child(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *args], env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=40, help="requests per timeline filter")
    parser.add_argument("--db", default="baton_bench_audit")
    parser.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    parser.add_argument("--reuse", action="store_true", help="measure an existing database (made with --keep)")
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--only-timeline", action="store_true", help="measure the timeline only (with --reuse)")
    parser.add_argument("--skip-timeline", action="store_true", help="measure export and verification only")
    parser.add_argument("--only-verify", action="store_true", help="measure the verification only (with --reuse)")
    parser.add_argument("--exports", default="jsonl,csv", help="which exports to measure: jsonl,csv (or none)")
    parser.add_argument("--seed-only", action="store_true", help="write the database and stop (implies --keep)")
    parser.add_argument("--export-child", help=argparse.SUPPRESS)
    parser.add_argument("--admin", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--verify-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    env = environment(args.db)
    os.environ.update(env)
    if args.export_child:
        export_child(args.export_child, args.admin)
        return
    if args.verify_child:
        verify_child()
        return
    results: dict[str, Any] = {"events_target": args.events}
    try:
        if not args.reuse:
            recreate(args.db)
        setup_django()
        from django.core.management import call_command

        from orchestrator.models import AuditEvent

        if not Path(env["BATON_STATIC_ROOT"], "staticfiles.json").exists():
            call_command("collectstatic", "--noinput", verbosity=0)
        if not args.reuse:
            call_command("migrate", verbosity=0)
            print(f"writing about {args.events:,} events ...", flush=True)
            sample = populate(args.events)
            Path(f"/tmp/{args.db}.sample.json").write_text(json.dumps(sample))
            print(f"  {sample['written']:,} events in {sample['seconds']:.0f} s", flush=True)
            if args.seed_only:
                args.keep = True
                return
        else:
            sample = json.loads(Path(f"/tmp/{args.db}.sample.json").read_text())
        results["events"] = AuditEvent.objects.count()
        from bench.sysinfo import machine_info

        results["machine"] = machine_info(0)
        results["load_average_before"] = os.getloadavg()
        if not args.only_verify and not args.skip_timeline:
            print(f"timeline ({args.requests} requests per filter, {results['events']:,} events):", flush=True)
        if not args.skip_timeline and not args.only_verify:
            results["timeline"] = timeline(sample, args.requests)
        exports = [kind for kind in args.exports.split(",") if kind in ("jsonl", "csv")]
        for kind in () if args.only_timeline or args.only_verify else exports:
            print(f"export {kind} ...", flush=True)
            results[f"export_{kind}"] = child(["--export-child", kind, "--admin", str(sample["admin"])], env)
            print(f"  {results[f'export_{kind}']}", flush=True)
        if not args.only_timeline:
            print("verify ...", flush=True)
            results["verify"] = child(["--verify-child"], env)
            print(f"  {results['verify']}", flush=True)
    finally:
        if not args.keep:
            from django.db import connections

            connections.close_all()
            drop(args.db)
    results["load_average_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
