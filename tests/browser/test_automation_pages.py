"""The automation pages in a real browser at 1280 px and on a 375 px phone: nothing scrolls sideways, the next runs
and each delivery's status are on screen. Screenshots go to $BATON_SCREENSHOTS (or the test's tmp folder)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from django.utils import timezone
from playwright.sync_api import expect

from automation.models import DeliveryState, Schedule, ScheduleFire, WebhookDelivery, WebhookSubscription
from orchestrator.services.instances import instance_start
from tests.browser.declaring import LONG_NAME, LONG_WORD, LONG_WORKFLOW, DeclaringDaphne
from tests.browser.live import DESKTOP, BrowserTestCase, orm, screenshots_dir
from tests.browser.test_narrow_pages import sideways

SMALL_PHONE = {"width": 375, "height": 812}


def build() -> dict[str, int]:
    now = timezone.now()
    schedule = Schedule.objects.create(
        name="Weekday expense run",
        workflow_name="expense_approval",
        input={"employee": "Sam Staff", "amount": "42.00", "category": "meals", "description": "Team lunch"},
        cron="0 9 * * 1-5",
        timezone="Europe/Paris",
        anchor=now - timedelta(days=3),
        next_fire_at=now + timedelta(hours=5),
        last_fire_at=now - timedelta(hours=19),
    )
    Schedule.objects.create(
        name="Quarter-hourly stock check",
        workflow_name="order_fulfilment",
        interval_seconds=900,
        anchor=now,
        next_fire_at=now + timedelta(minutes=15),
        source="code",
    )
    instance = instance_start("expense_approval", dict(schedule.input))
    ScheduleFire.objects.create(
        schedule=schedule, fire_time=now - timedelta(hours=19), fired_at=now, outcome="started", instance=instance
    )
    ScheduleFire.objects.create(
        schedule=schedule, fire_time=now - timedelta(days=2), fired_at=now, outcome="started", covers=3
    )
    ScheduleFire.objects.create(
        schedule=schedule,
        fire_time=now - timedelta(days=3),
        fired_at=now,
        outcome="failed",
        error="InvalidInput: amount: Ensure that there are no more than 10 digits in total.",
    )
    hook = WebhookSubscription.objects.create(
        name="Fulfilment warehouse",
        url="https://warehouse.example.com/hooks/baton/instance-events?tenant=acme-europe-west",
        events=["instance.completed", "instance.failed", "task.decided"],
        secret="9f2c" * 16,
    )
    paused = WebhookSubscription.objects.create(
        name="Finance ledger",
        url="https://ledger.example.org/baton",
        events=["instance.compensated"],
        secret="a1" * 32,
        active=False,
        paused_at=now,
        paused_reason="paused after 10 failed attempts in a row since 2026-11-30 09:12 UTC; last: HTTP 404",
    )
    log = [
        {"at": (now - timedelta(seconds=70)).isoformat(), "status": 500, "error": "HTTP 500", "ms": 41},
        {"at": (now - timedelta(seconds=60)).isoformat(), "status": 502, "error": "HTTP 502", "ms": 38},
    ]
    # an attempt made before the address was corrected names the address it went to
    log[0]["url"] = "https://warehouse.example.com/hooks/baton/instance-event?tenant=acme-europe-west"
    WebhookDelivery.objects.create(
        subscription=hook, event="instance.completed", event_key="a", body="{}", state=DeliveryState.DELIVERED,
        attempts=1, last_status=200, log=[{**log[0], "status": 200, "error": ""}],
    )  # fmt: skip
    WebhookDelivery.objects.create(
        subscription=hook, event="task.decided", event_key="b", body="{}", state=DeliveryState.RETRYING,
        attempts=2, last_status=502, last_error="HTTP 502", next_attempt_at=now + timedelta(seconds=20), log=log,
    )  # fmt: skip
    WebhookDelivery.objects.create(
        subscription=hook, event="instance.failed", event_key="c", body="{}", state=DeliveryState.FAILED,
        attempts=8, last_error="ConnectionRefusedError: [Errno 111] Connection refused", log=log,
    )  # fmt: skip
    return {"schedule": schedule.pk, "hook": hook.pk, "paused": paused.pk}


class AutomationPageTests(BrowserTestCase):
    def test_the_automation_pages_at_1280_and_375_px_screenshots(self):
        ids = orm(build)
        target = screenshots_dir(self.tmp_path)
        pages = {
            "automation-schedules": "/automation/",
            "automation-schedule": f"/automation/schedules/{ids['schedule']}/",
            "automation-schedule-new": "/automation/schedules/new/",
            "automation-webhooks": "/automation/webhooks/",
            "automation-webhook": f"/automation/webhooks/{ids['hook']}/",
            "automation-webhook-edit": f"/automation/webhooks/{ids['paused']}/edit/",
            "automation-webhook-roll": f"/automation/webhooks/{ids['hook']}/roll-secret/",
        }
        with self.chromium() as browser:
            for size, viewport, suffix in (("1280", DESKTOP, ""), ("375", SMALL_PHONE, "-phone")):
                page = self.signed_in_page(browser, "admin", viewport)
                for name, path in pages.items():
                    page.goto(path)
                    expect(page.locator("h1")).to_be_visible()
                    assert sideways(page) == 0, f"{path} scrolls sideways at {size} px"
                    width = page.evaluate("document.documentElement.scrollWidth")
                    assert width <= viewport["width"], f"{path} is {width} px wide at {size} px"
                    page.screenshot(path=str(target / f"{name}{suffix}.png"), full_page=True)
                page.goto(pages["automation-schedule"])
                expect(page.get_by_role("heading", name="Next runs")).to_be_visible()
                expect(page.locator("text=(Europe/Paris)").first).to_be_visible()
                page.goto(pages["automation-webhook"])
                expect(page.get_by_text("will retry")).to_be_visible()
                expect(page.get_by_role("link", name="Edit")).to_be_visible()
                expect(page.get_by_role("link", name="Roll secret")).to_be_visible()
                page.goto(pages["automation-webhook-edit"])
                expect(page.get_by_text("last: HTTP 404")).to_be_visible()
                expect(page.get_by_label("Resume it when saved")).to_be_visible()
                expect(page.get_by_label("Address")).to_have_value("https://ledger.example.org/baton")
                # each event a check box beside its name (they were drawn as empty text boxes, the name below)
                ticked = page.get_by_label("Instance compensated")
                expect(ticked).to_be_checked()
                box, label = ticked.bounding_box(), page.get_by_text("Instance compensated").bounding_box()
                assert box is not None
                assert label is not None
                assert box["width"] < 30, box
                assert abs((box["y"] + box["height"] / 2) - (label["y"] + label["height"] / 2)) < 8, (box, label)
                # an event list left empty is said beside the boxes
                page.goto("/automation/webhooks/new/")
                page.get_by_label("Name").fill("Shop")
                page.get_by_label("Address").fill("https://93.184.215.14/hook")
                page.get_by_role("button", name="Subscribe").click()
                error = page.locator("#id_events ~ .invalid-feedback")
                expect(error).to_have_text("This field is required.")
                expect(error).to_be_visible()
                expect(page.get_by_label("Address")).to_have_value("https://93.184.215.14/hook")
                page.goto(pages["automation-webhook-roll"])
                expect(page.get_by_label("In 24 hours")).to_be_checked()
                page.context.close()


def build_odd() -> dict[str, int]:
    """Schedules whose every field is as long as it may be, with no space to break at: a name of 100 characters, a
    long workflow name, cron and zone, an input holding a long address, failed fires with long errors; a retired
    one; and an admin's schedule that a declared one clashes with."""
    now = timezone.now()
    odd = Schedule.objects.create(
        name=LONG_NAME[:100],
        workflow_name=LONG_WORKFLOW,
        input={"callback": LONG_WORD, "regions": ["eu-west-1", "eu-central-1"] * 10, "nested": {"a": {"b": LONG_WORD}}},
        cron="0,5,10,15,20,25,30,35,40,45,50,55 8-18 1-31 1-12 1-5",
        timezone="America/Argentina/ComodRivadavia",
        anchor=now - timedelta(days=3),
        next_fire_at=now - timedelta(hours=3),
        last_fire_at=now - timedelta(hours=4),
    )
    for hours in range(1, 4):
        ScheduleFire.objects.create(
            schedule=odd,
            fire_time=now - timedelta(hours=3 + hours),
            fired_at=now,
            outcome="failed",
            error=f"UnknownWorkflow: {LONG_WORKFLOW}@v7 " + LONG_WORD * 4,
            covers=hours,
        )
    Schedule.objects.create(
        name="Retired " + LONG_NAME[:80],
        workflow_name=LONG_WORKFLOW,
        interval_seconds=86400 * 7 + 60,
        anchor=now,
        source="code",
        retired=True,
        enabled=False,
    )
    clash = Schedule.objects.create(
        name="Weekday expenses",
        workflow_name="expense_approval",
        cron="0 9 * * 1-5",
        anchor=now,
        next_fire_at=now + timedelta(hours=1),
    )
    return {"odd": odd.pk, "clash": clash.pk}


class AutomationPagesWithOddDataTests(BrowserTestCase):
    ProtocolServerProcess = DeclaringDaphne

    def test_long_names_errors_and_declarations_not_running_fit_at_1280_and_375_px(self):
        """Nothing scrolls sideways or spills out of its card, whatever the length of a name, an input, an error or
        the reason a declared schedule does not run."""
        ids = orm(build_odd)
        target = Path(os.environ.get("BATON_SCREENSHOTS_ODD") or self.tmp_path)
        target.mkdir(parents=True, exist_ok=True)
        pages = {
            "schedules": "/automation/",
            "schedule-odd": f"/automation/schedules/{ids['odd']}/",
            "schedule-clash": f"/automation/schedules/{ids['clash']}/",
        }
        faults: list[str] = []
        with self.chromium() as browser:
            for size, viewport in (("1280", DESKTOP), ("375", SMALL_PHONE)):
                page = self.signed_in_page(browser, "admin", viewport)
                for name, path in pages.items():
                    page.goto(path)
                    expect(page.locator("h1")).to_be_visible()
                    page.screenshot(path=str(target / f"{name}-{size}.png"), full_page=True)
                    if sideways(page):
                        faults.append(f"{path} scrolls sideways at {size} px")
                    width = page.evaluate("document.documentElement.scrollWidth")
                    if width > viewport["width"]:
                        faults.append(f"{path} is {width} px wide at {size} px")
                    spilled = page.evaluate(SPILLED)
                    if spilled:
                        faults.append(f"{path} at {size} px spills: {spilled}")
                page.goto(pages["schedules"])
                expect(page.get_by_role("heading", name="Declared in code, not running")).to_be_visible()
                page.context.close()
        assert faults == [], "\n".join(faults)


# Elements of the main content wider than the box they sit in (text running out of a card or a table cell).
SPILLED = """
[...document.querySelectorAll('main *')].filter(e => {
  const p = e.parentElement; if (!p || e.closest('.table-responsive') && e.tagName === 'TABLE') return false;
  const r = e.getBoundingClientRect(), q = p.getBoundingClientRect();
  return r.width > 0 && q.width > 0 && r.right > q.right + 1 && getComputedStyle(p).overflowX === 'visible';
}).slice(0, 5).map(e => e.tagName + '.' + e.className + ': ' + (e.textContent || '').slice(0, 40))
"""
