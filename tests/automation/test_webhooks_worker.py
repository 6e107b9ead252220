"""Webhooks through the real machinery: a Celery worker with beat runs the sweep, which queues and sends the
deliveries; a receiver that fails first gets its retry after the back-off, signed again."""

from __future__ import annotations

import json

import pytest

from automation.models import DeliveryState, WebhookDelivery
from automation.webhooks import verify, webhook_subscribe
from orchestrator.services.instances import instance_start
from tests.automation.receiver import receiver

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_a_receiver_that_fails_once_gets_the_event_again_after_the_back_off(celery_worker, users, wait_for, settings):
    settings.BATON_WEBHOOK_ALLOW_PRIVATE = True
    with receiver(503, 200) as hook:
        # given a subscription to completions, whose receiver answers 503 once and then 200
        subscription = webhook_subscribe(owner=users.admin, name="Shop", url=hook.url, events=["instance.completed"])

        # when a workflow runs to its end on the worker
        instance = instance_start("bench_chain", {})

        # then the worker's sweep sends the completion, and sends it again about ten seconds after the 503
        delivery = wait_for(
            lambda: WebhookDelivery.objects.filter(subscription=subscription, state=DeliveryState.DELIVERED).first(),
            timeout=45,
            instance=instance,
            what="the delivery, retried after the 503",
        )
    assert [r.headers["Baton-Delivery"] for r in hook.requests] == [str(delivery.pk)] * 2
    assert all(verify(subscription.secret, r.headers["Baton-Signature"], r.body) for r in hook.requests)
    assert json.loads(hook.requests[1].body)["data"]["instance"]["id"] == instance.pk
    assert [entry["status"] for entry in delivery.log] == [503, 200]
    assert delivery.attempts == 2
