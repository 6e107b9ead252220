"""The admins' forms for schedules and webhooks: what was typed comes back with the errors (400), never a 500."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from automation import schedules, webhooks
from automation.models import WEBHOOK_EVENTS, MissedPolicy
from orchestrator import recurrence, registry
from orchestrator.inputs import RepeatedKey, check_text, unique_keys

INPUT_MAX = 20_000


class PageToken(forms.CharField):
    """A hidden value the page itself writes into the form (an edit stamp, a one-time token): up to 64 letters,
    digits, - and _. Anything else (a tampered or cut value, a NUL) reads as "" (none given), never as an error:
    the form would come back refused for a field nobody sees, with no message beside it."""

    widget = forms.HiddenInput

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(required=False, **kwargs)
        self.validators = []  # CharField's NUL check included: junk reads as none given, below

    def clean(self, value: Any) -> str:
        text = value if isinstance(value, str) else ""
        return text if len(text) <= 64 and text.isascii() and text.replace("-", "").replace("_", "").isalnum() else ""


class ScheduleForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Shown in the audit trail; unique.")
    workflow_name = forms.ChoiceField(label="Workflow")
    cron = forms.CharField(
        max_length=100,
        required=False,
        label="Cron expression",
        help_text="Five fields: minute hour day-of-month month day-of-week, e.g. 0 9 * * 1-5. Or give an interval.",
    )
    interval_minutes = forms.IntegerField(
        required=False, min_value=1, max_value=527_040, label="Or every (minutes)", help_text="From one minute."
    )
    timezone = forms.CharField(
        max_length=64, initial="UTC", label="Time zone", help_text="IANA name the cron fields are read in."
    )
    missed = forms.ChoiceField(
        choices=MissedPolicy.choices,
        initial=MissedPolicy.CATCH_UP_ONCE,
        label="Runs missed while Baton was down",
        help_text="Catch up once: one start for all of them. Skip: none.",
    )
    input = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "class": "font-monospace"}),
        max_length=INPUT_MAX,
        initial="{}",
        label="Start input (JSON object)",
        help_text="Checked against the workflow's start form.",
    )
    # The schedule's edit stamp as this form showed it (Schedule.edit_stamp; blank on a new schedule's form): a save
    # after another admin's change is refused rather than putting back what this form showed from before it.
    seen = PageToken()
    # The new-schedule form's one-time token (automation.schedules.schedule_save): sent twice, it creates once.
    form_token = PageToken()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        workflows = [(w.name, w.display_title) for w in registry.latest_all()]
        # A schedule whose workflow is no longer deployed keeps it selected: without this choice the select would
        # show (and a save would take) the first workflow instead; saving it names the problem on the field.
        current = str(self.initial.get("workflow_name") or "")
        if current and current not in {name for name, _title in workflows}:
            workflows.append((current, f"{current} (not deployed)"))
        self.fields["workflow_name"].choices = workflows  # type: ignore[attr-defined]

    def clean_name(self) -> str:
        return check_text(self.cleaned_data["name"], "Name", 100)

    # The cron expression and the zone are read here on their own, so that their mistakes come back with the
    # form's other errors in one answer: the schedule's check (schedules.check, on saving) runs only once the form
    # is valid, and says one recurrence problem at a time. It still decides whether cron and interval go together.
    def clean_cron(self) -> str:
        cron = " ".join(check_text(self.cleaned_data["cron"], "Cron expression", 100).split())
        if cron and (problem := recurrence.check_recurrence(cron, None, "UTC")):
            raise forms.ValidationError(_sentence(problem))
        return cron

    def clean_timezone(self) -> str:
        name = check_text(self.cleaned_data["timezone"], "Time zone", 64)
        try:
            recurrence.zone(name)
        except ValueError as exc:
            raise forms.ValidationError(_sentence(str(exc))) from None
        return name

    def clean_input(self) -> dict[str, Any]:
        text = self.cleaned_data["input"]
        try:
            value = json.loads(text or "{}", parse_constant=_no_constant, object_pairs_hook=unique_keys)
        except RecursionError:
            # 20,000 characters of brackets are far more than the parser's stack: a 500 before this
            raise forms.ValidationError("Not JSON Baton can read: it is nested too deeply.") from None
        except RepeatedKey as exc:
            raise forms.ValidationError(f"JSON, but {exc}.") from None
        except ValueError as exc:
            raise forms.ValidationError(f"Not JSON: {exc}.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError('Give a JSON object, like {"region": "eu"}.')
        if "\x00" in text or "\\u0000" in text:
            raise forms.ValidationError("The input holds a NUL character, which cannot be stored.")
        problem = schedules.input_problem(value)
        if problem:
            raise forms.ValidationError(problem)
        return value


def _sentence(problem: str) -> str:
    """A recurrence problem ("unknown time zone ...") as the schedule's check says it on a field."""
    return problem[0].upper() + problem[1:] + "."


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value (JSON has no NaN or Infinity)")


class WebhookForm(forms.Form):
    name = forms.CharField(max_length=100)
    url = forms.CharField(
        max_length=500,
        label="Address",
        help_text="An https:// address on the internet; private and loopback addresses are refused.",
        widget=forms.URLInput,
    )
    events = forms.MultipleChoiceField(
        choices=list(WEBHOOK_EVENTS.items()), widget=forms.CheckboxSelectMultiple, label="Events"
    )
    # The new-webhook form's one-time token (automation.webhooks.webhook_subscribe): sent twice, it subscribes once.
    # Not checked for its shape: a token the page never gave is only a token no subscription has.
    form_token = PageToken()

    def clean_name(self) -> str:
        return check_text(self.cleaned_data["name"], "Name", 100)

    def clean_url(self) -> str:
        url = check_text(self.cleaned_data["url"], "Address", 500)
        # Its shape is said with the other fields' mistakes; the look-up and the public-address rule stay the
        # service's (webhooks._checked), which runs once the form is valid. An address kept as it was is left to
        # the service too: it does not refuse a change of events for an address it accepted before.
        if url.strip() != (self.initial.get("url") or "").strip():
            try:
                webhooks.address_shape(url.strip())
            except ValueError as exc:
                raise forms.ValidationError(str(exc)) from None
        return url


class WebhookEditForm(WebhookForm):
    """The subscription form holding what a subscription is, with, while it is paused, the choice to resume it."""

    # The subscription's edit stamp as this form showed it (WebhookSubscription.edit_stamp), as on ScheduleForm.
    seen = PageToken()

    resume = forms.BooleanField(
        required=False,
        label="Resume it when saved",
        help_text="It is paused: resuming sends the deliveries that waited, to the address above.",
    )

    def __init__(self, *args: Any, paused: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.fields["form_token"]  # a change is no subscription: sent twice, the second changes nothing
        if not paused:
            del self.fields["resume"]


# What each grace does to the secret in use now, said beside its choice: with "At once" nothing is kept as the old
# secret, so one sentence for all three choices (the page once said it "becomes the old one") would be wrong for it.
ROLL_GRACE_EFFECTS = {
    0: "The secret in use now stops signing at once: only the new secret signs, and the receiver refuses every "
    "delivery until it has it.",
    3600: "The secret in use now becomes the old one and signs beside the new one for 1 hour.",
    86400: "The secret in use now becomes the old one and signs beside the new one for 24 hours.",
}
assert set(ROLL_GRACE_EFFECTS) == set(webhooks.ROLL_GRACE_CHOICES)


class RollSecretForm(forms.Form):
    grace = forms.TypedChoiceField(
        choices=list(webhooks.ROLL_GRACE_CHOICES.items()),
        coerce=int,
        initial=86400,
        widget=forms.RadioSelect(attrs={"class": "form-check-input"}),
        label="The old secret stops signing",
        help_text="As long as the old secret signs, every delivery carries a signature with each secret, so the "
        "receiver can switch to the new one at any moment without refusing a delivery.",
    )
    # The secret's stamp as the page showed it (WebhookSubscription.secret_stamp): sent twice, the form rolls once.
    seen = PageToken()

    def grace_options(self) -> list[tuple[Any, str]]:
        """The grace field's radio buttons, each with what it does to the secret in use now
        (``ROLL_GRACE_EFFECTS``)."""
        return [(choice, ROLL_GRACE_EFFECTS[int(choice.data["value"])]) for choice in self["grace"]]
