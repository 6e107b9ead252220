from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The operator's pages (instances, workflows, start forms): above both the engine and the human tasks, which
    they show side by side."""

    name = "console"
    verbose_name = "Baton console"

    def ready(self) -> None:
        from console import alerts
        from orchestrator.events import unit_finishing

        unit_finishing.connect(alerts.alert_rows, dispatch_uid="console-alert-outbox")
