"""The retry-storm read walks the newest steps waiting to retry without reading the steps themselves.

Incidents groups the steps waiting to retry (state ``failed``) of the newest ``INCIDENT_SAMPLE`` instances that have
one (``console.selectors._storms``). Through 0002's ``console_step_retrying`` (instance_id only) each of those
steps cost a heap page, and the planner preferred ``step_due`` and a sort of every retrying step (10,000 at a
million: 11,600 buffers; bench/README.md "Run 4"). This index carries what the read needs (the step's name, its
attempt, when it started), so it is read index-only, newest instance first, and stops at the sample; it replaces
``console_step_retrying``, whose every use it serves.

Its write cost: entries exist only for steps waiting to retry (partial), and ``name``, ``attempt`` and
``started_at`` change only when a step starts, fails or is retried, updates that change ``state`` (already in
``step_due``'s and ``step_lease``'s predicates) and so were never heap-only: no update loses its heap-only tuple.

Built ``CONCURRENTLY`` (outside a transaction), so adding it to a live database does not block the engine.
PostgreSQL only, like 0002.
"""

from django.db import migrations

NEW = (
    "console_step_retrying_recent",
    "ON orchestrator_steprun (instance_id) INCLUDE (name, attempt, started_at) WHERE state = 'failed'",
)
OLD = ("console_step_retrying", "ON orchestrator_steprun (instance_id) WHERE state = 'failed'")


def _swap(schema_editor, create: tuple[str, str], drop: tuple[str, str]) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {create[0]} {create[1]}")
    schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {drop[0]}")


def forward(apps, schema_editor):
    _swap(schema_editor, NEW, OLD)


def backward(apps, schema_editor):
    _swap(schema_editor, OLD, NEW)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("console", "0003_incident_indexes")]

    operations = [migrations.RunPython(forward, backward)]
