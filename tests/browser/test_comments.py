"""A decision's comment on the pages that list it (the task page's decisions and its decision card, the console's
instance page, the business data's record of the human step): its line breaks show, and a long one is clamped
behind a "Show all" that scrolls within itself, at 1280 px and at 375 px."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from approvals.services.base import REJECT
from approvals.services.tasks import task_decide
from orchestrator.services.instances import instance_start
from tests.browser.live import DESKTOP, BrowserTestCase, screenshot

NARROW = {"width": 375, "height": 812}
THREE_LINES = "Rejected for three reasons:\n1. no receipt\n2. over the travel limit"
# A comment may hold 4,000 characters (inputs.COMMENT_MAX): 2,000 lines of one character each.
TWO_THOUSAND_LINES = "\n".join(["x"] * 2000)


def decided(users, comment: str) -> tuple[int, int]:
    """An expense started by the operator and rejected by staff with ``comment``: (instance id, task id)."""
    instance = instance_start(
        "expense_approval",
        {"employee": "Sam Staff", "amount": "80.00", "category": "travel", "description": "Train to Lyon"},
        initiator=users.operator,
    )
    task = instance.tasks.get()
    task_decide(task.pk, users.staff, REJECT, comment=comment)
    return instance.pk, task.pk


def lines_shown(page: Page, selector: str) -> float:
    """How many lines of text the first element ``selector`` matches is drawn on (its height over its line
    height)."""
    return page.evaluate(
        """(selector) => { const e = document.querySelector(selector); const s = getComputedStyle(e);
        return e.getBoundingClientRect().height / parseFloat(s.lineHeight); }""",
        selector,
    )


class CommentTests(BrowserTestCase):
    def test_a_comment_of_three_lines_shows_them_on_the_task_page_and_the_instance_page(self):
        """A comment written as a list read as one run-on line ("...reasons: 1. no receipt 2. over...")."""
        # given
        instance_id, task_id = decided(self.users, THREE_LINES)

        with self.chromium() as browser:
            for viewport, suffix in ((DESKTOP, "desktop"), (NARROW, "phone")):
                staff = self.signed_in_page(browser, "staff", viewport)
                operator = self.signed_in_page(browser, "operator", viewport)

                # when
                staff.goto(f"/tasks/{task_id}/")
                operator.goto(f"/instances/{instance_id}/")

                # then each list draws the comment on (at least) its three lines, with no "Show all"
                decisions = "section[aria-labelledby=history-title] .long-text"
                expect(staff.locator(decisions)).to_contain_text("1. no receipt")
                assert lines_shown(staff, decisions) >= 3, suffix
                assert lines_shown(staff, "#task-decision .long-text") >= 3, suffix
                assert lines_shown(operator, "section[aria-labelledby=tasks-title] .long-text") >= 3, suffix
                # the human step's record in the business data ("reject by staff: <comment>") too
                record = operator.locator("section[aria-labelledby=data-title] .long-text", has_text="no receipt")
                assert (
                    record.evaluate(
                        "e => e.getBoundingClientRect().height / parseFloat(getComputedStyle(e).lineHeight)"
                    )
                    >= 3
                )
                expect(staff.get_by_text("Show all")).to_have_count(0)
                for page in (staff, operator):
                    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"], suffix
                screenshot(staff, self.tmp_path, f"comment-three-lines-task-{suffix}.png")
                screenshot(operator, self.tmp_path, f"comment-three-lines-instance-{suffix}.png")
                staff.close()
                operator.close()

    def test_a_comment_of_two_thousand_lines_is_clamped_and_shown_whole_in_its_own_scroll_box(self):
        """Shown whole, a 2,000-line comment made the task page about 50,000 px tall, and the instance page too."""
        # given
        instance_id, task_id = decided(self.users, TWO_THOUSAND_LINES)

        with self.chromium() as browser:
            for viewport, suffix in ((DESKTOP, "desktop"), (NARROW, "phone")):
                staff = self.signed_in_page(browser, "staff", viewport)
                operator = self.signed_in_page(browser, "operator", viewport)

                # when
                staff.goto(f"/tasks/{task_id}/")
                operator.goto(f"/instances/{instance_id}/")

                # then each clamps it to a few lines, with a "Show all" saying how long it is
                for page, clamped in (
                    (staff, "section[aria-labelledby=history-title] .long-text-clamp"),
                    (staff, "#task-decision .long-text-clamp"),
                    (operator, "section[aria-labelledby=tasks-title] .long-text-clamp"),
                ):
                    assert 2 <= lines_shown(page, clamped) <= 6, (suffix, clamped)
                    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"], suffix
                history = staff.locator("section[aria-labelledby=history-title]")
                show_all = history.get_by_text("Show all (2,000 lines, 3,999 characters)")
                expect(show_all).to_be_visible()
                height = staff.evaluate("document.documentElement.scrollHeight")
                assert height < 4000, (suffix, height)
                screenshot(staff, self.tmp_path, f"comment-long-task-{suffix}.png")
                screenshot(operator, self.tmp_path, f"comment-long-instance-{suffix}.png")

                # and "Show all" shows the whole of it in a box that scrolls within the page
                show_all.click()
                whole = history.locator(".long-text-all")
                expect(whole).to_be_visible()
                expect(history.get_by_text("Show less")).to_be_visible()
                box = whole.bounding_box()
                assert box is not None
                assert box["height"] <= 0.6 * viewport["height"] + 1, (suffix, box)
                assert whole.evaluate("e => e.scrollHeight > e.clientHeight")
                assert staff.evaluate("document.documentElement.scrollHeight") < height + viewport["height"]
                screenshot(staff, self.tmp_path, f"comment-long-open-task-{suffix}.png")
                staff.close()
                operator.close()
