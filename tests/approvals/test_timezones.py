"""Each person's time zone: chosen on the settings page (proposed from the browser), carried in the session,
used for every time shown and every date typed."""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from approvals.models import HumanTask, TaskState, UserProfile
from approvals.timezones import SESSION_KEY
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory

pytestmark = pytest.mark.django_db


def test_the_settings_page_offers_every_zone_and_the_browser_proposal(client, users):
    # given
    client.force_login(users.staff)

    # when
    response = client.get("/settings/")

    # then
    assert response.status_code == 200
    page = response.content.decode()
    assert '<option value="Asia/Kolkata">' in page
    assert 'id="tz-proposal"' in page  # filled by static/baton/timezone.js from Intl.DateTimeFormat
    assert "UTC" in page


def test_choosing_a_zone_saves_it_keeps_it_in_the_session_and_shows_times_in_it(client, users):
    # given
    client.force_login(users.staff)

    # when
    response = client.post("/settings/", {"time_zone": "Asia/Kolkata"})

    # then
    assert response.status_code == 302
    assert UserProfile.objects.get(user=users.staff).time_zone == "Asia/Kolkata"
    assert client.session[SESSION_KEY] == "Asia/Kolkata"
    page = client.get("/settings/").content.decode()
    assert "IST" in page
    assert "Asia/Kolkata" in page


@pytest.mark.parametrize(
    "name",
    # the last two are zone files that name no place: the server's own zone and the "-00" placeholder
    ["Mars/Olympus_Mons<b>", "localtime", "Factory"],
)
def test_a_name_that_is_no_zone_is_400_with_what_was_typed_kept(client, users, name):
    # given
    client.force_login(users.staff)

    # when
    response = client.post("/settings/", {"time_zone": name})

    # then
    assert response.status_code == 400
    page = response.content.decode()
    assert "is not a time zone name" in page
    assert f'value="{html.escape(name)}"' in page
    assert not UserProfile.objects.filter(user=users.staff).exists()


@pytest.mark.parametrize("junk", ["../../etc/passwd", "a" * 65, "Europe/Paris\x00", "", "   "])
def test_junk_never_fails_and_empty_means_the_site_zone(client, users, junk):
    # given
    client.force_login(users.staff)

    # when
    response = client.post("/settings/", {"time_zone": junk})

    # then
    assert response.status_code in (302, 400)
    if not junk.strip():
        assert response.status_code == 302
        assert client.session[SESSION_KEY] == ""


def test_an_unsafe_next_is_not_followed(client, users):
    # given
    client.force_login(users.staff)

    # when
    response = client.post("/settings/", {"time_zone": "Europe/Paris", "next": "https://evil.example/"})

    # then
    assert response["Location"] == "/settings/"


def test_the_zone_is_read_at_sign_in_and_applies_without_a_query_per_page(client, users):
    """The profile is read once at sign-in; pages only read the session."""
    # given
    UserProfile.objects.create(user=users.staff, time_zone="America/New_York")
    client.force_login(users.staff)

    # when
    with CaptureQueriesContext(connection) as queries:
        page = client.get("/notifications/").content.decode()

    # then
    assert client.session[SESSION_KEY] == "America/New_York"
    assert "EST" in page or "EDT" in page
    assert not [q for q in queries.captured_queries if "userprofile" in q["sql"]]


def test_a_date_typed_in_a_form_is_read_in_the_persons_zone(client, users):
    """Snoozing a task "until <the day after tomorrow> 09:00" as someone in Kolkata means 03:30 UTC that day."""
    # given
    instance_start("expense_approval", ExpenseInputFactory(amount="20.00"))
    task = HumanTask.objects.get(state=TaskState.OPEN)
    client.force_login(users.staff)
    client.post("/settings/", {"time_zone": "Asia/Kolkata"})
    client.post(f"/tasks/{task.pk}/claim/")

    # when
    day = (timezone.now() + timedelta(days=2)).date()
    response = client.post(f"/tasks/{task.pk}/snooze/", {"until": f"{day.isoformat()}T09:00"})

    # then
    assert response.status_code == 302, response.content.decode()[-2000:]
    task.refresh_from_db()
    assert task.snoozed_until == datetime(day.year, day.month, day.day, 3, 30, tzinfo=UTC)
    # The message says which clock its time is on, as every time shown does.
    assert f"Snoozed until {day.isoformat()} 09:00 IST." in client.get(response.url).content.decode()


def test_a_time_on_a_page_is_shown_in_the_persons_zone_with_its_zone(client, users):
    # given
    instance_start("expense_approval", ExpenseInputFactory(amount="20.00"))
    task = HumanTask.objects.get(state=TaskState.OPEN)
    due = datetime(2031, 6, 1, 12, 0, tzinfo=UTC)
    HumanTask.objects.filter(pk=task.pk).update(due_at=due)
    client.force_login(users.staff)
    client.post("/settings/", {"time_zone": "Europe/Paris"})

    # when
    page = client.get(f"/tasks/{task.pk}/").content.decode()

    # then
    assert "2031-06-01 14:00 CEST" in page
    assert timezone.get_current_timezone_name() == "UTC"  # deactivated after the request


def test_a_person_who_chose_no_zone_gets_the_browser_proposal_banner(client, users):
    # given
    client.force_login(users.staff)

    # when
    unchosen = client.get("/settings/").content.decode()
    client.post("/settings/", {"time_zone": "Europe/Paris"})
    chosen = client.get("/settings/").content.decode()

    # then
    assert 'id="tz-banner"' in unchosen
    assert 'id="tz-banner"' not in chosen


@pytest.mark.parametrize("stored", ["Atlantis/Capital", "localtime", "Factory"])
def test_a_session_holding_a_zone_that_no_longer_exists_falls_back_to_the_site_zone(client, users, stored):
    # given a zone gone from tzdata, or one stored before the names that are no place were refused
    client.force_login(users.staff)
    session = client.session
    session[SESSION_KEY] = stored
    session.save()

    # when
    response = client.get("/settings/")

    # then
    assert response.status_code == 200
    assert "in <strong>UTC</strong>" in response.content.decode()
