import logging

from django.apps import AppConfig


class AutomationConfig(AppConfig):
    """Scheduled starts and signed webhooks, above the engine: connected through orchestrator/events.py."""

    name = "automation"
    label = "automation"
    verbose_name = "Baton automation"

    def ready(self) -> None:
        from django.core import checks
        from django.db.models.signals import post_migrate

        from automation import schedules, webhooks
        from automation.checks import declared_schedules
        from orchestrator.events import sweep_extension, unit_finishing

        unit_finishing.connect(webhooks.outbox_rows, dispatch_uid="automation-webhook-outbox")
        sweep_extension("schedules", schedules.schedules_sweep)
        sweep_extension("webhooks", webhooks.webhooks_sweep)
        post_migrate.connect(_sync_schedules, sender=self, dispatch_uid="automation-sync-schedules")
        checks.register(declared_schedules)


def _sync_schedules(sender: AppConfig, using: str = "default", **_kwargs: object) -> None:
    """Schedules declared beside workflows reach the table at every migrate (and at each process's first sweep)."""
    from django.db import DatabaseError

    from automation.schedules import sync_declared

    try:
        sync_declared()
    except DatabaseError:
        # post_migrate is sent for every app, also after migrating only another app (its tables may not exist
        # yet): the next full migrate, or the first sweep, syncs them.
        logging.getLogger(__name__).warning("declared schedules not synced yet", exc_info=True)
