"""The timeline's filter form: every query parameter goes through it, so junk becomes a message (400), never a
database error; the values typed stay in the form."""

from __future__ import annotations

import re
from typing import Any

from django import forms

from audit.selectors import AuditFilters
from orchestrator.forms import WhenField
from orchestrator.inputs import SEARCH_MAX, drop_repeated

ONE_VALUE = {
    "actor": "Actor",
    "action": "Action",
    "workflow": "Workflow",
    "instance": "Instance",
    "subject_type": "Subject",
    "subject_id": "Subject id",
    "since": "From",
    "until": "Until",
    "q": "Search",
    "request_id": "Request id",
}
ID_MAX = 2**63 - 1
NAME = re.compile(r"[\w.:@+-]*")


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise forms.ValidationError("Remove the NUL character (it cannot be searched for).")
    return value.strip()


class NameField(forms.CharField):
    """A name typed as it is stored (a username, "system:worker", "task.completed"): letters, digits and . : @ + - _"""

    def clean(self, value: Any) -> str:
        text = _no_nul(str(super().clean(value) or ""))
        if not NAME.fullmatch(text):
            raise forms.ValidationError(f"{self.label}: letters, digits and . : @ + - _ only.")
        return text


class AuditFilterForm(forms.Form):
    """``actor``, ``action``, ``workflow``, ``instance``, ``subject_type``, ``subject_id``, ``since``, ``until``
    (in the site's time zone), ``q`` (reasons and comments), ``request_id``; cursors ``after``/``before``."""

    actor = NameField(required=False, max_length=160, label="Actor", help_text="A username, or system:worker")
    action = NameField(required=False, max_length=60, label="Action", help_text="Exact, or a prefix such as task.")
    workflow = NameField(required=False, max_length=100, label="Workflow")
    instance = forms.IntegerField(required=False, min_value=1, max_value=ID_MAX, label="Instance")
    subject_type = NameField(required=False, max_length=30, label="Subject")
    subject_id = forms.IntegerField(required=False, min_value=0, max_value=ID_MAX, label="Subject id")
    since = WhenField(required=False, label="From")
    until = WhenField(required=False, label="Until")
    q = forms.CharField(required=False, max_length=SEARCH_MAX, label="Search reasons and comments")
    request_id = NameField(required=False, max_length=64, label="Request id")

    def __init__(self, data: Any = None, **kwargs: Any) -> None:
        data, self.repeated = drop_repeated(data, ONE_VALUE) if data is not None else (data, [])
        super().__init__(data, **kwargs)

    def clean_q(self) -> str:
        return _no_nul(self.cleaned_data.get("q") or "")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since >= until:
            self.add_error("until", "Until must be after From.")
        for message in self.repeated:
            self.add_error(None, message)
        return cleaned

    def filters(self) -> AuditFilters:
        """The filters of a valid form (call ``is_valid`` first)."""
        data = self.cleaned_data
        return AuditFilters(
            actor=data.get("actor") or "",
            action=data.get("action") or "",
            workflow=data.get("workflow") or "",
            instance_id=data.get("instance"),
            subject_type=data.get("subject_type") or "",
            subject_id=data.get("subject_id"),
            since=data.get("since"),
            until=data.get("until"),
            q=data.get("q") or "",
            request_id=data.get("request_id") or "",
        )
