"""Screenshots of the main pages with the demo data, for docs/screenshots (``make screenshots``).

The PNGs are written to $BATON_SCREENSHOTS when it is set (the Makefile sets docs/screenshots); otherwise to a
temporary directory, so that in the normal suite the pages still render and are checked.
"""

from __future__ import annotations

import struct
from pathlib import Path

from playwright.sync_api import Page, expect

from approvals.models import HumanTask, TaskState
from demo.data import load_demo
from orchestrator import rollups
from orchestrator.models import WorkflowInstance
from tests.browser.live import DESKTOP, PHONE, BrowserTestCase, screenshots_dir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (fails on anything that is not a PNG)."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR", f"{path} has no IHDR chunk"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def diagrams_drawn(page: Page) -> None:
    """Every diagram on the page (``.diagram``, or the instance page's ``.diagram-zoom``, which scrolls instead of
    shrinking) has its SVG (viz.js renders them after load)."""
    diagrams = page.locator(".diagram, .diagram-zoom")
    expect(diagrams.first).to_be_visible()
    expect(page.locator(".diagram svg, .diagram-zoom svg")).to_have_count(diagrams.count())


class ScreenshotTests(BrowserTestCase):
    def test_screenshots_of_the_main_pages_with_demo_data(self):
        """With the demo data loaded, each main page renders and is saved as a full-page PNG of the right width."""
        # given
        load_demo(log=lambda _line: None)
        order_task = HumanTask.objects.get(instance__data__order_id="SO-1002", state=TaskState.OPEN)
        escalated = WorkflowInstance.objects.get(data__order_id="SO-1005")
        rollups.rollup_pass()  # the sweep's roll-up: one pass looks, the next folds (the dashboard's figures)
        rollups.rollup_pass()
        target = screenshots_dir(self.tmp_path)
        shots = [
            # (file, user, path, viewport, wait for diagrams)
            ("inbox.png", "staff", "/inbox/?tab=queue", DESKTOP, False),
            ("task.png", "manager", f"/tasks/{order_task.pk}/", DESKTOP, False),
            ("instance.png", "operator", f"/instances/{escalated.pk}/", DESKTOP, True),
            ("instances.png", "operator", "/instances/", DESKTOP, False),
            ("workflows.png", "operator", "/workflows/", DESKTOP, False),
            ("workflow.png", "operator", "/workflows/expense_approval/", DESKTOP, True),
            ("dashboard.png", "operator", "/dashboard/", DESKTOP, False),
            ("dashboard-phone.png", "operator", "/dashboard/", PHONE, False),
            ("inbox-phone.png", "staff", "/inbox/?tab=queue", PHONE, False),
        ]

        # when
        with self.chromium() as browser:
            pages: dict[tuple[str, int], Page] = {}
            for name, username, path, viewport, has_diagrams in shots:
                key = (username, viewport["width"])
                if key not in pages:
                    pages[key] = self.signed_in_page(browser, username, viewport)
                page = pages[key]
                response = page.goto(path)
                assert response is not None
                assert response.status == 200, path
                self.wait_until_live(page)
                if has_diagrams:
                    diagrams_drawn(page)
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(target / name), full_page=True)

        # then
        for name, _username, _path, viewport, _diagrams in shots:
            width, height = png_size(target / name)
            assert width == viewport["width"], f"{name}: the page is wider than the viewport ({width}px)"
            assert height >= viewport["height"], name
            assert (target / name).stat().st_size > 10_000, f"{name} looks empty"
