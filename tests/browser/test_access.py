"""What a person may see and do in the browser: four-eyes on the task page, 404s, and "my instances" only."""

from __future__ import annotations

from playwright.sync_api import expect

from approvals.models import HumanTask, TaskState
from approvals.services.base import APPROVE
from approvals.services.tasks import task_decide
from orchestrator.models import WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.browser.live import BrowserTestCase

EXPENSE = {"employee": "Sam Staff", "amount": "80.00", "category": "travel", "description": "Train to the client"}
ORDER = {"order_id": "SO-9001", "customer": "Globex", "email": "buyer@example.com", "amount": "1850.00", "items": 3}


def start_expense(initiator, **changes) -> WorkflowInstance:
    return instance_start("expense_approval", {**EXPENSE, **changes}, initiator=initiator)


def open_task(instance: WorkflowInstance) -> HumanTask:
    return HumanTask.objects.get(instance=instance, state=TaskState.OPEN)


class AccessTests(BrowserTestCase):
    def test_the_initiator_sees_the_four_eyes_notice_and_no_decision_buttons(self):
        """staff opens the task of the expense they started: a four-eyes notice, no Approve, Reject or Claim."""
        # given
        task = open_task(start_expense(self.users.staff))

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff")

            # when
            response = page.goto(f"/tasks/{task.pk}/")

            # then
            assert response is not None
            assert response.status == 200
            expect(page.get_by_role("heading", name=task.title)).to_be_visible()
            expect(page.get_by_text("You started this workflow, so someone else must decide")).to_be_visible()
            for action in ("Approve", "Reject", "Claim"):
                expect(page.get_by_role("button", name=action)).to_have_count(0)

        task.refresh_from_db()
        assert task.state == TaskState.OPEN

    def test_instance_and_task_pages_of_others_answer_404(self):
        """staff gets the 404 page for an order they have no part in and for a manager-only task."""
        # given
        order = instance_start("order_fulfilment", ORDER, initiator=self.users.operator)
        # Started by the operator: a manager who started it would be the only manager, and a task whose only
        # candidate is its initiator escalates at once (nobody can act on it).
        expense = start_expense(self.users.operator, amount="900.00")
        task_decide(open_task(expense).pk, self.users.staff2, APPROVE)
        manager_task = open_task(expense)
        assert manager_task.step.name == "manager_approval"

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff")

            for path, secret in (
                (f"/instances/{order.pk}/", order.title),
                (f"/tasks/{manager_task.pk}/", manager_task.title),
            ):
                # when
                response = page.goto(path)

                # then
                assert response is not None
                assert response.status == 404, path
                expect(page.get_by_role("heading", name="This page does not exist")).to_be_visible()
                expect(page.get_by_text(secret)).to_have_count(0)

    def test_the_instance_list_shows_staff_their_own_instances_and_their_tasks_ones(self):
        """staff sees on /instances/ the expense they started and a colleague's they may approve (its page opens
        for them), not an order with no task of theirs, and no operator actions on their own one's page."""
        # given
        mine = start_expense(self.users.staff)
        colleagues = start_expense(self.users.staff2, description="Hotel in Lyon")
        others = [instance_start("order_fulfilment", ORDER, initiator=self.users.operator)]

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "staff")

            # when
            page.goto("/instances/")

            # then
            table = page.get_by_role("table", name="Workflow instances")
            expect(table.get_by_role("link")).to_have_count(2)
            expect(table.get_by_role("link", name=mine.title)).to_be_visible()
            expect(table.get_by_role("link", name=colleagues.title)).to_be_visible()
            for other in others:
                expect(page.get_by_text(other.title)).to_have_count(0)

            # when
            table.get_by_role("link", name=mine.title).click()

            # then
            expect(page.get_by_role("heading", name=mine.title, level=1)).to_be_visible()
            expect(page.get_by_role("heading", name="Operator actions")).to_have_count(0)
            for action in ("Retry failed steps", "Pause", "Cancel instance"):
                expect(page.get_by_role("button", name=action)).to_have_count(0)

    def test_no_delegate_form_when_nobody_else_can_take_the_task(self):
        """manager, the only manager, sees no Delegate button on a manager-only task nobody else may take."""
        # given
        expense = start_expense(self.users.staff, amount="900.00")
        task_decide(open_task(expense).pk, self.users.staff2, APPROVE)
        manager_task = open_task(expense)

        with self.chromium() as browser:
            page = self.signed_in_page(browser, "manager")

            # when
            page.goto(f"/tasks/{manager_task.pk}/")

            # then
            expect(page.get_by_role("button", name="Approve")).to_be_visible()
            expect(page.get_by_role("button", name="Delegate")).to_have_count(0, timeout=500)
