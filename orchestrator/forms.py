"""Form fields the pages of every app share: a date and time a person typed, an operator's reason; and a service's
refusal shown on its form. Every query
parameter and every posted field goes through a form, so bad input (a NUL character, an over-long value, a date
out of range, a wrong choice) becomes a message on the page instead of a database error."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from django import forms
from django.utils import timezone

from orchestrator.inputs import REASON_MAX, check_when


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
        except forms.ValidationError as refused:
            # Django's message for a time in a clock change names neither the field nor what to type instead.
            naive = (refused.params or {}).get("datetime") if refused.code == "ambiguous_timezone" else None
            if not isinstance(naive, datetime):
                raise
            message = clock_change(str(self.label or "Date"), naive, timezone.get_current_timezone())
            raise forms.ValidationError(message, code="clock_change") from None

    def clean(self, value: Any) -> datetime | None:
        result = super().clean(value)
        return None if result is None else check_when(result, str(self.label or "Date"))


def _offset(value: timedelta | None) -> str:
    minutes = int((value or timedelta()).total_seconds() // 60)
    return f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def clock_change(what: str, naive: datetime, zone: tzinfo) -> str:
    """What to tell a person who typed ``naive`` (a wall-clock time without offset) that ``zone`` skips (the
    clocks go forward) or shows twice (they go back), naming the field ``what`` and the offsets around the change,
    and how to say which with an offset. Raises nothing."""
    before = naive.replace(tzinfo=zone, fold=0)
    after = naive.replace(tzinfo=zone, fold=1)
    shown, typed = f"{naive:%Y-%m-%d %H:%M}", f"{naive:%Y-%m-%dT%H:%M}"
    first, second = _offset(before.utcoffset()), _offset(after.utcoffset())
    if before.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
        return (
            f"{what}: {shown} does not exist in {zone}: the clocks go forward from UTC{first} to UTC{second} "
            "then. Enter a time before or after the change."
        )
    return (
        f"{what}: {shown} happens twice in {zone}: the clocks go back from UTC{first} to UTC{second} then. "
        f"Choose a time outside that hour, or say which with its offset (in the address, or the API): "
        f"{typed}{first} (the first) or {typed}{second} (the second)."
    )


def reason_field(label: str, *, required: bool = True) -> forms.CharField:
    """The free-text reason an operator gives for an action (it goes into the audit trail)."""
    return forms.CharField(
        label=label,
        max_length=REASON_MAX,
        required=required,
        help_text=f"Up to {REASON_MAX:,} characters; it goes into the audit trail with your name.",
        error_messages={"required": "Give a reason: it goes into the audit trail."},
    )


def named(label: str, errors: Iterable[Any]) -> str:
    """A field's messages (``errors``) as one line that names its ``label`` once: a message whose words before its
    first colon name it (``WhenField``'s and ``check_when``'s "From: ...", the reason's "Give a reason: ...") is
    not prefixed again; Django's own ("Ensure this value has at most 100 characters") is."""
    text = " ".join(map(str, errors))
    head, colon, _rest = text.partition(":")
    return text if colon and label.lower() in head.lower() else f"{label}: {text}"


def add_field_errors(form: forms.Form, errors: Mapping[str, list[str]]) -> None:
    """Show a service's refusal (``{field name: [message, ...]}``, as ``InvalidInput``, ``ScheduleInvalid`` and
    ``WebhookInvalid`` carry it) on ``form``: each message under the field of that name, or above the form when the
    form has no such field (a rule over several fields, a key the form does not ask for). What was typed stays in
    the form. Raises nothing of its own."""
    for field, messages in errors.items():
        form.add_error(field if field in form.fields else None, messages)
