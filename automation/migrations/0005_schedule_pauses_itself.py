"""A schedule's run of failed fires, and why and when it was paused: a schedule that cannot start what it schedules
pauses itself after PAUSE_AFTER_FAILURES in a row over PAUSE_AFTER (automation/schedules.py), as a failing webhook
subscription does. Runs are counted from this migration on: a schedule failing before it starts its run at its next
failure (its owner is told of it once more)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("automation", "0004_schedule_form_token"),
    ]

    operations = [
        migrations.AddField(
            model_name="schedule",
            name="consecutive_failures",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="schedule",
            name="failing_since",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="schedule",
            name="paused_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="schedule",
            name="paused_reason",
            field=models.TextField(blank=True, default=""),
        ),
    ]
