"""The approvals pages' forms: ids typed or tampered with become a refusal, never a server error."""

from __future__ import annotations

import pytest

from approvals.forms import BulkClaimForm, SavedViewForm

# Each passes str.isdigit() and int() refuses it (superscripts, a circled digit), or is a digit of another script.
NOT_DECIMAL = ["²", "¹²", "①", "3²"]


@pytest.mark.parametrize("typed", NOT_DECIMAL)
def test_a_selection_holding_a_digit_that_is_no_number_is_refused(typed):
    # given: a bulk claim whose selection was tampered with
    form = BulkClaimForm({"task": [typed]})

    # when / then: refused with the form's message (int() raised ValueError: a 500)
    assert not form.is_valid()
    assert "not a task" in str(form.errors["task"])


@pytest.mark.parametrize("typed", NOT_DECIMAL)
def test_a_saved_view_shared_with_a_digit_that_is_no_number_is_private(typed):
    # given
    form = SavedViewForm({"name": "Mine", "shared_with": typed})

    # when / then: as any other tampered group, the view is private (int() raised ValueError: a 500)
    assert form.is_valid()
    assert form.cleaned_data["shared_with"] is None
