"""Celery entry points of the console: work a bulk job, take up bulk jobs nobody is working, tell operators what
went wrong. They take ids and call services; the rows in PostgreSQL say what is left to do."""

from __future__ import annotations

import time

from celery import shared_task

from console import alerts, services

# A job is worked in slices of about this many seconds: a long job does not hold one worker process for an hour,
# and each slice ends by sending the next one.
SLICE_SECONDS = 10.0


@shared_task(name="console.tasks.bulk_job_work", ignore_result=True, acks_late=True)
def bulk_job_work(job_id: int) -> int:
    """Work job ``job_id`` for up to ``SLICE_SECONDS``, then send the rest as a new message. Returns items worked."""
    started = time.monotonic()
    worked = 0
    while True:
        done = services.bulk_work(job_id)
        worked += done
        if done == 0:
            return worked
        if time.monotonic() - started > SLICE_SECONDS:
            services.send_work(job_id)
            return worked


@shared_task(name="console.tasks.bulk_jobs_resume", ignore_result=True, expires=60)
def bulk_jobs_resume() -> int:
    """Send the work again for open jobs no worker touched for ``services.STALE_AFTER``; returns how many."""
    stale = services.bulk_jobs_stale()
    for job_id in stale:
        services.send_work(job_id)
    return len(stale)


@shared_task(name="console.tasks.operator_alerts", ignore_result=True, expires=60)
def operator_alerts() -> dict:
    """Tell operators, throttled, about new failures, compensations that need a person and a sweep that fell
    behind (``console.alerts.alert_pass``); returns the number of events told per kind."""
    return alerts.alert_pass()
