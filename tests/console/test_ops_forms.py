"""The console's forms: what a person reads when a filter they typed cannot be used."""

from __future__ import annotations

import pytest

from console.ops_forms import InstanceListForm


@pytest.mark.parametrize(
    ("typed", "says"),
    [
        ({"started_from": "2026-02-30T09:00"}, "Started from: enter a real date and time, like 2026-12-01 09:00."),
        ({"started_to": "1999-01-01T09:00"}, "Started before: enter a date between 2000-01-01"),
        (
            {"data_path": "a..b", "data_value": "Lyon"},
            "Data field: give a key of the business data, like customer or address.city.",
        ),
        ({"version": "0"}, "Version: Ensure this value is greater than or equal to 1."),
        # named as the page labels its box ("Search" is no label on the page)
        ({"q": "x" * 101}, "Title or business key: Ensure this value has at most 100 characters"),
    ],
)
def test_a_filter_that_cannot_be_used_is_named_once_and_only_for_what_is_wrong(typed, says):
    """Given a filter whose own message already names it (a date, the data field), when the list reads the query,
    then the message names the filter once ("Started from: Started from: ..." read twice), and a data field given
    with its value is not also told to "give both"."""
    # given
    form = InstanceListForm(typed)

    # when
    form.is_valid()
    problems = form.messages()

    # then
    assert len(problems) == 1, problems
    assert problems[0].startswith(says), problems
    label = says.split(":", 1)[0]
    assert problems[0].count(f"{label}:") == 1, problems
