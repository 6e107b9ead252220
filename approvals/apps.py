from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Human tasks"

    def ready(self) -> None:
        from approvals import signals, timezones

        signals.connect()
        timezones.connect()
