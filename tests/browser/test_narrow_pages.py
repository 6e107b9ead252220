"""Pages on a phone (390 px): what a list is for stays on screen without scrolling sideways."""

from __future__ import annotations

from playwright.sync_api import expect

from orchestrator.services.instances import instance_start
from tests.browser.live import PHONE, BrowserTestCase

LONG_TITLE = "Conference booth deposit for the autumn trade fair in Lyon, with shipping of the stand"


class NarrowPageTests(BrowserTestCase):
    def test_the_instance_list_on_a_phone_shows_each_state_without_scrolling_sideways(self):
        """At 390 px the six-column table scrolled sideways and each row's state sat off screen."""
        # given
        instance_start(
            "expense_approval",
            {"employee": "Sam Staff", "amount": "80.00", "category": "travel", "description": LONG_TITLE},
            initiator=self.users.staff,
        )

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "admin", PHONE)

            # when
            page.goto("/instances/")

            # then: the row's link and its state badge are inside the viewport, and nothing scrolls sideways
            row = page.locator("tbody tr").first
            expect(row.get_by_role("link")).to_be_visible()
            badge = row.locator(".badge:visible").first
            expect(badge).to_be_visible()
            box = badge.bounding_box()
            assert box is not None
            assert box["x"] + box["width"] <= PHONE["width"], box
            wide = page.evaluate(
                "[...document.querySelectorAll('.table-responsive')]"
                ".filter(e => e.scrollWidth > e.clientWidth + 1).length"
            )
            assert wide == 0
