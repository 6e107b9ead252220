"""Forms for the inbox and task actions: each posted field is checked here, so bad input (a NUL character, an
over-long comment, a delegate that is not a user id, a date out of range) comes back as a message on the page
with what was typed, never as a database error. The services check the same limits for their other callers."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model

from approvals.models import SavedView
from approvals.services import base as task_rules
from orchestrator.forms import WhenField
from orchestrator.inputs import COMMENT_MAX, NOTE_MAX

# Ids of rows a person can tick on one page; more is not a person clicking.
BULK_MAX = 500
# PostgreSQL's bigint: a larger id cannot name a row (and would fail as a query parameter).
ID_MAX = 2**63 - 1
DECISIONS = [
    (task_rules.APPROVE, "Approve"),
    (task_rules.REJECT, "Reject"),
    (task_rules.SUBMIT, "Submit"),
    (task_rules.RETRY, "Retry the step"),
    (task_rules.SKIP, "Skip the step"),
    (task_rules.RESOLVED, "Mark resolved"),
    (task_rules.FAIL, "Fail the instance"),
]


class DecideForm(forms.Form):
    """The decision buttons' value and the comment (a form task's own fields are its workflow's form)."""

    decision = forms.ChoiceField(choices=DECISIONS, error_messages={"invalid_choice": "Choose one of the buttons."})
    comment = forms.CharField(
        required=False, max_length=COMMENT_MAX, widget=forms.Textarea, help_text=f"Up to {COMMENT_MAX:,} characters."
    )
    # The fingerprint of the data the page showed (services.base.data_digest); the service refuses a decision on
    # data that changed since.
    seen = forms.CharField(required=False, max_length=64)


class DelegateForm(forms.Form):
    """Who to hand the task to (a user id; eligibility is the service's rule) and a note for them."""

    to_user = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_active=True),
        error_messages={
            "required": "Choose who to delegate to.",
            "invalid_choice": "Choose who to delegate to from the list.",
        },
    )
    note = forms.CharField(required=False, max_length=NOTE_MAX, help_text=f"Up to {NOTE_MAX:,} characters.")
    # The holder's id as the page showed it (0: unclaimed): the service refuses a delegation of a task that changed
    # hands since. Anything else (tampered, missing) is not checked.
    holder = forms.CharField(required=False, max_length=20)

    def clean_holder(self) -> int | None:
        value = self.cleaned_data["holder"]
        return int(value) if value.isascii() and value.isdecimal() and int(value) <= ID_MAX else None


class SnoozeForm(forms.Form):
    until = WhenField(label="Snooze until", error_messages={"required": "Snooze until: pick a date and time."})


class IdListField(forms.Field):
    """Several ids posted under one name (checkboxes), each a positive integer within bigint."""

    widget = forms.MultipleHiddenInput

    def to_python(self, value: Any) -> list[int]:
        values = value if isinstance(value, list | tuple) else ([value] if value else [])
        if len(values) > BULK_MAX:
            raise forms.ValidationError(f"Select at most {BULK_MAX} tasks at a time.")
        ids = []
        for item in values:
            text = str(item).strip()
            if not text.isdecimal() or not 0 < int(text) <= ID_MAX:
                raise forms.ValidationError("The selection holds something that is not a task.")
            ids.append(int(text))
        return ids


class BulkClaimForm(forms.Form):
    task = IdListField(required=False)


class SavedViewForm(forms.Form):
    """A saved view's name and the group to share it with (one of the user's own groups, else private)."""

    name = forms.CharField(
        max_length=SavedView._meta.get_field("name").max_length,
        error_messages={"required": "Give the view a name."},
    )
    # A group id from the form's select; anything else (tampered, empty) saves a private view.
    shared_with = forms.CharField(required=False, max_length=20)

    def clean_shared_with(self) -> int | None:
        value = self.cleaned_data["shared_with"]
        return int(value) if value.isdecimal() and 0 < int(value) <= ID_MAX else None
