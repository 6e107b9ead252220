"""Simulated external services for the demo workflows (inventory, payments, shipping, mail, payroll).

They behave like real providers in the one way that matters here: a call carries an idempotency key and a
repeated key returns the first result instead of doing the work again. Failure switches in the instance input
make retries and compensation visible.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F

from demo.models import DemoLedger
from orchestrator.dsl import StepContext


class ServiceUnavailable(Exception):
    """A transient failure of a simulated service (worth retrying)."""


def call(service: str, operation: str, key: str, amount: Any = None) -> str:
    """Apply a side effect once per key and return its reference; a repeat only counts the call."""
    try:
        with transaction.atomic():
            entry = DemoLedger.objects.create(
                service=service,
                operation=operation,
                idempotency_key=key,
                amount=Decimal(str(amount)) if amount is not None else None,
                reference=f"{service[:3].upper()}-{uuid.uuid4().hex[:10]}",
            )
            return entry.reference
    except IntegrityError:
        DemoLedger.objects.filter(service=service, operation=operation, idempotency_key=key).update(
            calls=F("calls") + 1
        )
        return DemoLedger.objects.get(service=service, operation=operation, idempotency_key=key).reference


def maybe_fail(ctx: StepContext, switch: str) -> None:
    """Fail the first N attempts when the input says ``<switch>: N`` (``true`` means every attempt)."""
    setting = ctx.data.get(switch)
    if setting is True or (isinstance(setting, int) and ctx.attempt <= setting):
        raise ServiceUnavailable(f"{ctx.step}: simulated outage (attempt {ctx.attempt}, switch {switch})")


def maybe_sleep(ctx: StepContext, switch: str) -> None:
    seconds = ctx.data.get(switch)
    if isinstance(seconds, int | float) and seconds > 0 and ctx.attempt == 1:
        time.sleep(float(seconds))
