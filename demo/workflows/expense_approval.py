"""Expense approval: the team approves, a manager approves above a limit, then payroll pays out.

The submitter (the instance's initiator) never approves their own expense, and one person never approves at
both levels: both rules live in ``approvals.services.tasks.task_decide``.

Version 2 adds a manual step: an expense in the category "other" is classified by finance (a form whose
cleaned data joins the instance data) before the manager decides. Version 1 stays registered, so instances
started on it finish on it.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django import forms

from demo.workflows.simulated import call, maybe_fail
from orchestrator.dsl import FORM, Decision, Human, Reassign, Remind, Retry, StepContext, Task, Workflow
from orchestrator.registry import register

MANAGER_LIMIT = Decimal("500")


class ExpenseForm(forms.Form):
    employee = forms.CharField(label="Employee", max_length=100)
    amount = forms.DecimalField(label="Amount (EUR)", min_value=Decimal("0.01"), max_digits=10, decimal_places=2)
    category = forms.ChoiceField(
        label="Category",
        choices=[("travel", "Travel"), ("meals", "Meals"), ("equipment", "Equipment"), ("other", "Other")],
    )
    description = forms.CharField(label="What was it for?", max_length=500, widget=forms.Textarea(attrs={"rows": 3}))


class ClassificationForm(forms.Form):
    cost_centre = forms.ChoiceField(
        label="Cost centre",
        choices=[
            ("", "Choose…"),
            ("CC-100", "CC-100 Operations"),
            ("CC-200", "CC-200 Sales"),
            ("CC-300", "CC-300 R&D"),
        ],
    )
    tax_deductible = forms.BooleanField(label="Tax deductible", required=False)
    note = forms.CharField(label="Note for payroll", max_length=200, required=False)


def needs_classification(data: dict) -> str:
    return "classify" if data.get("category") == "other" else "manager_needed"


def needs_manager(data: dict) -> str:
    return "manager_approval" if Decimal(str(data["amount"])) > MANAGER_LIMIT else "payout"


def payout(ctx: StepContext) -> dict:
    maybe_fail(ctx, "fail_payout")
    return {"payout_id": call("payroll", "payout", ctx.idempotency_key, ctx.data["amount"])}


expense_approval = register(
    Workflow(
        name="expense_approval",
        version=1,
        title="Expense approval",
        owner="Finance",
        criticality="medium",
        description="Two levels of sign-off: the approvers' team, then a manager above EUR 500; then payroll.",
        title_template="Expense: {description:.40} ({employee})",
        start_form=ExpenseForm,
        steps=[
            Human(
                "team_approval",
                label="Team approval",
                task_title="Approve {title}",
                candidate_groups=["approvers"],
                sla=timedelta(days=1),
                escalation=[Remind(timedelta(hours=8)), Reassign(timedelta(days=1), group="managers")],
                on_reject="end",
            ),
            Decision("manager_needed", needs_manager, choices=["manager_approval", "payout"]),
            Human(
                "manager_approval",
                label="Manager approval",
                task_title="Manager sign-off: {title}",
                candidate_groups=["managers"],
                sla=timedelta(days=2),
                priority="high",
                on_reject="end",
            ),
            Task("payout", payout, retry=Retry(max_attempts=3, backoff=0.5, max_delay=60), timeout=20),
        ],
    )
)


TEAM_APPROVAL = expense_approval.nodes["team_approval"]
MANAGER_APPROVAL = expense_approval.nodes["manager_approval"]
PAYOUT = expense_approval.nodes["payout"]

expense_approval_v2 = register(
    Workflow(
        name="expense_approval",
        version=2,
        title="Expense approval",
        owner="Finance",
        criticality="medium",
        description="The approvers' team signs off; finance classifies expenses marked 'other'; a manager signs "
        "off above EUR 500; then payroll pays out.",
        title_template="Expense: {description:.40} ({employee})",
        start_form=ExpenseForm,
        steps=[
            TEAM_APPROVAL,
            Decision("classification_needed", needs_classification, choices=["classify", "manager_needed"]),
            Human(
                "classify",
                label="Classify expense",
                kind_of_task=FORM,
                form=ClassificationForm,
                task_title="Classify {title}",
                candidate_groups=["managers"],
                sla=timedelta(days=1),
            ),
            Decision("manager_needed", needs_manager, choices=["manager_approval", "payout"]),
            MANAGER_APPROVAL,
            PAYOUT,
        ],
    )
)
