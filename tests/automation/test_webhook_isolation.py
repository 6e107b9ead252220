"""A receiver that is down costs the engine one attempt at a time, not a queue of them.

Webhook attempts run on the engine's own Celery workers and queue: before, the sweep sent every due delivery of a
subscription at once, so a receiver that swallowed connections (a firewall dropping packets) held every worker
process for ``BATON_WEBHOOK_TIMEOUT`` per delivery, and every workflow's steps waited behind them (75 deliveries to
such a receiver kept a 10 ms step waiting 371 s on two worker processes). A subscription whose last attempt failed
now has one attempt in flight at a time; a healthy one is sent everything due, as before."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from automation import webhooks
from automation.models import DeliveryState, WebhookDelivery, WebhookSubscription
from automation.webhooks import delivery_send, webhook_subscribe
from orchestrator.dsl import StepContext, Task, Workflow
from orchestrator.services import sweep as engine
from orchestrator.services.instances import instance_start
from tests.automation.receiver import receiver
from tests.factories import SuperUserFactory

pytestmark = pytest.mark.django_db


def ship(ctx: StepContext) -> dict:
    return {"shipped": True}


FLOW = Workflow(name="webhook_isolation", version=1, title_template="Parcel {parcel}", steps=[Task("ship", ship)])


@pytest.fixture
def subscription(register_workflow, settings):
    """A subscription to ``instance.started`` with three deliveries due and not yet sent."""
    settings.BATON_WEBHOOK_ALLOW_PRIVATE = True
    register_workflow(FLOW)
    subscribed = webhook_subscribe(
        owner=SuperUserFactory(), name="down", url="http://127.0.0.1:9/hook", events=["instance.started"]
    )
    for parcel in ("P-1", "P-2", "P-3"):
        instance_start("webhook_isolation", {"parcel": parcel})
    engine.sweep()
    WebhookDelivery.objects.update(dispatched_at=None, next_attempt_at=timezone.now() - timedelta(seconds=1))
    assert WebhookDelivery.objects.count() == 3
    return subscribed


def failing(subscription: WebhookSubscription, failures: int = 1) -> None:
    WebhookSubscription.objects.filter(pk=subscription.pk).update(
        consecutive_failures=failures, failing_since=timezone.now() - timedelta(minutes=1)
    )


@pytest.fixture
def published(monkeypatch):
    """The ids of the deliveries the sweep hands to Celery, in order."""
    sent: list[int] = []
    monkeypatch.setattr(webhooks, "_send_delivery", sent.append)
    return sent


def test_a_failing_subscription_is_sent_one_due_delivery_at_a_time(
    subscription, published, django_capture_on_commit_callbacks
):
    # given a subscription whose last attempt failed, with three deliveries due
    failing(subscription)

    # when the sweep dispatches, twice (the first message not yet taken by a worker)
    with django_capture_on_commit_callbacks(execute=True):
        webhooks._dispatch_due(timezone.now())
    with django_capture_on_commit_callbacks(execute=True):
        webhooks._dispatch_due(timezone.now())

    # then only the oldest went out, once: the others wait for its outcome
    oldest = WebhookDelivery.objects.order_by("next_attempt_at", "pk").values_list("pk", flat=True)[0]
    assert published == [oldest]


def test_a_healthy_subscription_is_sent_every_due_delivery_at_once(
    subscription, published, django_capture_on_commit_callbacks
):
    # when the sweep dispatches for a subscription whose attempts succeed
    with django_capture_on_commit_callbacks(execute=True):
        webhooks._dispatch_due(timezone.now())

    # then every due delivery goes out, as before
    assert sorted(published) == sorted(WebhookDelivery.objects.values_list("pk", flat=True))


def test_a_failing_subscriptions_next_attempt_goes_out_once_the_one_in_flight_is_recorded(
    subscription, published, django_capture_on_commit_callbacks
):
    # given a failing subscription whose one attempt in flight has been recorded (retrying later)
    failing(subscription)
    with django_capture_on_commit_callbacks(execute=True):
        webhooks._dispatch_due(timezone.now())
    first = published[0]
    WebhookDelivery.objects.filter(pk=first).update(
        state=DeliveryState.RETRYING,
        attempts=1,
        dispatched_at=None,
        next_attempt_at=timezone.now() + timedelta(seconds=10),
    )

    # when the sweep dispatches again
    with django_capture_on_commit_callbacks(execute=True):
        webhooks._dispatch_due(timezone.now())

    # then the next due delivery goes out
    assert len(published) == 2
    assert published[1] != first


def test_an_attempt_of_a_failing_subscription_with_another_in_flight_is_held_without_connecting(subscription):
    # given a failing subscription with one attempt in flight (claimed by another worker process), and a second
    # delivery's message that the sweep sent before the failures began
    with receiver(200) as hook:
        WebhookSubscription.objects.filter(pk=subscription.pk).update(url=hook.url)
        failing(subscription)
        in_flight, other, _ = WebhookDelivery.objects.order_by("pk")
        WebhookDelivery.objects.filter(pk=in_flight.pk).update(
            state=DeliveryState.SENDING, attempts=1, lease_expires_at=timezone.now() + timedelta(minutes=1)
        )
        WebhookDelivery.objects.filter(pk=other.pk).update(dispatched_at=timezone.now())

        # when a worker takes the second delivery's message
        outcome = delivery_send(other.pk)

    # then it is held, not attempted: the receiver got nothing, and the sweep sends it again after the one in flight
    assert outcome == "held"
    assert hook.requests == []
    other.refresh_from_db()
    assert (other.state, other.attempts, other.dispatched_at) == (DeliveryState.PENDING, 0, None)


def test_an_attempt_of_a_failing_subscription_with_nothing_in_flight_is_made(subscription):
    # given a failing subscription whose receiver is back, and no attempt in flight
    with receiver(200) as hook:
        WebhookSubscription.objects.filter(pk=subscription.pk).update(url=hook.url)
        failing(subscription)
        delivery = WebhookDelivery.objects.order_by("pk")[0]

        # when a worker takes its message
        outcome = delivery_send(delivery.pk)

    # then it is attempted, delivered, and the subscription counts as healthy again
    assert outcome == "delivered"
    assert len(hook.requests) == 1
    assert WebhookSubscription.objects.get(pk=subscription.pk).consecutive_failures == 0


def test_failing_subscriptions_with_nothing_due_cost_the_sweep_no_statement_each(subscription, published):
    # given: the one failing subscription with deliveries due, and 30 more failing for days with nothing to send
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    failing(subscription)
    owner = SuperUserFactory()
    for n in range(30):
        idle = webhook_subscribe(
            owner=owner, name=f"idle-{n}", url=f"http://127.0.0.1:9/idle-{n}", events=["task.created"]
        )
        failing(idle, failures=7)

    # when the sweep dispatches
    with CaptureQueriesContext(connection) as queries:
        webhooks._dispatch_due(timezone.now())

    # then the idle ones are passed over in the subscriptions' one statement: a statement more for the one with
    # something due, not one for each failing subscription
    assert len(queries) < 10, [query["sql"][:100] for query in queries]
