"""The indexes the console's reads need on the engine's tables, owned by the console (the engine's writes do not
need them; the console is what reads this way). PostgreSQL only: the demo's SQLite database is small enough to scan.

- keyset pages, newest first, of every instance, of one state, of one workflow (and version);
- the business data by containment (``data @> '{"customer": "ACME"}'``): GIN with ``jsonb_path_ops``;
- instances with an error, for the error-text filter (the ILIKE then reads only those rows);
- failed instances, for the Incidents page's grouping; steps waiting to retry, for its retry storms.

No index names ``updated_at``: the engine updates it on every step, and an indexed column changed by an update
makes PostgreSQL write a new index entry instead of a heap-only tuple.

Built ``CONCURRENTLY`` (outside a transaction), so adding them to a live database does not block the engine.
"""

from django.db import migrations

INSTANCES = "orchestrator_workflowinstance"
INDEXES = {
    "console_instance_keyset": f"ON {INSTANCES} (created_at DESC, id DESC)",
    "console_instance_state_keyset": f"ON {INSTANCES} (state, created_at DESC, id DESC)",
    "console_instance_workflow_keyset": f"ON {INSTANCES} (workflow_name, workflow_version, created_at DESC, id DESC)",
    "console_instance_data": f"ON {INSTANCES} USING gin (data jsonb_path_ops)",
    "console_instance_with_error": f"ON {INSTANCES} (created_at DESC, id DESC) WHERE error <> ''",
    "console_instance_failed": f"ON {INSTANCES} (workflow_name, id) WHERE state = 'failed'",
    # Steps waiting to retry, for the retry-storm question (without it: a scan of every step run).
    "console_step_retrying": "ON orchestrator_steprun (instance_id) WHERE state = 'failed'",
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
        ("console", "0001_initial"),
        ("orchestrator", "0007_audit_keyed"),
    ]

    operations = [migrations.RunPython(create, drop)]
