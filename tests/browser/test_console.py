"""The operator console in Chromium, with a real worker: Incidents -> retry a failed demo instance and watch it
complete without a reload; a bulk retry after a dry run, its progress bar filling live; screenshots at 1280 and
375 px (written to $BATON_SCREENSHOTS when set, else to a temporary directory, and looked at by a person)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from approvals.services.tasks import task_decide
from console.selectors import InstanceFilter
from console.services import bulk_dry_run
from demo.data import ensure_roles, load_demo
from orchestrator.models import InstanceState, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.browser.live import DESKTOP, BrowserTestCase, orm, screenshots_dir
from tests.factories import ExpenseInputFactory, OrderInputFactory

# The narrowest phone in common use: the console must work there, not only at the suite's 390 px.
NARROW = {"width": 375, "height": 812}


def state_of(instance_id: int) -> str:
    return WorkflowInstance.objects.values_list("state", flat=True).get(pk=instance_id)


class ConsoleTests(BrowserTestCase):
    @pytest.mark.worker
    def test_operator_retries_a_failed_demo_instance_from_incidents_and_sees_it_complete(self):
        """operator opens Incidents, follows the failed payout to its instance, retries it with a reason, and the
        page turns to Completed when the worker is done, without a reload."""
        # given: the demo's failed expense, built here through the engine and the real worker (not by load_demo,
        # whose in-process run races a worker left running by an earlier test): the team approves, then payroll
        # refuses the payout on all three attempts it has.
        self.fixture("celery_worker")
        wait_for = self.fixture("wait_for")
        ensure_roles()  # the demo's group permissions: operators operate
        failed = instance_start(
            "expense_approval",
            {**ExpenseInputFactory(amount="40.00"), "fail_payout": 3},
            initiator=self.users.staff,
        )
        task_decide(failed.tasks.get().pk, self.users.staff2, "approve", comment="Budgeted in Q3")
        wait_for(lambda: state_of(failed.pk) == InstanceState.FAILED, timeout=60, instance=failed)

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "operator")
            page.goto("/incidents/")
            group = page.locator('[data-incident="failed"]').filter(has_text="expense_approval")
            expect(group).to_contain_text("payout failed")

            # when
            group.get_by_role("link", name=f"#{failed.pk}").click()
            expect(page).to_have_url(re.compile(rf"/instances/{failed.pk}/$"))
            page.get_by_role("toolbar", name="Operator actions").get_by_role("button", name="Retry").click()
            page.get_by_label("Reason").first.fill("payroll confirmed the outage is over")
            page.get_by_role("button", name="Retry now").click()
            expect(page.get_by_role("status").filter(has_text="Retried")).to_be_visible()
            self.wait_until_live(page)
            page.evaluate("window.__sameDocument = true")

            # then
            expect(page.locator("#instance-state")).to_contain_text("Completed", timeout=60_000)
            assert page.evaluate("window.__sameDocument") is True
            payout = page.locator("[data-step]").filter(has_text="Payout")
            expect(payout.locator("tr.attempt-dead")).to_have_count(1)  # the third attempt, before the retry
            expect(payout.locator("tr.attempt-succeeded")).to_have_count(1)  # the fourth, after it

        assert state_of(failed.pk) == InstanceState.COMPLETED

    @pytest.mark.worker
    def test_a_bulk_retry_after_a_dry_run_fills_its_progress_bar_live(self):
        """Four orders failed at the stock reservation; the operator filters them, runs a dry run (exactly four),
        confirms with a reason, and watches the bar reach 100 % and the outcome say four completed."""
        # given
        self.fixture("celery_worker")
        wait_for = self.fixture("wait_for")
        ensure_roles()  # the demo's group permissions: operators operate
        orders = [instance_start("order_fulfilment", OrderInputFactory(fail_reserve=4)) for _ in range(4)]
        for order in orders:
            wait_for(lambda o=order: state_of(o.pk) == InstanceState.FAILED, timeout=60, instance=order)

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "operator")
            page.goto("/instances/?workflow=order_fulfilment&state=failed")
            expect(page.locator("tr[data-instance]")).to_have_count(4)

            # when
            page.get_by_label("Bulk action on every match").select_option("retry")
            page.get_by_role("button", name="Dry run…").click()
            expect(page.locator("#dry-count")).to_have_text("4")
            page.get_by_label("Reason").fill("the warehouse API is back")
            page.get_by_role("button", name=re.compile("Confirm: retry 4")).click()
            self.wait_until_live(page)
            page.evaluate("window.__sameDocument = true")

            # then
            bar = page.get_by_role("progressbar", name="Bulk progress")
            expect(bar).to_have_attribute("aria-valuenow", "100", timeout=60_000)
            expect(page.locator('[data-outcome="completed"]')).to_have_text("4", timeout=90_000)
            expect(page.locator('[data-outcome="failed-again"]')).to_have_text("0")
            assert page.evaluate("window.__sameDocument") is True

        assert {orm(state_of, o.pk) for o in orders} == {InstanceState.COMPLETED}

    def test_screenshots_of_the_console_at_1280_and_375(self):
        """Incidents, the instance list and a failed instance's page render at desktop and phone widths, no wider."""
        # given
        load_demo(log=lambda _line: None)
        failed = WorkflowInstance.objects.get(workflow_name="expense_approval", state=InstanceState.FAILED)
        escalated = WorkflowInstance.objects.get(data__order_id="SO-1005")
        dry_run = bulk_dry_run(self.users.operator, "pause", InstanceFilter(workflow="expense_approval"))
        target = screenshots_dir(self.tmp_path)
        shots = [
            ("incidents", "/incidents/"),
            ("instances", "/instances/"),
            ("instance-failed", f"/instances/{failed.pk}/"),
            ("instance-escalated", f"/instances/{escalated.pk}/"),
            ("bulk-dry-run", f"/instances/bulk/{dry_run.pk}/"),
        ]

        # when
        with self.chromium() as browser:
            for viewport, suffix in ((DESKTOP, ""), (NARROW, "-phone")):
                page = self.signed_in_page(browser, "operator", viewport)
                for name, path in shots:
                    response = page.goto(path)
                    assert response is not None
                    assert response.status == 200, path
                    if "instance-" in name:
                        expect(page.locator(".diagram-zoom svg")).to_have_count(1)
                        # The diagram keeps its size: its labels are never drawn smaller than the small text.
                        smallest = page.evaluate(
                            "() => Math.min(...[...document.querySelectorAll('.diagram-zoom svg text')]"
                            ".map(t => t.getBoundingClientRect().height))"
                        )
                        assert smallest >= 12, f"{name}: a diagram label is {smallest:.1f} px high"
                        if name == "instance-failed":
                            # The diagram opens on the dead payout, wider than the box or not: it is in view.
                            expect(page.locator(".diagram-zoom g.node.step-dead")).to_have_count(1)
                            inside = page.evaluate(
                                "() => { const n = document.querySelector('.diagram-zoom g.node.step-dead')"
                                ".getBoundingClientRect(); const v = document.querySelector('.diagram-pan')"
                                ".getBoundingClientRect(); return n.left >= v.left && n.right <= v.right"
                                " && n.top >= v.top && n.bottom <= v.bottom; }"
                            )
                            assert inside, f"{name}{suffix}: the dead step is outside the diagram's view"
                        toolbar = page.get_by_role("toolbar", name="Operator actions")
                        assert toolbar.bounding_box()["y"] < viewport["height"], f"{name}: actions below the fold"
                    page.wait_for_load_state("networkidle")
                    width = page.evaluate("document.documentElement.scrollWidth")
                    assert width <= viewport["width"], f"{name}{suffix}: {width}px wide"
                    if viewport is DESKTOP:
                        # At 1280 px every column is on screen: a table that scrolls sideways in its box (the
                        # instance list's Age, cut off by a long error) hides a column from the operator.
                        cut = page.evaluate(
                            "() => [...document.querySelectorAll('.table-responsive')]"
                            ".filter(b => b.scrollWidth > b.clientWidth + 1)"
                            ".map(b => `${b.scrollWidth}px in ${b.clientWidth}px`)"
                        )
                        assert cut == [], f"{name}: a table scrolls sideways at {viewport['width']} px: {cut}"
                    page.screenshot(path=str(target / f"console-{name}{suffix}.png"), full_page=True)

        # then
        for name, _path in shots:
            for suffix in ("", "-phone"):
                assert (target / f"console-{name}{suffix}.png").stat().st_size > 10_000


class EscalationAnswerTests(BrowserTestCase):
    def test_a_refused_escalation_answer_comes_back_as_typed_on_incidents(self):
        """operator answers an escalation by handing it on, which only its assignee may do: the page says so and
        keeps the choice, the reason and the person typed, at 1280 px and on a phone."""
        # given: an order whose refund failed every attempt, escalated to the operators
        run_steps = self.fixture("run_steps")
        orm(ensure_roles)
        instance = orm(
            instance_start,
            "order_fulfilment",
            OrderInputFactory(fail_shipping=True, fail_refund=4),
            initiator=self.users.staff,
        )
        orm(run_steps, instance, advance=True)
        target = screenshots_dir(self.tmp_path)

        with self.chromium() as browser:
            for viewport, suffix in ((DESKTOP, ""), (NARROW, "-phone")):
                page = self.signed_in_page(browser, "operator", viewport)
                page.goto("/incidents/")
                escalation = page.locator('[data-incident="escalation"]').first
                escalation.get_by_label("Resolve by").select_option("fail")
                escalation.get_by_label("Reason").fill("taking it over: the customer called, ticket 4411")
                escalation.get_by_label("Reassign to").select_option(label="operator")

                # when
                escalation.get_by_role("button", name="Reassign").click()

                # then
                expect(page.get_by_text("Only the assignee or a manager can delegate this task.")).to_be_visible()
                answered = page.locator('[data-incident="escalation"]').first
                expect(answered.get_by_label("Reason")).to_have_value(
                    "taking it over: the customer called, ticket 4411"
                )
                expect(answered.get_by_label("Resolve by")).to_have_value("fail")
                expect(answered.get_by_label("Reassign to")).to_have_value(str(self.users.operator.pk))
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= viewport["width"], f"refused answer{suffix}: {width}px wide"
                page.screenshot(path=str(target / f"console-escalation-refused{suffix}.png"), full_page=False)


class BulkProgressLiveTests(BrowserTestCase):
    def test_the_last_progress_of_a_job_reaches_the_page_when_it_follows_the_one_before_within_a_second(self):
        """A bulk job worked in two quick batches: the page's bar shows the second batch's progress too, within
        seconds, with the minute's resync turned off. The bar's refresh is throttled to one per second, and htmx's
        throttle drops what comes within the second instead of fetching once at its end: the bar stayed at 50 %
        until the resync (and the bulk retry test above took 70 s, most of it waiting for that resync)."""
        # given: two orders failed at the stock reservation, a confirmed bulk retry of both, its page live
        from console.selectors import InstanceFilter
        from console.services import bulk_confirm, bulk_dry_run, bulk_work

        run_steps = self.fixture("run_steps")
        orm(ensure_roles)
        orders = [orm(instance_start, "order_fulfilment", OrderInputFactory(fail_reserve=4)) for _ in range(2)]
        for order in orders:
            orm(run_steps, order, advance=True)
        operator = self.users.operator
        job = orm(bulk_dry_run, operator, "retry", InstanceFilter(workflow="order_fulfilment", state="failed"))
        assert job.total == 2
        orm(bulk_confirm, job.pk, operator, reason="the warehouse API is back")

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "operator")
            page.goto(f"/instances/bulk/{job.pk}/")
            self.wait_until_live(page)
            page.evaluate("window.batonLive.resyncEvery(3600)")  # the safety net may not repair the bar here
            bar = page.get_by_role("progressbar", name="Bulk progress")
            expect(bar).to_have_attribute("aria-valuenow", "0")
            page.wait_for_timeout(1500)  # the socket-open fetch's throttle window has passed

            # when: the first batch, and the second within the same second
            orm(bulk_work, job.pk, batch=1)
            orm(bulk_work, job.pk, batch=1)

            # then
            expect(bar).to_have_attribute("aria-valuenow", "100", timeout=8_000)


class DataEditorTests(BrowserTestCase):
    def test_data_too_large_for_a_form_is_not_sent_and_stays_in_the_editor_with_a_message(self):
        """operator pastes data past what a form may send (Django's DATA_UPLOAD_MAX_MEMORY_SIZE, which it enforces
        before any view: the generic 400 page, the text lost) into the data editor, on a phone: the page does not
        send it, says so beside the box with both sizes, and keeps the text; trimmed, it saves."""
        # given: the demo's failed expense (payroll refused the payout on all three attempts)
        failed = self.failed_demo_expense()
        before = failed.data
        # 2.7 million characters: past the 2,621,440 bytes a form may send, though the page's box takes it
        typed = '{\n  "notes": "' + "n" * 2_700_000 + '"\n}'

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "operator", NARROW)
            page.goto(f"/instances/{failed.pk}/")
            posts: list[str] = []
            page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
            page.get_by_role("toolbar", name="Operator actions").get_by_role("button", name="Edit data").click()
            box = page.get_by_label("Data (JSON object)")
            box.fill(typed)
            page.locator("#edit-reason").fill("notes from the call")

            # when
            page.get_by_role("button", name="Save data").click()

            # then: not sent; said in place, with both sizes; the text where it was
            alert = page.locator("#panel-edit-data [data-body-too-large]")
            expect(alert).to_be_visible()
            expect(alert).to_contain_text("Not sent")
            said = int(alert.locator("[data-body-size]").inner_text().replace(",", ""))
            assert said >= len(typed) + typed.count("\n") + len("new_data") + 2  # each line break sent as CR LF
            expect(alert).to_contain_text("2,621,440 bytes a form may send")
            assert page.evaluate("document.getElementById('edit-data').value.length") == len(typed)
            assert posts == []
            assert page.evaluate("document.activeElement.hasAttribute('data-body-too-large')") is True
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= NARROW["width"], f"{width}px wide"

            # when: trimmed to what a form may send, it is sent and saved
            box.fill('{"notes": "' + "n" * 1_000 + '"}')
            page.get_by_role("button", name="Save data").click()

            # then
            expect(page.get_by_role("status").filter(has_text="Data saved for")).to_be_visible()
            saved = orm(lambda: WorkflowInstance.objects.get(pk=failed.pk).data)

        assert saved == {"notes": "n" * 1_000}
        assert before != saved


class NobodyMayActTests(BrowserTestCase):
    def test_a_task_nobody_may_act_on_shows_on_incidents_at_once_with_why_and_the_fix(self):
        """An expense whose approvers are all deactivated, the manager too, started by the only operator (whom
        four-eyes bars): the operator sees it under "Nobody may act" long before its SLA, with why and what
        fixes it, and opens its task page from there; at 1280 px and on a phone, nothing wider than the screen."""
        # given
        orm(ensure_roles)

        def deactivate_all() -> None:
            for user in (self.users.staff, self.users.staff2, self.users.manager):
                user.is_active = False
                user.save()

        orm(deactivate_all)
        instance = orm(instance_start, "expense_approval", ExpenseInputFactory(), initiator=self.users.operator)
        task_id = orm(lambda: instance.tasks.get().pk)
        target = screenshots_dir(self.tmp_path)

        with self.chromium() as browser:
            for viewport, suffix in ((DESKTOP, ""), (NARROW, "-phone")):
                page = self.signed_in_page(browser, "operator", viewport)

                # when
                page.goto("/incidents/")

                # then
                row = page.locator(f'[data-incident="nobody"][data-task="{task_id}"]')
                expect(row).to_contain_text("nobody may act")
                expect(row).to_contain_text("group approvers: every member is deactivated")
                expect(row).to_contain_text("group operators: its only active member started this workflow")
                expect(row).to_contain_text("Add an active person who did not start this workflow")
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= viewport["width"], f"nobody may act{suffix}: {width}px wide"
                row.scroll_into_view_if_needed()
                page.screenshot(path=str(target / f"console-nobody-may-act{suffix}.png"), full_page=False)
                row.get_by_role("link").first.click()
                expect(page).to_have_url(re.compile(rf"/tasks/{task_id}/$"))
