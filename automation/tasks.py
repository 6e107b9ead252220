"""Celery entry points of automation: they take ids; the services decide whether there is work."""

from celery import shared_task

from automation import webhooks


@shared_task(name="automation.tasks.delivery_send", acks_late=True, ignore_result=True)
def delivery_send(delivery_id: int) -> str:
    """One attempt of webhook delivery ``delivery_id`` (if it is due): signed POST, status recorded."""
    return webhooks.delivery_send(delivery_id)
