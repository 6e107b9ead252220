"""One ``POST /api/instances/`` in-process: statements, CPU per request, and where that CPU goes (cProfile).

``.venv/bin/python bench/api_profile.py`` (``--n 300 --top 30``). Uses the API bench's database and Redis db
(``baton_bench_api``, db 4: bench/api.py sets them up, this reuses them if present and creates them if not), in
production mode, through Django's WSGI handler with every middleware, as a token client sends it. No worker
runs: the started steps wait in Redis (flushed at the end). CPU is this process's alone (``time.process_time``),
so it stays meaningful on a busy machine, where wall time does not. See bench/README.md, "API starts".
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import sqlcount


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dump", metavar="FILE", help="also write the profile to FILE (pstats), to read callers")
    parser.add_argument("--n", type=int, default=300, help="starts measured (after 30 warm-up)")
    parser.add_argument("--db", default="baton_bench_api")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/4")
    parser.add_argument("--top", type=int, default=25, help="functions listed by cumulative time (0: none)")
    parser.add_argument("--sort", default="cumulative", help="pstats order: cumulative, tottime...")
    parser.add_argument("--no-key", action="store_true", help="starts without an Idempotency-Key")
    args = parser.parse_args(argv)

    harness.configure_env(db_name=args.db, redis_url=args.redis_url)
    harness.reset_database(db_name=args.db, keep=True)
    harness.migrate()
    import django

    django.setup()
    from django.contrib.auth.models import Permission
    from django.test import Client

    from api.tokens import token_create

    initiator, _ = harness.ensure_users(approvers=1)
    initiator.user_permissions.add(Permission.objects.get(codename="add_workflowinstance"))
    secret = token_create(initiator, f"profile-{uuid.uuid4().hex[:8]}").secret
    client = Client(HTTP_HOST="127.0.0.1")

    def start(index: int) -> int:
        headers = {"Authorization": f"Bearer {secret}"}
        if not args.no_key:
            headers["Idempotency-Key"] = uuid.uuid4().hex
        response = client.post(
            "/api/instances/",
            json.dumps({"workflow": "bench_approval", "input": {"n": index}}),
            content_type="application/json",
            headers=headers,
        )
        assert response.status_code == 201, (response.status_code, response.content[:300])
        return response.status_code

    for index in range(30):
        start(index)
    _, counted = sqlcount.count("POST /api/instances/", lambda: start(-1))
    print(counted.line())
    for sql in counted.statements:
        print("   ", sql[:150])

    cpu0, wall0 = time.process_time(), time.perf_counter()
    for index in range(args.n):
        start(index)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(f"\n{args.n} starts: {cpu * 1000 / args.n:.2f} ms CPU and {wall * 1000 / args.n:.2f} ms wall per start")

    if args.top:
        # CPU time, as the figure above: wall time would count the waits for PostgreSQL and Redis.
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        for index in range(args.n):
            start(index)
        profiler.disable()
        if args.dump:
            profiler.dump_stats(args.dump)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(args.sort).print_stats(args.top)
        print(out.getvalue())
    harness.flush_redis(args.redis_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
