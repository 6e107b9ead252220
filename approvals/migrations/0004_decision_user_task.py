"""An index on a person's decisions, for "Done by me" (``approvals.selectors.done_by``).

The done tab lists the tasks the person completed and those they voted on as one decision of a quorum (still open
and waiting for the others, or completed by another's vote). The votes are read by user: the unique
``decision_one_per_user`` is (task, user), led by the task, so without this index that read scanned every decision.
With it, the task ids come from two index range scans led by the user (this one and ``task_done_by``), so the page
costs what the person's own history costs, not what the table holds.

Its write cost: one more entry per decision, a row written once and never updated.

Built ``CONCURRENTLY`` (outside a transaction) on PostgreSQL, so adding it to a live database does not block
deciding; the demo's SQLite has no such thing and builds it plainly (Django's ``AddIndexConcurrently`` raised there).
"""

from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class AddIndexConcurrentlyOnPostgres(AddIndexConcurrently):
    """``AddIndexConcurrently`` on PostgreSQL, a plain ``AddIndex`` elsewhere (the demo's SQLite)."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):  # type: ignore[no-untyped-def]
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
        else:
            migrations.AddIndex.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):  # type: ignore[no-untyped-def]
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
        else:
            migrations.AddIndex.database_backwards(self, app_label, schema_editor, from_state, to_state)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("approvals", "0003_userprofile"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="taskdecision",
            index=models.Index(fields=["user", "task"], name="decision_user_task"),
        ),
    ]
