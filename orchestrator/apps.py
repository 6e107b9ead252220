from django.apps import AppConfig


class OrchestratorConfig(AppConfig):
    name = "orchestrator"
    verbose_name = "Baton engine"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from orchestrator import accounts, live_access, registry  # noqa: F401 (live_access connects its receivers)
        from orchestrator.dbtypes import tolerate_out_of_range_timestamps

        registry.load_modules()
        accounts.connect()
        connection_created.connect(tolerate_out_of_range_timestamps, dispatch_uid="baton-tolerant-timestamps")
