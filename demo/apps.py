from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The demo: its ledger table, its two workflows, its users and the commands that load and serve it.

    Installed in demo mode (and by the tests); production leaves it out unless ``BATON_DEMO_APP=1``
    (README, "Production").
    """

    name = "demo"
    verbose_name = "Baton demo"

    def ready(self) -> None:
        # Importing a workflow module registers its workflows: with the app installed the demo workflows are in
        # the catalog of every process (web, worker, beat), without it they are not. The benchmark flows
        # (demo.workflows.bench) stay out of the catalog; the tests and `make bench` name them in
        # BATON_WORKFLOW_MODULES.
        from demo.workflows import expense_approval, order_fulfilment  # noqa: F401
