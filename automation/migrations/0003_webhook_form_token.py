"""A subscription's new-webhook form token: the same form sent twice finds the subscription it made instead of
making a second one (automation.webhooks.webhook_subscribe). Subscriptions made before have none ("")."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("automation", "0002_webhook_previous_secret_and_attempt_urls"),
    ]

    operations = [
        migrations.AddField(
            model_name="webhooksubscription",
            name="form_token",
            field=models.CharField(blank=True, default="", max_length=64),
        ),
        migrations.AddConstraint(
            model_name="webhooksubscription",
            constraint=models.UniqueConstraint(
                condition=models.Q(("form_token", ""), _negated=True), fields=("form_token",), name="webhook_form_once"
            ),
        ),
    ]
