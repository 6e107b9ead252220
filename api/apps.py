from django.apps import AppConfig


class ApiConfig(AppConfig):
    """The JSON API over the engine's and the inbox's services (DRF + drf-spectacular), and its tokens."""

    name = "api"
    label = "api"
    verbose_name = "API"

    def ready(self) -> None:
        # drf-spectacular finds the Bearer scheme's documentation by this import.
        from api import schema  # noqa: F401
