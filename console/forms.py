"""Forms for the operator's pages: every query parameter and every posted field goes through one of these, so
bad input (a NUL character, an over-long value, a date out of range, a wrong choice) becomes a message on the
page instead of a database error."""

from __future__ import annotations

from typing import Any

from django import forms

from orchestrator.forms import WhenField, named, reason_field
from orchestrator.inputs import IDEMPOTENCY_KEY_MAX, SEARCH_MAX, drop_repeated
from orchestrator.models import InstanceState

# Page numbers past this are typos: no list is that long.
PAGE_MAX = 1_000_000


class InstanceFilterForm(forms.Form):
    """The instance list's query string: ``q`` (title contains, or business key), ``state``, ``workflow``,
    ``page``. Invalid values are reported and left out of the query; the others still apply."""

    q = forms.CharField(required=False, max_length=SEARCH_MAX, label="Search")
    state = forms.ChoiceField(
        required=False, choices=[("", "All")] + [(s.value, s.label) for s in InstanceState], label="State"
    )
    workflow = forms.CharField(required=False, max_length=SEARCH_MAX, label="Workflow")
    page = forms.IntegerField(required=False, min_value=1, max_value=PAGE_MAX, label="Page")

    def __init__(self, data: Any = None, **kwargs: Any) -> None:
        labels = {name: str(field.label) for name, field in self.base_fields.items()}
        data, self.repeated = drop_repeated(data, labels) if data is not None else (data, [])
        super().__init__(data, **kwargs)

    def filters(self) -> dict[str, Any]:
        """The valid filters (cleaned), each invalid one as empty; call after ``is_valid()``."""
        cleaned = getattr(self, "cleaned_data", {})
        return {name: cleaned.get(name) or ("" if name != "page" else 1) for name in self.fields}

    def messages(self) -> list[str]:
        """One line per invalid parameter, naming it and saying what was done instead."""
        return self.repeated + [
            f"{named(str(self.fields[name].label), errors)} Showing results without it."
            for name, errors in self.errors.items()
        ]


class OperateForm(forms.Form):
    """An operator's retry, pause, resume or cancel: a reason, and for a pause an optional end."""

    reason = reason_field("Reason")
    until = WhenField(required=False, label="Resume at")


class StartOptionsForm(forms.Form):
    """What a start form carries besides the workflow's own fields: the key that makes a resubmission (a double
    click, a reload) return the instance it started instead of a second one. Posted as ``baton-<name>``:
    a workflow's form may have a field of the same name, and its own fields, Python names, never hold a hyphen."""

    prefix = "baton"

    idempotency_key = forms.CharField(
        required=False,
        max_length=IDEMPOTENCY_KEY_MAX,
        error_messages={"max_length": "This form's submission key is not valid. Check the values and submit again."},
    )
