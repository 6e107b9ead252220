"""What a newcomer meets first, in a real browser: the task page follows a claim live and never loses a typed
comment; one toast per event; the start form looks like the other pages and shows its errors in place."""

from __future__ import annotations

import re

from playwright.sync_api import expect

from approvals.models import HumanTask, TaskState
from approvals.services.tasks import task_claim, task_delegate
from demo.data import grant_group_permissions
from orchestrator.services.instances import instance_start
from tests.browser.live import DESKTOP, PHONE, BrowserTestCase, orm, screenshot
from tests.browser.test_inbox import EXPENSE, start_expense

# Live budget for the card to show someone else's claim (the inbox promises a second for its rows; the card's
# re-fetch is one more request).
CLAIM_SHOWN_MS = 3000
COMMENT = "Receipts checked, the amount matches the invoice."


def claim_with_live_events_lost(task_id: int, user) -> None:
    """task_claim with this process's live events sent to a Redis that is not there: the page is not told."""
    from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
    from django.test import override_settings

    nowhere = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }
    channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)
    try:
        with override_settings(CHANNEL_LAYERS=nowhere):
            task_claim(task_id, user)
    finally:
        channel_layers.backends.pop(DEFAULT_CHANNEL_LAYER, None)


class TaskPageTests(BrowserTestCase):
    def test_someone_elses_claim_shows_live_and_the_typed_comment_stays(self):
        """staff types a comment; staff2 claims the task meanwhile: staff's card says so within seconds, and
        the comment is still there, in a read-only box, to copy."""
        # given
        _instance, task = start_expense(self.users.manager)

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff")
            page.goto(f"/tasks/{task.pk}/")
            self.wait_until_live(page)
            page.get_by_label(re.compile("^Comment")).fill(COMMENT)
            expect(page.locator("[data-counter-for=comment]")).to_contain_text(f"{len(COMMENT)} of 4000 used")

            # when
            orm(task_claim, task.pk, self.users.staff2)

            # then
            card = page.locator("#task-decision")
            expect(card).to_contain_text("staff2 is working on this task.", timeout=CLAIM_SHOWN_MS)
            expect(card.get_by_role("button", name="Approve")).to_have_count(0)
            expect(page.get_by_label("Your comment (not sent)")).to_have_value(COMMENT)
            for name, viewport in (("task-claimed-live.png", DESKTOP), ("task-claimed-live-phone.png", PHONE)):
                page.set_viewport_size(viewport)
                screenshot(page, self.tmp_path, name)

        task.refresh_from_db()
        assert task.assignee == self.users.staff2

    def test_someone_elses_claim_keeps_the_note_typed_for_a_delegation(self):
        """The manager (also an approver) types a note to hand the open task to staff2; staff claims it meanwhile:
        the card no longer offers Delegate, and the note is still there, in a read-only box, to copy (it was lost
        with the form)."""
        # given
        _instance, task = start_expense(self.users.operator)
        orm(self.users.manager.groups.add, self.users.approvers)
        note = "The client calls at 3 and wants an answer today."

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "manager", PHONE)
            page.goto(f"/tasks/{task.pk}/")
            self.wait_until_live(page)
            page.get_by_label("Note for the delegate").fill(note)

            # when
            orm(task_claim, task.pk, self.users.staff)

            # then
            card = page.locator("#task-decision")
            expect(card).to_contain_text("staff is working on this task.", timeout=CLAIM_SHOWN_MS)
            expect(card.get_by_role("button", name="Delegate")).to_have_count(0)
            expect(page.get_by_label("Your note for the delegate (not sent)")).to_have_value(note)

    def test_approve_refused_after_a_claim_keeps_the_comment(self):
        """The live news lost (a Redis hiccup): staff clicks Approve on a task staff2 took; the refusal says who
        has it and the page still holds the comment."""
        # given
        _instance, task = start_expense(self.users.manager)

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff")
            page.goto(f"/tasks/{task.pk}/")
            page.get_by_label(re.compile("^Comment")).fill(COMMENT)
            orm(claim_with_live_events_lost, task.pk, self.users.staff2)

            # when
            page.get_by_role("button", name="Approve").click()

            # then
            expect(page.locator("#messages")).to_contain_text("staff2 has claimed this task.")
            expect(page.get_by_label("Your comment (not sent)")).to_have_value(COMMENT)

        task.refresh_from_db()
        assert (task.state, task.assignee) == (TaskState.CLAIMED, self.users.staff2)

    def test_one_delegation_shows_one_toast(self):
        """staff delegates a task to staff2, whose inbox is open: staff2 sees one toast, not three."""
        # given
        _instance, task = start_expense(self.users.manager)
        task_claim(task.pk, self.users.staff)

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff2")
            page.goto("/inbox/?tab=mine")
            self.wait_until_live(page)

            # when
            orm(task_delegate, task.pk, self.users.staff, self.users.staff2, note="over to you")

            # then: the toast arrives; the inbox row shows that its events have all been handled
            toasts = page.locator("#toasts .toast")
            expect(toasts.first).to_contain_text("staff delegated to you", timeout=CLAIM_SHOWN_MS)
            expect(self.task_row(page, task.pk)).to_be_visible(timeout=CLAIM_SHOWN_MS)
            # Absence needs a wait: every copy of one event arrives within milliseconds of the first.
            page.wait_for_timeout(1000)
            assert toasts.count() == 1, toasts.all_inner_texts()  # main showed three

    def test_the_start_form_is_styled_and_shows_an_error_in_place(self):
        """Labels above Bootstrap controls; a bad amount comes back with its message under the field and
        everything typed kept."""
        # given
        orm(grant_group_permissions)

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff")
            page.goto("/workflows/expense_approval/start/")
            employee = page.get_by_label("Employee")
            expect(employee).to_have_class(re.compile(r"\bform-control\b"))
            expect(page.get_by_label("Category")).to_have_class(re.compile(r"\bform-select\b"))
            label_box = page.locator("label[for=id_employee]").bounding_box()
            input_box = employee.bounding_box()
            assert label_box is not None
            assert input_box is not None
            assert label_box["y"] + label_box["height"] <= input_box["y"] + 1  # above, not beside
            employee.fill("Kim Typed")
            page.get_by_label("Amount (EUR)").fill("-5")
            page.get_by_label("What was it for?").fill("Train to the customer")

            # when
            page.get_by_role("button", name="Start workflow").click()

            # then
            amount = page.get_by_label("Amount (EUR)")
            expect(amount).to_have_class(re.compile(r"\bis-invalid\b"))
            expect(page.locator(".invalid-feedback").first).to_be_visible()
            expect(page.locator(".invalid-feedback").first).to_contain_text("greater than or equal to 0.01")
            expect(page.get_by_label("Employee")).to_have_value("Kim Typed")
            expect(page.get_by_label("What was it for?")).to_have_value("Train to the customer")
            for name, viewport in (("start-error.png", DESKTOP), ("start-error-phone.png", PHONE)):
                page.set_viewport_size(viewport)
                screenshot(page, self.tmp_path, name)

        assert not orm(lambda: HumanTask.objects.exists())

    def test_a_start_form_past_what_a_form_may_send_is_not_sent_and_keeps_the_text(self):
        """Every POST form is checked before it is sent against the bytes Django reads before any view
        (DATA_UPLOAD_MAX_MEMORY_SIZE, the page's meta): past them Django refuses the request and the typing would be
        lost. A workflow's own form may have a field without a length limit; here the limit is taken off a field.
        Counted as the form encodes it: 500,000 "é" are 1,000,000 bytes of UTF-8 but 3,000,000 urlencoded."""
        # given
        orm(grant_group_permissions)
        typed = "é" * 500_000

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff")
            page.goto("/workflows/expense_approval/start/")
            posts: list[str] = []
            page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
            page.get_by_label("Employee").fill("Kim Typed")
            page.get_by_label("Amount (EUR)").fill("12.50")
            description = page.get_by_label("What was it for?")
            description.evaluate("field => field.removeAttribute('maxlength')")
            description.fill(typed)

            # when
            page.get_by_role("button", name="Start workflow").click()

            # then: not sent; said at the form's top with the size as sent; the text where it was
            alert = page.locator("form [data-body-too-large]")
            expect(alert).to_be_visible()
            expect(alert).to_contain_text("Not sent")
            expect(alert).to_contain_text("2,621,440 bytes a form may send")
            said = int(alert.locator("[data-body-size]").inner_text().replace(",", ""))
            assert said >= 6 * len(typed)
            assert posts == []
            assert description.input_value() == typed
            expect(page.get_by_label("Employee")).to_have_value("Kim Typed")

            # when: shortened, it is sent, and the alert goes
            description.fill("Train to the customer")
            page.get_by_role("button", name="Start workflow").click()

            # then
            expect(page).not_to_have_url(re.compile(r"/start/$"))
            assert len(posts) == 1
        assert orm(lambda: HumanTask.objects.filter(instance__data__employee="Kim Typed").exists())

    def test_the_friendly_404(self):
        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff")
            response = page.goto("/no/such/page/")
            assert response is not None
            assert response.status == 404
            expect(page.get_by_role("heading", name="This page does not exist")).to_be_visible()
            for name, viewport in (("404.png", DESKTOP), ("404-phone.png", PHONE)):
                page.set_viewport_size(viewport)
                screenshot(page, self.tmp_path, name)

    def test_a_form_task_shows_its_errors_in_place_with_what_was_typed(self):
        """The finance classification form: Bootstrap controls with labels above; submitting without a cost
        centre marks that field, keeps the note and the comment."""
        # given
        from approvals.services.base import APPROVE
        from approvals.services.tasks import task_decide

        instance = instance_start(
            "expense_approval", {**EXPENSE, "category": "other", "amount": "800"}, initiator=self.users.operator
        )
        task_decide(HumanTask.objects.get(instance=instance, state=TaskState.OPEN).pk, self.users.staff, APPROVE)
        classify = HumanTask.objects.get(instance=instance, state=TaskState.OPEN)

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "manager")
            page.goto(f"/tasks/{classify.pk}/")
            expect(page.get_by_label("Cost centre")).to_have_class(re.compile(r"\bform-select\b"))
            page.get_by_label("Note for payroll").fill("taxi to the airport")
            page.get_by_label(re.compile("^Comment")).fill("Classified by hand")

            # when
            page.get_by_role("button", name="Submit").click()

            # then
            expect(page.get_by_label("Cost centre")).to_have_class(re.compile(r"\bis-invalid\b"))
            expect(page.locator(".invalid-feedback").first).to_be_visible()
            expect(page.get_by_label("Note for payroll")).to_have_value("taxi to the airport")
            expect(page.get_by_label(re.compile("^Comment"))).to_have_value("Classified by hand")
            for name, viewport in (("form-task-error.png", DESKTOP), ("form-task-error-phone.png", PHONE)):
                page.set_viewport_size(viewport)
                screenshot(page, self.tmp_path, name)


class OperatorPageTests(BrowserTestCase):
    def test_a_pause_until_year_10000_is_refused_on_the_page_with_the_reason_kept(self):
        """The operator's pause form comes back with the range and the reason as typed; the list with a NUL
        search answers with a message."""
        # given
        orm(grant_group_permissions)
        instance, _task = start_expense(self.users.manager)

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "operator")
            page.goto(f"/instances/{instance.pk}/")
            # The toolbar at the top opens the pause form.
            page.locator('[data-bs-target="#panel-pause"]').click()
            page.locator("#pause-reason").fill("Waiting for the supplier's credit note")
            # A datetime-local input cannot hold an offset: set the raw value as a tampered post would.
            page.locator("#pause-until").evaluate(
                "(el) => { el.type = 'text'; el.value = '9999-12-31T23:59:59-23:59'; }"
            )

            # when
            page.locator("#panel-pause button[type=submit]").click()

            # then
            expect(page.locator("#messages")).to_contain_text("Resume at: enter a date between 2000-01-01")
            expect(page.locator("#pause-reason")).to_have_value("Waiting for the supplier's credit note")
            for name, viewport in (("pause-refused.png", DESKTOP), ("pause-refused-phone.png", PHONE)):
                page.set_viewport_size(viewport)
                page.locator("#panel-pause").scroll_into_view_if_needed()
                screenshot(page, self.tmp_path, name)

            page.set_viewport_size(DESKTOP)
            response = page.goto("/instances/?q=%00&state=sideways")
            assert response is not None
            assert response.status == 200
            expect(page.locator("#messages")).to_contain_text("Title or business key:")
            screenshot(page, self.tmp_path, "instances-junk.png")

        instance.refresh_from_db()
        assert instance.paused_until is None
