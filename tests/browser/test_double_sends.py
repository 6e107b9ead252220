"""One send per press (static/baton/forms.js): a double click on a POST form's button sent the form twice; the first
send did the work and the second was refused (409 "only failed instances can be retried; this one is running"), so
the person saw an error for an action that worked. Requests are counted with Playwright's request events."""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path

from playwright.sync_api import Page, Route, expect

from approvals.models import HumanTask, TaskState
from orchestrator.models import InstanceState, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.browser.live import BrowserTestCase
from tests.factories import ExpenseInputFactory


def posts_of(page: Page) -> list[str]:
    """The URLs of the POSTs ``page`` sends from now on, in order."""
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if request.method == "POST" else None)
    return sent


def open_task_of(initiator) -> HumanTask:
    """An expense whose team approval task is open to the approvers (staff, staff2), ``initiator`` not among them."""
    instance = instance_start("expense_approval", dict(ExpenseInputFactory(amount="40.00")), initiator=initiator)
    return HumanTask.objects.get(instance=instance, state=TaskState.OPEN)


def decisions_of(task_id: int) -> list[tuple[str, str]]:
    return list(HumanTask.objects.filter(pk=task_id).values_list("state", "decision"))


class DoubleSendTests(BrowserTestCase):
    def test_a_double_click_on_retry_sends_one_request_and_shows_the_retry(self):
        """operator double-clicks "Retry now" on a failed expense: one POST, the page says it was retried, and no
        refusal ('only failed instances can be retried') for the second click; the button shows it is busy."""
        # given: the demo's failed expense (payroll refused the payout on all three attempts); no worker, so the
        # retried instance stays running, and a second retry would be refused
        failed = self.failed_demo_expense()

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "operator")
            page.goto(f"/instances/{failed.pk}/")
            page.get_by_role("toolbar", name="Operator actions").get_by_role("button", name="Retry").click()
            page.get_by_label("Reason").first.fill("payroll confirmed the outage is over")
            posts = posts_of(page)
            retry = page.get_by_role("button", name="Retry now")
            # The send held back until the busy button has been seen (and drawn).
            held: list[Route] = []
            page.route(re.compile(r"/retry/?$"), lambda route: held.append(route))

            # The button as drawn a moment after the first press, told by the page itself: while a send is pending,
            # Playwright's locators and scripts wait for the navigation to end.
            said: list[str] = []
            page.on("console", lambda message: said.append(message.text) if message.text.startswith("busy") else None)
            page.evaluate(
                """() => window.addEventListener('submit', (event) => setTimeout(() => {
                    const button = event.submitter;
                    console.log(`busy ${button.disabled} ${button.getAttribute('aria-busy')} `
                        + `${!!button.querySelector('.spinner-border')}`);
                }, 50))"""
            )

            # when
            retry.dblclick()

            # then: busy at once, for the one send
            page.wait_for_timeout(500)  # a late second send would have been caught by now
            assert said == ["busy true true true"]
            assert len(held) == 1, held
            held[0].continue_()
            expect(page.get_by_role("status").filter(has_text="Retried")).to_be_visible()
            expect(page.locator("#messages")).not_to_contain_text("only failed instances")
            assert len(posts) == 1, posts

        assert WorkflowInstance.objects.get(pk=failed.pk).state != InstanceState.FAILED

    def test_a_double_click_on_approve_decides_once(self):
        """staff double-clicks Approve on a task with a comment: one POST, carrying the decision, and the task is
        approved once; the next page says so with no refusal."""
        # given
        task = open_task_of(self.users.manager)

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff")
            page.goto(f"/tasks/{task.pk}/")
            page.get_by_label(re.compile("^Comment")).fill("Within the budget")
            posts = posts_of(page)
            bodies: list[str] = []
            page.on(
                "request", lambda request: bodies.append(request.post_data or "") if request.method == "POST" else None
            )

            # when
            page.get_by_role("button", name="Approve").dblclick()

            # then
            expect(page.locator("#messages")).to_contain_text("Approved")
            expect(page.locator("#messages")).not_to_contain_text("already")
            assert len(posts) == 1, posts
            assert "decision=approve" in bodies[0]  # the pressed button's value still sent

        assert decisions_of(task.pk) == [(TaskState.COMPLETED, "approve")]

    def test_the_busy_button_as_drawn(self):
        """The pressed Approve as drawn while its send is on its way (a screenshot in the test's directory, looked at
        by a person): disabled, with a small spinner before its words. The form is sent into a frame here, so that
        the page stays to be drawn, and its send is held unanswered."""
        # given
        task = open_task_of(self.users.manager)

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff")
            page.goto(f"/tasks/{task.pk}/")
            page.evaluate(
                """() => {
                    document.body.insertAdjacentHTML('beforeend', '<iframe name="sink" hidden></iframe>');
                    document.getElementById('task-decide').target = 'sink';
                }"""
            )
            approve = page.get_by_role("button", name="Approve")
            # Held, never answered: decided, the task's live refresh would redraw the card under the screenshot.
            held: list[Route] = []
            page.route(re.compile(r"/decide/$"), lambda route: held.append(route))

            # when
            approve.click()

            # then
            expect(approve).to_be_disabled()
            expect(approve).to_have_attribute("aria-busy", "true")
            expect(approve.locator(".spinner-border")).to_have_count(1)
            page.locator("#task-decide").screenshot(path=str(Path(self.tmp_path) / "approve-busy.png"))
            assert len(held) == 1
            held[0].abort()

    def test_a_form_refused_as_too_large_sends_once_fixed(self):
        """staff's comment passes what the form may send (here made small): the form is not sent and says so; the
        comment shortened, Approve sends it."""
        # given
        task = open_task_of(self.users.manager)

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff")
            page.goto(f"/tasks/{task.pk}/")
            page.locator("#task-decide").evaluate("form => form.setAttribute('data-body-max', '600')")
            comment = page.get_by_label(re.compile("^Comment"))
            comment.fill("x" * 700)
            posts = posts_of(page)
            approve = page.get_by_role("button", name="Approve")

            # when
            approve.click()

            # then: refused in place, the button usable
            expect(page.locator("#task-decide [data-body-too-large]")).to_be_visible()
            assert posts == []
            expect(approve).to_be_enabled()
            expect(approve).not_to_have_attribute("aria-busy", "true")

            # when: shortened, then sent
            comment.fill("Within the budget")
            approve.click()

            # then
            expect(page.locator("#messages")).to_contain_text("Approved")
            assert len(posts) == 1, posts

        assert decisions_of(task.pk) == [(TaskState.COMPLETED, "approve")]

    def test_enter_in_a_field_sends_the_form_once(self):
        """staff presses Enter twice in the snooze form's field after claiming: one POST."""
        # given
        task = open_task_of(self.users.manager)

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff")
            page.goto(f"/tasks/{task.pk}/")
            page.get_by_role("button", name="Claim").click()
            expect(page.locator("#messages")).to_contain_text("Claimed")
            posts = posts_of(page)
            field = page.locator("#snooze-until")
            field.fill(f"{date.today() + timedelta(days=5):%Y-%m-%d}T09:00")

            # when
            field.focus()
            page.keyboard.press("Enter")
            page.keyboard.press("Enter")

            # then
            expect(page.locator("#messages")).to_contain_text("Snoozed")
            assert len(posts) == 1, posts

    def test_a_page_brought_back_from_the_back_forward_cache_has_its_buttons_usable(self):
        """staff claims a task, goes Back to the inbox it came from (restored from the back/forward cache, as it
        was left: its pressed button busy), and the inbox's Claim buttons work again."""
        # given
        first = open_task_of(self.users.manager)
        second = open_task_of(self.users.manager)

        with self.chromium(bfcache=True) as browser:
            page = self.signed_in_page(browser, "staff")
            page.goto("/inbox/?tab=queue")
            page.evaluate("window.__left = 'here'")
            page.evaluate("window.addEventListener('pageshow', (e) => { window.__restored = e.persisted; })")
            self.task_row(page, first.pk).get_by_role("button", name="Claim").click()
            expect(page).to_have_url(re.compile(rf"/tasks/{first.pk}/$"))

            # when
            page.go_back(wait_until="commit")  # a page from the cache has no load event

            # then: the very page left (not loaded again), its buttons usable
            expect(page).to_have_url(re.compile(r"/inbox/\?tab=queue$"))
            assert page.evaluate("window.__left") == "here", "not restored from the back/forward cache"
            assert page.evaluate("window.__restored") is True
            claim = self.task_row(page, second.pk).get_by_role("button", name="Claim")
            expect(claim).to_be_enabled()
            expect(page.locator("[aria-busy=true]")).to_have_count(0)
            claim.click()
            expect(page).to_have_url(re.compile(rf"/tasks/{second.pk}/$"))

        assert HumanTask.objects.get(pk=second.pk).assignee_id == self.users.staff.pk
