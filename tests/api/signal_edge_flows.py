"""Workflows for the signal edge tests that run on the real worker (``tests/api/test_signals_edges.py``): the test
worker loads this module (``WORKER_EXTRA_WORKFLOW_MODULES`` in tests/conftest.py), and the tests register both in
their own process with the ``edge_flows`` fixture, which unregisters both after."""

from __future__ import annotations

from datetime import timedelta

from django.core.exceptions import ValidationError

from orchestrator.dsl import COMPENSATE, CONTINUE, ESCALATE, FAIL, Signal, StepContext, Task, Workflow
from orchestrator.registry import register


def reserve(ctx: StepContext) -> dict:
    return {"reserved": True}


def ship(ctx: StepContext) -> dict:
    return {"shipped": True}


def release(ctx: StepContext) -> dict:
    return {"released": True}


def amount_as_float(payload: dict) -> dict:
    """A schema as an author writes one: ``float("NaN")`` is a float too, which the instance data cannot hold."""
    try:
        return {"amount": float(payload["amount"])}
    except (KeyError, TypeError, ValueError):
        raise ValidationError({"amount": ["A number."]}) from None


# Two waits for one event: the first converts the amount, the second takes any payload. A signal kept before the
# first is accepted at delivery (the second would take it) and checked by the first when the worker gets there.
API_AMOUNTS = register(
    Workflow(
        name="api_amounts",
        version=1,
        title_template="Amounts {order}",
        steps=[
            Task("reserve", reserve),
            Signal("wait_amount", event="amount.sent", schema=amount_as_float),
            Signal("wait_any_amount", event="amount.sent"),
            Task("ship", ship),
        ],
    )
)


# A brief wait that goes on when nobody signals within two seconds: for a worker (and its beat) killed meanwhile.
API_BRIEF = register(
    Workflow(
        name="api_brief",
        version=1,
        title_template="Brief {order}",
        steps=[
            Task("reserve", reserve),
            Signal("wait_brief", event="brief.sent", timeout=timedelta(seconds=2), on_timeout=CONTINUE),
            Task("ship", ship),
        ],
    )
)


def brief_flow(on_timeout: str) -> Workflow:
    """As ``api_brief``, with another ``on_timeout``, and a reservation the saga can undo: ``api_brief_<action>``."""
    return Workflow(
        name=f"api_brief_{on_timeout}",
        version=1,
        title_template="Brief {order}",
        steps=[
            Task("reserve", reserve, compensate=release),
            Signal("wait_brief", event="brief.sent", timeout=timedelta(seconds=2), on_timeout=on_timeout),  # type: ignore[arg-type]
            Task("ship", ship),
        ],
    )


API_BRIEF_ACTIONS = {action: register(brief_flow(action)) for action in (FAIL, COMPENSATE, ESCALATE)}

EDGE_FLOWS = (API_AMOUNTS, API_BRIEF, *API_BRIEF_ACTIONS.values())
