"""The pages that change a subscription and roll its secret: admins only, linked from the subscription's page,
bad input answered 400 with the reason by its field and what was typed kept."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from automation.models import WebhookDelivery, WebhookSubscription
from orchestrator.models import AuditEvent

pytestmark = pytest.mark.django_db

URL = "https://93.184.215.14/hooks"


@pytest.fixture
def admin_client(client, users):
    client.force_login(users.admin)
    return client


@pytest.fixture
def subscription(users):
    return WebhookSubscription.objects.create(
        owner=users.admin, name="Shop", url=URL, events=["instance.started"], secret="a" * 64
    )


def test_the_subscription_page_links_to_its_edit_and_roll_pages(admin_client, subscription):
    page = admin_client.get(f"/automation/webhooks/{subscription.pk}/").content.decode()

    assert f'href="/automation/webhooks/{subscription.pk}/edit/"' in page
    assert f'href="/automation/webhooks/{subscription.pk}/roll-secret/"' in page


def test_the_edit_form_holds_what_the_subscription_is(admin_client, subscription):
    page = admin_client.get(f"/automation/webhooks/{subscription.pk}/edit/").content.decode()

    assert 'value="Shop"' in page
    assert f'value="{URL}"' in page
    assert re.search(r"value=\"instance.started\"[^>]* checked", page)
    assert not re.search(r"value=\"task.created\"[^>]* checked", page)
    assert 'name="resume"' not in page  # active: nothing to resume
    assert "a" * 64 not in page


def test_an_admin_changes_the_address_and_events(admin_client, subscription):
    # when
    response = admin_client.post(
        f"/automation/webhooks/{subscription.pk}/edit/",
        {"name": "Shop", "url": "https://93.184.215.14/fixed", "events": ["instance.started", "task.decided"]},
    )

    # then
    subscription.refresh_from_db()
    assert response.status_code == 302
    assert response["Location"] == f"/automation/webhooks/{subscription.pk}/"
    assert subscription.url == "https://93.184.215.14/fixed"
    assert subscription.events == ["instance.started", "task.decided"]
    assert subscription.secret == "a" * 64
    page = admin_client.get(response["Location"]).content.decode()
    assert "address, events changed" in page


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"url": "http://10.0.0.5/hook"}, "private, loopback or reserved"),
        ({"url": "gopher://93.184.215.14/"}, "http:// or https://"),
        ({"url": "https://93.184.215.14:70000/"}, "port"),
        ({"url": "https://93.184.215.14/\x00"}, "Null characters are not allowed"),
        ({"events": []}, "This field is required"),
        ({"events": ["instance.exploded"]}, "Select a valid choice"),
        ({"name": ""}, "This field is required"),
    ],
)
def test_a_bad_change_is_answered_400_by_its_field_with_what_was_typed(admin_client, subscription, fields, says):
    typed = {"name": "Shop hook", "url": "https://93.184.215.14/typed", "events": ["task.created"], **fields}

    response = admin_client.post(f"/automation/webhooks/{subscription.pk}/edit/", typed)

    page = response.content.decode()
    assert response.status_code == 400
    assert says in page
    assert 'class="form-control is-invalid"' in page or "is-invalid" in page
    if fields.get("name", "x"):
        assert f'value="{typed["name"]}"' in page
    assert "Edit Shop" in page  # the title names the subscription as saved
    subscription.refresh_from_db()
    assert (subscription.name, subscription.url, subscription.events) == ("Shop", URL, ["instance.started"])
    assert not AuditEvent.objects.filter(action="webhook.changed").exists()


def test_a_paused_subscriptions_form_says_why_and_resumes_it_with_the_change(admin_client, subscription):
    # given a subscription paused after failing
    reason = "paused after 10 failed attempts in a row since 2026-11-30 09:00 UTC; last: HTTP 404"
    WebhookSubscription.objects.filter(pk=subscription.pk).update(
        active=False, paused_at=timezone.now(), paused_reason=reason
    )

    # when the admin opens its form
    page = admin_client.get(f"/automation/webhooks/{subscription.pk}/edit/").content.decode()

    # then it says why it paused and offers to resume
    assert reason in page
    assert 'name="resume"' in page

    # when the admin fixes the address and resumes it
    response = admin_client.post(
        f"/automation/webhooks/{subscription.pk}/edit/",
        {"name": "Shop", "url": "https://93.184.215.14/fixed", "events": ["instance.started"], "resume": "on"},
    )

    # then
    subscription.refresh_from_db()
    assert response.status_code == 302
    assert subscription.active
    assert "resumed" in admin_client.get(response["Location"]).content.decode()


def test_the_roll_page_asks_first_and_changes_nothing(admin_client, subscription):
    page = admin_client.get(f"/automation/webhooks/{subscription.pk}/roll-secret/").content.decode()

    assert 'name="grace"' in page
    assert re.search(r'value="86400"[^>]* checked', page)
    subscription.refresh_from_db()
    assert subscription.secret == "a" * 64


def test_rolling_shows_the_new_secret_and_until_when_the_old_one_signs(admin_client, subscription):
    # when
    response = admin_client.post(f"/automation/webhooks/{subscription.pk}/roll-secret/", {"grace": "3600"})

    # then
    subscription.refresh_from_db()
    assert response.status_code == 302
    assert subscription.secret != "a" * 64
    assert subscription.previous_secret == "a" * 64
    page = admin_client.get(response["Location"]).content.decode()
    assert f'value="{subscription.secret}"' in page
    assert "a" * 64 not in page  # the old secret is never shown again
    assert "the old one signs beside it until" in page
    assert "the old secret signs beside it until" in page


@pytest.mark.parametrize("grace", ["", "7", "forever", "1e9"])
def test_a_grace_not_offered_is_answered_400_and_rolls_nothing(admin_client, subscription, grace):
    response = admin_client.post(f"/automation/webhooks/{subscription.pk}/roll-secret/", {"grace": grace})

    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode() or "required" in response.content.decode()
    subscription.refresh_from_db()
    assert subscription.secret == "a" * 64


def test_an_attempt_to_another_address_names_it_in_the_log(admin_client, subscription):
    WebhookDelivery.objects.create(
        subscription=subscription,
        event="instance.started",
        event_key="k",
        body="{}",
        state="delivered",
        attempts=2,
        log=[
            {
                "at": timezone.now().isoformat(),
                "url": "https://93.184.215.14/typo",
                "status": 404,
                "error": "",
                "ms": 3,
            },
            {"at": timezone.now().isoformat(), "url": URL, "status": 200, "error": "", "ms": 4},
        ],
    )

    page = admin_client.get(f"/automation/webhooks/{subscription.pk}/").content.decode()

    assert '· to <code class="text-break"><bdi>https://93.184.215.14/typo</bdi></code>' in page
    assert page.count(f"><bdi>{URL}</bdi></code>") == 1  # the current address once, in the subscription card


@pytest.mark.parametrize("role", ["staff", "operator", "manager"])
@pytest.mark.parametrize("path", ["edit/", "roll-secret/"])
def test_only_admins_may_change_a_subscription(client, users, subscription, role, path):
    client.force_login(getattr(users, role))

    shown = client.get(f"/automation/webhooks/{subscription.pk}/{path}")
    posted = client.post(
        f"/automation/webhooks/{subscription.pk}/{path}",
        {"name": "Mine", "url": "https://93.184.215.14/mine", "events": ["task.created"], "grace": "0"},
    )

    assert (shown.status_code, posted.status_code) == (404, 404)
    subscription.refresh_from_db()
    assert (subscription.url, subscription.secret) == (URL, "a" * 64)


def test_a_paused_subscription_changed_without_resuming_says_it_still_is(admin_client, subscription):
    WebhookSubscription.objects.filter(pk=subscription.pk).update(active=False, paused_reason="paused by admin")

    response = admin_client.post(
        f"/automation/webhooks/{subscription.pk}/edit/",
        {"name": "Shop", "url": "https://93.184.215.14/fixed", "events": ["instance.started"]},
    )

    subscription.refresh_from_db()
    assert not subscription.active
    assert "It is still paused: resume it below" in admin_client.get(response["Location"]).content.decode()


def test_the_roll_page_says_nothing_of_a_grace_that_has_ended(admin_client, subscription):
    # given: a roll whose old secret stopped signing an hour ago (the previous secret stays stored)
    ended = timezone.now() - timedelta(hours=1)
    WebhookSubscription.objects.filter(pk=subscription.pk).update(
        previous_secret="b" * 64, previous_secret_expires_at=ended
    )

    # when
    page = admin_client.get(f"/automation/webhooks/{subscription.pk}/roll-secret/").content.decode()

    # then: no "still signs until" a time gone by
    assert "still signs" not in page


def test_the_roll_page_says_when_a_grace_still_running_ends(admin_client, subscription):
    WebhookSubscription.objects.filter(pk=subscription.pk).update(
        previous_secret="b" * 64, previous_secret_expires_at=timezone.now() + timedelta(hours=1)
    )

    page = admin_client.get(f"/automation/webhooks/{subscription.pk}/roll-secret/").content.decode()

    assert "A secret rolled before still signs until" in page


def choice_text(page: str, value: str) -> str:
    """What the roll page says beside the grace choice ``value``: its label and what it does."""
    return page.split(f'value="{value}"', 1)[1].split('class="form-check"', 1)[0]


def test_the_roll_page_says_what_becomes_of_the_secret_in_use_for_each_choice(admin_client, subscription):
    # given a grace still running (the page's note on it)
    WebhookSubscription.objects.filter(pk=subscription.pk).update(
        previous_secret="b" * 64, previous_secret_expires_at=timezone.now() + timedelta(hours=1)
    )

    # when
    page = admin_client.get(f"/automation/webhooks/{subscription.pk}/roll-secret/").content.decode()

    # then nothing says, for every choice, that the secret in use now is kept as the old one: "At once" keeps none
    assert "the secret in use now becomes the old one" not in page
    at_once, hour, day = (choice_text(page, value) for value in ("0", "3600", "86400"))
    assert "stops signing at once" in at_once
    assert "only the new secret signs" in at_once
    assert "becomes the old one" not in at_once
    assert "becomes the old one and signs beside the new one for 1 hour" in hour
    assert "becomes the old one and signs beside the new one for 24 hours" in day
    # and the note on the running grace says rolling ends it whatever the choice
    assert "rolling again ends that at once, whichever you choose" in page


def test_a_paused_subscription_s_new_address_is_not_said_to_be_sent_to_now(admin_client, subscription):
    # given: paused, with a delivery waiting for its retry
    WebhookSubscription.objects.filter(pk=subscription.pk).update(active=False, paused_reason="paused by admin")

    # when: the address is corrected without resuming
    response = admin_client.post(
        f"/automation/webhooks/{subscription.pk}/edit/",
        {"name": "Shop", "url": "https://93.184.215.14/fixed", "events": ["instance.started"]},
    )

    # then: nothing goes anywhere while it is paused, and the message says so
    page = admin_client.get(response["Location"]).content.decode()
    assert "go to the new address now" not in page
    assert "go to the new address when it resumes" in page
