"""The demo's one table: the ledger of its simulated external services (demo/workflows/simulated.py).

A deployment that leaves the ``demo`` app out of ``INSTALLED_APPS`` has no such table.
"""

from __future__ import annotations

from django.db import models


class DemoLedger(models.Model):
    """The simulated external services of the demo workflows record their side effects here.

    The unique idempotency key is what a real payment provider or warehouse API does for us: a repeated call
    with the same key returns the first result instead of charging twice.
    """

    service = models.CharField(max_length=40)
    operation = models.CharField(max_length=40)
    idempotency_key = models.CharField(max_length=200)
    amount = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    reference = models.CharField(max_length=64)
    calls = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["service", "operation", "idempotency_key"], name="demo_ledger_key_unique")
        ]

    def __str__(self) -> str:
        return f"{self.service}.{self.operation} {self.reference}"
