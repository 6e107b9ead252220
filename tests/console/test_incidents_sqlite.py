"""Incidents on SQLite (the demo): the page's failure groups and retry storms are read with PostgreSQL's SQL
(LATERAL, split_part, array_agg) on PostgreSQL; on SQLite they were the same SQL, which SQLite refuses, so the demo's
Incidents page answered 503 whatever was in trouble. The SQLite reading must give what PostgreSQL gives. The tasks
nobody may act on are read with one portable statement on both (approvals.selectors.tasks_nobody_can_act).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.demo.test_app import manage

# The same rows, made on either database: three failures of one reason (one error with a Windows line end), one
# without an error, a retry storm of one step across ten instances, and three escalated tasks: one whose only
# candidate group has a deactivated member only, one whose only candidate user started the instance (four-eyes), and
# one an active person may act on (not listed).
MAKE_AND_READ = """
import json
from django.contrib.auth.models import Group, User
from approvals.models import HumanTask, TaskCandidate
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
    gone = User.objects.create(username="sqlite_gone", is_active=False)
    starter = User.objects.create(username="sqlite_starter")
    able = User.objects.create(username="sqlite_able")
    team = Group.objects.create(name="sqlite_team")
    team.user_set.add(gone)
    for title, initiator, group, user in (("Team", None, team, None), ("Own", starter, None, starter),
                                          ("Able", None, None, able)):
        instance = WorkflowInstance.objects.create(workflow_name="expense_approval", workflow_version=1,
                                                   state="waiting", initiator=initiator)
        step = StepRun.objects.create(instance=instance, name="approve", kind=StepKind.HUMAN, state="running")
        task = HumanTask.objects.create(instance=instance, step=step, kind="approval", title=title)
        HumanTask.objects.filter(pk=task.pk).update(state="escalated")
        TaskCandidate.objects.create(task=task, group=group, user=user)

def read():
    found = incidents()
    return {
        "failed_total": found.failed_total,
        "groups": [[g["workflow"], g["reason"], g["error_filter"], g["count"], g["idle"], len(g["ids"]),
                    g["ids"] == sorted(g["ids"], reverse=True)] for g in found.failed_groups],
        "retrying_total": found.retrying_total,
        "storms": [[s["workflow"], s["step"], s["instances"], s["attempts"], s["since"]] for s in found.storms],
        "nobody": [[r.task.title, r.able, r.needed, r.reasons] for r in found.nobody_can_act.rows],
        "nobody_total": found.nobody_can_act.total,
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
        "nobody": [
            ["Team", 0, 1, ["group sqlite_team: every member is deactivated"]],
            ["Own", 0, 1, ["user sqlite_starter started this workflow (four-eyes)"]],
        ],
        "nobody_total": 2,
    }
