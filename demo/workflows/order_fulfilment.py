"""Order fulfilment: inventory, payment, a manager's approval above 1000, shipping, a notification.

Compensation releases the inventory and refunds the payment, latest first. Failure switches in the input:
``fail_payment`` (fail the first N attempts), ``fail_shipping`` (true: fail for good), ``fail_refund`` (true:
the refund fails for good, which opens an escalation), ``fail_notify`` (fail the first N mails),
``slow_reserve`` (seconds the reservation takes after it has reserved, to let a test kill the worker mid-step).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from django import forms

from demo.workflows.simulated import call, maybe_fail, maybe_sleep
from orchestrator.dsl import (
    COMPENSATE,
    Decision,
    Escalate,
    Human,
    Remind,
    Retry,
    StepContext,
    Task,
    Workflow,
)
from orchestrator.registry import register

APPROVAL_LIMIT = Decimal("1000")


class OrderForm(forms.Form):
    order_id = forms.CharField(label="Order number", max_length=40)
    customer = forms.CharField(label="Customer", max_length=100)
    email = forms.EmailField(label="Customer e-mail")
    amount = forms.DecimalField(label="Amount (EUR)", min_value=Decimal("0.01"), max_digits=12, decimal_places=2)
    items = forms.IntegerField(label="Items", min_value=1, initial=1)


def reserve_inventory(ctx: StepContext) -> dict:
    reference = call("inventory", "reserve", ctx.idempotency_key, ctx.data.get("items", 1))
    maybe_sleep(ctx, "slow_reserve")
    maybe_fail(ctx, "fail_reserve")
    return {"reservation_id": reference}


def release_inventory(ctx: StepContext) -> dict:
    call("inventory", "release", ctx.idempotency_key)
    return {"reservation_released": ctx.data.get("reservation_id")}


def charge_payment(ctx: StepContext) -> dict:
    maybe_fail(ctx, "fail_payment")
    return {"payment_id": call("payments", "charge", ctx.idempotency_key, ctx.data["amount"])}


def refund_payment(ctx: StepContext) -> dict:
    maybe_fail(ctx, "fail_refund")
    return {"refund_id": call("payments", "refund", ctx.idempotency_key, ctx.data["amount"])}


def ship(ctx: StepContext) -> dict:
    maybe_fail(ctx, "fail_shipping")
    return {"shipment_id": call("shipping", "ship", ctx.idempotency_key)}


def notify_customer(ctx: StepContext) -> dict:
    maybe_fail(ctx, "fail_notify")
    call("mail", "send", ctx.idempotency_key)
    return {"notified": ctx.data.get("email", "")}


def needs_approval(data: dict) -> str:
    return "manager_approval" if Decimal(str(data["amount"])) > APPROVAL_LIMIT else "ship"


FAST_RETRY = Retry(max_attempts=4, backoff=0.5, multiplier=2.0, max_delay=30)

order_fulfilment = register(
    Workflow(
        name="order_fulfilment",
        version=1,
        title="Order fulfilment",
        owner="Fulfilment team",
        criticality="high",
        description="Reserve stock, take payment, get a manager's approval above EUR 1000, ship and tell the "
        "customer. A failure after payment refunds it and releases the stock.",
        title_template="Order {order_id} for {customer}",
        start_form=OrderForm,
        steps=[
            Task(
                "reserve_inventory",
                reserve_inventory,
                compensate=release_inventory,
                retry=FAST_RETRY,
                timeout=10,
            ),
            Task(
                "charge_payment",
                charge_payment,
                compensate=refund_payment,
                retry=FAST_RETRY,
                timeout=10,
                on_failure=COMPENSATE,
            ),
            Decision("approval_needed", needs_approval, choices=["manager_approval", "ship"]),
            Human(
                "manager_approval",
                label="Manager approval",
                task_title="Approve {title}",
                candidate_groups=["managers"],
                sla=timedelta(hours=4),
                priority="high",
                escalation=[Remind(timedelta(hours=2)), Escalate(timedelta(hours=4), group="operators")],
                on_reject=COMPENSATE,
            ),
            Task(
                "ship",
                ship,
                retry=Retry(max_attempts=3, backoff=0.5, max_delay=10),
                timeout=10,
                on_failure=COMPENSATE,
            ),
            # Mail outages last: many attempts, spaced out up to ten minutes apart.
            Task(
                "notify_customer",
                notify_customer,
                retry=Retry(max_attempts=8, backoff=0.5, multiplier=3.0, max_delay=600),
                timeout=10,
            ),
        ],
    )
)
