"""The form fields every app shares: a date and time a person types, read in their time zone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django import forms
from django.utils import timezone

from orchestrator.forms import WhenField


class Filter(forms.Form):
    since = WhenField(required=False, label="From")


@pytest.mark.parametrize(
    ("typed", "says"),
    [
        # the spring change: 02:00 to 03:00 is skipped in Paris
        ("2030-03-31T02:30", "From: 2030-03-31 02:30 does not exist in Europe/Paris"),
        # the autumn change: 02:00 to 03:00 happens twice
        ("2030-10-27T02:30", "From: 2030-10-27 02:30 happens twice in Europe/Paris"),
    ],
)
def test_a_time_in_a_clock_change_is_named_with_what_to_type_instead(typed, says):
    """Django's own message ("2030-03-31 02:30:00 couldn't be interpreted in time zone Europe/Paris; it may be
    ambiguous or it may not exist.") named neither the field nor what to type; an operator could not tell which."""
    # given: a person whose pages are in Paris time
    with timezone.override("Europe/Paris"):
        form = Filter({"since": typed})

        # when
        valid = form.is_valid()

    # then
    assert not valid
    message = " ".join(form.errors["since"])
    assert message.startswith(says), message
    assert "+0" in message  # the offset that says which, or where the change is


def test_a_time_in_a_clock_change_given_with_its_offset_is_read_as_given():
    # given / when: the first of the two 02:30s of the autumn change, with its offset
    with timezone.override("Europe/Paris"):
        form = Filter({"since": "2030-10-27T02:30+02:00"})
        assert form.is_valid(), form.errors

    # then
    assert form.cleaned_data["since"] == datetime(2030, 10, 27, 0, 30, tzinfo=UTC)
