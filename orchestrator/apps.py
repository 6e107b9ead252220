from django.apps import AppConfig


class OrchestratorConfig(AppConfig):
    name = "orchestrator"
    verbose_name = "Baton engine"

    def ready(self) -> None:
        from orchestrator import accounts, registry

        registry.load_modules()
        accounts.connect()
