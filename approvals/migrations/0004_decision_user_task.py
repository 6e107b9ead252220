"""An index on a person's decisions, for "Done by me" (``approvals.selectors.done_by``).

The done tab lists the tasks the person completed and those they voted on as one decision of a quorum (still open
and waiting for the others, or completed by another's vote). The votes are read by user: the unique
``decision_one_per_user`` is (task, user), led by the task, so without this index that read scanned every decision.
With it, the task ids come from two index range scans led by the user (this one and ``task_done_by``), so the page
costs what the person's own history costs, not what the table holds.

Its write cost: one more entry per decision, a row written once and never updated.

Built ``CONCURRENTLY`` (outside a transaction), so adding it to a live database does not block deciding.
"""

from django.conf import settings
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("approvals", "0003_userprofile"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="taskdecision",
            index=models.Index(fields=["user", "task"], name="decision_user_task"),
        ),
    ]
