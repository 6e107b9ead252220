"""Two admins editing one schedule or webhook at once: the later save, made on a form shown before the earlier one's
change, is refused with what was typed kept, instead of silently putting back the fields its form showed from
before (the other admin's new input, cron or events lost without a word)."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from automation.models import Schedule, WebhookSubscription
from tests.factories import SuperUserFactory

pytestmark = pytest.mark.django_db

SEEN = re.compile(r'name="seen" value="([0-9a-f]*)"')
LUNCH = {"employee": "Sam", "amount": "42.00", "category": "meals", "description": "Lunch"}
TAXI = {**LUNCH, "description": "Taxi"}


def admin_client(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


@pytest.fixture
def admins(users):
    return admin_client(users.admin), admin_client(SuperUserFactory(username="admin2"))


@pytest.fixture
def schedule() -> Schedule:
    now = timezone.now()
    return Schedule.objects.create(
        name="Weekday lunches",
        workflow_name="expense_approval",
        input=LUNCH,
        cron="0 9 * * 1-5",
        timezone="Europe/Paris",
        anchor=now,
        next_fire_at=now + timedelta(hours=1),
    )


def schedule_form(schedule: Schedule, seen: str, **changes: object) -> dict:
    fields = {
        "name": schedule.name,
        "workflow_name": schedule.workflow_name,
        "cron": schedule.cron,
        "interval_minutes": "",
        "timezone": schedule.timezone,
        "missed": schedule.missed,
        "input": json.dumps(schedule.input),
        "seen": seen,
    }
    return {**fields, **changes}


def seen_on(response) -> str:
    (stamp,) = SEEN.findall(response.content.decode())
    return stamp


def test_a_schedule_saved_on_a_form_shown_before_another_admins_change_is_refused_with_the_typing_kept(
    admins, schedule
):
    """Given two admins with the schedule's form open, the second saving a new start input, when the first saves a
    new name on their form (still holding the old input), then nothing is saved: the page says someone changed it
    and which field now differs, with the name as typed; the second admin's input stays. Saving again from that
    page replaces the change knowingly."""
    # given
    first, second = admins
    edit = reverse("automation:schedule_edit", args=[schedule.pk])
    first_seen = seen_on(first.get(edit))
    second_seen = seen_on(second.get(edit))
    changed = second.post(edit, schedule_form(schedule, second_seen, input=json.dumps(TAXI)))

    # when
    refused = first.post(edit, schedule_form(schedule, first_seen, name="Weekday lunches (EU)"))
    again = first.post(edit, schedule_form(schedule, seen_on(refused), name="Weekday lunches (EU)"))

    # then
    assert changed.status_code == 302
    assert refused.status_code == 400
    page = html.unescape(refused.content.decode())
    assert "Someone changed this schedule while you were editing it; nothing was saved." in page
    assert "As saved now, it differs from what you typed in: name, start input." in page
    assert 'value="Weekday lunches (EU)"' in page
    assert again.status_code == 302
    schedule.refresh_from_db()
    assert (schedule.name, schedule.input) == ("Weekday lunches (EU)", LUNCH)


def test_a_pause_while_the_form_is_open_does_not_refuse_its_save(admins, schedule):
    """Given the form open, when another admin pauses the schedule and the form is then saved, then the save goes
    through and the schedule stays paused: a pause is no edit of what the form shows."""
    # given
    first, second = admins
    edit = reverse("automation:schedule_edit", args=[schedule.pk])
    seen = seen_on(first.get(edit))
    second.post(reverse("automation:schedule_toggle", args=[schedule.pk]), {"enabled": "0"})

    # when
    saved = first.post(edit, schedule_form(schedule, seen, name="Lunches"))

    # then
    assert saved.status_code == 302
    schedule.refresh_from_db()
    assert (schedule.name, schedule.enabled) == ("Lunches", False)


def test_a_webhook_saved_on_a_form_shown_before_another_admins_change_keeps_their_events(admins, users):
    """Given two admins with a webhook's form open, the second adding an event, when the first renames it on their
    form (which shows the events from before), then nothing is saved and the page says so; the event the second
    admin added is still sent. Before, the rename put the old events back: that event silently stopped."""
    # given
    subscription = WebhookSubscription.objects.create(
        name="Ops", url="https://hooks.example.com/baton", events=["instance.failed"], secret="s" * 64
    )
    first, second = admins
    edit = reverse("automation:webhook_edit", args=[subscription.pk])
    first_seen, second_seen = seen_on(first.get(edit)), seen_on(second.get(edit))
    form = {"name": "Ops", "url": subscription.url, "events": ["instance.failed"]}
    added = second.post(edit, {**form, "events": ["instance.failed", "instance.completed"], "seen": second_seen})

    # when
    refused = first.post(edit, {**form, "name": "Ops team", "seen": first_seen})

    # then
    assert added.status_code == 302
    assert refused.status_code == 400
    page = html.unescape(refused.content.decode())
    assert "Someone changed this webhook while you were editing it; nothing was saved." in page
    assert "As saved now, it differs from what you typed in: name, events." in page
    assert 'value="Ops team"' in page
    subscription.refresh_from_db()
    assert (subscription.name, subscription.events) == ("Ops", ["instance.completed", "instance.failed"])


def test_the_same_edit_sent_twice_is_saved_not_refused_as_someone_elses_change(admins, schedule):
    """Given a schedule's and a webhook's forms, when each is sent twice as filled in (a double click on Save), then
    both sends are answered with the object's page: the second finds the object already as typed, which is no one
    else's change to protect."""
    # given
    first, _second = admins
    subscription = WebhookSubscription.objects.create(
        name="Ops", url="https://hooks.example.com/baton", events=["instance.failed"], secret="s" * 64
    )
    schedule_edit = reverse("automation:schedule_edit", args=[schedule.pk])
    webhook_edit = reverse("automation:webhook_edit", args=[subscription.pk])
    typed_schedule = schedule_form(schedule, seen_on(first.get(schedule_edit)), name="Lunches")
    typed_webhook = {
        "name": "Ops team",
        "url": subscription.url,
        "events": ["instance.failed"],
        "seen": seen_on(first.get(webhook_edit)),
    }

    # when
    schedule_sends = [first.post(schedule_edit, typed_schedule) for _ in range(2)]
    webhook_sends = [first.post(webhook_edit, typed_webhook) for _ in range(2)]

    # then
    assert [r.status_code for r in schedule_sends + webhook_sends] == [302, 302, 302, 302]
    schedule.refresh_from_db()
    subscription.refresh_from_db()
    assert (schedule.name, subscription.name) == ("Lunches", "Ops team")
