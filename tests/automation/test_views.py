"""The automation pages: admins only, bad input answered 400 with what was typed kept, pinned queries on lists."""

from __future__ import annotations

import re
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone
from django.utils.html import escape

from automation.models import DeliveryState, Schedule, ScheduleFire, WebhookDelivery, WebhookSubscription
from orchestrator.bidi import isolate
from orchestrator.models import AuditEvent
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

EXPENSE = '{"employee": "Sam", "amount": "42.00", "category": "meals", "description": "Lunch"}'


@pytest.fixture
def admin_client(client, users):
    client.force_login(users.admin)
    return client


def make_schedule(name: str = "Weekday expenses", **fields: object) -> Schedule:
    now = timezone.now()
    values = {
        "workflow_name": "expense_approval",
        "input": {"employee": "Sam", "amount": "42.00", "category": "meals", "description": "Lunch"},
        "cron": "0 9 * * 1-5",
        "timezone": "Europe/Paris",
        "anchor": now,
        "next_fire_at": now + timedelta(hours=1),
        **fields,
    }
    return Schedule.objects.create(name=name, **values)  # type: ignore[arg-type]


def test_an_admin_creates_a_schedule_and_sees_its_next_runs(admin_client):
    # when
    response = admin_client.post(
        "/automation/schedules/new/",
        {
            "name": "Weekday expenses",
            "workflow_name": "expense_approval",
            "cron": "0 9 * * 1-5",
            "timezone": "Europe/Paris",
            "missed": "skip",
            "input": EXPENSE,
        },
    )

    # then: created, audited, and its page lists five runs, each at 09:00 Paris time
    schedule = Schedule.objects.get(name="Weekday expenses")
    assert response.status_code == 302
    assert response["Location"] == f"/automation/schedules/{schedule.pk}/"
    assert AuditEvent.objects.filter(chain="automation", action="schedule.created", subject_id=schedule.pk).exists()
    page = admin_client.get(response["Location"]).content.decode()
    assert page.count("09:00 CE") == 5  # CET or CEST, by the date


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"cron": "0 25 * * *"}, "not a valid cron expression"),
        ({"cron": "", "interval_minutes": ""}, "exactly one of a cron expression and an interval"),
        ({"timezone": "Mars/Olympus"}, "Unknown time zone"),
        ({"input": "{not json"}, "Not JSON"),
        ({"input": "[1, 2]"}, "Give a JSON object"),
        ({"input": '{"a":' * 3000 + "1" + "}" * 3000}, "nested too deep"),
        ({"input": '{"employee": "Sam"}'}, "amount"),
        ({"name": "bad\x00name"}, "Null characters are not allowed"),
        ({"input": '{"employee": "S\\u0000m"}'}, "NUL"),
        ({"workflow_name": "no_such_flow"}, "Select a valid choice"),
        # a cron expression croniter parses but that no date matches (30 February, 31 April): it never fires
        ({"cron": "0 0 30 2 *"}, "never fires"),
        ({"cron": "0 0 31 4 *"}, "never fires"),
        ({"cron": "R 9 * * *"}, "random"),
        # JSON that parses but that PostgreSQL or the encoder cannot hold, and nesting the parser cannot follow
        ({"input": EXPENSE[:-1] + ', "note": "S\\ud800m"}'}, "lone surrogate"),
        ({"input": EXPENSE[:-1] + ', "rate": 1e400}'}, "Infinity"),
        ({"input": EXPENSE[:-1] + ', "rate": NaN}'}, "NaN"),
        ({"input": '{"a": ' + "[" * 5000 + "]" * 5000 + "}"}, "nested"),
        ({"input": '{"a": ' + "[" * 300 + "]" * 300 + "}"}, "nested"),
        # a key typed twice: which amount was meant is a guess (the last one was taken)
        ({"input": EXPENSE[:-1] + ', "amount": "9000.00"}'}, "given twice"),
        # the manager's decision, which each start would have carried (the engine records it there)
        (
            {"input": EXPENSE[:-1] + ', "manager_approval": {"decision": "approve"}}'},
            "manager_approval: This is where the workflow records what its step",
        ),
    ],
)
def test_a_bad_schedule_is_answered_400_with_the_reason_and_what_was_typed(admin_client, fields, says):
    typed = {
        "name": "Weekday expenses",
        "workflow_name": "expense_approval",
        "cron": "0 9 * * 1-5",
        "timezone": "Europe/Paris",
        "missed": "skip",
        "input": EXPENSE,
        **fields,
    }

    response = admin_client.post("/automation/schedules/new/", typed)

    page = response.content.decode()
    assert response.status_code == 400
    assert says in page
    assert 'value="Europe/Paris"' in page or "Mars/Olympus" in page
    assert not Schedule.objects.exists()


def test_every_mistake_of_a_schedule_is_said_at_once(admin_client):
    """A bad cron expression and an unknown zone are reported with the form's other errors in one answer, not one
    round after another once those are fixed."""
    # given: four mistakes, two the form itself reads (an interval below one minute, input that is not JSON) and
    # two that only the schedule's rules knew (cron, zone)
    typed = {
        "name": "Weekday expenses",
        "workflow_name": "expense_approval",
        "cron": "every day at 9",
        "interval_minutes": "-5",
        "timezone": "Mars/Olympus",
        "missed": "skip",
        "input": '{"amount": -3, ',
    }

    # when
    response = admin_client.post("/automation/schedules/new/", typed)

    # then: all four are said, each at its field
    errors = response.context["form"].errors
    assert response.status_code == 400
    assert set(errors) == {"cron", "interval_minutes", "timezone", "input"}
    assert "five fields" in errors["cron"][0]
    assert "Unknown time zone" in errors["timezone"][0]
    assert not Schedule.objects.exists()


@pytest.mark.parametrize(
    ("path", "form"),
    [("/automation/", "/automation/schedules/new/"), ("/automation/webhooks/", "/automation/webhooks/new/")],
)
def test_an_empty_list_links_to_the_form_that_fills_it(admin_client, path, form):
    """The empty schedule list said "create one here" and the webhook list only "No webhooks yet.": the way on
    is a link in the empty state itself."""
    # when: nothing was made yet
    page = admin_client.get(path).content.decode()

    # then: the empty row links to the form (besides the New button at the top)
    empty_row = re.search(r"<tr><td colspan=[^>]*>No \w+ yet.*?</tr>", page, re.DOTALL)
    assert empty_row is not None
    assert f'href="{form}"' in empty_row[0]


def test_a_schedule_name_used_twice_is_refused_on_the_field(admin_client):
    make_schedule("Weekday expenses")
    response = admin_client.post(
        "/automation/schedules/new/",
        {"name": "Weekday expenses", "workflow_name": "expense_approval", "interval_minutes": "30",
         "timezone": "UTC", "missed": "skip", "input": EXPENSE},
    )  # fmt: skip

    assert response.status_code == 400
    assert "Another schedule has this name" in response.content.decode()


def test_pausing_a_schedule_clears_its_next_run_and_resuming_sets_it(admin_client):
    schedule = make_schedule()

    admin_client.post(f"/automation/schedules/{schedule.pk}/toggle/", {"enabled": "0"})
    schedule.refresh_from_db()
    assert (schedule.enabled, schedule.next_fire_at) == (False, None)

    admin_client.post(f"/automation/schedules/{schedule.pk}/toggle/", {"enabled": "1"})
    schedule.refresh_from_db()
    assert schedule.enabled
    assert schedule.next_fire_at > timezone.now()


def test_a_manager_with_the_automation_permission_may_manage(client, users):
    manager = UserFactory(username="automator")
    manager.user_permissions.add(Permission.objects.get(codename="manage_automation"))
    client.force_login(manager)

    assert client.get("/automation/").status_code == 200
    client.force_login(users.operator)
    assert client.get("/automation/").status_code == 404


def test_the_schedule_list_costs_the_same_queries_however_many_schedules(admin_client, django_assert_num_queries):
    for index in range(3):
        make_schedule(f"Schedule {index}")
    with django_assert_num_queries(5) as few:
        admin_client.get("/automation/")
    for index in range(3, 30):
        make_schedule(f"Schedule {index}")

    with django_assert_num_queries(len(few.captured_queries)):
        response = admin_client.get("/automation/")

    assert response.content.decode().count("/automation/schedules/") >= 30


def test_the_page_of_a_schedule_whose_times_cannot_be_computed_says_so(admin_client):
    # given an enabled schedule in a time zone this tzdata no longer has (not yet paused by a sweep)
    schedule = make_schedule(timezone="US/Pacific-New")

    page = admin_client.get(f"/automation/schedules/{schedule.pk}/")

    assert page.status_code == 200
    assert "US/Pacific-New" in page.content.decode()


def test_the_schedule_page_shows_its_fires(admin_client):
    schedule = make_schedule()
    ScheduleFire.objects.create(
        schedule=schedule, fire_time=timezone.now(), fired_at=timezone.now(), outcome="skipped", covers=3
    )

    page = admin_client.get(f"/automation/schedules/{schedule.pk}/").content.decode()

    assert "for 3 missed runs" in page


def test_an_admin_subscribes_a_webhook_and_sees_its_secret(admin_client):
    response = admin_client.post(
        "/automation/webhooks/new/",
        {"name": "Shop", "url": "https://93.184.215.14/hooks", "events": ["instance.completed", "task.decided"]},
    )

    subscription = WebhookSubscription.objects.get()
    assert response.status_code == 302
    assert subscription.events == ["instance.completed", "task.decided"]
    assert subscription.owner.username == "admin"
    page = admin_client.get(response["Location"]).content.decode()
    assert subscription.secret in page
    assert "Baton-Signature" in page


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"url": "http://10.0.0.5/hook"}, "private, loopback or reserved"),
        ({"url": "gopher://93.184.215.14/"}, "http:// or https://"),
        ({"events": []}, "This field is required"),
        ({"events": ["instance.exploded"]}, "Select a valid choice"),
        ({"url": "https://93.184.215.14/\x00"}, "Null characters are not allowed"),
    ],
)
def test_a_bad_webhook_is_answered_400_with_the_reason_and_what_was_typed(admin_client, fields, says):
    typed = {"name": "Shop hook", "url": "https://93.184.215.14/hooks", "events": ["instance.started"], **fields}

    response = admin_client.post("/automation/webhooks/new/", typed)

    page = response.content.decode()
    assert response.status_code == 400
    assert says in page
    assert 'value="Shop hook"' in page
    assert not WebhookSubscription.objects.exists()


def test_a_webhook_address_that_is_no_address_is_said_with_the_other_mistakes(admin_client):
    """An address without http:// or https:// is said at once with a missing name and no event chosen, not only
    once those are fixed (the address was checked only when the form was otherwise valid)."""
    # when: no name, no event, and an address typed as people say it, without its scheme
    response = admin_client.post(
        "/automation/webhooks/new/", {"name": "", "url": "shop.example.com/hooks", "events": []}
    )

    # then: the three fields say what is wrong, and what was typed is kept
    errors = response.context["form"].errors
    assert response.status_code == 400
    assert set(errors) == {"name", "url", "events"}
    assert "http:// or https://" in " ".join(errors["url"])
    assert 'value="shop.example.com/hooks"' in response.content.decode()
    assert not WebhookSubscription.objects.exists()


def test_the_webhook_list_costs_the_same_queries_however_many_subscriptions(
    admin_client, users, django_assert_num_queries
):
    def subscribe(index: int) -> None:
        subscription = WebhookSubscription.objects.create(
            owner=users.admin, name=f"Hook {index}", url="https://93.184.215.14/", events=["task.created"], secret="s"
        )
        WebhookDelivery.objects.create(
            subscription=subscription, event="task.created", event_key=f"k{index}", body="{}", state="failed"
        )

    subscribe(0)
    with django_assert_num_queries(5) as few:
        admin_client.get("/automation/webhooks/")
    for index in range(1, 20):
        subscribe(index)

    with django_assert_num_queries(len(few.captured_queries)):
        response = admin_client.get("/automation/webhooks/")

    assert response.content.decode().count("1 failed") == 2 * 20  # the phone line and the wide column


def paused_row(page: str, name: str) -> str:
    """The list's row of the subscription called ``name``."""
    return page.split(f"><bdi>{name}</bdi></a>", 1)[1].split("</tr>", 1)[0]


def test_the_webhook_list_says_why_each_paused_subscription_is_paused(admin_client, users):
    # given one subscription paused by a person (a short reason), one paused after failures (a long one, the
    # address and the receiver's error in it), and one active
    now = timezone.now()
    long_reason = (
        "paused after 12 failed attempts in a row since 2026-11-30 09:00 UTC; last: HTTP 503 from the receiver, "
        "which answered 'maintenance until Monday' on every attempt and set no Retry-After header at all"
    )
    for name, reason in [("By hand", "paused by manager"), ("Failing", long_reason), ("Fine", "")]:
        WebhookSubscription.objects.create(
            owner=users.admin,
            name=name,
            url="https://93.184.215.14/",
            events=["task.created"],
            secret="s",
            active=not reason,
            paused_at=now if reason else None,
            paused_reason=reason,
        )

    # when
    page = admin_client.get("/automation/webhooks/").content.decode()

    # then each paused row says why, a long reason shortened with the whole of it one click away
    by_hand, failing, fine = (paused_row(page, name) for name in ("By hand", "Failing", "Fine"))
    assert "paused by manager" in by_hand
    assert "<details" not in by_hand
    assert long_reason[:60] in failing
    assert "…" in failing.split("<summary", 1)[1].split("</summary>", 1)[0]
    assert escape(long_reason) in failing.split("</summary>", 1)[1]  # the full text, when opened
    assert "data-paused-reason" not in fine


def test_the_webhook_page_shows_each_attempts_status(admin_client, users):
    subscription = WebhookSubscription.objects.create(
        owner=users.admin, name="Shop", url="https://93.184.215.14/", events=["task.created"], secret="s"
    )
    WebhookDelivery.objects.create(
        subscription=subscription,
        event="task.created",
        event_key="k",
        body="{}",
        state=DeliveryState.RETRYING,
        attempts=2,
        last_status=503,
        last_error="HTTP 503",
        next_attempt_at=timezone.now() + timedelta(seconds=20),
        log=[
            {"at": timezone.now().isoformat(), "status": 500, "error": "HTTP 500", "ms": 12},
            {"at": timezone.now().isoformat(), "status": 503, "error": "HTTP 503", "ms": 9},
        ],
    )

    page = admin_client.get(f"/automation/webhooks/{subscription.pk}/").content.decode()

    assert "will retry" in page
    assert "HTTP 500" in page
    assert "HTTP 503" in page


@pytest.mark.parametrize("enabled", [True, False])
def test_a_schedule_page_offers_the_toggle_that_flips_it(admin_client, enabled):
    schedule = make_schedule(enabled=enabled)

    page = admin_client.get(f"/automation/schedules/{schedule.pk}/").content.decode()

    assert f'action="/automation/schedules/{schedule.pk}/toggle/"' in page
    assert f'name="enabled" value="{0 if enabled else 1}"' in page
    assert ("</i> Pause</button>" if enabled else "</i> Resume</button>") in page


@pytest.mark.parametrize("active", [True, False])
def test_a_webhook_page_offers_the_toggle_that_flips_it(admin_client, users, active):
    subscription = WebhookSubscription.objects.create(
        owner=users.admin, name="Shop", url="https://93.184.215.14/", events=["task.created"], secret="s", active=active
    )

    page = admin_client.get(f"/automation/webhooks/{subscription.pk}/").content.decode()

    assert f'action="/automation/webhooks/{subscription.pk}/toggle/"' in page
    assert f'name="active" value="{0 if active else 1}"' in page
    assert ("</i> Pause</button>" if active else "</i> Resume and send what waited</button>") in page


def test_the_schedule_page_costs_the_same_queries_however_many_fires(admin_client, django_assert_num_queries):
    # given a schedule whose fires started instances
    from orchestrator.services.instances import instance_start
    from tests.factories import ExpenseInputFactory

    schedule = make_schedule()

    def fire(index: int) -> None:
        instance = instance_start("expense_approval", ExpenseInputFactory())
        moment = timezone.now() - timedelta(hours=index)
        ScheduleFire.objects.create(
            schedule=schedule, fire_time=moment, fired_at=moment, outcome="started", instance=instance
        )

    fire(0)
    with django_assert_num_queries(6) as few:
        admin_client.get(f"/automation/schedules/{schedule.pk}/")
    for index in range(1, 15):
        fire(index)

    # when
    with django_assert_num_queries(len(few.captured_queries)):
        response = admin_client.get(f"/automation/schedules/{schedule.pk}/")

    # then
    assert response.content.decode().count("/instances/") >= 15


def test_the_webhook_page_costs_the_same_queries_however_many_deliveries(
    admin_client, users, django_assert_num_queries
):
    # given
    subscription = WebhookSubscription.objects.create(
        owner=users.admin, name="Shop", url="https://93.184.215.14/", events=["task.created"], secret="s"
    )

    def deliver(index: int) -> None:
        WebhookDelivery.objects.create(
            subscription=subscription,
            event="task.created",
            event_key=f"k{index}",
            body="{}",
            state=DeliveryState.FAILED,
            attempts=1,
            log=[{"at": timezone.now().isoformat(), "status": 500, "error": "HTTP 500", "ms": 3}],
        )

    deliver(0)
    with django_assert_num_queries(6) as few:
        admin_client.get(f"/automation/webhooks/{subscription.pk}/")
    for index in range(1, 20):
        deliver(index)

    # when
    with django_assert_num_queries(len(few.captured_queries)):
        response = admin_client.get(f"/automation/webhooks/{subscription.pk}/")

    # then
    assert response.content.decode().count("HTTP 500") >= 20


def test_a_delivery_whose_attempts_span_days_dates_each_attempt_and_the_next(admin_client, users):
    # given a delivery queued while its subscription was paused: first tried three days ago, again now, and due
    # again in two days (its times of day alone would read as one afternoon)
    subscription = WebhookSubscription.objects.create(
        owner=users.admin, name="Shop", url="https://93.184.215.14/", events=["task.created"], secret="s"
    )
    now = timezone.now()
    before, later = now - timedelta(days=3), now + timedelta(days=2)
    WebhookDelivery.objects.create(
        subscription=subscription,
        event="task.created",
        event_key="k",
        body="{}",
        state=DeliveryState.RETRYING,
        attempts=2,
        next_attempt_at=later,
        log=[
            {"at": before.isoformat(), "status": 500, "error": "HTTP 500", "ms": 12},
            {"at": now.isoformat(), "status": 503, "error": "HTTP 503", "ms": 9},
        ],
    )

    # when
    page = admin_client.get(f"/automation/webhooks/{subscription.pk}/").content.decode()

    # then
    local = timezone.localtime
    assert f"{local(before):%Y-%m-%d %H:%M:%S} UTC · HTTP 500" in page
    assert f"next at {local(later):%Y-%m-%d %H:%M:%S} UTC" in page


class TestEditingASchedule:
    """An admin's schedule can be changed on its page (a mistyped cron or input was only fixable by creating
    another and pausing this one); one declared in code is changed in code."""

    def typed(self, **fields: object) -> dict[str, object]:
        return {
            "name": "Weekday expenses",
            "workflow_name": "expense_approval",
            "cron": "30 8 * * 1-5",
            "timezone": "Europe/Paris",
            "missed": "skip",
            "input": EXPENSE,
            **fields,
        }

    def test_the_form_holds_what_the_schedule_is(self, admin_client):
        # given
        schedule = make_schedule(cron="", interval_seconds=900)

        # when
        response = admin_client.get(f"/automation/schedules/{schedule.pk}/edit/")

        # then
        page = response.content.decode()
        assert response.status_code == 200
        assert 'value="Weekday expenses"' in page
        assert 'value="15"' in page
        assert 'value="Europe/Paris"' in page
        assert "&quot;employee&quot;: &quot;Sam&quot;" in page

    def test_a_change_is_saved_audited_and_the_next_run_recomputed(self, admin_client):
        # given
        schedule = make_schedule()

        # when
        response = admin_client.post(f"/automation/schedules/{schedule.pk}/edit/", self.typed())

        # then
        assert response.status_code == 302
        assert response["Location"] == f"/automation/schedules/{schedule.pk}/"
        schedule.refresh_from_db()
        assert (schedule.cron, schedule.missed) == ("30 8 * * 1-5", "skip")
        assert timezone.localtime(schedule.next_fire_at, ZoneInfo("Europe/Paris")).strftime("%H:%M") == "08:30"
        assert AuditEvent.objects.filter(action="schedule.changed").count() == 1

    def test_who_changes_a_schedule_owns_it_so_four_eyes_keeps_them_off_what_it_starts(self, admin_client, admin_user):
        """The owner is the initiator of every start (four-eyes keeps them off its tasks). An admin who changed
        someone else's schedule (its input: the amount to approve) left that person the owner, free to approve it."""
        from tests.factories import UserFactory

        # given a schedule someone else set up
        schedule = make_schedule(owner=UserFactory(username="set-it-up"))

        # when an admin changes what it starts
        response = admin_client.post(f"/automation/schedules/{schedule.pk}/edit/", self.typed())

        # then they own it now, and what it starts is theirs
        assert response.status_code == 302
        schedule.refresh_from_db()
        assert schedule.owner == admin_user

    def test_a_bad_change_is_answered_400_with_what_was_typed_and_nothing_changes(self, admin_client):
        # given
        schedule = make_schedule()

        # when
        response = admin_client.post(
            f"/automation/schedules/{schedule.pk}/edit/", self.typed(cron="0 25 * * *", name="Renamed")
        )

        # then
        page = response.content.decode()
        assert response.status_code == 400
        assert "not a valid cron expression" in page
        assert 'value="0 25 * * *"' in page
        assert 'value="Renamed"' in page
        schedule.refresh_from_db()
        assert (schedule.name, schedule.cron) == ("Weekday expenses", "0 9 * * 1-5")
        assert not AuditEvent.objects.filter(action="schedule.changed").exists()

    def test_a_pause_made_while_the_form_was_open_is_kept(self, admin_client, users):
        # given the form opened on an active schedule, then another admin pauses it
        from automation import schedules
        from orchestrator.audit import Actor

        schedule = make_schedule()
        admin_client.get(f"/automation/schedules/{schedule.pk}/edit/")
        schedules.schedule_toggle(schedule.pk, enabled=False, actor=Actor.of(users.admin))

        # when the first admin saves the form
        response = admin_client.post(f"/automation/schedules/{schedule.pk}/edit/", self.typed())

        # then the change is saved and the schedule stays paused, with no next run
        assert response.status_code == 302
        schedule.refresh_from_db()
        assert schedule.cron == "30 8 * * 1-5"
        assert schedule.enabled is False
        assert schedule.next_fire_at is None

    def test_a_schedule_of_a_workflow_no_longer_deployed_keeps_it_selected_and_says_so(self, admin_client):
        # given a schedule whose workflow was taken out of the code
        schedule = make_schedule(workflow_name="retired_flow")

        # when the form is opened, then saved as it is
        form = admin_client.get(f"/automation/schedules/{schedule.pk}/edit/").content.decode()
        response = admin_client.post(
            f"/automation/schedules/{schedule.pk}/edit/", self.typed(workflow_name="retired_flow")
        )

        # then the form showed it selected (not silently the first workflow), and saving names the problem
        assert '<option value="retired_flow" selected>retired_flow (not deployed)</option>' in form
        assert response.status_code == 400
        assert f"No workflow named {isolate('&#x27;retired_flow&#x27;')} is registered." in response.content.decode()
        schedule.refresh_from_db()
        assert schedule.workflow_name == "retired_flow"

    def test_a_name_another_schedule_has_is_refused_on_the_field(self, admin_client):
        # given
        schedule = make_schedule()
        make_schedule("Taken")

        # when
        response = admin_client.post(f"/automation/schedules/{schedule.pk}/edit/", self.typed(name="Taken"))

        # then
        assert response.status_code == 400
        assert "Another schedule has this name." in response.content.decode()
        schedule.refresh_from_db()
        assert schedule.name == "Weekday expenses"

    def test_a_schedule_declared_in_code_is_not_changed_here(self, admin_client):
        # given
        schedule = make_schedule(source="code")

        # when
        response = admin_client.post(f"/automation/schedules/{schedule.pk}/edit/", self.typed(), follow=True)

        # then
        assert "declared in code" in response.content.decode()
        schedule.refresh_from_db()
        assert schedule.cron == "0 9 * * 1-5"
        assert not AuditEvent.objects.filter(action="schedule.changed").exists()
        assert "/edit/" not in admin_client.get(f"/automation/schedules/{schedule.pk}/").content.decode()

    def test_the_page_of_an_admins_schedule_links_to_its_form(self, admin_client):
        schedule = make_schedule()

        page = admin_client.get(f"/automation/schedules/{schedule.pk}/").content.decode()

        assert f'href="/automation/schedules/{schedule.pk}/edit/"' in page


@pytest.mark.parametrize("left", ["deactivated", "no longer an admin", "deleted"])
def test_the_page_of_a_subscription_whose_owner_left_says_every_admin_is_told(admin_client, users, left):
    """When its owner has left, a pause is told to everyone who may resume it (webhooks._tell_owner): the page said
    the owner was told (or, with the owner deleted, that no one was)."""
    # given
    owner = UserFactory(username="leaver", is_superuser=True, is_staff=True)
    subscription = WebhookSubscription.objects.create(
        owner=owner, name="Orphan", url="https://93.184.215.14/", events=["task.created"], secret="s"
    )
    if left == "deactivated":
        owner.is_active = False
        owner.save()
    elif left == "no longer an admin":
        owner.is_superuser = False
        owner.save()
    else:
        owner.delete()

    # when
    page = admin_client.get(f"/automation/webhooks/{subscription.pk}/").content.decode()

    # then
    assert "told if it pauses" not in page.replace("every admin is told if it pauses", "")
    assert "no one is told" not in page
    assert "every admin is told if it pauses" in page


def test_the_page_of_a_subscription_whose_owner_is_an_admin_says_the_owner_is_told(admin_client, users):
    subscription = WebhookSubscription.objects.create(
        owner=users.admin, name="Shop", url="https://93.184.215.14/", events=["task.created"], secret="s"
    )

    page = admin_client.get(f"/automation/webhooks/{subscription.pk}/").content.decode()

    assert "(told if it pauses)" in page


def test_the_schedule_list_says_which_schedules_could_not_start_their_last_run(admin_client):
    """A schedule whose workflow is gone, or whose input its start form now refuses, fails at every fire and goes on:
    the list showed it as any other, its last run dated, so nobody looked at its page where the failures are."""
    now = timezone.now()
    failing, recovered = make_schedule("Failing"), make_schedule("Recovered")
    for schedule, outcomes in ((failing, ["started", "failed"]), (recovered, ["failed", "started"])):
        for hours_ago, outcome in zip((2, 1), outcomes, strict=True):
            ScheduleFire.objects.create(
                schedule=schedule,
                fire_time=now - timedelta(hours=hours_ago),
                fired_at=now - timedelta(hours=hours_ago),
                outcome=outcome,
                error="UnknownWorkflow: gone" if outcome == "failed" else "",
            )
        Schedule.objects.filter(pk=schedule.pk).update(last_fire_at=now - timedelta(hours=1))

    page = admin_client.get("/automation/").content.decode()

    rows = {name: page.split(f"><bdi>{name}</bdi></a>", 1)[1].split("</tr>", 1)[0] for name in ("Failing", "Recovered")}
    assert "could not start" in rows["Failing"]
    assert "could not start" not in rows["Recovered"]


@pytest.mark.parametrize(("missed", "says"), [("catch_up_once", "starts one for them"), ("skip", "skips them")])
def test_the_page_of_a_schedule_with_runs_missed_says_so_and_lists_only_runs_to_come(admin_client, missed, says):
    """With the beat down for hours, the page listed the missed times as its next runs, while the sweep will start
    one for all of them (or none) and then fire from the next time after it runs."""
    # given an hourly schedule due at the top of the hour five hours ago (that run and the five since are missed)
    now = timezone.now()
    due = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    schedule = make_schedule(cron="0 * * * *", timezone="UTC", missed=missed, next_fire_at=due, anchor=due)

    response = admin_client.get(f"/automation/schedules/{schedule.pk}/")

    page = response.content.decode()
    assert all(when > now for when in response.context["upcoming"])
    assert len(response.context["upcoming"]) == 5
    assert "6 runs missed" in page
    assert says in page


@pytest.mark.parametrize("left", ["deactivated", "no longer an admin"])
def test_the_page_of_a_schedule_whose_owner_left_says_every_admin_is_told(admin_client, users, left):
    """A schedule that cannot start tells its owner, or every admin when the owner has left
    (schedules._tell_failing): its page says who will hear of it, as a subscription's does."""
    owner = UserFactory(username="leaver", is_superuser=True, is_staff=True)
    schedule = make_schedule(owner=owner)
    if left == "deactivated":
        owner.is_active = False
    else:
        owner.is_superuser = False
    owner.save()

    page = admin_client.get(f"/automation/schedules/{schedule.pk}/").content.decode()

    assert "has left: every admin is told if it cannot start" in page


def test_the_page_of_a_schedule_whose_owner_is_an_admin_says_the_owner_is_told(admin_client, users):
    schedule = make_schedule(owner=users.admin)

    page = admin_client.get(f"/automation/schedules/{schedule.pk}/").content.decode()

    assert "(told if it cannot start)" in page


class TestDeclaredSchedulesLeftOut:
    """A schedule declared in code that the sync leaves out is on the list and on the page of the schedule holding
    its name: it was only logged, and its author believed it ran."""

    @pytest.fixture
    def clash(self, register_workflow):
        from orchestrator import registry
        from orchestrator.dsl import Schedule as Declared
        from orchestrator.dsl import Workflow

        expense = registry.get("expense_approval")
        admins = make_schedule("Weekday expenses")
        register_workflow(
            Workflow(
                name="expense_approval",
                version=expense.version + 1,
                steps=expense.steps,
                start_form=expense.start_form,
                schedules=[Declared("Weekday expenses", cron="0 8 * * 1-5", input={"employee": "Sam"})],
            )
        )
        return admins

    def test_the_list_names_it_and_why(self, admin_client, clash):
        page = admin_client.get("/automation/").content.decode()

        assert "Declared in code, not running" in page
        assert escape("an admin's schedule has this name") in page
        assert f'href="/automation/schedules/{clash.pk}/"' in page

    def test_the_page_of_the_admins_schedule_says_the_declared_one_is_not_running(self, admin_client, clash):
        page = admin_client.get(f"/automation/schedules/{clash.pk}/").content.decode()

        assert "Declared in code, not running" in page
        assert "expense_approval v" in page

    def test_a_list_with_none_left_out_says_nothing_of_it(self, admin_client):
        make_schedule()

        assert "not running" not in admin_client.get("/automation/").content.decode()


@pytest.mark.parametrize(
    ("workflow", "says"),
    [("expense_approval", "expense_approval no longer declares it"), ("gone_flow", "gone_flow is not registered")],
)
def test_the_page_of_a_retired_schedule_says_why_it_does_not_run(admin_client, workflow, says):
    """A declared schedule retires when the sync no longer finds it: its workflow no longer declares it, or the
    workflow is not registered where migrate ran (a package not installed there). The page showed a badge only."""
    schedule = make_schedule(source="code", retired=True, enabled=False, next_fire_at=None, workflow_name=workflow)

    page = admin_client.get(f"/automation/schedules/{schedule.pk}/").content.decode()

    assert "Retired: no longer declared in code" in page
    assert says in page


def test_the_page_of_a_retired_schedule_declared_here_says_the_next_sync_brings_it_back(
    admin_client, register_workflow
):
    """Migrate ran where its workflow's package was missing, so the sync retired it; this process declares it."""
    from orchestrator import registry
    from orchestrator.dsl import Schedule as Declared
    from orchestrator.dsl import Workflow

    expense = registry.get("expense_approval")
    register_workflow(
        Workflow(
            name="expense_approval",
            version=expense.version + 1,
            steps=expense.steps,
            schedules=[Declared("Weekday expenses", cron="0 9 * * 1-5", timezone="Europe/Paris")],
        )
    )
    schedule = make_schedule(source="code", retired=True, enabled=False, next_fire_at=None, input={})

    page = admin_client.get(f"/automation/schedules/{schedule.pk}/").content.decode()

    assert "not registered where the sync ran" in page
    assert "no longer declares it" not in page


def test_the_next_runs_of_a_utc_schedule_are_said_once_each(admin_client):
    """Each next run was printed twice for an admin reading in UTC ("09:00 UTC (UTC)" and "09:00 UTC" again)."""
    from automation.schedules import upcoming

    schedule = make_schedule(timezone="UTC")

    page = admin_client.get(f"/automation/schedules/{schedule.pk}/").content.decode()

    times = [when.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%d %H:%M UTC") for when in upcoming(schedule)]
    assert times
    assert [page.count(text) for text in times] == [1] * len(times)
    assert "(UTC)" not in page
