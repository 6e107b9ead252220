"""The admins' audit timeline (audit/selectors.py): a request id per event, and indexes that serve each filter in the
timeline's keyset order at millions of events; reasons and comments searched through a trigram index (PostgreSQL
only, like the instance titles of 0003; SQLite, the demo's database, scans)."""

from django.conf import settings
from django.db import migrations, models


def add_request_id(apps, schema_editor):
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        columns = [c.name for c in connection.introspection.get_table_description(cursor, "orchestrator_auditevent")]
    if "request_id" not in columns:
        schema_editor.execute(
            "ALTER TABLE orchestrator_auditevent ADD COLUMN request_id varchar(64) DEFAULT '' NOT NULL", params=None
        )


def trigram(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm", params=None)
    schema_editor.execute(
        "CREATE INDEX IF NOT EXISTS audit_reason_trgm ON orchestrator_auditevent USING gin (UPPER(reason) gin_trgm_ops)",
        params=None,
    )


def drop_trigram(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS audit_reason_trgm", params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("orchestrator", "0010_rollups"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="auditevent",
            options={
                "permissions": [("view_trail", "Can see the whole audit trail, export it and run its verification")]
            },
        ),
        migrations.RemoveIndex(
            model_name="auditevent",
            name="audit_occurred",
        ),
        migrations.RemoveIndex(
            model_name="auditevent",
            name="audit_action_occurred",
        ),
        # The column is added but never dropped: request_id is hashed when set, so dropping it on the way back
        # would leave those events unverifiable. Unapplying changes only Django's state; applying again finds it.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AddField(
                    model_name="auditevent",
                    name="request_id",
                    field=models.CharField(blank=True, db_default="", default="", max_length=64),
                ),
            ],
            database_operations=[migrations.RunPython(add_request_id, migrations.RunPython.noop)],
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["-occurred_at", "-id"], name="audit_occurred_id"),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["action", "-occurred_at", "-id"], name="audit_action_occurred_id"),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(fields=["actor_label", "-occurred_at", "-id"], name="audit_actor_occurred_id"),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(
                fields=["subject_type", "subject_id", "-occurred_at", "-id"], name="audit_subject_occurred"
            ),
        ),
        migrations.AddIndex(
            model_name="auditevent",
            index=models.Index(
                condition=models.Q(("request_id", ""), _negated=True), fields=["request_id"], name="audit_request"
            ),
        ),
        migrations.RunPython(trigram, drop_trigram),
    ]
