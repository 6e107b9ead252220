"""The console's instance page against an instance's history: server time and SQL queries of
``GET /console/instances/<id>/`` for one instance with 1,000, 10,000 and 50,000 audit events (a loop: one step run
and three consumed signals per five events, so 200, 2,000 and 10,000 step runs).

    .venv/bin/pytest -n 0 -q -s -p no:cacheprovider --timeout=0 bench/history_page.py

Run through pytest for its test database (``BATON_TEST_DB_NAME``, tests.settings), rolled back at the end. The
history is bulk-inserted with ``tests.factories.long_history`` (``orchestrator.audit.append``: a valid chain). The
page is timed through Django's test client as an operator (the whole request stack, no network hop): one warm-up,
then ``REQUESTS`` requests, median and max; the SQL count is of one request.
"""

from __future__ import annotations

import statistics
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from demo.data import grant_group_permissions
from orchestrator import registry
from orchestrator.dsl import StepContext, Task, Workflow
from orchestrator.services.instances import instance_start
from tests.factories import GroupFactory, UserFactory, long_history

REQUESTS = 7
SIZES = (1000, 10000, 50000)


def noop(ctx: StepContext) -> dict:
    return {}


@pytest.mark.django_db
def test_instance_page_by_history_size(client) -> None:
    flow = registry.register(Workflow("history_bench", 1, [Task("check", noop), Task("tell", noop)]))
    try:
        operator = UserFactory(username="operator", groups=[GroupFactory(name="operators")])
        grant_group_permissions()
        client.force_login(operator)
        rows = []
        for size in SIZES:
            instance = instance_start("history_bench", {"n": size}, initiator=operator)
            long_history(instance, size, step_name="check")
            with connection.cursor() as cur:
                cur.execute("ANALYZE orchestrator_auditevent; ANALYZE orchestrator_steprun")
            url = reverse("console:instance_detail", args=[instance.pk])
            assert client.get(url).status_code == 200
            with CaptureQueriesContext(connection) as queries:
                response = client.get(url)
            statements = len(queries)  # now: the next request resets the connection's query log
            timings = []
            for _ in range(REQUESTS):
                began = time.perf_counter()
                client.get(url)
                timings.append((time.perf_counter() - began) * 1000)
            rows.append(
                (
                    instance.audit_seq,
                    instance.steps.count(),
                    statistics.median(timings),
                    max(timings),
                    statements,
                    len(response.content),
                )
            )
        print("\n| events | step runs | median ms | max ms | SQL queries | page bytes |")
        print("|---:|---:|---:|---:|---:|---:|")
        for events, steps, median, worst, n, size in rows:
            print(f"| {events:,} | {steps:,} | {median:.0f} | {worst:.0f} | {n} | {size:,} |")
    finally:
        registry.unregister(flow.name, flow.version)
