"""The demo ledger, in the demo's own app.

It used to be ``orchestrator.DemoLedger``. On a database that has that table (every database migrated before the
move), its rows are copied here before ``orchestrator.0008`` drops it, so a running demo keeps its ledger: a step
retried after the upgrade still finds its idempotency key. A database without the ``demo`` app never gets here,
and ``orchestrator.0008`` simply drops the old table.
"""

from django.db import migrations, models

FIELDS = ["service", "operation", "idempotency_key", "amount", "reference", "calls", "created_at"]


def _copy(apps, schema_editor, source: str, target: str) -> None:
    """INSERT ... SELECT every row of one ledger table into the other, in id order, keeping ``created_at`` (a
    model save would stamp it anew: the field is ``auto_now_add``). New ids come from the target's sequence."""
    tables = {app: apps.get_model(app, "DemoLedger")._meta.db_table for app in ("orchestrator", "demo")}
    quote = schema_editor.connection.ops.quote_name
    columns = ", ".join(quote(name) for name in FIELDS)
    schema_editor.execute(
        f"INSERT INTO {quote(tables[target])} ({columns}) SELECT {columns} FROM {quote(tables[source])} ORDER BY id"  # noqa: S608 (names from model metadata)
    )


def copy_old_ledger(apps, schema_editor):
    _copy(apps, schema_editor, "orchestrator", "demo")


def copy_back(apps, schema_editor):
    _copy(apps, schema_editor, "demo", "orchestrator")


class Migration(migrations.Migration):
    initial = True

    dependencies = [("orchestrator", "0007_audit_keyed")]
    # Before the old table goes: its rows are copied first.
    run_before = [("orchestrator", "0008_demoledger_moved_to_demo")]

    operations = [
        migrations.CreateModel(
            name="DemoLedger",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("service", models.CharField(max_length=40)),
                ("operation", models.CharField(max_length=40)),
                ("idempotency_key", models.CharField(max_length=200)),
                ("amount", models.DecimalField(blank=True, decimal_places=2, max_digits=12, null=True)),
                ("reference", models.CharField(max_length=64)),
                ("calls", models.PositiveIntegerField(default=1)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("service", "operation", "idempotency_key"), name="demo_ledger_key_unique"
                    )
                ],
            },
        ),
        migrations.RunPython(copy_old_ledger, copy_back),
    ]
