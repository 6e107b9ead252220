"""Search over instance titles (the inbox and instance list use icontains) through a trigram index.

PostgreSQL only: pg_trgm is a trusted extension (PG 13+), so the database owner may create it. SQLite, the
embedded demo database, scans instead.
"""

from django.db import migrations


def forward(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm", params=None)
    schema_editor.execute(
        "CREATE INDEX IF NOT EXISTS instance_title_trgm ON orchestrator_workflowinstance "
        "USING gin (UPPER(title) gin_trgm_ops)",
        params=None,
    )


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS instance_title_trgm", params=None)


class Migration(migrations.Migration):
    dependencies = [("orchestrator", "0002_audit_append_only")]

    operations = [migrations.RunPython(forward, backward)]
