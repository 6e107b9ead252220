"""Recurrences of scheduled starts: a cron expression (croniter) or a fixed interval, in a stated time zone.

Pure functions, no database: the DSL checks a declared ``Schedule`` with them, the ``automation`` app computes
fire times with them. Cron fields are read in the schedule's zone (``0 9 * * 1-5`` is 09:00 in Paris, winter and
summer); the times returned are aware and compare as instants.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterError, croniter  # type: ignore[import-untyped]  # ships no type information

from orchestrator.bidi import isolate

MIN_INTERVAL = timedelta(minutes=1)
# croniter's random field value: "R" or "R(0-30)", alone in a field part (not the R of MAR, APR or FRI).
_RANDOM = re.compile(r"(?<![A-Za-z])R(?![A-Za-z])", re.IGNORECASE)
MAX_INTERVAL = timedelta(days=366)
CRON_MAX = 100


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ValueError naming it when there is none."""
    if not isinstance(name, str) or not name or "\x00" in name or len(name) > 64 or name not in _zones():
        raise ValueError(f"unknown time zone {isolate(repr(name))}: give an IANA name such as Europe/Paris or UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {isolate(repr(name))}: give an IANA name such as Europe/Paris or UTC"
        ) from None


_ZONES: set[str] = set()
# Zone files that name no place: "localtime" is the server's own zone (a schedule's hour would move with the server
# it runs on) and "Factory" a placeholder whose abbreviation is "-00".
NOT_PLACES = frozenset({"localtime", "Factory", "posixrules"})


def _zones() -> set[str]:
    if not _ZONES:
        _ZONES.update((available_timezones() - NOT_PLACES) | {"UTC"})
    return _ZONES


def check_recurrence(cron: str, every: timedelta | None, timezone: str) -> str:
    """ "" when the recurrence is usable, else what is wrong with it (for a form or a DefinitionError)."""
    if bool(cron) == (every is not None):
        return "give exactly one of a cron expression and an interval"
    try:
        zone(timezone)
    except ValueError as exc:
        return str(exc)
    if cron:
        if not isinstance(cron, str) or len(cron) > CRON_MAX or "\x00" in cron:
            return f"a cron expression has at most {CRON_MAX} characters"
        fields = cron.split()
        if not (len(fields) == 5 or (len(fields) == 1 and cron.startswith("@") and cron != "@reboot")):
            return (
                "a cron expression has five fields: minute hour day-of-month month day-of-week (or @daily, @hourly...)"
            )
        if not croniter.is_valid(cron):
            return f"{isolate(repr(cron))} is not a valid cron expression"
        if _RANDOM.search(cron):
            # croniter draws R anew each time a next time is computed, and a schedule computes one after every
            # fire: "R 9 * * *" fired again whenever the new draw fell later in the same hour.
            return f"{isolate(repr(cron))} has R (a random value drawn anew each time): give the minute and hour"
        # croniter parses expressions no date matches (30 February, 31 April) and fails only when asked for a
        # time: saved, such a schedule failed its page and, declared in code, the sync before every sweep's fires.
        try:
            croniter(cron, datetime.now(UTC)).get_next(datetime)
        except CroniterError:
            return f"{isolate(repr(cron))} never fires: no date matches it"
        return ""
    assert every is not None
    if not MIN_INTERVAL <= every <= MAX_INTERVAL:
        return "an interval is between one minute and 366 days"
    return ""


def fire_times(
    cron: str, every: timedelta | None, timezone: str, after: datetime, anchor: datetime
) -> Iterator[datetime]:
    """The fire times strictly after ``after``, in order, as aware UTC datetimes (an endless iterator).

    An interval counts from ``anchor`` (the schedule's creation), so its times do not drift with the sweep.
    """
    if every is not None:
        step = every.total_seconds()
        elapsed = (after - anchor).total_seconds()
        n = max(0, int(elapsed // step) + 1)
        while True:
            yield (anchor + timedelta(seconds=n * step)).astimezone(UTC)
            n += 1
    tz = zone(timezone)
    once = _wall_clock(cron)
    times = croniter(cron, after.astimezone(tz))
    while True:
        when = times.get_next(datetime).astimezone(UTC)
        if once and _repeated(when.astimezone(tz)):
            continue
        yield when


# What the @-forms stand for, for telling a wall-clock time from a wildcard one.
_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def _wall_clock(cron: str) -> bool:
    """True for a cron expression that names times of day (no ``*`` in its minute or hour field): it runs once at a
    time the clocks going back make happen twice, as cron does. One with a wildcard there runs by the clock, the
    repeated hour included (``*/15 * * * *`` is every quarter of an hour of elapsed time)."""
    fields = _ALIASES.get(cron, cron).split()
    return len(fields) >= 2 and "*" not in fields[0] and "*" not in fields[1]


def _repeated(local: datetime) -> bool:
    """True for the second occurrence of a wall-clock time the clocks going back repeat (01:30 GMT after 01:30 BST)."""
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def next_fire(cron: str, every: timedelta | None, timezone: str, after: datetime, anchor: datetime) -> datetime:
    """The first fire time strictly after ``after``."""
    return next(fire_times(cron, every, timezone, after, anchor))


# Missed cron times are counted one by one up to this many (an interval's are computed); beyond it the count is a
# lower bound (each step costs croniter about 40 us, and a month of minutes would hold a schedule's lock seconds).
COUNT_MAX = 10_000


def latest_fire(
    cron: str, every: timedelta | None, timezone: str, since: datetime, until: datetime, anchor: datetime
) -> tuple[datetime | None, int]:
    """The latest fire time in (since, until] and how many there were: exact for an interval, for a cron expression
    counted up to ``COUNT_MAX`` (a count of ``COUNT_MAX`` means at least that many). The latest is exact either way:
    stamped with the 10,000th, a month of missed minutes was caught up as if Baton came back three weeks ago."""
    first = next_fire(cron, every, timezone, since, anchor)
    if first > until:
        return None, 0
    if every is not None:
        step = every.total_seconds()
        n_first = round((first - anchor).total_seconds() / step)
        n_last = int((until - anchor).total_seconds() // step)
        return (anchor + timedelta(seconds=n_last * step)).astimezone(UTC), n_last - n_first + 1
    latest, count = first, 0
    for when in fire_times(cron, every, timezone, since, anchor):
        if when > until:
            return latest, count
        if count >= COUNT_MAX:
            break
        latest, count = when, count + 1
    return _latest_until(cron, timezone, until), count


def _latest_until(cron: str, timezone: str, until: datetime) -> datetime:
    """The latest fire time at or before ``until`` (some exists: the caller found one after ``since``)."""
    tz = zone(timezone)
    once = _wall_clock(cron)
    times = croniter(cron, (until + timedelta(seconds=1)).astimezone(tz))
    while True:
        when = times.get_prev(datetime).astimezone(UTC)
        if when <= until and not (once and _repeated(when.astimezone(tz))):
            return when
