from django.apps import AppConfig


class OrchestratorConfig(AppConfig):
    name = "orchestrator"
    verbose_name = "Baton engine"

    def ready(self) -> None:
        from orchestrator import accounts, live_access, registry  # noqa: F401 (live_access connects its receivers)

        registry.load_modules()
        accounts.connect()
