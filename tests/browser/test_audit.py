"""The audit pages in Chromium: admin filters the trail to a demo instance, downloads the CSV (which verifies
offline), sees the chain status and a verification's result arrive live; staff and operator are refused."""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path

from django.core.management import call_command
from playwright.sync_api import expect

from audit import services
from audit.models import Verification
from demo.data import load_demo
from orchestrator.models import AuditEvent, WorkflowInstance
from tests.browser.live import DESKTOP, BrowserTestCase, orm, screenshots_dir

PHONE_375 = {"width": 375, "height": 812}


def png_width(path: Path) -> int:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">I", head[16:20])[0]


class AuditPagesTests(BrowserTestCase):
    def test_admin_filters_to_a_demo_instance_downloads_the_csv_and_sees_the_chain_status_screenshots(self):
        # given: the demo data, and one verification already done (the daily run)
        load_demo(log=lambda _line: None)
        order = WorkflowInstance.objects.get(data__order_id="SO-1005")
        expected = AuditEvent.objects.filter(instance=order).count()
        done = services.verification_request(None, scheduled=True)
        services.verification_execute(done.pk)
        target = screenshots_dir(self.tmp_path)
        csv_path = self.tmp_path / "trail.csv"

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "admin")

            # when: the trail, filtered to the order through the form
            page.goto("/audit/")
            page.get_by_label("Instance").fill(str(order.pk))
            page.get_by_role("button", name="Filter").click()

            # then: only its events, with dates and zone, linking to it
            expect(page).to_have_url(re.compile(rf"instance={order.pk}"))
            rows = page.locator("li.audit-event")
            expect(rows.first).to_be_visible()
            shown = rows.count()
            assert shown == min(50, expected)
            linked = rows.filter(has=page.locator(f'a[href="/instances/{order.pk}/"]'))
            assert linked.count() == shown
            expect(rows.first.locator("time")).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+$"))
            # An administrator has every link in the bar (nine, and their name and zone): at 1280 px it stays one
            # row, no label broken over two lines ("API tokens", "Sign out" were).
            items = page.evaluate(
                "() => [...document.querySelectorAll('#main-nav > ul > .nav-item')].map(i => {"
                " const r = i.getBoundingClientRect(); return [i.innerText.trim(), r.top + r.height / 2, r.height]; })"
            )
            middles = [middle for _text, middle, _height in items]
            assert max(middles) - min(middles) < 8, f"the bar wraps at 1280 px: {items}"
            assert all(height < 44 for _text, _middle, height in items), f"a label wraps at 1280 px: {items}"
            assert page.evaluate("document.documentElement.scrollWidth") <= DESKTOP["width"]
            right = page.evaluate(
                "() => [document.querySelector('.baton-navbar .container-xl'), document.querySelector('main')]"
                ".map(e => { const r = e.getBoundingClientRect(); const s = getComputedStyle(e);"
                " return r.right - parseFloat(s.paddingRight); })"
            )
            sign_out = page.get_by_role("button", name="Sign out").bounding_box()
            assert sign_out is not None
            assert sign_out["x"] + sign_out["width"] <= min(right) + 1, (sign_out, right)
            page.screenshot(path=str(target / "audit-timeline.png"), full_page=True)

            # when: the CSV of that filter is downloaded
            with page.expect_download() as download:
                page.get_by_role("link", name="Export CSV").click()
            download.value.save_as(csv_path)

            # when: the chain status
            page.get_by_role("link", name="Chain status").first.click()

            # then
            expect(page.get_by_text("Every chain verifies")).to_be_visible()
            expect(page.get_by_text("Last verified")).to_be_visible()
            page.screenshot(path=str(target / "audit-chains.png"), full_page=True)

            # when: "Verify now" (no worker here: it stays queued until the run below)
            page.get_by_role("button", name="Verify now").click()
            expect(page.get_by_text("is queued")).to_be_visible()
            expect(page.get_by_role("button", name="Verify now")).to_be_disabled()
            self.wait_until_live(page)
            queued = orm(lambda: Verification.objects.get(active=True))
            orm(services.verification_execute, queued.pk)

            # then: the result arrives over the live socket, without a reload
            expect(page.get_by_role("button", name="Verify now")).to_be_enabled()
            expect(page.get_by_text(re.compile(r"asked for by admin"))).to_be_visible()

            # and on a tablet: whole links on a second row, never a label broken or the page wider than the screen
            tablet = self.signed_in_page(browser, "admin", {"width": 900, "height": 1000})
            tablet.goto("/audit/chains/")
            heights = tablet.evaluate(
                "() => [...document.querySelectorAll('#main-nav > ul > .nav-item')]"
                ".map(i => i.getBoundingClientRect().height)"
            )
            assert max(heights) < 44, heights
            assert tablet.evaluate("document.documentElement.scrollWidth") <= 900

            # and the pages on a phone
            phone = self.signed_in_page(browser, "admin", PHONE_375)
            phone.goto(f"/audit/?instance={order.pk}")
            phone.screenshot(path=str(target / "audit-timeline-phone.png"), full_page=True)
            phone.goto("/audit/chains/")
            phone.screenshot(path=str(target / "audit-chains-phone.png"), full_page=True)

        # then: the downloaded file verifies offline and holds exactly the order's events
        out = io.StringIO()
        call_command("baton_verify_audit", file=str(csv_path), stdout=out)
        assert f"{expected} events" in out.getvalue()
        for name, width in (
            ("audit-timeline.png", DESKTOP["width"]),
            ("audit-chains.png", DESKTOP["width"]),
            ("audit-timeline-phone.png", 375),
            ("audit-chains-phone.png", 375),
        ):
            assert png_width(target / name) == width, f"{name}: wider than the viewport"

    def test_staff_and_operator_are_refused(self):
        with self.chromium() as browser:
            for username in ("staff", "operator"):
                page = self.signed_in_page(browser, username)
                for path in ("/audit/", "/audit/chains/"):
                    # when
                    response = page.goto(path)

                    # then
                    assert response is not None
                    assert response.status == 403, (username, path)
                    expect(page.get_by_role("link", name="Audit")).to_have_count(0)
