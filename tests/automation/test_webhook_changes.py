"""Changing a subscription and rolling its secret (automation/webhooks.py: webhook_change, webhook_roll_secret):
a new address is checked as on subscribing and takes the waiting retries at once, the attempts already made keep
the address they went to, and a rolled secret's old one signs beside the new one until its grace ends."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from automation import webhooks
from automation.models import WebhookDelivery, WebhookSubscription
from automation.webhooks import (
    WebhookInvalid,
    delivery_send,
    verify,
    webhook_change,
    webhook_roll_secret,
    webhook_subscribe,
)
from orchestrator.audit import Actor
from orchestrator.models import AuditEvent
from orchestrator.services import sweep as engine
from orchestrator.services.instances import instance_start
from tests.automation.receiver import receiver
from tests.automation.test_webhooks import FLOW

pytestmark = pytest.mark.django_db


@pytest.fixture
def flows(register_workflow):
    register_workflow(FLOW)


@pytest.fixture
def allow_private(settings):
    settings.BATON_WEBHOOK_ALLOW_PRIVATE = True


def started(parcel: str) -> WebhookDelivery:
    """When an instance (``parcel``) starts and the sweep hands its event on: its newest delivery."""
    instance_start("webhook_flow", {"parcel": parcel})
    engine.sweep()
    return WebhookDelivery.objects.order_by("-pk").first()


def change(subscription: WebhookSubscription, actor: Actor, **fields) -> list[str]:
    values = {"name": subscription.name, "url": subscription.url, "events": subscription.events, **fields}
    return webhook_change(subscription.pk, actor=actor, **values)[1]


def test_a_retry_after_the_address_changed_goes_to_the_new_address_at_once_and_the_log_keeps_both(
    flows, allow_private, users
):
    with receiver(404) as typo, receiver(200) as fixed:
        # given a subscription to a mistyped address, whose first attempt failed and waits for its retry
        subscription = webhook_subscribe(owner=users.admin, name="Shop", url=typo.url, events=["instance.started"])
        delivery = started("P-1")
        assert delivery_send(delivery.pk) == "retrying"

        # when an admin corrects the address
        changed = change(subscription, Actor.of(users.admin), url=fixed.url)

        # then the retry is due now, not after its back-off, and goes to the new address
        delivery.refresh_from_db()
        assert changed == ["url"]
        assert delivery.next_attempt_at <= timezone.now()
        assert delivery_send(delivery.pk) == "delivered"
        assert len(typo.requests) == 1
        assert len(fixed.requests) == 1
        delivery.refresh_from_db()
        assert [(entry["url"], entry["status"]) for entry in delivery.log] == [(typo.url, 404), (fixed.url, 200)]


def test_a_change_is_audited_naming_each_field_with_its_old_and_new_value_never_the_secret(flows, users):
    # given
    subscription = webhook_subscribe(
        owner=users.admin, name="Shop", url="https://93.184.215.14/a", events=["instance.started"]
    )

    # when
    changed = change(
        subscription,
        Actor.of(users.admin),
        name="Shop (EU)",
        url="https://93.184.215.14/b",
        events=["task.created", "instance.started"],
    )

    # then
    event = AuditEvent.objects.get(chain="automation", action="webhook.changed")
    assert changed == ["name", "url", "events"]
    assert event.payload["changed"] == {
        "name": {"from": "Shop", "to": "Shop (EU)"},
        "url": {"from": "https://93.184.215.14/a", "to": "https://93.184.215.14/b"},
        "events": {"from": ["instance.started"], "to": ["instance.started", "task.created"]},
    }
    assert subscription.secret not in json.dumps(event.payload) + event.reason
    assert event.actor_label == f"user:{users.admin.username}"


def test_a_change_of_nothing_writes_nothing(users):
    subscription = webhook_subscribe(
        owner=users.admin, name="Shop", url="https://93.184.215.14/a", events=["instance.started"]
    )

    assert change(subscription, Actor.of(users.admin)) == []
    assert not AuditEvent.objects.filter(action="webhook.changed").exists()


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"url": "http://10.0.0.5/hook"}, "url", "private, loopback or reserved"),
        ({"url": "https://example.com:99999/hook"}, "url", "port"),
        ({"url": "https://93.184.215.14/caf\u00e9"}, "url", "Percent-encode"),
        ({"url": "https://no-such-host.invalid/hook"}, "url", "cannot be resolved"),
        ({"events": []}, "events", "Choose one or more events"),
        ({"events": ["instance.exploded"]}, "events", "Unknown events"),
        ({"name": " "}, "name", "Give a name"),
    ],
)
def test_a_change_is_checked_as_subscribing_is_and_a_refused_one_changes_nothing(users, fields, field, says):
    # given
    subscription = webhook_subscribe(
        owner=users.admin, name="Shop", url="https://93.184.215.14/a", events=["instance.started"]
    )

    # when
    with pytest.raises(WebhookInvalid) as refused:
        change(subscription, Actor.of(users.admin), **fields)

    # then
    assert says in refused.value.errors[field][0]
    subscription.refresh_from_db()
    assert (subscription.name, subscription.url, subscription.events) == (
        "Shop",
        "https://93.184.215.14/a",
        ["instance.started"],
    )
    assert not AuditEvent.objects.filter(action="webhook.changed").exists()


def test_a_private_address_is_taken_when_the_setting_allows_it(users, allow_private):
    subscription = webhook_subscribe(
        owner=users.admin, name="Shop", url="https://93.184.215.14/a", events=["instance.started"]
    )

    assert change(subscription, Actor.of(users.admin), url="http://127.0.0.1:9/hook") == ["url"]


def test_a_change_that_keeps_the_address_does_not_look_it_up_again(users, monkeypatch):
    """Changing the events of a subscription whose name server is down at the moment is not refused for it: each
    attempt checks the address anyway."""
    subscription = webhook_subscribe(
        owner=users.admin, name="Shop", url="https://93.184.215.14/a", events=["instance.started"]
    )

    def no_look_up(*_args, **_kwargs):
        raise AssertionError("looked up")

    monkeypatch.setattr(webhooks, "resolve", no_look_up)

    assert change(subscription, Actor.of(users.admin), events=["task.created"]) == ["events"]


def test_an_automatically_paused_subscription_is_resumed_with_its_change(flows, allow_private, users, monkeypatch):
    # given a subscription paused after its attempts kept failing
    monkeypatch.setattr(webhooks, "PAUSE_AFTER_FAILURES", 1)
    monkeypatch.setattr(webhooks, "PAUSE_AFTER", timedelta(0))
    with receiver(404) as typo, receiver(200) as fixed:
        subscription = webhook_subscribe(owner=users.admin, name="Shop", url=typo.url, events=["instance.started"])
        delivery = started("P-2")
        delivery_send(delivery.pk)
        subscription.refresh_from_db()
        assert not subscription.active
        assert "failed attempts in a row" in subscription.paused_reason

        # when the admin corrects the address and resumes it
        changed = change(subscription, Actor.of(users.admin), url=fixed.url, resume=True)

        # then it is active and the delivery that waited goes to the new address
        subscription.refresh_from_db()
        assert changed == ["url", "resumed"]
        assert subscription.active
        assert subscription.paused_reason == ""
        assert subscription.consecutive_failures == 0
        assert delivery_send(delivery.pk) == "delivered"
        assert len(fixed.requests) == 1
    assert list(
        AuditEvent.objects.filter(chain="automation", subject_id=str(subscription.pk))
        .order_by("seq")
        .values_list("action", flat=True)
    ) == ["webhook.subscribed", "webhook.paused", "webhook.changed", "webhook.resumed"]


def test_a_paused_subscription_stays_paused_when_changed_without_resuming(users):
    subscription = webhook_subscribe(
        owner=users.admin, name="Shop", url="https://93.184.215.14/a", events=["instance.started"]
    )
    webhooks.webhook_toggle(subscription.pk, active=False, actor=Actor.of(users.admin))

    change(subscription, Actor.of(users.admin), name="Shop 2")

    subscription.refresh_from_db()
    assert not subscription.active


# --- rolling the secret -------------------------------------------------------------------------------------


def test_during_the_grace_a_delivery_verifies_with_the_new_secret_and_with_the_old_one(flows, allow_private, users):
    with receiver(200) as hook:
        # given a subscription whose secret was rolled with 24 hours' grace
        subscription = webhook_subscribe(owner=users.admin, name="Shop", url=hook.url, events=["instance.started"])
        old = subscription.secret
        rolled = webhook_roll_secret(subscription.pk, actor=Actor.of(users.admin), grace_seconds=86400)

        # when an event is delivered
        delivery_send(started("P-3").pk)

        # then a receiver verifies it with either secret, and with no other
        request = hook.requests[0]
        header = request.headers["Baton-Signature"]
        assert rolled.secret != old
        assert verify(rolled.secret, header, request.body)
        assert verify(old, header, request.body)
        assert not verify("another" + old[7:], header, request.body)
        assert header.count("v1=") == 2
        # the new secret's first; the old one's last, where the verify documented before reads the only one it reads
        assert header.split(",")[1] == webhooks.sign(rolled.secret, int(header[2:12]), request.body).split(",")[1]


def test_after_the_grace_only_the_new_secret_verifies(flows, allow_private, users):
    with receiver(200) as hook:
        # given a roll whose grace has passed
        subscription = webhook_subscribe(owner=users.admin, name="Shop", url=hook.url, events=["instance.started"])
        old = subscription.secret
        rolled = webhook_roll_secret(subscription.pk, actor=Actor.of(users.admin), grace_seconds=3600)
        WebhookSubscription.objects.filter(pk=subscription.pk).update(
            previous_secret_expires_at=timezone.now() - timedelta(seconds=1)
        )

        # when an event is delivered
        delivery_send(started("P-4").pk)

        # then only the new secret verifies it
        request = hook.requests[0]
        assert verify(rolled.secret, request.headers["Baton-Signature"], request.body)
        assert not verify(old, request.headers["Baton-Signature"], request.body)
        assert request.headers["Baton-Signature"].count("v1=") == 1


def test_a_roll_without_grace_stops_the_old_secret_at_once(flows, allow_private, users):
    with receiver(200) as hook:
        subscription = webhook_subscribe(owner=users.admin, name="Shop", url=hook.url, events=["instance.started"])
        old = subscription.secret
        rolled = webhook_roll_secret(subscription.pk, actor=Actor.of(users.admin), grace_seconds=0)

        delivery_send(started("P-5").pk)

        request = hook.requests[0]
        assert verify(rolled.secret, request.headers["Baton-Signature"], request.body)
        assert not verify(old, request.headers["Baton-Signature"], request.body)
        assert rolled.previous_secret == ""


def test_a_retry_after_a_roll_is_signed_with_the_new_secret(flows, allow_private, users):
    with receiver(500, 200) as hook:
        # given a delivery whose first attempt failed
        subscription = webhook_subscribe(owner=users.admin, name="Shop", url=hook.url, events=["instance.started"])
        delivery = started("P-6")
        assert delivery_send(delivery.pk) == "retrying"

        # when the secret is rolled and the retry is made
        rolled = webhook_roll_secret(subscription.pk, actor=Actor.of(users.admin), grace_seconds=0)
        delivery.refresh_from_db()
        assert delivery_send(delivery.pk, now=delivery.next_attempt_at) == "delivered"

        # then the retry is signed with the new secret
        assert verify(rolled.secret, hook.requests[1].headers["Baton-Signature"], hook.requests[1].body)


def test_a_roll_is_audited_with_the_end_of_its_grace_and_no_secret(users):
    subscription = webhook_subscribe(
        owner=users.admin, name="Shop", url="https://93.184.215.14/a", events=["instance.started"]
    )
    old = subscription.secret

    rolled = webhook_roll_secret(subscription.pk, actor=Actor.of(users.admin), grace_seconds=3600)

    event = AuditEvent.objects.get(chain="automation", action="webhook.secret_rolled")
    written = json.dumps(event.payload) + event.reason
    assert old not in written
    assert rolled.secret not in written
    assert event.payload["previous_valid_until"] == rolled.previous_secret_expires_at.isoformat()


@pytest.mark.parametrize("grace", [-1, 1, 86401, 10**9])
def test_a_grace_not_offered_is_refused(users, grace):
    subscription = webhook_subscribe(
        owner=users.admin, name="Shop", url="https://93.184.215.14/a", events=["instance.started"]
    )

    with pytest.raises(WebhookInvalid):
        webhook_roll_secret(subscription.pk, actor=Actor.of(users.admin), grace_seconds=grace)

    subscription.refresh_from_db()
    assert subscription.previous_secret == ""


def test_a_header_with_several_signatures_verifies_when_any_is_right():
    body = b'{"type":"instance.started"}'
    now = int(time.time())

    header = webhooks.sign(["new-secret", "old-secret"], now, body)

    assert verify("new-secret", header, body)
    assert verify("old-secret", header, body)
    assert not verify("third-secret", header, body)
    assert not verify("new-secret", header.replace("v1=", "v0=", 1), body + b"")  # the other v1 is the old one's
    assert verify("old-secret", header.replace("v1=", "v0=", 1), body)
