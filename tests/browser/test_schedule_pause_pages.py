"""A schedule failing at every fire, then paused by the scheduler, in a real browser at 1280 px and on a 375 px
phone: the run and since when, then why it paused (a long error with a right-to-left override in it), the Resume
button, nothing scrolling sideways. Screenshots go to $BATON_SCREENSHOTS (or the test's tmp folder)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.utils import timezone
from playwright.sync_api import expect

from automation.models import Schedule, ScheduleFire
from orchestrator.bidi import isolate
from tests.browser.live import DESKTOP, BrowserTestCase, orm, screenshots_dir
from tests.browser.test_narrow_pages import sideways

SMALL_PHONE = {"width": 375, "height": 812}
EXPENSE = {"employee": "Sam Staff", "amount": "42.00", "category": "meals", "description": "Team lunch"}
# A start refused with a long error quoting a right-to-left override: it must not reverse the page's words after it.
ERROR = "StartRefused: the engine refused \u202elanigiro\u202c the start: " + "too many instances of this workflow " * 8


def build() -> dict[str, int]:
    now = timezone.now()
    since = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    failing = Schedule.objects.create(
        name="Weekday expense run",
        workflow_name="expense_approval",
        input=EXPENSE,
        cron="0 * * * *",
        timezone="Europe/Paris",
        anchor=now - timedelta(days=3),
        next_fire_at=now + timedelta(minutes=20),
        last_fire_at=now - timedelta(minutes=40),
        consecutive_failures=3,
        failing_since=since,
    )
    paused = Schedule.objects.create(
        name="Nightly ledger export to the finance department's warehouse",
        workflow_name="expense_approval",
        input=EXPENSE,
        cron="0 2 * * *",
        timezone="America/New_York",
        anchor=now - timedelta(days=9),
        enabled=False,
        last_fire_at=now - timedelta(days=1),
        paused_at=now - timedelta(hours=2),
        paused_reason=f"Paused after 5 failed fires in a row (since 2026-11-26 02:00 EST): {isolate(ERROR)}",
    )
    for schedule, count in ((failing, 3), (paused, 5)):
        for back in range(count):
            ScheduleFire.objects.create(
                schedule=schedule,
                fire_time=now - timedelta(hours=back + 1),
                fired_at=now,
                outcome="failed",
                error=ERROR,
            )
    return {"failing": failing.pk, "paused": paused.pk}


class SchedulePausePageTests(BrowserTestCase):
    def test_failing_and_paused_schedules_at_1280_and_375_px(self):
        ids = orm(build)
        target = screenshots_dir(self.tmp_path)
        pages = {
            "schedules-failing-paused": "/automation/",
            "schedule-failing": f"/automation/schedules/{ids['failing']}/",
            "schedule-paused": f"/automation/schedules/{ids['paused']}/",
        }
        with self.chromium() as browser:
            for size, viewport, suffix in (("1280", DESKTOP, ""), ("375", SMALL_PHONE, "-phone")):
                page = self.signed_in_page(browser, "admin", viewport)
                for name, path in pages.items():
                    page.goto(path)
                    expect(page.locator("h1")).to_be_visible()
                    assert sideways(page) == 0, f"{path} scrolls sideways at {size} px"
                    page.screenshot(path=str(target / f"{name}{suffix}.png"), full_page=True)
                page.goto(pages["schedule-failing"])
                # 08:00 UTC is 09:00 in Paris, where the schedule's times are read
                expect(page.get_by_text("Failing: 3 fires in a row since 2026-11-30 09:00 CET")).to_be_visible()
                page.goto(pages["schedule-paused"])
                reason = page.locator("[data-paused-reason]")
                expect(reason).to_contain_text("Paused after 5 failed fires in a row (since 2026-11-26 02:00 EST)")
                expect(reason).to_contain_text("Paused by the scheduler")
                expect(page.get_by_role("button", name="Resume")).to_be_visible()
                page.context.close()

            # when an admin resumes the paused one (the engine's refusal is not known before a start)
            page = self.signed_in_page(browser, "admin", SMALL_PHONE)
            page.goto(pages["schedule-paused"])
            page.get_by_role("button", name="Resume").click()

            # then it runs, the reason gone
            expect(page.get_by_text("resumed")).to_be_visible()
            expect(page.locator("[data-paused-reason]")).to_have_count(0)
            expect(page.get_by_role("button", name="Pause")).to_be_visible()
            page.context.close()

        resumed = Schedule.objects.get(pk=ids["paused"])
        assert (resumed.enabled, resumed.paused_reason, resumed.paused_at) == (True, "", None)
