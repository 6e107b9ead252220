"""A schedule's new-schedule form token, as a webhook's (0003): the same form sent twice finds the schedule it made
instead of coming back refused for its own name. Schedules made before, or declared in code, have none ("")."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("automation", "0003_webhook_form_token"),
    ]

    operations = [
        migrations.AddField(
            model_name="schedule",
            name="form_token",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        migrations.AddConstraint(
            model_name="schedule",
            constraint=models.UniqueConstraint(
                condition=models.Q(("form_token", ""), _negated=True), fields=("form_token",), name="schedule_form_once"
            ),
        ),
    ]
