"""The Celery app. Tasks only carry ids; PostgreSQL holds the state (DESIGN.md)."""

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")

app = Celery("baton", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["orchestrator"])


@worker_ready.connect
def sweep_at_start(**_kwargs: object) -> None:
    """A fresh worker sweeps once at once: messages lost while no worker ran are found straight away."""
    from orchestrator.tasks import sweep

    sweep.delay()
