"""Roll secret sent twice (a double click, a browser resending): the second send rolled again, so the secret the
receiver still used, which the first roll had kept signing for its grace, stopped at once: every delivery was
refused until the receiver had a secret it was never shown. The form now rolls the secret it was shown, once."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from automation.models import WebhookSubscription
from orchestrator.models import AuditEvent

pytestmark = pytest.mark.django_db

HIDDEN = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)"')


def test_the_roll_form_sent_twice_rolls_once_and_the_old_secret_keeps_signing(users):
    """Given a subscription and its roll page as given, when the form is sent twice with a grace of 24 hours, then
    the secret was rolled once: the secret in use before still signs beside the new one, and the second send lands
    on the subscription's page saying it was rolled already."""
    # given
    subscription = WebhookSubscription.objects.create(
        name="Shop", url="https://hooks.example.com/baton", events=["instance.failed"], secret="a" * 64
    )
    admin = Client()
    admin.force_login(users.admin)
    roll = reverse("automation:webhook_roll_secret", args=[subscription.pk])
    hidden = {k: v for k, v in HIDDEN.findall(admin.get(roll).content.decode()) if k != "csrfmiddlewaretoken"}

    # when
    first = admin.post(roll, {"grace": "86400", **hidden})
    second = admin.post(roll, {"grace": "86400", **hidden}, follow=True)

    # then
    subscription.refresh_from_db()
    assert first.status_code == 302
    assert subscription.previous_secret == "a" * 64
    assert subscription.secret != "a" * 64
    assert AuditEvent.objects.filter(action="webhook.secret_rolled").count() == 1
    assert second.redirect_chain == [(reverse("automation:webhook_detail", args=[subscription.pk]), 302)]
    assert "was rolled already" in second.content.decode()
