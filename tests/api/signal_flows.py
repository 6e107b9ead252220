"""A workflow that waits for an outside event, for the API's signal tests; the test worker loads this module
(``WORKER_EXTRA_WORKFLOW_MODULES`` in tests/conftest.py), and the tests register it in their own process."""

from __future__ import annotations

from django import forms

from orchestrator.dsl import Signal, StepContext, Task, Workflow
from orchestrator.registry import register


class PaymentForm(forms.Form):
    """What the payment service sends with ``payment.confirmed``."""

    paid_amount = forms.DecimalField(max_digits=10, decimal_places=2, min_value=0)
    reference = forms.CharField(max_length=40)


def reserve(ctx: StepContext) -> dict:
    return {"reserved": True}


def ship(ctx: StepContext) -> dict:
    return {"shipped_for": ctx.data.get("reference", "")}


API_PAYMENT = register(
    Workflow(
        name="api_payment",
        version=1,
        title_template="Order {order}",
        steps=[
            Task("reserve", reserve),
            Signal("wait_payment", event="payment.confirmed", form=PaymentForm),
            Task("ship", ship),
        ],
    )
)
