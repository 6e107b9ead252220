"""A workflow declaring schedules that cannot run, registered in the live server's own process (it is spawned: the
test process's registry is not its registry). No model is imported at the top: the server process unpickles this
module's function before Django is set up."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from tests.browser.live import SpawnDaphneProcess

LONG_NAME = "eu-west-1_nightly_reconciliation_of_supplier_invoices_against_purchase_orders_and_goods_received_"
LONG_WORKFLOW = "supplier_invoice_reconciliation_with_three_way_match_and_tolerance_checks"
LONG_WORD = "https://erp.example.com/api/v2/suppliers/" + "0123456789abcdef" * 12


def declaring_workflow() -> Any:
    """A newer version of expense_approval declaring a schedule an admin's has the name of, and one whose input its
    start form refuses (a 100-character name, an address with no space in it)."""
    from orchestrator import registry
    from orchestrator.dsl import Schedule as Declared
    from orchestrator.dsl import Workflow

    expense = registry.get("expense_approval")
    return Workflow(
        name="expense_approval",
        version=expense.version + 1,
        steps=expense.steps,
        start_form=expense.start_form,
        schedules=[
            Declared("Weekday expenses", cron="0 8 * * 1-5", input={"employee": "Sam"}),
            Declared(LONG_NAME[:93] + " (code)", cron="0 2 * * *", input={"employee": LONG_WORD}),
        ],
    )


def app_declaring(get_application: Callable[[], Any]) -> Any:
    """The live server's application (built in its own process, apps loaded), with the declaring workflow
    registered there, where the pages read the registry."""
    from orchestrator import registry

    application = get_application()
    registry.register(declaring_workflow())
    return application


class DeclaringDaphne(SpawnDaphneProcess):
    """The live server of a test class, with :func:`declaring_workflow` registered in it."""

    def __init__(self, host: str, get_application: Callable[[], Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(host, partial(app_declaring, get_application), *args, **kwargs)
