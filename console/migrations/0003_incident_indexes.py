"""Indexes for the reads that scanned far more than the rows they answer with at a million instances
(``bench/console.py --explain /incidents/``, bench/README.md "Run 3"): three on Incidents, one on the list.

- paused instances past their resume time: the read took the 10,000 paused instances' rows (1 % of a million)
  to return the 50 oldest ``paused_until``; now it walks ``paused_until`` among paused instances only;
- open escalations (count and oldest 50): a scan of every human task (80,000 open at a million);
- tasks past their SLA (count and most overdue 50): the same scan, then a sort;
- and for the instance list's error-text filter, its counts by state: each state's count intersected a bitmap
  of every instance in that state (850,000 completed) with the instances that have an error; now it walks the
  instances with an error in that state only.

``paused_until`` changes only on pause and resume, ``error`` only when an instance fails or is retried (``state``
is indexed already), and a task's ``due_at``, ``kind`` and ``state`` only when a person or the sweep acts on it:
none of these costs the engine's per-step updates their heap-only tuples.

Built ``CONCURRENTLY`` (outside a transaction), so adding them to a live database does not block the engine.
PostgreSQL only, like 0002.
"""

from django.db import migrations

ACTIONABLE = "state IN ('open', 'claimed', 'escalated')"
INDEXES = {
    "console_instance_paused_until": "ON orchestrator_workflowinstance (paused_until) WHERE state = 'paused'",
    "console_task_escalations": f"ON approvals_humantask (created_at, id) WHERE kind = 'escalation' AND {ACTIONABLE}",
    "console_task_overdue": f"ON approvals_humantask (due_at) WHERE kind <> 'escalation' AND {ACTIONABLE}",
    "console_instance_error_state": "ON orchestrator_workflowinstance (state, created_at DESC, id DESC) WHERE error <> ''",
}


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, definition in INDEXES.items():
        schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} {definition}")


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in INDEXES:
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("console", "0002_instance_read_indexes"),
        ("approvals", "0003_userprofile"),
    ]

    operations = [migrations.RunPython(create, drop)]
