import logging
from typing import Any

from celery.signals import worker_ready
from django.apps import AppConfig
from django.db import DatabaseError
from django.db.models.signals import post_migrate


def _record_workflow_versions(**kwargs: Any) -> None:
    from orchestrator import registry
    from orchestrator.audit import workflow_versions_record

    workflows = [w for name in {w.name for w in registry.latest_all()} for w in registry.all_versions(name)]
    try:
        workflow_versions_record(workflows)
    except DatabaseError:
        # A database migrated back to before the trail's current columns (or not reachable at a worker's start):
        # the record waits for the next migrate or start rather than stopping this one.
        logging.getLogger(__name__).warning("workflow versions not recorded in the audit trail", exc_info=True)


class OrchestratorConfig(AppConfig):
    name = "orchestrator"
    verbose_name = "Baton engine"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from orchestrator import accounts, live_access, registry  # noqa: F401 (live_access connects its receivers)
        from orchestrator.dbtypes import tolerate_out_of_range_timestamps

        registry.load_modules()
        from django.core import checks

        from orchestrator.checks import workflow_forms

        checks.register(workflow_forms)
        # The engine's lower services never import signals (no import cycle): signals hooks itself in here.
        from orchestrator.services import signals

        signals.register()
        accounts.connect()
        # Workflow versions first seen by this deployment go into the audit trail after migrate and at a worker's
        # start (orchestrator/audit.py, workflow_versions_record).
        post_migrate.connect(_record_workflow_versions, sender=self, dispatch_uid="baton-workflow-versions-migrate")
        worker_ready.connect(_record_workflow_versions, dispatch_uid="baton-workflow-versions-worker", weak=False)
        connection_created.connect(tolerate_out_of_range_timestamps, dispatch_uid="baton-tolerant-timestamps")
