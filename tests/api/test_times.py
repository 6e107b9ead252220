"""Times in the API: what a time it cannot read is told (naming the parameter, with an example that carries its
offset), and how every time it answers is written."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

pytestmark = pytest.mark.django_db

EVENTS = "/api/audit/events/"
INSTANCES = "/api/instances/"


@pytest.mark.parametrize(
    ("path", "name", "value", "said"),
    [
        (EVENTS, "since", "2026-02-30T00:00:00Z", "2026-02-30 does not exist: February 2026 has 28 days."),
        (EVENTS, "until", "2026-02-30", "2026-02-30 does not exist: February 2026 has 28 days."),
        (INSTANCES, "started_after", "2026-02-30T10:00:00+01:00", "2026-02-30 does not exist"),
        (INSTANCES, "started_before", "2028-02-30T10:00:00Z", "February 2028 has 29 days."),
        (INSTANCES, "started_after", "2026-13-01T10:00:00Z", "there is no month 13"),
        (INSTANCES, "started_after", "2026-12-01T25:00:00Z", "25:00:00 is not a time of day"),
    ],
)
def test_a_day_or_hour_that_does_not_exist_is_told_so_not_sent_to_the_range(api_as, roles, path, name, value, said):
    """``2026-02-30`` was answered "enter a date between 2000-01-01 and 2036-12-01": it is in that range; it does
    not exist."""
    # when
    response = api_as(roles.admin).get(path, {name: value})

    # then
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    (message,) = response.json()["errors"][name]
    assert said in message, message
    assert "between" not in message, message


@pytest.mark.parametrize(("path", "name"), [(EVENTS, "since"), (EVENTS, "until"), (INSTANCES, "started_after")])
def test_a_value_that_is_no_time_gets_an_example_with_its_offset(api_as, roles, path, name):
    """The trail's ``since=garbage`` suggested "like 2026-12-01 09:00", a time the API then refuses for having no
    offset."""
    # when
    response = api_as(roles.admin).get(path, {name: "garbage"})

    # then
    assert response.status_code == 400, response.content
    (message,) = response.json()["errors"][name]
    assert "2026-12-02T09:30:00Z" in message, message
    assert "09:00." not in message, message


def test_since_after_until_is_refused_in_the_parameters_names_not_the_pages_labels(api_as, roles):
    """The API said "Until must be after From.", the timeline page's labels."""
    # when
    response = api_as(roles.admin).get(EVENTS, {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"})

    # then
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["errors"] == {"until": ["Must be later than since."]}
    assert "From" not in body["detail"], body["detail"]
    assert "Until" not in body["detail"], body["detail"]


def test_a_time_out_of_range_names_the_parameter_as_sent(api_as, roles):
    # when
    response = api_as(roles.admin).get(EVENTS, {"since": "1999-12-31T00:00:00Z"})

    # then
    (message,) = response.json()["errors"]["since"]
    assert message.startswith("since: enter a date between 2000-01-01 and"), message
    # the detail names it once: the message names its parameter already
    assert response.json()["detail"] == f"Check the filters: {message}"


def test_every_time_the_api_answers_is_utc_with_z_whatever_the_site_or_person_zone(api_as, roles, settings):
    """The trail's ``occurred_at`` came as ``+00:00`` beside the other times' ``Z``, and with ``BATON_TIME_ZONE`` or a
    person's zone set every other time came in that zone's offset, one client's ``+01:00`` another's ``Z``."""
    from django.test import Client

    from approvals.timezones import SESSION_KEY
    from orchestrator.services.instances import instance_start
    from tests.factories import ExpenseInputFactory

    # given: a site in Berlin, a person in New York, and an instance with a task
    settings.TIME_ZONE = "Europe/Berlin"
    instance = instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)
    browser = Client()
    browser.force_login(roles.admin)
    session = browser.session
    session[SESSION_KEY] = "America/New_York"
    session.save()

    # when
    answers = [
        api_as(roles.admin).get(f"{INSTANCES}{instance.pk}/").json(),
        browser.get(f"{INSTANCES}{instance.pk}/").json(),
        api_as(roles.staff2).get(f"/api/tasks/{instance.tasks.get().pk}/").json(),
        api_as(roles.admin).get(EVENTS, {"limit": 3}).json(),
        browser.get(EVENTS, {"limit": 3}).json(),
    ]

    # then: every time, nested ones too, in UTC with Z
    times = []

    def collect(value, key=""):
        if isinstance(value, dict):
            for k, v in value.items():
                collect(v, k)
        elif isinstance(value, list):
            for v in value:
                collect(v, key)
        elif isinstance(value, str) and key.endswith(("_at", "_until")):
            times.append(value)

    collect(answers)
    assert len(times) > 10
    assert all(t.endswith("Z") for t in times), [t for t in times if not t.endswith("Z")]


def test_the_tokens_page_still_shows_the_persons_zone(roles):
    """Only the API's answers are in UTC: the tokens page under /api/ is a page, in the person's zone."""
    from django.test import Client

    from api.tokens import token_create
    from approvals.timezones import SESSION_KEY

    # given
    token = token_create(roles.staff, "script").token
    client = Client()
    client.force_login(roles.staff)
    session = client.session
    session[SESSION_KEY] = "Asia/Tokyo"
    session.save()

    # when
    page = client.get("/api/tokens/").content.decode()

    # then
    created = token.created_at.astimezone(ZoneInfo("Asia/Tokyo"))
    assert f"<dd>{created:%Y-%m-%d %H:%M} JST</dd>" in page


@pytest.mark.parametrize(
    ("path", "name", "value", "said"),
    [
        (INSTANCES, "started_after", "2026-01-01T10:00:00+25:00", "+25:00 is not a UTC offset"),
        (EVENTS, "since", "2026-01-01T10:00:00-24:00", "-24:00 is not a UTC offset"),
        (EVENTS, "until", "2026-01-01T10:00+0160", "+0160 is not a UTC offset"),
    ],
)
def test_an_offset_past_23_59_is_told_so_not_sent_to_the_range(api_as, roles, path, name, value, said):
    """``+25:00`` was answered "enter a date between 2000-01-01 and 2036-12-02": the date is in that range; the
    offset does not exist."""
    # when
    response = api_as(roles.admin).get(path, {name: value})

    # then
    assert response.status_code == 400, response.content
    (message,) = response.json()["errors"][name]
    assert said in message, message
    assert "between" not in message, message


@pytest.mark.parametrize("value", ["\uff12\uff10\uff12\uff16-01-01T10:00:00Z", "2026-01-01T1\u0660:00:00Z"])
@pytest.mark.parametrize(("path", "name"), [(EVENTS, "since"), (INSTANCES, "started_after")])
def test_a_time_with_other_digits_than_0_9_is_a_400_naming_it(api_as, roles, path, name, value):
    """Fullwidth or Arabic-Indic digits were read as 2026 and 10 (Python's ``\\d`` and ``int()`` take any digit),
    while a number so written is refused: one rule, digits 0-9."""
    # when
    response = api_as(roles.admin).get(path, {name: value})

    # then
    assert response.status_code == 400, response.content
    assert response.json()["errors"] == {
        name: ["Give digits 0-9 (other digits, Arabic-Indic or fullwidth, are no date here)."]
    }
