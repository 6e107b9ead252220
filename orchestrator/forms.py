"""Forms for the engine's pages: every query parameter and every posted field goes through one of these, so
bad input (a NUL character, an over-long value, a date out of range, a wrong choice) becomes a message on the
page instead of a database error."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import forms

from orchestrator.inputs import IDEMPOTENCY_KEY_MAX, REASON_MAX, SEARCH_MAX, check_when, drop_repeated
from orchestrator.models import InstanceState

# Page numbers past this are typos: no list is that long.
PAGE_MAX = 1_000_000


class WhenField(forms.DateTimeField):
    """A date and time typed by a person (ISO 8601 or a datetime-local input), within the range
    ``orchestrator.inputs.check_when`` allows."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("widget", forms.DateTimeInput(attrs={"type": "datetime-local"}))
        what = kwargs.get("label") or "Date"
        kwargs["error_messages"] = {
            "invalid": f"{what}: enter a real date and time, like 2026-12-01 09:00.",
            **kwargs.get("error_messages", {}),
        }
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> datetime | None:
        if isinstance(value, str) and "\x00" in value:
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        try:
            return super().to_python(value)
        except OverflowError:  # an offset that pushes the value out of datetime's range
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid") from None

    def clean(self, value: Any) -> datetime | None:
        result = super().clean(value)
        return None if result is None else check_when(result, str(self.label or "Date"))


def reason_field(label: str, *, required: bool = True) -> forms.CharField:
    """The free-text reason an operator gives for an action (it goes into the audit trail)."""
    return forms.CharField(
        label=label,
        max_length=REASON_MAX,
        required=required,
        help_text=f"Up to {REASON_MAX:,} characters; it goes into the audit trail with your name.",
        error_messages={"required": "Give a reason: it goes into the audit trail."},
    )


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
            f"{self.fields[name].label}: {' '.join(map(str, errors))} Showing results without it."
            for name, errors in self.errors.items()
        ]


class OperateForm(forms.Form):
    """An operator's retry, pause, resume or cancel: a reason, and for a pause an optional end."""

    reason = reason_field("Reason")
    until = WhenField(required=False, label="Resume at")


class StartOptionsForm(forms.Form):
    """What a start form carries besides the workflow's own fields: the key that makes a resubmission (a double
    click, a reload) return the instance it started instead of a second one."""

    idempotency_key = forms.CharField(
        required=False,
        max_length=IDEMPOTENCY_KEY_MAX,
        error_messages={"max_length": "This form's submission key is not valid. Check the values and submit again."},
    )
