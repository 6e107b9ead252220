"""A subscription's previous secret (it signs beside the new one during a roll's grace), and the address of every
attempt already logged: until now a subscription's address could not change, so each went to the address it has."""

from typing import Any

from django.db import migrations, models

BATCH = 500


def attempts_name_their_address(apps: Any, schema_editor: Any) -> None:
    Delivery = apps.get_model("automation", "WebhookDelivery")
    deliveries = Delivery.objects.exclude(log=[]).select_related("subscription").order_by("pk")
    changed = []
    for delivery in deliveries.iterator(chunk_size=BATCH):
        log = delivery.log if isinstance(delivery.log, list) else []
        delivery.log = [
            {**entry, "url": delivery.subscription.url} if isinstance(entry, dict) and "url" not in entry else entry
            for entry in log
        ]
        changed.append(delivery)
        if len(changed) >= BATCH:
            Delivery.objects.bulk_update(changed, ["log"])
            changed = []
    if changed:
        Delivery.objects.bulk_update(changed, ["log"])


class Migration(migrations.Migration):
    dependencies = [
        ("automation", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="webhooksubscription",
            name="previous_secret",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name="webhooksubscription",
            name="previous_secret_expires_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(attempts_name_their_address, migrations.RunPython.noop, elidable=True),
    ]
