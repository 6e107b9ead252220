"""An index of the escalated tasks, for Incidents' "Nobody may act" (``approvals.selectors.tasks_nobody_can_act``).

That read takes the oldest ``INCIDENT_SAMPLE`` escalated tasks (by creation) and counts, for each, the people able
to act on it. Without this index it had ``task_queue_age`` (every unclaimed open task as well: 80,000 at a million,
each a heap page to learn its state) or a scan of every task; with it, the walk reads the escalated tasks only and
stops at the sample, and the capped count of escalated tasks is read from it too.

Its write cost: entries exist only for escalated tasks (partial), and ``state`` is in the predicates of the task
indexes already (``task_queue_*``, ``task_mine_due``), so a change of state was never a heap-only update.

Built ``CONCURRENTLY`` (outside a transaction), so adding it to a live database does not block the engine.
PostgreSQL only, like 0003.
"""

from django.db import migrations

NAME = "console_task_escalated"
DEFINITION = "ON approvals_humantask (created_at, id) WHERE state = 'escalated'"


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {NAME} {DEFINITION}")


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {NAME}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("console", "0005_alert_outbox")]

    operations = [migrations.RunPython(create, drop)]
