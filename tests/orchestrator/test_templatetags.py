"""Presentation helpers shared by the templates."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from orchestrator.templatetags.baton import count_label, duration, show


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "yes"),
        (None, "—"),
        ("", "—"),
        ({"decision": "approve", "by": "manager", "comment": "OK"}, "approve by manager: OK"),
        ({"decision": "reject", "by": "staff", "comment": ""}, "reject by staff"),
        ({"a": 1}, '{"a": 1}'),
        (12.5, "12.5"),
    ],
)
def test_show_renders_values_for_people(value, expected):
    """Data table cells read as words, and a human step's record as who decided what."""
    # given / when / then
    assert show(value) == expected


def test_count_label_caps_at_the_servers_cap():
    """At the cap a badge says 99+, below it the number."""
    # given / when / then
    assert (count_label(100, 100), count_label(7, 100), count_label(None, 100)) == ("99+", "7", "0")


def test_duration_picks_a_readable_unit():
    """Milliseconds, seconds, minutes, hours and days, each where it reads best."""
    # given
    start = timezone.now()
    # when / then
    assert duration(start, start + timedelta(milliseconds=250)) == "250 ms"
    assert duration(start, start + timedelta(seconds=12)) == "12.0 s"
    assert duration(start, start + timedelta(minutes=30)) == "30 min"
    assert duration(start, start + timedelta(hours=5)) == "5.0 h"
    assert duration(start, start + timedelta(days=3)) == "3 d"
