"""The new-webhook form sent twice (a double click on Subscribe, a browser resending after a slow answer) subscribes
once: before, each send made a subscription of its own, with its own secret, and every event reached the receiver
twice, one of the two signed with a secret nobody had given it."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from automation.models import Schedule, WebhookSubscription

pytestmark = pytest.mark.django_db

HIDDEN = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)"')


def as_given(page: str) -> dict:
    """The hidden fields of the new-webhook form as the page gave it (CSRF's aside: the test client skips it)."""
    return {name: value for name, value in HIDDEN.findall(page) if name != "csrfmiddlewaretoken"}


@pytest.fixture
def admin(users, settings) -> Client:
    settings.BATON_WEBHOOK_ALLOW_PRIVATE = True  # the address below is this machine's: no name server asked
    client = Client()
    client.force_login(users.admin)
    return client


def test_the_same_new_webhook_form_sent_twice_subscribes_once(admin):
    """Given the new-webhook form as the page gave it, when it is sent twice as filled in, then one subscription
    exists and the second send lands on its page, saying the form had been sent already."""
    # given
    hidden = as_given(admin.get(reverse("automation:webhook_new")).content.decode())
    form = {"name": "Shop", "url": "http://127.0.0.1:9/hook", "events": ["instance.failed"], **hidden}

    # when
    first = admin.post(reverse("automation:webhook_new"), form)
    second = admin.post(reverse("automation:webhook_new"), form, follow=True)

    # then
    (subscription,) = WebhookSubscription.objects.all()
    detail = reverse("automation:webhook_detail", args=[subscription.pk])
    assert first.status_code == 302
    assert first["Location"] == detail
    assert second.redirect_chain == [(detail, 302)]
    assert "This form was sent already" in second.content.decode()


def test_two_forms_opened_one_after_the_other_subscribe_twice(admin):
    """Given two new-webhook forms opened one after the other, when each is sent, then two subscriptions exist: the
    guard is against one form sent twice, not against a second subscription made on purpose."""
    # given
    forms = [as_given(admin.get(reverse("automation:webhook_new")).content.decode()) for _ in range(2)]

    # when
    for hidden in forms:
        admin.post(
            reverse("automation:webhook_new"),
            {"name": "Shop", "url": "http://127.0.0.1:9/hook", "events": ["instance.failed"], **hidden},
        )

    # then
    assert WebhookSubscription.objects.count() == 2


@pytest.mark.parametrize("token", ["\x00", "x" * 65, "<script>", "é"], ids=["nul", "too long", "html", "non-ascii"])
def test_a_token_the_page_never_gave_is_none_given_not_a_hidden_error(admin, token):
    """Given a form whose hidden token was tampered with, when it is sent, then it subscribes (as a form without a
    token): refused for a field nobody sees, the page would come back with no message beside anything."""
    # when
    response = admin.post(
        reverse("automation:webhook_new"),
        {"name": "Shop", "url": "http://127.0.0.1:9/hook", "events": ["instance.failed"], "form_token": token},
    )

    # then
    assert response.status_code == 302
    assert WebhookSubscription.objects.get().form_token == ""


def test_the_same_new_schedule_form_sent_twice_creates_once_and_says_so(admin):
    """Given the new-schedule form as the page gave it, when it is sent twice as filled in, then one schedule exists
    and the second send lands on its page saying the form had been sent already. Before, the second send came back
    refused ("Another schedule has this name"), as if nothing had been made: renamed and sent again, it made a
    second schedule starting every run twice."""
    # given
    hidden = as_given(admin.get(reverse("automation:schedule_new")).content.decode())
    form = {
        "name": "Weekday lunches",
        "workflow_name": "expense_approval",
        "cron": "0 9 * * 1-5",
        "timezone": "Europe/Paris",
        "missed": "skip",
        "input": '{"employee": "Sam", "amount": "42.00", "category": "meals", "description": "Lunch"}',
        **hidden,
    }

    # when
    first = admin.post(reverse("automation:schedule_new"), form)
    second = admin.post(reverse("automation:schedule_new"), form, follow=True)

    # then
    (schedule,) = Schedule.objects.all()
    detail = reverse("automation:schedule_detail", args=[schedule.pk])
    assert first.status_code == 302
    assert second.redirect_chain == [(detail, 302)]
    assert "This form was sent already" in second.content.decode()
