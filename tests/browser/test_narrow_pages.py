"""Pages on a phone (390 px, 375 px): what a list is for stays on screen without scrolling sideways."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from playwright.sync_api import expect

from approvals.models import HumanTask
from approvals.services.base import APPROVE, REJECT
from approvals.services.tasks import task_decide
from demo.data import load_demo
from orchestrator import registry, rollups
from orchestrator.dsl import Human, Workflow
from orchestrator.models import InstanceState, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.browser.live import PHONE, BrowserTestCase

LONG_TITLE = "Conference booth deposit for the autumn trade fair in Lyon, with shipping of the stand"


def sideways(page) -> int:
    """How many scroll boxes of the page scroll sideways (their content wider than they are)."""
    return page.evaluate(
        "[...document.querySelectorAll('.table-responsive')].filter(e => e.scrollWidth > e.clientWidth + 1).length"
    )


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
            assert sideways(page) == 0

    def test_escalations_on_a_phone_keep_the_title_readable_and_the_why_on_screen(self):
        """At 390 px six columns squeezed a long task title to a word a line and pushed Level and State off."""
        # given: an overdue task with a long title
        instance = instance_start(
            "expense_approval",
            {"employee": "Sam Staff", "amount": "80.00", "category": "travel", "description": LONG_TITLE},
            initiator=self.users.staff,
        )
        HumanTask.objects.filter(instance=instance).update(due_at=timezone.now() - timedelta(hours=3))

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "manager", PHONE)

            # when
            page.goto("/escalations/")

            # then: the title gets most of the width, the state shows under it, nothing scrolls sideways
            row = page.locator("tbody tr").first
            link = row.get_by_role("link").bounding_box()
            assert link is not None
            assert link["width"] >= PHONE["width"] / 2, link
            expect(row.locator(".badge:visible").first).to_be_visible()
            assert sideways(page) == 0

    def test_done_by_me_on_a_phone_says_what_i_decided_and_when(self):
        """At 375 px (and up to 991 px) the Decision column is hidden: a row of Done by me said neither what the
        person decided nor when, nor that their quorum vote still waits for others."""
        # given: staff approved one expense and cast one vote of a 2-of-M sign-off
        approved = instance_start(
            "expense_approval",
            {"employee": "Sam Staff", "amount": "80.00", "category": "travel", "description": "Train"},
            initiator=self.users.operator,
        ).tasks.get()
        task_decide(approved.pk, self.users.staff, APPROVE)
        registry.register(Workflow("phone_quorum", 1, [Human("sign_off", candidate_groups=["approvers"], quorum=2)]))
        self.addCleanup(registry.unregister, "phone_quorum", 1)
        voted = instance_start("phone_quorum", {}).tasks.get()
        task_decide(voted.pk, self.users.staff, APPROVE)

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff", {"width": 375, "height": 812})

            # when
            page.goto("/inbox/?tab=done")

            # then: each row says it on screen, and nothing scrolls sideways
            decided = page.locator(f'tr[data-task="{approved.pk}"] [data-done]:visible')
            expect(decided).to_contain_text("approve · ")
            vote = page.locator(f'tr[data-task="{voted.pk}"] [data-done]:visible')
            expect(vote).to_contain_text("you approved")
            expect(vote).to_contain_text("waits for 1 more")
            assert sideways(page) == 0

    def test_webhook_pages_on_a_phone_wrap_a_long_name_and_a_long_pause_reason(self):
        """At 375 px a subscription named without spaces (100 characters, the most) made the list scroll sideways
        and the subscription's pages, the roll-secret page among them, 600 px wide."""
        # given: a paused subscription with the longest name, a long address and a long reason
        from automation.models import WebhookSubscription

        now = timezone.now()
        subscription = WebhookSubscription.objects.create(
            owner=self.users.admin,
            name="shop-" + "x" * 95,
            url="https://93.184.215.14/" + "a" * 120,
            events=["task.created"],
            secret="s",
            active=False,
            paused_at=now,
            paused_reason="paused after 12 failed attempts: HTTP 503 " + "m" * 250,
            previous_secret="p",
            previous_secret_expires_at=now + timedelta(hours=1),
        )
        narrow = {"width": 375, "height": 812}

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "admin", narrow)
            for path in (
                "/automation/webhooks/",
                f"/automation/webhooks/{subscription.pk}/",
                f"/automation/webhooks/{subscription.pk}/edit/",
                f"/automation/webhooks/{subscription.pk}/roll-secret/",
            ):
                # when
                response = page.goto(path)
                assert response is not None
                assert response.status == 200, path

                # then
                width = page.evaluate("document.documentElement.scrollWidth")
                # what overflows, for the failure's message: a box whose content is wider than itself
                wide = page.evaluate(
                    "[...document.body.querySelectorAll('*')]"
                    ".filter(e => e.scrollWidth > 400 && e.clientWidth < 400 && e.clientWidth > 0)"
                    ".slice(0, 3).map(e => e.tagName + '.' + e.className + ' ' + e.textContent.slice(0, 40))"
                )
                assert width <= narrow["width"], f"{path}: {width}px wide: {wide}"
                assert sideways(page) == 0, path

    def test_a_task_page_on_a_phone_wraps_a_long_unbroken_title_and_says_what_was_decided(self):
        """At 375 px a task whose title holds a long word (a reference, a file name: up to 100 characters without a
        space) made the whole page 1,600 px wide, and its decisions read "rejectd"."""
        # given: a rejected expense described by one long word, its instance named so too
        word = "Z" * 100
        task = instance_start(
            "expense_approval",
            {"employee": "Sam Staff", "amount": "80.00", "category": "travel", "description": word},
            initiator=self.users.operator,
        ).tasks.get()
        task_decide(task.pk, self.users.staff, REJECT, comment="no receipt")

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff", {"width": 375, "height": 812})

            # when
            page.goto(f"/tasks/{task.pk}/")

            # then: nothing is wider than the screen, and the decision reads as it was made
            expect(page.locator("h1")).to_contain_text(word[:20])
            assert page.evaluate("document.documentElement.scrollWidth") <= 375
            expect(page.locator("section[aria-labelledby=history-title] ul")).to_contain_text("staff rejected")

    def test_a_failed_instance_on_a_phone_shows_each_attempt_s_outcome_without_scrolling_sideways(self):
        """At 375 px each step's attempts table (number, full start date, took, outcome) was wider than its card:
        the outcome, what an operator opens the page for, sat cut off behind a sideways scroll."""
        # given: the demo's failed payout, three attempts, each failed with the service's error
        load_demo(log=lambda _line: None)
        failed = WorkflowInstance.objects.get(workflow_name="expense_approval", state=InstanceState.FAILED)

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "operator", {"width": 375, "height": 812})

            # when
            page.goto(f"/instances/{failed.pk}/")

            # then: every attempt's outcome is inside the screen, and no attempts table scrolls sideways
            payout = page.locator("[data-step]").filter(has_text="Payout")
            outcomes = payout.locator("table.attempts tbody tr.attempt-dead td:last-child")
            expect(outcomes).to_contain_text("dead")
            box = outcomes.bounding_box()
            assert box is not None
            assert box["x"] + box["width"] <= 375, box
            assert sideways(page) == 0
            # and so with a slower attempt and a longer error name than the demo's (what a loaded machine's "took"
            # or another service's exception writes; the full suite's load widened Took and the card scrolled): the
            # outcome breaks inside the name rather than widen the card
            page.evaluate(
                "() => { for (const row of document.querySelectorAll('table.attempts tbody tr.attempt-dead')) {"
                " row.children[3].textContent = '1 min 12 s';"
                " row.children[5].querySelector('span').textContent = 'dead: PaymentGatewayTimeoutFromUpstream';"
                " } }"
            )
            assert sideways(page) == 0

    def test_the_dashboard_and_a_workflow_s_page_on_a_phone_show_every_column_without_scrolling_sideways(self):
        """At 375 px the dashboard's per-workflow table ("1 of 4 ended", p95's "only 3 runs", each on one line) and a
        workflow's versions table (its first-seen date and time on one line) were wider than their boxes: p95 and
        Running sat cut off behind a sideways scroll."""
        # given: the demo's instances, folded into the dashboard's roll-ups (one pass looks, the next folds)
        load_demo(log=lambda _line: None)
        rollups.rollup_pass()
        rollups.rollup_pass()

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "operator", {"width": 375, "height": 812})

            for path, link in (("/dashboard/", "expense_approval"), ("/workflows/expense_approval/", "v2")):
                # when
                page.goto(path)

                # then: the rows are there, and no table scrolls sideways
                expect(page.get_by_role("link", name=link, exact=True)).to_be_visible()
                assert sideways(page) == 0, path

    def test_date_and_time_filters_on_a_phone_show_the_time_too(self):
        """At 375 px the audit trail's From and Until and the instance list's Started from and before sat two to a row,
        155 px each: a date and time typed there showed as "12/01/2026," and its time was cut off."""
        with self.chromium() as browser:
            page = self.signed_in_page(browser, "admin", {"width": 375, "height": 812})
            for path in ("/audit/", "/instances/"):
                # when
                page.goto(path)
                fields = page.locator("form[role=search] input[type=datetime-local]")
                expect(fields).to_have_count(2)

                # then: each is wide enough for the whole date and time, as the task page's snooze field is
                for index in range(2):
                    box = fields.nth(index).bounding_box()
                    assert box is not None
                    assert box["width"] >= 220, (path, box)
