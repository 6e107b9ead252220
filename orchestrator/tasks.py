"""Celery entry points: they take ids and call services; the services decide whether there is work."""

from celery import shared_task
from django.db import InterfaceError, OperationalError

from orchestrator.audit_seals import seal
from orchestrator.services.steps import step_execute
from orchestrator.services.sweep import sweep as sweep_pass


# A database that cannot be reached (restarting, failing over) is worth waiting for: the message goes back to the
# broker with the same options (queue and time limits) and a growing delay, instead of being consumed and lost
# until the sweep re-sends it. The session it broke is closed after the task (baton_site/celery.py).
@shared_task(
    name="orchestrator.tasks.step_run",
    acks_late=True,
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=1,
    retry_backoff_max=10,
    retry_jitter=False,
    max_retries=12,
)
def step_run(step_id: int) -> str:
    """Look at step ``step_id``: run it if PostgreSQL says it is due."""
    return step_execute(step_id)


@shared_task(name="orchestrator.tasks.sweep", ignore_result=True, expires=30)
def sweep() -> dict:
    """The one periodic pass over due steps, lost leases, paused instances and task deadlines; its counts, with
    ``errors``: the due items whose handling raised (logged, audited and skipped)."""
    report = sweep_pass()
    return {
        "dispatched": report.dispatched,
        "leases_expired": report.leases_expired,
        "resumed": report.resumed,
        **report.tasks,
        **report.unfit,
        "errors": report.errors,
    }


@shared_task(name="orchestrator.tasks.audit_seal", ignore_result=True, expires=120)
def audit_seal(full: bool = False) -> int:
    """Seal the audit chain heads outside the database (``orchestrator/audit_seals.py``); returns heads sealed."""
    return seal(full=full)
