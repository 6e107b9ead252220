"""The Celery app. Tasks only carry ids; PostgreSQL holds the state (DESIGN.md)."""

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator.settings")

app = Celery("baton", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.on_after_configure.connect
def resolve_config_once(sender: Celery, **_kwargs: object) -> None:
    """Look every Celery setting up once, at configuration time, and keep the answers where lookups look first.

    Celery reads its settings through Django's lazy settings object, trying several spellings of each name with
    an exception per miss: 13 us per lookup of a setting left at its default, and a publish makes seven, about
    a quarter of its CPU here (bench/README.md). The settings do not change while a process runs.
    """
    from celery.app.defaults import SETTING_KEYS

    conf = sender.conf
    resolved = {}
    for key in SETTING_KEYS:
        try:
            # The first spelling Celery tries for a setting under the CELERY namespace.
            resolved[f"CELERY_{key.upper()}"] = conf[key]
        except KeyError:
            continue
    conf.update(resolved)


app.autodiscover_tasks(["orchestrator"])


@worker_ready.connect
def sweep_at_start(**_kwargs: object) -> None:
    """A fresh worker sweeps once at once: messages lost while no worker ran are found straight away."""
    from orchestrator.tasks import sweep

    sweep.delay()
