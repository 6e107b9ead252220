"""The API tokens page's form: a name and an optional expiry (a preset, or a date and time)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.utils import timezone

from api.tokens import NAME_MAX
from orchestrator.forms import WhenField

EXPIRY_CHOICES = [
    ("30", "In 30 days"),
    ("90", "In 90 days"),
    ("365", "In a year"),
    ("never", "Never"),
    ("date", "On a date…"),
]


class TokenCreateForm(forms.Form):
    name = forms.CharField(
        label="Name",
        max_length=NAME_MAX,
        help_text="What will use it, such as “billing sync” or “nightly report”.",
        error_messages={"required": "Name: give the token a name."},
    )
    expires = forms.ChoiceField(label="Expires", choices=EXPIRY_CHOICES, initial="90")
    expires_at = WhenField(label="Expiry date", required=False, help_text="Only for “On a date…”; your time zone.")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("expires") == "date" and not cleaned.get("expires_at") and "expires_at" not in self.errors:
            self.add_error("expires_at", "Expiry date: pick the date and time the token stops working.")
        return cleaned

    def expiry(self) -> datetime | None:
        """The chosen expiry (None: never); call after ``is_valid()``."""
        choice = self.cleaned_data["expires"]
        if choice == "never":
            return None
        if choice == "date":
            return self.cleaned_data["expires_at"]
        return timezone.now() + timedelta(days=int(choice))
