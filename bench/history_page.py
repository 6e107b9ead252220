"""The console's instance page against an instance's history: server time and SQL queries of
``GET /console/instances/<id>/`` for one instance with 20, 1,000, 10,000 and 50,000 audit events (a loop: one step run
and three consumed signals per five events, so 4, 200, 2,000 and 10,000 step runs).

    .venv/bin/pytest -n 0 -q -s -p no:cacheprovider --timeout=0 bench/history_page.py

Run through pytest for its test database (``BATON_TEST_DB_NAME``, tests.settings), rolled back at the end. The
history is bulk-inserted with ``tests.factories.long_history`` (``orchestrator.audit.append``: a valid chain). The
page (and the API's instance detail, ``GET /api/instances/<id>/``) is timed through Django's test client as an
operator (the whole request stack, no network hop): one warm-up,
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
SIZES = (20, 1000, 10000, 50000)


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
            api = reverse("api:instance-detail", args=[instance.pk])
            assert client.get(api).status_code == 200
            api_timings = []
            for _ in range(REQUESTS):
                began = time.perf_counter()
                api_response = client.get(api)
                api_timings.append((time.perf_counter() - began) * 1000)
            rows.append(
                (
                    instance.audit_seq,
                    instance.steps.count(),
                    statistics.median(timings),
                    max(timings),
                    statements,
                    len(response.content),
                    statistics.median(api_timings),
                    len(api_response.content),
                )
            )
        print(
            "\n| events | step runs | page median ms | max ms | SQL queries | page bytes | API median ms | API bytes |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for events, steps, median, worst, n, size, api_ms, api_size in rows:
            cells = [f"{events:,}", f"{steps:,}", f"{median:.0f}", f"{worst:.0f}", str(n), f"{size:,}"]
            print("| " + " | ".join([*cells, f"{api_ms:.0f}", f"{api_size:,}"]) + " |")
    finally:
        registry.unregister(flow.name, flow.version)
