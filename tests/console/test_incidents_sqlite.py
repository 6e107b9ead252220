"""Incidents on SQLite (the demo): the page's failure groups and retry storms are read with PostgreSQL's SQL
(LATERAL, split_part, array_agg) on PostgreSQL; on SQLite they were the same SQL, which SQLite refuses, so the demo's
Incidents page answered 503 whatever was in trouble. The SQLite reading must give what PostgreSQL gives.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.demo.test_app import manage

# The same rows, made on either database: three failures of one reason (one error with a Windows line end), one
# without an error, and a retry storm of one step across ten instances.
MAKE_AND_READ = """
import json
from orchestrator.models import StepKind, StepRun, WorkflowInstance
from console.selectors import incidents

def make():
    for n in range(3):
        WorkflowInstance.objects.create(workflow_name="order_fulfilment", workflow_version=1, state="failed",
                                        error="card declined\\r\\nTraceback" if n else "card declined\\nTraceback")
    WorkflowInstance.objects.create(workflow_name="expense_approval", workflow_version=1, state="failed", error="")
    for n in range(10):
        instance = WorkflowInstance.objects.create(workflow_name="order_fulfilment", workflow_version=1)
        StepRun.objects.create(instance=instance, name="charge", kind=StepKind.TASK, state="failed", attempt=2 + n % 2)

def read():
    found = incidents()
    return {
        "failed_total": found.failed_total,
        "groups": [[g["workflow"], g["reason"], g["error_filter"], g["count"], g["idle"], len(g["ids"]),
                    g["ids"] == sorted(g["ids"], reverse=True)] for g in found.failed_groups],
        "retrying_total": found.retrying_total,
        "storms": [[s["workflow"], s["step"], s["instances"], s["attempts"], s["since"]] for s in found.storms],
    }
"""


def read_on_postgresql() -> dict:
    namespace: dict = {}
    exec(MAKE_AND_READ, namespace)  # noqa: S102 - the test's own text, run here as on SQLite below
    namespace["make"]()
    return namespace["read"]()


@pytest.mark.django_db
def test_incidents_reads_failures_and_retry_storms_on_sqlite_as_on_postgresql(tmp_path: Path):
    # given the same rows on the demo's SQLite and on PostgreSQL
    database = tmp_path / "baton.sqlite3"
    manage(database, "migrate", "--noinput", demo_app="1")

    # when
    output = manage(database, "shell", "-c", MAKE_AND_READ + "\nmake()\nprint(json.dumps(read()))", demo_app="1")
    on_sqlite = json.loads(output.strip().splitlines()[-1])
    on_postgresql = json.loads(json.dumps(read_on_postgresql()))

    # then
    assert on_sqlite == on_postgresql
    assert on_sqlite == {
        "failed_total": 4,
        "groups": [
            ["order_fulfilment", "card declined", "card declined", 3, 0, 3, True],
            ["expense_approval", "(no error recorded)", "", 1, 0, 1, True],
        ],
        "retrying_total": 10,
        "storms": [["order_fulfilment", "charge", 10, 3, None]],
    }
