"""Celery entry points of the audit app: they take ids and call services."""

from celery import shared_task

from audit import services


@shared_task(name="audit.tasks.verification_run", ignore_result=True)
def verification_run(verification_id: int) -> str:
    """Run the queued verification ``verification_id``; returns its final state (or "skipped")."""
    verification = services.verification_execute(verification_id)
    return verification.state if verification is not None else "skipped"


@shared_task(name="audit.tasks.verification_scheduled", ignore_result=True, expires=3600)
def verification_scheduled() -> str:
    """The daily verification (settings.BATON_AUDIT_VERIFY_AT): queue one unless one is already under way."""
    try:
        verification = services.verification_request(None, scheduled=True)
    except services.VerificationBusy as busy:
        return f"already running: {busy.running.pk}"
    return f"queued: {verification.pk}"
