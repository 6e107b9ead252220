"""Forms of the operator console's pages: the instance list's filters, the instance actions, bulk actions and
escalation answers. Every query parameter and posted field goes through one of these: bad input becomes a
message on the page with what was typed kept, never a database error."""

from __future__ import annotations

from typing import Any

from django import forms

from console.selectors import DATA_PATH, ID_MAX, InstanceFilter, decode_cursor
from orchestrator.forms import WhenField, named, reason_field
from orchestrator.inputs import SEARCH_MAX, drop_repeated
from orchestrator.models import InstanceState

STATE_CHOICES = [("", "All states")] + [(s.value, s.label) for s in InstanceState]


class InstanceListForm(forms.Form):
    """The instance list's query string. An invalid value is named in a message and left out; the rest applies."""

    q = forms.CharField(required=False, max_length=SEARCH_MAX, label="Title or business key")
    workflow = forms.CharField(required=False, max_length=SEARCH_MAX, label="Workflow")
    version = forms.IntegerField(required=False, min_value=1, max_value=100_000, label="Version")
    state = forms.ChoiceField(required=False, choices=STATE_CHOICES, label="State")
    started_from = WhenField(required=False, label="Started from")
    started_to = WhenField(required=False, label="Started before")
    error = forms.CharField(required=False, max_length=SEARCH_MAX, label="Error text")
    business_key = forms.CharField(required=False, max_length=100, label="Business key")
    data_path = forms.RegexField(
        required=False,
        regex=DATA_PATH,
        max_length=200,
        label="Data field",
        error_messages={"invalid": "Data field: give a key of the business data, like customer or address.city."},
    )
    data_value = forms.CharField(required=False, max_length=SEARCH_MAX, label="Data value")
    after = forms.CharField(required=False, max_length=200, label="Page")

    def __init__(self, data: Any = None, **kwargs: Any) -> None:
        labels = {name: str(field.label) for name, field in self.base_fields.items()}
        data, self.repeated = drop_repeated(data, labels) if data is not None else (data, [])
        super().__init__(data, **kwargs)

    def clean_after(self) -> tuple | None:
        value = self.cleaned_data.get("after") or ""
        if not value:
            return None
        cursor = decode_cursor(value)
        if cursor is None:
            raise forms.ValidationError("this page link is not valid; showing the first page.")
        return cursor

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        started_from, started_to = cleaned.get("started_from"), cleaned.get("started_to")
        if started_from and started_to and started_from >= started_to:
            # Typed the wrong way round: nothing could match, and an empty list would not say why.
            self.add_error("started_to", "must be after Started from.")
        typed_wrong = "data_path" in self.errors or "data_value" in self.errors
        if typed_wrong or bool(cleaned.get("data_path")) != bool(cleaned.get("data_value")):
            if not typed_wrong:
                # One left empty. A field typed wrong has its own message: "give both" would misread it.
                self.add_error("data_value", "give both the data field and its value, or neither.")
            cleaned.pop("data_path", None)
            cleaned.pop("data_value", None)
        return cleaned

    def to_filter(self) -> InstanceFilter:
        """The valid filters (call after ``is_valid()``); invalid ones are left out."""
        c = getattr(self, "cleaned_data", {})
        return InstanceFilter(
            workflow=c.get("workflow") or "",
            version=c.get("version") if c.get("workflow") else None,
            state=c.get("state") or "",
            started_from=c.get("started_from"),
            started_to=c.get("started_to"),
            error=(c.get("error") or "").strip(),
            business_key=(c.get("business_key") or "").strip(),
            data_path=c.get("data_path") or "",
            data_value=c.get("data_value") or "",
            q=(c.get("q") or "").strip(),
        )

    def messages(self) -> list[str]:
        """One line per invalid parameter, naming it and saying what was done instead."""
        return self.repeated + [
            named(str(self.fields[name].label) if name in self.fields else "Filter", errors)
            + ("" if name == "after" else " Showing results without it.")
            for name, errors in self.errors.items()
        ]


class ReasonForm(forms.Form):
    reason = reason_field("Reason")


class PauseForm(ReasonForm):
    until = WhenField(required=False, label="Resume at")


class SkipForm(ReasonForm):
    step = forms.IntegerField(min_value=1, max_value=2**63 - 1, label="Step")
    # No max_length: the typed JSON's bounds are operations.parse_json_object's (the engine's own limit on the value,
    # what the request carries for the text), with messages that say which.
    output = forms.CharField(required=False, label="Output (JSON object)", widget=forms.Textarea(attrs={"rows": 3}))


class DataEditForm(ReasonForm):
    # Not "data": a form's own attribute of that name holds what was posted.
    # No max_length: the editor accepts what the engine stores (operations.typed_json_max says why and how much).
    new_data = forms.CharField(label="Data (JSON object)", widget=forms.Textarea)
    seq = forms.IntegerField(min_value=0, max_value=2**31 - 1, label="Version read")


class BulkDryRunForm(InstanceListForm):
    action = forms.ChoiceField(
        choices=[("retry", "Retry"), ("cancel", "Cancel"), ("pause", "Pause"), ("resume", "Resume")], label="Action"
    )

    def is_valid(self) -> bool:
        # The list shows its rows without a filter given twice; a bulk action left without it would act on more
        # instances than were asked for: it is refused, and the list is shown without it, saying so.
        return super().is_valid() and not self.repeated


class BulkConfirmForm(ReasonForm):
    until = WhenField(required=False, label="Resume at")


ESCALATION_DECISIONS = [
    ("retry", "Retry the step"),
    ("skip", "Skip the step"),
    ("resolved", "Mark resolved (done by hand)"),
    ("fail", "Fail the instance"),
]


class EscalationForm(forms.Form):
    """An answer to an escalation from the Incidents page: resolve it (one of the decisions) or reassign it."""

    # Labelled as the Incidents page labels the boxes: a refusal names them so.
    op = forms.ChoiceField(choices=[("resolve", "Resolve"), ("reassign", "Reassign")], label="Answer")
    decision = forms.ChoiceField(required=False, choices=ESCALATION_DECISIONS, label="Resolve by")
    to_user = forms.IntegerField(required=False, min_value=1, max_value=2**63 - 1, label="Reassign to")
    comment = reason_field("Reason", required=False)
    # The holder's id as the page showed it (0: unclaimed): a reassignment of a task that changed hands since is
    # refused, as the task page's delegation. Anything else (tampered, missing) is not checked.
    # No max_length: a longer value is one the page never sends, not checked (None) rather than a form error about a
    # field nobody sees; the digits are bounded before int() reads them.
    holder = forms.CharField(required=False)

    def clean_holder(self) -> int | None:
        value = self.cleaned_data["holder"]
        if not (value.isascii() and value.isdecimal() and len(value) <= len(str(ID_MAX))):
            return None
        return int(value) if int(value) <= ID_MAX else None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("op") == "resolve" and not cleaned.get("decision"):
            self.add_error("decision", "Choose how to resolve it.")
        if cleaned.get("op") == "reassign" and not cleaned.get("to_user"):
            self.add_error("to_user", "Choose whom to give it to.")
        return cleaned
