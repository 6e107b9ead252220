"""The instance page's diagram in Chromium: it opens at its readable size and scrolls; "Whole diagram" shrinks a
drawing wider than its box until all of it shows, zoom out stops there, and 100 % brings the readable size back."""

from __future__ import annotations

from playwright.sync_api import expect

from demo.data import ensure_roles
from orchestrator.services.instances import instance_start
from tests.browser.live import DESKTOP, BrowserTestCase
from tests.factories import ExpenseInputFactory

BOXES = """() => {
  const svg = document.querySelector('.diagram-zoom svg').getBoundingClientRect();
  const pan = document.querySelector('.diagram-pan');
  return {svg: svg.width, svgHeight: svg.height, box: pan.clientWidth, boxHeight: pan.clientHeight,
          sw: pan.scrollWidth, sh: pan.scrollHeight,
          scrolls: pan.scrollWidth > pan.clientWidth || pan.scrollHeight > pan.clientHeight};
}"""


class DiagramZoomTests(BrowserTestCase):
    def test_whole_diagram_fits_the_box_and_100_percent_brings_the_readable_size_back(self):
        # given: an expense (its diagram is wider than the box at 1280 px) seen by an operator
        ensure_roles()
        instance = instance_start("expense_approval", ExpenseInputFactory(), initiator=self.users.staff)

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "operator", DESKTOP)
            page.goto(f"/instances/{instance.pk}/")
            expect(page.locator(".diagram-zoom svg")).to_have_count(1)
            controls = page.get_by_role("group", name="Diagram zoom")
            reset = controls.locator('[data-zoom="reset"]')
            opened = page.evaluate(BOXES)
            assert opened["svg"] > opened["box"], f"the drawing fits already, nothing to test: {opened}"
            assert opened["scrolls"]

            # when: the whole diagram is asked for
            controls.get_by_role("button", name="Whole diagram").click()

            # then: all of it shows, without a scroll bar, and the label says how small it is
            fitted = page.evaluate(BOXES)
            assert fitted["svg"] <= fitted["box"], str(fitted)
            assert fitted["svgHeight"] <= fitted["boxHeight"], str(fitted)
            assert not fitted["scrolls"], str(fitted)
            shown = int(reset.inner_text().rstrip(" %"))
            assert 10 <= shown < 100, shown

            # when: zoom out is pressed at the whole diagram's size
            controls.get_by_role("button", name="Zoom out").click()

            # then: it goes no smaller
            assert page.evaluate(BOXES)["svg"] == fitted["svg"]
            expect(reset).to_have_text(f"{shown} %")

            # when: 100 % is pressed
            reset.click()

            # then: the readable size is back, and zoom out from there goes down towards the whole diagram
            expect(reset).to_have_text("100 %")
            assert page.evaluate(BOXES)["svg"] == opened["svg"]
            controls.get_by_role("button", name="Zoom out").click()
            expect(reset).to_have_text("75 %" if shown <= 75 else f"{shown} %")
