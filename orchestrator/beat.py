"""The beat scheduler: django-celery-beat's database scheduler, keeping a fractional interval exact.

django-celery-beat stores an interval as an integer count of one period and converts every interval into
seconds, so 0.5 s became 0 (beat then sent the sweep as fast as it ticked) and 1.5 s became 1. Here an interval
that is not a whole number of seconds is stored in microseconds, which the same table holds exactly.
"""

from __future__ import annotations

from typing import Any

from celery import schedules
from django_celery_beat import schedulers
from django_celery_beat.models import IntervalSchedule


class ModelEntry(schedulers.ModelEntry):
    """A schedule entry whose plain interval keeps its fraction of a second."""

    @classmethod
    def to_model_schedule(cls, schedule: Any) -> tuple[Any, str]:
        """The model row for ``schedule`` (a number of seconds, a timedelta or a celery schedule) and the name of
        the PeriodicTask field that points to it. Raises ``ValueError`` for a schedule type beat cannot store."""
        schedule = schedules.maybe_schedule(schedule)
        if type(schedule) is schedules.schedule:
            seconds = schedule.run_every.total_seconds()  # type: ignore[attr-defined]  # set in schedule.__init__
            if seconds != int(seconds):
                every, period = round(seconds * 1_000_000), IntervalSchedule.MICROSECONDS
            else:
                every, period = int(seconds), IntervalSchedule.SECONDS
            # The table has no unique constraint: an earlier beat may have left duplicates.
            model = IntervalSchedule.objects.filter(every=every, period=period).order_by("pk").first()
            return model or IntervalSchedule.objects.create(every=every, period=period), "interval"
        return super().to_model_schedule(schedule)


class DatabaseScheduler(schedulers.DatabaseScheduler):
    """django-celery-beat's scheduler with :class:`ModelEntry` (settings.CELERY_BEAT_SCHEDULER)."""

    Entry = ModelEntry
