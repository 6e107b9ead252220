"""The automation pages isolate every text a person or another system wrote (a schedule's or a webhook's name, an
address, a pause's reason, a receiver's error, a start's input): a direction control in one cannot reorder, as
drawn, what the page writes after it (orchestrator/bidi.py)."""

from __future__ import annotations

import html
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from automation.models import DeliveryState, Schedule, ScheduleFire, WebhookDelivery, WebhookSubscription
from orchestrator.bidi import balanced, isolate
from tests.bidi import ESCAPE, RLO, unisolated

pytestmark = pytest.mark.django_db

HOSTILE = f"Nightly <i>x</i> {ESCAPE}"


@pytest.fixture
def admin(users) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(users.admin)
    return client


@pytest.fixture
def hostile(users) -> dict:
    """A schedule and a paused webhook whose every free text ends in a stray pop and a right-to-left override."""
    now = timezone.now()
    schedule = Schedule.objects.create(
        name=HOSTILE,
        workflow_name="expense_approval",
        input={"employee": HOSTILE, "amount": "42.00", "category": "meals", "description": "Lunch"},
        cron="0 9 * * 1-5",
        timezone="Europe/Paris",
        anchor=now,
        next_fire_at=now + timedelta(hours=1),
        owner=users.admin,
    )
    ScheduleFire.objects.create(
        schedule=schedule, fire_time=now, fired_at=now, outcome="failed", error=f"refused: {HOSTILE}"
    )
    subscription = WebhookSubscription.objects.create(
        name=HOSTILE,
        url=f"https://example.com/hook/{ESCAPE}",
        events=["instance.failed"],
        secret="s" * 64,
        active=False,
        paused_reason=f"10 failures: {HOSTILE}",
        paused_at=now,
        owner=users.admin,
    )
    WebhookDelivery.objects.create(
        subscription=subscription,
        event="instance.failed",
        event_key="1:1",
        body="{}",
        state=DeliveryState.FAILED,
        attempts=1,
        last_error=f"HTTP 500: {HOSTILE}",
        log=[{"at": now.isoformat(), "error": f"refused {HOSTILE}", "ms": 5, "url": f"https://old.example/{ESCAPE}"}],
    )
    return {"schedule": schedule, "subscription": subscription}


def test_every_automation_page_isolates_names_addresses_reasons_and_errors(admin, hostile):
    """Given the hostile schedule and webhook, when an admin reads the lists, their pages and their forms, then each
    such text is in a <bdi> of its own whose text cannot close it: bare, the override reversed the rest of the line
    as drawn (the 'code', 'paused' and 'active' badges, 'by admin', 'HTTP 500 · 5 ms')."""
    # given
    schedule, subscription = hostile["schedule"].pk, hostile["subscription"].pk

    # when
    paths = [
        reverse("automation:schedule_list"),
        reverse("automation:schedule_detail", args=[schedule]),
        reverse("automation:schedule_edit", args=[schedule]),
        reverse("automation:webhook_list"),
        reverse("automation:webhook_detail", args=[subscription]),
        reverse("automation:webhook_edit", args=[subscription]),
        reverse("automation:webhook_roll_secret", args=[subscription]),
    ]

    # then
    for path in paths:
        response = admin.get(path)
        page = response.content.decode()
        assert response.status_code == 200, path
        assert RLO in page, path
        assert "<i>x</i>" not in page, path
        assert unisolated(page) == [], path


def test_a_message_naming_a_schedule_isolates_its_name(admin, hostile):
    """Given the hostile schedule, when an admin pauses it, then the message names it between FIRST STRONG ISOLATE
    and POP DIRECTIONAL ISOLATE: bare, its override reversed 'paused.' after it."""
    # when
    response = admin.post(
        reverse("automation:schedule_toggle", args=[hostile["schedule"].pk]), {"enabled": "0"}, follow=True
    )

    # then
    assert f"Schedule \u2068{balanced(HOSTILE)}\u2069 paused." in html.unescape(response.content.decode())


def test_a_pause_notice_isolates_the_webhooks_name(hostile, users):
    """Given the hostile webhook, when its owner is told it paused, then the notice names it between FIRST STRONG
    ISOLATE and POP DIRECTIONAL ISOLATE: bare, its override reversed "paused: its deliveries keep failing"."""
    # given
    from approvals.models import Notification
    from automation.webhooks import _tell_owner

    # when
    _tell_owner(hostile["subscription"])

    # then
    notice = Notification.objects.get(user=users.admin, kind="webhook.paused")
    assert notice.message == f"Webhook \u2068{balanced(HOSTILE)}\u2069 paused: its deliveries keep failing"


def test_a_refused_schedule_isolates_the_cron_expression_and_zone_it_repeats(admin):
    """Given a cron expression and a time zone name written in Hebrew letters, when an admin saves a schedule with
    each, then the error repeating it isolates it: bare, right-to-left text beside the message's quotes and colon
    drew them on its other side ("'0 9 * * שני' is not a valid cron expression")."""
    # given
    typed = {
        "name": "Weekday expenses",
        "workflow_name": "expense_approval",
        "cron": "0 9 * * 1-5",
        "timezone": "Europe/Paris",
        "missed": "skip",
        "input": '{"employee": "Sam", "amount": "42.00", "category": "meals", "description": "Lunch"}',
    }
    cron, zone = "0 9 * * שני", "אסיה/חיפה"

    # when
    bad_cron = admin.post(reverse("automation:schedule_new"), {**typed, "cron": cron})
    bad_zone = admin.post(reverse("automation:schedule_new"), {**typed, "timezone": zone})

    # then
    assert bad_cron.status_code == bad_zone.status_code == 400
    assert f"{isolate(repr(cron))} is not a valid cron expression" in html.unescape(bad_cron.content.decode())
    assert f"Unknown time zone {isolate(repr(zone))}:" in html.unescape(bad_zone.content.decode())
    assert not Schedule.objects.exists()


def test_a_refused_webhook_isolates_the_host_it_repeats(admin):
    """Given an address whose host holds a stray pop and a right-to-left override, when an admin subscribes it, then
    the error naming the host isolates it: bare, the override reversed 'is not a valid domain name' after it."""
    # given
    host = f"hooks{ESCAPE}.example.com"

    # when
    response = admin.post(
        reverse("automation:webhook_new"),
        {"name": "Shop hook", "url": f"https://{host}/in", "events": ["instance.started"]},
    )

    # then
    page = response.content.decode()
    assert response.status_code == 400
    assert f"{isolate(host)} is not a valid domain name" in html.unescape(page)
    assert unisolated(page) == []
    assert not WebhookSubscription.objects.exists()


def test_a_refused_time_zone_on_the_settings_page_isolates_the_name_it_repeats(users):
    """Given a time zone name ending in a stray pop and a right-to-left override, when a person saves it as theirs,
    then the error repeating it isolates it: bare, the override reversed 'is not a time zone name' after it."""
    # given
    client = Client(raise_request_exception=False)
    client.force_login(users.staff)
    name = f"Mars/Olympus {ESCAPE}"

    # when
    response = client.post("/settings/", {"time_zone": name})

    # then
    page = response.content.decode()
    assert response.status_code == 400
    assert f"“{isolate(name)}” is not a time zone name" in html.unescape(page)
    assert RLO in page
    assert unisolated(page) == []
