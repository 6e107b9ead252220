"""Signed webhooks: engine events reach a real local receiver with a signature it verifies, a failing receiver
gets retries with growing delays, a subscription that keeps failing pauses and tells its owner, and private
addresses are refused unless allowed."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from datetime import datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from approvals.models import Notification
from automation import webhooks
from automation.models import DeliveryState, WebhookDelivery, WebhookOutbox, WebhookSubscription
from automation.webhooks import WebhookInvalid, delivery_send, verify, webhook_subscribe, webhook_toggle
from orchestrator.audit import Actor
from orchestrator.bidi import isolate
from orchestrator.dsl import Human, StepContext, Task, Workflow
from orchestrator.models import AuditEvent
from orchestrator.services import sweep as engine
from orchestrator.services.instances import instance_cancel, instance_start
from tests.automation.receiver import receiver, trickler
from tests.factories import SuperUserFactory

pytestmark = pytest.mark.django_db


def ship(ctx: StepContext) -> dict:
    return {"shipped": True}


FLOW = Workflow(name="webhook_flow", version=1, title_template="Parcel {parcel}", steps=[Task("ship", ship)])
REVIEWED = Workflow(
    name="webhook_reviewed", version=1, steps=[Human("review", candidate_groups=["approvers"]), Task("ship", ship)]
)


@pytest.fixture
def flows(register_workflow):
    register_workflow(FLOW)
    register_workflow(REVIEWED)


@pytest.fixture
def allow_private(settings):
    settings.BATON_WEBHOOK_ALLOW_PRIVATE = True


def queued_delivery(owner, url: str, *, name: str, parcel: str) -> WebhookDelivery:
    """Given ``owner``'s subscription ``name`` to ``instance.started`` at ``url``, when an instance (``parcel``)
    starts and the sweep hands its event on: the one delivery queued for it, not attempted yet."""
    webhook_subscribe(owner=owner, name=name, url=url, events=["instance.started"])
    instance_start("webhook_flow", {"parcel": parcel})
    engine.sweep()
    return WebhookDelivery.objects.get()


def send_due() -> list[str]:
    """What the worker does with the sweep's messages: one attempt of every due delivery."""
    engine.sweep()
    due = WebhookDelivery.objects.filter(
        state__in=[DeliveryState.PENDING, DeliveryState.RETRYING], next_attempt_at__lte=timezone.now()
    )
    return [delivery_send(pk) for pk in due.order_by("pk").values_list("pk", flat=True)]


def test_engine_events_reach_a_local_receiver_signed(flows, allow_private, users, run_steps):
    with receiver(200) as hook:
        # given a subscription to starts and completions
        subscription = webhook_subscribe(
            owner=users.admin, name="Shop", url=hook.url, events=["instance.started", "instance.completed"]
        )

        # when an instance starts and completes, and the sweep and worker do their part
        instance = instance_start("webhook_flow", {"parcel": "P-7"}, business_key="P-7")
        run_steps(instance)
        outcomes = send_due()

        # then the receiver got both events, in order, each signed with the subscription's secret
        assert outcomes == ["delivered", "delivered"]
        assert [r.headers["Baton-Event"] for r in hook.requests] == ["instance.started", "instance.completed"]
        for request in hook.requests:
            assert request.path == "/hooks/baton?from=test"
            assert request.headers["Content-Type"] == "application/json"
            assert verify(subscription.secret, request.headers["Baton-Signature"], request.body)
            assert not verify("another-secret", request.headers["Baton-Signature"], request.body)
            assert not verify(subscription.secret, request.headers["Baton-Signature"], request.body + b" ")
        completed = json.loads(hook.requests[1].body)
        assert completed["type"] == "instance.completed"
        assert completed["data"]["instance"] == {
            "id": instance.pk,
            "workflow": "webhook_flow",
            "version": 1,
            "title": "Parcel P-7",
            "business_key": "P-7",
            "state": "completed",
            "outcome": "completed",
        }
        assert completed["id"] == f"instance:{instance.pk}:{completed['id'].rsplit(':', 1)[1]}"
    delivered = WebhookDelivery.objects.filter(subscription=subscription)
    assert {d.state for d in delivered} == {DeliveryState.DELIVERED}
    assert all(d.log[-1]["status"] == 200 for d in delivered)


def test_an_events_time_is_written_in_utc_with_z_as_the_api_writes_times(
    flows, allow_private, users, run_steps, settings
):
    # given a site whose zone is not UTC, and a subscription to starts
    settings.TIME_ZONE = "America/New_York"
    with receiver(200) as hook:
        webhook_subscribe(owner=users.admin, name="Shop", url=hook.url, events=["instance.started"])

        # when an instance starts and its event is sent
        instance_start("webhook_flow", {"parcel": "P-8"}, business_key="P-8")
        assert send_due() == ["delivered"]

    # then its time is UTC written with Z, the audit event's own instant, as the API writes every time
    body = json.loads(hook.requests[0].body)
    event = AuditEvent.objects.get(action="instance.started", instance__business_key="P-8")
    assert body["occurred_at"].endswith("Z")
    assert "+" not in body["occurred_at"]
    assert datetime.fromisoformat(body["occurred_at"]) == event.occurred_at


def test_a_signature_is_refused_outside_its_time_window():
    body = b'{"type":"instance.started"}'
    header = webhooks.sign("s3cret", 1_700_000_000, body)

    assert verify("s3cret", header, body, now=1_700_000_000 + 299)
    assert not verify("s3cret", header, body, now=1_700_000_000 + 301)  # a replay, five minutes on
    assert not verify("s3cret", "t=abc,v1=00", body)
    assert not verify("s3cret", "", body)


@pytest.mark.parametrize(
    "header",
    [
        "t={now},v1=\u00e9",
        "t={now},v1=\u00ff" + "0" * 63,
        "t={now},v1",
        "t={now}",
        "v1=00",
        "t=\u0661\u0662,v1=00",
        None,
    ],
)
def test_a_forged_or_missing_signature_is_refused_not_raised(header):
    """What a receiver calls with the header it got: a non-ASCII signature made compare_digest raise (a 500 at the
    receiver instead of a 401), and a missing header (None) raised too."""
    body = b'{"type":"instance.started"}'
    now = int(time.time())

    assert verify("s3cret", header.format(now=now) if header else header, body) is False  # type: ignore[arg-type]


def test_task_events_and_only_subscribed_ones_are_delivered(flows, allow_private, users):
    with receiver(200) as hook:
        webhook_subscribe(owner=users.admin, name="Tasks", url=hook.url, events=["task.created"])

        instance_start("webhook_reviewed", {})
        send_due()

        assert [r.headers["Baton-Event"] for r in hook.requests] == ["task.created"]
        body = json.loads(hook.requests[0].body)
        assert body["data"]["task"]["title"] == "Review"


def test_an_operators_cancel_reaches_a_receiver_subscribed_to_cancellations(flows, allow_private, users):
    with receiver(200) as hook:
        # given a receiver that mirrors how instances end, and an instance waiting for a person
        subscription = webhook_subscribe(
            owner=users.admin, name="Ends", url=hook.url, events=["instance.completed", "instance.cancelled"]
        )
        instance = instance_start("webhook_reviewed", {}, business_key="R-9")

        # when an operator cancels it, and the sweep and worker do their part
        instance_cancel(instance.pk, actor=Actor.system("operator"), reason="duplicate order")
        outcomes = send_due()

        # then the end is told, signed, with the outcome and why: a cancelled instance was never announced before
        assert outcomes == ["delivered"]
        request = hook.requests[0]
        assert request.headers["Baton-Event"] == "instance.cancelled"
        assert verify(subscription.secret, request.headers["Baton-Signature"], request.body)
        body = json.loads(request.body)
        assert body["type"] == "instance.cancelled"
        assert body["data"]["instance"]["id"] == instance.pk
        assert body["data"]["instance"]["state"] == body["data"]["instance"]["outcome"] == "cancelled"
        assert body["data"]["reason"] == "duplicate order"


def test_outbox_rows_become_one_delivery_per_subscription_however_often_the_sweep_runs(flows, allow_private, users):
    with receiver(200) as hook:
        first = webhook_subscribe(owner=users.admin, name="A", url=hook.url, events=["instance.started"])
        second = webhook_subscribe(owner=users.admin, name="B", url=hook.url, events=["instance.started"])
        instance_start("webhook_flow", {"parcel": "P-1"})
        assert WebhookOutbox.objects.count() == 1

        engine.sweep()
        engine.sweep()

        assert not WebhookOutbox.objects.exists()
        assert sorted(WebhookDelivery.objects.values_list("subscription_id", flat=True)) == [first.pk, second.pk]


def test_events_nobody_subscribed_to_leave_nothing_behind(flows):
    instance_start("webhook_flow", {"parcel": "P-2"})

    engine.sweep()

    assert not WebhookOutbox.objects.exists()
    assert not WebhookDelivery.objects.exists()


def test_a_failing_receiver_gets_retries_with_growing_delays_then_the_delivery_fails(flows, allow_private, users):
    with receiver(500) as hook:
        delivery = queued_delivery(users.admin, hook.url, name="Down", parcel="P-3")

        # when every attempt is made at its due time
        delays = []
        for attempt in range(1, webhooks.MAX_ATTEMPTS + 1):
            delivery.refresh_from_db()
            outcome = delivery_send(delivery.pk, now=delivery.next_attempt_at)
            delivery.refresh_from_db()
            if delivery.state == DeliveryState.RETRYING:
                attempted_at = timezone.datetime.fromisoformat(delivery.log[-1]["at"])
                delays.append((delivery.next_attempt_at - attempted_at).total_seconds())
            assert delivery.attempts == attempt

        # then each wait is longer than the one before (exponential back-off), and after the last it failed
        assert outcome == "failed"
        assert delivery.state == DeliveryState.FAILED
        assert len(delays) == webhooks.MAX_ATTEMPTS - 1
        assert all(later > earlier * 1.8 for earlier, later in itertools.pairwise(delays)), delays
        assert 10 <= delays[0] <= 11
        assert [entry["status"] for entry in delivery.log] == [500] * webhooks.MAX_ATTEMPTS
        # the receiver saw one delivery id on every attempt, so it can drop repeats
        assert {r.headers["Baton-Delivery"] for r in hook.requests} == {str(delivery.pk)}
        assert len(hook.requests) == webhooks.MAX_ATTEMPTS


def test_an_attempt_before_its_time_does_nothing(flows, allow_private, users):
    with receiver(500) as hook:
        webhook_subscribe(owner=users.admin, name="Down", url=hook.url, events=["instance.started"])
        instance_start("webhook_flow", {"parcel": "P-4"})
        send_due()
        delivery = WebhookDelivery.objects.get()

        assert delivery_send(delivery.pk) == "not due"  # the back-off has not passed
        assert len(hook.requests) == 1


def test_a_subscription_that_keeps_failing_is_paused_and_its_owner_told(flows, allow_private, users, monkeypatch):
    monkeypatch.setattr(webhooks, "PAUSE_AFTER_FAILURES", 3)
    monkeypatch.setattr(webhooks, "PAUSE_AFTER", timedelta(0))
    with receiver(503) as hook:
        subscription = webhook_subscribe(owner=users.admin, name="Flaky", url=hook.url, events=["instance.started"])
        for parcel in ("P-5", "P-6", "P-7"):
            instance_start("webhook_flow", {"parcel": parcel})

        send_due()
        more = send_due()

    subscription.refresh_from_db()
    assert subscription.active is False
    assert "3 failed attempts in a row" in subscription.paused_reason
    assert more == []  # a paused subscription's deliveries wait
    notice = Notification.objects.get(user=users.admin, kind="webhook.paused")
    assert "Flaky" in notice.message
    assert AuditEvent.objects.filter(chain="automation", action="webhook.paused").exists()


def test_a_receiver_that_answers_a_byte_at_a_time_is_cut_off_at_the_timeout(flows, allow_private, users, settings):
    """The socket timeout bounds each read: a receiver sending a header byte every half second kept the worker
    for as long as it liked, past the delivery's lease, when the sweep sent the event again alongside."""
    settings.BATON_WEBHOOK_TIMEOUT = 1.0
    with trickler(head=b"HTTP/1.1 200 OK\r\n", tail=b"X-Slow: " + b"z" * 60 + b"\r\n\r\n", every=0.5) as url:
        delivery = queued_delivery(users.admin, url, name="Slow", parcel="P-9")

        started = time.monotonic()
        outcome = delivery_send(delivery.pk)
        took = time.monotonic() - started

    delivery.refresh_from_db()
    assert outcome == "retrying"
    assert took < 3, took
    assert delivery.last_error == "no complete answer within 1 s"


def test_an_answer_whose_body_never_ends_is_taken_at_its_status(flows, allow_private, users, settings):
    settings.BATON_WEBHOOK_TIMEOUT = 1.0
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
    with trickler(head=head, tail=b"z" * 1000, every=0.2) as url:
        delivery = queued_delivery(users.admin, url, name="Chatty", parcel="P-10")

        started = time.monotonic()
        outcome = delivery_send(delivery.pk)
        took = time.monotonic() - started

    assert outcome == "delivered"
    assert took < 3, took


@pytest.mark.parametrize(
    "answer",
    [b"HTTP/1.1 2\x0000 OK\r\n\r\n", b"\xff\xfe\x00garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nX\x00: y\r\n\r\n"],
)
def test_a_garbled_answer_is_recorded_as_a_failed_attempt(flows, allow_private, users, answer):
    """The error text quotes the receiver's bytes: a NUL among them made PostgreSQL refuse the record, and the
    delivery went round its lease forever without counting an attempt."""
    with trickler(head=answer, tail=b"", every=0) as url:
        delivery = queued_delivery(users.admin, url, name="Garbled", parcel="P-12")

        outcome = delivery_send(delivery.pk)

    delivery.refresh_from_db()
    assert outcome in ("retrying", "delivered")
    assert delivery.state in (DeliveryState.RETRYING, DeliveryState.DELIVERED)
    assert "\x00" not in delivery.last_error


@pytest.mark.parametrize("left", ["deactivated", "no longer an admin"])
def test_when_the_owner_has_left_the_pause_is_told_to_the_other_admins(flows, allow_private, users, monkeypatch, left):
    """A paused subscription waits for someone to resume it: with its owner gone (a user who acted is deactivated,
    never deleted: the trail holds them), the notice went to nobody who could."""
    monkeypatch.setattr(webhooks, "PAUSE_AFTER_FAILURES", 1)
    monkeypatch.setattr(webhooks, "PAUSE_AFTER", timedelta(0))
    owner = SuperUserFactory(username="leaver")
    permission = Permission.objects.get(codename="manage_automation")
    users.manager.user_permissions.add(permission)
    with receiver(503) as hook:
        subscription = webhook_subscribe(owner=owner, name="Orphan", url=hook.url, events=["instance.started"])
        if left == "deactivated":
            owner.is_active = False
        else:  # still signs in, but may no longer open the webhook's page
            owner.is_superuser = False
        owner.save()
        instance_start("webhook_flow", {"parcel": "P-11"})

        send_due()

    subscription.refresh_from_db()
    assert subscription.active is False
    told = Notification.objects.filter(kind="webhook.paused")
    assert sorted(told.values_list("user__username", flat=True)) == ["admin", "manager"]
    assert all("Orphan" in notice.message for notice in told)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
        # IPv6 forms that carry an IPv4 address some kernel or gateway reaches: IPv4-compatible, IPv4-translated,
        # NAT64 (well-known and local-use prefixes: a NAT64 gateway forwards into its own private network), 6to4
        "http://[::127.0.0.1]/hook",
        "http://[::ffff:0:7f00:1]/hook",
        "http://[64:ff9b::a9fe:a9fe]/latest/meta-data",
        "http://[64:ff9b::a00:1]/hook",
        "http://[64:ff9b:1::808:808]/hook",
        "http://[2002:a00:1::1]/hook",
        # IPv4 spelled as one number or in octal: resolved, they are loopback
        "http://2130706433/hook",
        "http://0177.0.0.1/hook",
    ],
)
def test_private_addresses_are_refused(users, url):
    with pytest.raises(WebhookInvalid) as refused:
        webhook_subscribe(owner=users.admin, name="Inside", url=url, events=["instance.started"])

    assert "private, loopback or reserved" in refused.value.errors["url"][0]
    assert not WebhookSubscription.objects.exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/hook", "http:// or https://"),
        ("https://user:pw@example.com/hook", "no user name or password"),
        ("https://example.com:99999/hook", "port"),
        # port 0 is no port: it was read as "none given", and the events went to 443
        ("https://93.184.215.14:0/hook", "port"),
        ("https://no-such-host.invalid/hook", "cannot be resolved"),
        ("http://[fe80::1%25zz]/hook", "cannot be resolved"),
        ("https://exa\x00mple.com/", "500 characters"),
        # accepted, then refused by http.client at every attempt: sent nowhere, ever
        ("https://93.184.215.14/hooks/a b", "spaces"),
        ("https://93.184.215.14/hooks/\x7f", "control characters"),
        ("https://93.184.215.14/caf\u00e9?q=\u00e9", "Percent-encode"),
    ],
)
def test_bad_addresses_are_refused_saying_why(users, url, message):
    with pytest.raises(WebhookInvalid) as refused:
        webhook_subscribe(owner=users.admin, name="Bad", url=url, events=["instance.started"])

    assert message in refused.value.errors["url"][0]


@pytest.fixture
def silent_resolver(monkeypatch):
    """A name server that does not answer (the true edge: the system resolver), until the test ends."""
    released = threading.Event()

    def getaddrinfo(*_args, **_kwargs):
        released.wait(30)
        raise socket.gaierror("no answer")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    released.set()


def test_a_name_server_that_does_not_answer_costs_an_attempt_its_timeout_not_the_resolvers(
    flows, allow_private, users, settings, silent_resolver
):
    # given a subscription whose host's name server has stopped answering
    settings.BATON_WEBHOOK_TIMEOUT = 1.0
    subscription = WebhookSubscription.objects.create(
        owner=users.admin, name="Slow DNS", url="https://hooks.example.com/in", events=["instance.started"], secret="s"
    )
    instance_start("webhook_flow", {"parcel": "P-7"})
    engine.sweep()
    delivery = WebhookDelivery.objects.get(subscription=subscription)

    # when an attempt is made
    started = time.monotonic()
    outcome = delivery_send(delivery.pk)
    took = time.monotonic() - started

    # then it ends at the attempt's timeout, says why, and is tried again later (the lease was never outlived)
    delivery.refresh_from_db()
    assert outcome == "retrying"
    assert took < 2.5, took
    assert delivery.last_error == f"refused: {isolate('hooks.example.com')} could not be resolved within 1 s."


def test_subscribing_while_the_name_server_does_not_answer_is_refused_within_the_timeout(
    users, settings, silent_resolver
):
    settings.BATON_WEBHOOK_TIMEOUT = 1.0
    started = time.monotonic()
    with pytest.raises(WebhookInvalid) as refused:
        webhook_subscribe(owner=users.admin, name="Slow", url="https://hooks.example.com/in", events=["task.created"])

    assert time.monotonic() - started < 2.5
    assert refused.value.errors["url"] == [f"{isolate('hooks.example.com')} could not be resolved within 1 s."]
    assert not WebhookSubscription.objects.exists()


@pytest.fixture
def one_silent_name_server(monkeypatch):
    """silent.example.com's name server does not answer (until the test ends); receiver.example.com is this
    machine."""
    released = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host == "silent.example.com":
            released.wait(30)
            raise socket.gaierror("no answer")
        return real("127.0.0.1" if host == "receiver.example.com" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield
    released.set()


def test_a_silent_name_server_of_one_subscription_does_not_stop_the_deliveries_of_others(
    flows, allow_private, users, settings, one_silent_name_server
):
    """The look-ups run on a pool of threads, and one given up on holds its thread until the resolver lets go:
    a few attempts to one silent host filled the pool, and every other delivery then queued behind them and ended
    as "could not be resolved" although its own name server answered."""
    settings.BATON_WEBHOOK_TIMEOUT = 0.5
    with receiver(200) as hook:
        # given two subscribers, one whose host's name server is silent, with several attempts there given up on
        silent = WebhookSubscription.objects.create(
            owner=users.admin, name="Silent", url="https://silent.example.com/in", events=["instance.started"]
        )
        url = hook.url.replace("127.0.0.1", "receiver.example.com")
        healthy = webhook_subscribe(owner=users.admin, name="Healthy", url=url, events=["instance.started"])
        for n in range(6):
            instance_start("webhook_flow", {"parcel": f"P-{n}"})
        engine.sweep()
        for pk in WebhookDelivery.objects.filter(subscription=silent).values_list("pk", flat=True):
            assert delivery_send(pk) == "retrying"

        # when the other subscriber's event is sent
        delivery = WebhookDelivery.objects.filter(subscription=healthy).order_by("pk").first()
        outcome = delivery_send(delivery.pk)

        # then it is delivered
        delivery.refresh_from_db()
        assert (outcome, delivery.last_error) == ("delivered", "")
        assert len(hook.requests) == 1


def test_four_silent_name_servers_do_not_stop_the_look_up_of_a_fifth_host(monkeypatch, allow_private):
    """The pool had 4 threads: four subscribers whose hosts' name servers were silent held them all, and every other
    subscriber's attempt failed as "not looked up" until the resolver let go of them."""
    # given four hosts whose name servers are silent, each look-up given up on and still holding its thread
    released = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host.startswith("silent"):
            released.wait(30)
            raise socket.gaierror("no answer")
        return real("127.0.0.1", *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        for n in range(4):
            with pytest.raises(ValueError, match="could not be resolved"):
                webhooks.resolve(f"https://silent{n}.example.com/in", 0.05)

        # when a fifth host, whose name server answers, is looked up
        host, port, addresses = webhooks.resolve("https://fifth.example.com/in", 2)
    finally:
        released.set()

    # then it resolves
    assert (host, port, addresses) == ("fifth.example.com", 443, ["127.0.0.1"])


def test_a_look_up_that_waited_for_a_free_thread_says_so_and_is_dropped(monkeypatch):
    # given as many hosts whose name servers are silent as the pool has threads, each look-up given up on and still
    # holding its thread
    released, asked = threading.Event(), []

    def getaddrinfo(host, *_args, **_kwargs):
        asked.append(host)
        released.wait(30)
        raise socket.gaierror("no answer")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        for n in range(webhooks.LOOKUP_THREADS):
            with pytest.raises(
                ValueError, match=f"{isolate(f'silent{n}.example.com')} could not be resolved within 0.05 s"
            ):
                webhooks.resolve(f"https://silent{n}.example.com/in", 0.05)

        # when one more host is looked up
        with pytest.raises(ValueError) as refused:
            webhooks.resolve("https://fifth.example.com/in", 0.2)
    finally:
        released.set()

    # then it says why, and its look-up is dropped, never sent to the name server once a thread is free
    assert str(refused.value) == (
        f"{isolate('fifth.example.com')} was not looked up within 0.2 s: every name look-up is waiting for a name "
        "server that does not answer."
    )
    time.sleep(0.3)
    assert "fifth.example.com" not in asked


def test_the_subscribe_page_waits_for_a_silent_name_server_less_than_the_web_timeout(
    users, settings, silent_resolver, monkeypatch
):
    """BATON_WEBHOOK_TIMEOUT may be 60 s, gunicorn's own default timeout: the page's look-up waited that long, and the
    person got a 502 instead of the message."""
    settings.BATON_WEBHOOK_TIMEOUT = 60.0
    monkeypatch.setattr(webhooks, "SUBSCRIBE_LOOKUP_SECONDS", 1.0)
    started = time.monotonic()
    with pytest.raises(WebhookInvalid) as refused:
        webhook_subscribe(owner=users.admin, name="Slow", url="https://hooks.example.com/in", events=["task.created"])

    assert time.monotonic() - started < 2.5
    assert refused.value.errors["url"] == [f"{isolate('hooks.example.com')} could not be resolved within 1 s."]


def test_a_delivery_to_an_address_that_became_private_is_refused_at_send_time(flows, users, settings):
    # given a subscription made while private addresses were allowed
    settings.BATON_WEBHOOK_ALLOW_PRIVATE = True
    with receiver(200) as hook:
        webhook_subscribe(owner=users.admin, name="Was allowed", url=hook.url, events=["instance.started"])
        instance_start("webhook_flow", {"parcel": "P-8"})

        # when the setting is off again and the delivery is tried
        settings.BATON_WEBHOOK_ALLOW_PRIVATE = False
        send_due()

        # then nothing was sent, and the attempt says why
        delivery = WebhookDelivery.objects.get()
        assert hook.requests == []
        assert delivery.state == DeliveryState.RETRYING
        assert delivery.last_error.startswith(f"refused: {isolate('127.0.0.1')} resolves to")


def test_a_rolled_back_transaction_leaves_no_outbox_row(flows):
    """The outbox row rides in the engine's own statement: no event, no row."""
    from django.db import transaction

    class Abort(Exception):
        pass

    def start_then_abort() -> None:
        with transaction.atomic():
            instance_start("webhook_flow", {"parcel": "P-9"})
            assert WebhookOutbox.objects.count() == 1
            raise Abort

    with pytest.raises(Abort):
        start_then_abort()

    assert not WebhookOutbox.objects.exists()
    assert not AuditEvent.objects.filter(action="instance.started").exists()


def test_a_paused_subscription_gets_what_was_queued_before_the_pause_and_misses_what_happened_during_it(
    flows, allow_private, users
):
    """The rule docs/architecture.md states ("Pausing"): a pause holds the queued deliveries until it ends; events
    while paused are not queued for it (subscriptions are never deleted: holding them could grow without end)."""
    with receiver(500) as failing:
        subscription = webhook_subscribe(owner=users.admin, name="A", url=failing.url, events=["instance.started"])
        instance_start("webhook_flow", {"parcel": "before"})
        engine.sweep()  # queued for it, not yet sent
        assert WebhookDelivery.objects.filter(subscription=subscription).count() == 1

    # given: an admin pauses it, and an instance starts meanwhile
    admin = Actor.of(users.admin)
    webhook_toggle(subscription.pk, active=False, actor=admin)
    instance_start("webhook_flow", {"parcel": "during"})
    assert send_due() == ["not due"]  # the queued delivery is held: nothing is sent to a paused subscription

    # when: it resumes at a receiver that answers
    with receiver(200) as hook:
        WebhookSubscription.objects.filter(pk=subscription.pk).update(url=hook.url)
        webhook_toggle(subscription.pk, active=True, actor=admin)
        send_due()

        # then: the event from before the pause arrives; the one during it was never queued for it
        assert [json.loads(r.body)["data"]["instance"]["title"] for r in hook.requests] == ["Parcel before"]
    assert WebhookDelivery.objects.filter(subscription=subscription).count() == 1


def test_a_host_with_several_addresses_is_reached_at_one_that_answers(flows, allow_private, users, monkeypatch):
    """A name with an IPv6 and an IPv4 address, on a worker whose IPv6 goes nowhere (or one address of a round
    robin down): the attempt goes on to the next address the host resolves to, as a browser or curl does, instead
    of failing every attempt at the first until the subscription pauses."""
    real = socket.getaddrinfo

    def two_addresses(host, port, *args, **kwargs):  # the name server's answer: the edge of this test
        if host != "hooks.example.test":
            return real(host, port, *args, **kwargs)
        # 127.0.0.2: loopback, but nothing listens there on the receiver's port (refused at once)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", two_addresses)
    with receiver(200) as hook:
        port = hook.url.split(":")[2].split("/")[0]
        delivery = queued_delivery(
            users.admin, f"http://hooks.example.test:{port}/hooks", name="Round robin", parcel="P-9"
        )

        # when
        outcome = delivery_send(delivery.pk)

        # then: delivered at the second address, with the name the subscription gave in its Host header
        assert outcome == "delivered", WebhookDelivery.objects.get().last_error
        assert len(hook.requests) == 1
        assert hook.requests[0].headers["Host"] == f"hooks.example.test:{port}"


def test_an_international_domain_name_is_reached_at_its_own_address_not_a_lookalike(
    flows, allow_private, users, monkeypatch
):
    """faß.test is xn--fa-hia.test (IDNA 2008, as browsers and registries read it); Python's socket and http.client
    encode names with IDNA 2003, which maps ß to ss: the signed events went to fass.test, someone else's domain."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def resolver(host, port, *args, **kwargs):  # the name server: the edge of this test
        # What the C library is handed: a str host is encoded by Python's "idna" codec (IDNA 2003) first.
        name = host if isinstance(host, str) and host.isascii() else host.encode("idna").decode()
        if not name.endswith(".test"):
            return real(host, port, *args, **kwargs)
        asked.append(name)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    with receiver(200) as hook:
        port = hook.url.split(":")[2].split("/")[0]
        delivery = queued_delivery(users.admin, f"http://faß.test:{port}/hook", name="IDN", parcel="P-10")

        # when
        outcome = delivery_send(delivery.pk)

        # then: looked up, and sent, as the name's own A-label
        assert outcome == "delivered", WebhookDelivery.objects.get().last_error
        assert set(asked) == {"xn--fa-hia.test"}
        assert hook.requests[0].headers["Host"] == f"xn--fa-hia.test:{port}"


@pytest.mark.parametrize("url", ["http://a\u200db.test/hook", "http://\u2603.test/hook"])
def test_a_host_that_is_no_valid_international_name_is_refused_saying_so(users, url):
    with pytest.raises(WebhookInvalid) as refused:
        webhook_subscribe(owner=users.admin, name="Bad IDN", url=url, events=["instance.started"])
    assert "not a valid domain name" in refused.value.errors["url"][0]


def test_a_redirect_is_recorded_with_where_it_points_so_the_admin_can_correct_the_address(flows, allow_private, users):
    """A receiver moved (http to https, a new path) answers 301 with a Location: the log said only that redirects
    are not followed, and the admin editing the address had to find the new one elsewhere."""
    head = (
        b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://hooks.example.com/v2/baton\r\nContent-Length: 0\r\n\r\n"
    )
    with trickler(head=head, tail=b"", every=0) as url:
        delivery = queued_delivery(users.admin, url, name="Moved", parcel="P-13")

        outcome = delivery_send(delivery.pk)

    delivery.refresh_from_db()
    assert outcome == "retrying"
    assert delivery.last_status == 301
    assert delivery.last_error == "HTTP 301 to https://hooks.example.com/v2/baton (redirects are not followed)"
    assert delivery.log[-1]["error"] == delivery.last_error
