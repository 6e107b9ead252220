"""The demo ledger leaves the engine for the ``demo`` app (issue 9: a production database has no demo table).

With the ``demo`` app installed, ``demo.0001`` runs first and copies the rows; without it they are demo data
nobody can read any more, and go with the table.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("orchestrator", "0007_audit_keyed")]

    operations = [migrations.DeleteModel(name="DemoLedger")]
