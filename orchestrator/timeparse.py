"""Reading a date and time typed by a person (a datetime-local input)."""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from orchestrator.inputs import check_when


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
