"""Webhooks through the real machinery: a Celery worker with beat runs the sweep, which queues and sends the
deliveries; a receiver that fails first gets its retry after the back-off, signed again; a corrected address takes
the waiting retry at once; a rolled secret's old one signs beside the new during its grace."""

from __future__ import annotations

import json
import time

import pytest
from django.utils import timezone

from automation.models import DeliveryState, WebhookDelivery
from automation.webhooks import verify, webhook_change, webhook_roll_secret, webhook_subscribe
from orchestrator.audit import Actor
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


def test_a_retry_goes_to_the_corrected_address_at_once_and_the_log_keeps_where_each_attempt_went(
    celery_worker, users, wait_for, settings
):
    settings.BATON_WEBHOOK_ALLOW_PRIVATE = True
    with receiver(404) as typo, receiver(200) as fixed:
        # given a subscription to a mistyped address, whose first attempt failed and waits out its back-off
        subscription = webhook_subscribe(owner=users.admin, name="Shop", url=typo.url, events=["instance.completed"])
        instance = instance_start("bench_chain", {})
        delivery = wait_for(
            lambda: WebhookDelivery.objects.filter(subscription=subscription, state=DeliveryState.RETRYING).first(),
            timeout=30,
            instance=instance,
            what="the first attempt, refused by the mistyped address",
        )

        # when an admin corrects the address, well before the retry's time
        assert (delivery.next_attempt_at - timezone.now()).total_seconds() > 5
        corrected = time.monotonic()
        webhook_change(
            subscription.pk,
            actor=Actor.of(users.admin),
            name=subscription.name,
            url=fixed.url,
            events=subscription.events,
        )

        # then the worker sends the retry to the new address at once, not after the back-off
        delivered = wait_for(
            lambda: WebhookDelivery.objects.filter(pk=delivery.pk, state=DeliveryState.DELIVERED).first(),
            timeout=5,
            instance=instance,
            what="the retry, sent to the corrected address",
        )
        waited = time.monotonic() - corrected
    assert len(typo.requests) == 1
    assert len(fixed.requests) == 1
    assert [(entry["url"], entry["status"]) for entry in delivered.log] == [(typo.url, 404), (fixed.url, 200)]
    assert waited < 5


def test_during_a_rolls_grace_the_worker_signs_with_both_secrets_and_after_a_roll_without_grace_with_the_new_only(
    celery_worker, users, wait_for, settings
):
    settings.BATON_WEBHOOK_ALLOW_PRIVATE = True
    with receiver(200) as hook:
        # given a subscription whose secret was rolled with an hour's grace
        subscription = webhook_subscribe(owner=users.admin, name="Shop", url=hook.url, events=["instance.completed"])
        first = subscription.secret
        second = webhook_roll_secret(subscription.pk, actor=Actor.of(users.admin), grace_seconds=3600).secret

        # when a workflow completes on the worker
        instance = instance_start("bench_chain", {})
        wait_for(lambda: len(hook.requests) == 1, timeout=30, instance=instance, what="the delivery in the grace")

        # then a receiver verifies it with the new secret and with the old one
        request = hook.requests[0]
        assert verify(second, request.headers["Baton-Signature"], request.body)
        assert verify(first, request.headers["Baton-Signature"], request.body)

        # when the secret is rolled again, the old one stopped at once, and another workflow completes
        third = webhook_roll_secret(subscription.pk, actor=Actor.of(users.admin), grace_seconds=0).secret
        instance = instance_start("bench_chain", {})
        wait_for(lambda: len(hook.requests) == 2, timeout=30, instance=instance, what="the delivery after the roll")

        # then only the newest secret verifies it
        request = hook.requests[1]
        assert verify(third, request.headers["Baton-Signature"], request.body)
        assert not verify(second, request.headers["Baton-Signature"], request.body)
        assert not verify(first, request.headers["Baton-Signature"], request.body)
