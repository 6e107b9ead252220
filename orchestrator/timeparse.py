"""Reading a date and time typed by a person (a datetime-local input), and saying why one names no real moment."""

from __future__ import annotations

import calendar
import re
from datetime import datetime

from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from orchestrator.inputs import check_when

# The start of an ISO 8601 date and time: its date and, when given, its hours, minutes, seconds and UTC offset.
# ASCII digits only (``re.ASCII``): other digits are no date here (``inputs.foreign_digits``).
ISO_START = re.compile(
    r"\s*(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,]\d+)?)?(?:Z|([+-])(\d{2})(?::?(\d{2}))?)?)?",
    re.ASCII,
)


def parse_when(text: str, what: str) -> datetime | None:
    """An aware datetime from ``text`` (None when empty); a clear ValidationError when it is not a real time or
    lies outside the range people may enter (``orchestrator.inputs.check_when``)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = parse_datetime(text)
    except ValueError:  # well-formed but impossible, such as February 30th
        value = None
    if value is None:
        raise ValidationError(f"{what}: enter a real date and time, like 2026-12-01 09:00.")
    return check_when(timezone.make_aware(value) if timezone.is_naive(value) else value, what)


def no_such_time(text: str) -> str | None:
    """Why ``text``, written as an ISO 8601 date (and time), names no real day or time of day: ``"2026-02-30 does
    not exist: February 2026 has 28 days."``, ``"25:00 is not a time of day: ..."``. None when its date and time
    exist, or when it is not of that shape (then it is no date at all, or its year is out of range: the caller's
    own message says so). An offset past 23:59 (``+25:00``) is told so too: it was answered with the range of
    dates, which the date was in. Raises nothing."""
    match = ISO_START.match(text)
    if match is None:
        return None
    year, month, day = (int(part) for part in match.group(1, 2, 3))
    date = "-".join(match.group(1, 2, 3))
    if not 1 <= month <= 12:
        return f"{date} does not exist: there is no month {match.group(2)} (months go 01-12)."
    if year >= 1:
        days = calendar.monthrange(year, month)[1]
        if not 1 <= day <= days:
            return f"{date} does not exist: {calendar.month_name[month]} {year} has {days} days."
    hour, minute, second = match.group(4, 5, 6)
    if hour is not None and (int(hour) > 23 or int(minute) > 59 or int(second or 0) > 59):
        clock = ":".join(part for part in (hour, minute, second) if part is not None)
        return f"{clock} is not a time of day: hours go 00-23, minutes and seconds 00-59."
    sign, hours, minutes = match.group(7, 8, 9)
    if sign is not None and (int(hours) > 23 or int(minutes or 0) > 59):
        offset = text[match.start(7) : match.end()]  # as written
        return f"{offset} is not a UTC offset: offsets go from -23:59 to +23:59."
    return None
