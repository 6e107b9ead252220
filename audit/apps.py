from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The admins' audit pages: the timeline, exports, chain status and its verification job, the read-only admin.

    Above the engine and the human tasks: it reads them (and calls orchestrator/audit.py to verify); neither
    imports it. The writers of the trail stay in orchestrator/audit.py, which the engine needs.
    """

    name = "audit"
    label = "audit"
    verbose_name = "Audit trail"

    def ready(self) -> None:
        from audit import tasks  # noqa: F401 (registers the verification task with Celery in every process)
