"""automation's data migrations, run on PostgreSQL from the state before them."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("automation", "0001_initial")]
AFTER = [("automation", "0002_webhook_previous_secret_and_attempt_urls")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def test_the_attempts_logged_before_addresses_could_change_name_the_subscriptions_address():
    """Until a subscription could be changed, every attempt went to its one address: the migration writes it into
    each logged attempt, so the log still says where they went once the address changes."""
    apps = migrate(BEFORE)
    try:
        # given a delivery of two attempts logged without their address, and one not attempted yet
        Subscription = apps.get_model("automation", "WebhookSubscription")
        Delivery = apps.get_model("automation", "WebhookDelivery")
        subscription = Subscription.objects.create(
            name="Shop", url="https://93.184.215.14/old", events=["task.created"], secret="s"
        )
        attempts = [
            {"at": "2026-11-30T09:00:00+00:00", "status": 500, "error": "HTTP 500", "ms": 3},
            {"at": "2026-11-30T09:00:10+00:00", "status": 200, "error": "", "ms": 4},
        ]
        tried = Delivery.objects.create(
            subscription=subscription, event="task.created", event_key="a", body="{}", log=attempts
        )
        untried = Delivery.objects.create(subscription=subscription, event="task.created", event_key="b", body="{}")

        # when
        apps = migrate(AFTER)

        # then
        Delivery = apps.get_model("automation", "WebhookDelivery")
        assert Delivery.objects.get(pk=tried.pk).log == [
            {**entry, "url": "https://93.184.215.14/old"} for entry in attempts
        ]
        assert Delivery.objects.get(pk=untried.pk).log == []
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
