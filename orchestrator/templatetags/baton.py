"""Small presentation helpers shared by the templates."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from django import template
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeData, mark_safe

from orchestrator.bidi import balanced

register = template.Library()


@register.simple_tag
def state_badge(state: str, label: str = "") -> str:
    """A coloured badge for an instance, step or task state."""
    return format_html('<span class="badge state-{}">{}</span>', state, label or state.replace("_", " "))


@register.simple_tag
def body_max() -> int:
    """The bytes a form's body may hold (``DATA_UPLOAD_MAX_MEMORY_SIZE``; 0 when unlimited), for base.html's
    ``baton-body-max`` meta, which static/baton/forms.js checks every POST form against before sending it: past
    it Django refuses the request before any view runs, and the person's typing would be lost."""
    from django.conf import settings

    return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0)


@register.filter
def label(key: str) -> str:
    """``order_id`` -> ``Order id``."""
    return str(key).replace("_", " ").capitalize()


@register.filter
def show(value: Any) -> str:
    """A readable rendering of a JSON value for the data tables."""
    if value is True:
        return "yes"
    if value is False:
        return "no"
    if value is None or value == "":
        return "—"
    if isinstance(value, dict) and {"decision", "by"} <= value.keys():
        # A human step's record: "approve by manager: OK" reads better than its JSON.
        text = f"{value['decision']} by {value['by']}"
        return f"{text}: {value['comment']}" if value.get("comment") else text
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


@register.simple_tag
def duration(start: datetime | None, end: datetime | None = None) -> str:
    """A short human duration between two instants (until now when ``end`` is missing)."""
    if start is None:
        return ""
    seconds = ((end or timezone.now()) - start).total_seconds()
    if seconds < 1:
        return f"{int(seconds * 1000)} ms"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


@register.filter
def span(length: timedelta | None) -> str:
    """``length`` (a timedelta) as :func:`duration` words it; empty for None."""
    if length is None:
        return ""
    start = timezone.now()
    return duration(start, start + length)


@register.filter
def priority_badge(priority: int) -> str:
    names = {
        0: ("Low", "text-bg-light"),
        1: ("Normal", "text-bg-secondary"),
        2: ("High", "text-bg-warning"),
        3: ("Urgent", "text-bg-danger"),
    }
    name, css = names.get(priority, ("Normal", "text-bg-secondary"))
    return format_html('<span class="badge {}">{}</span>', css, name)


@register.filter
def bdi(value: Any) -> str:
    """``value`` (text a person or another system wrote: a title, a name, a reason, an address) escaped, in a
    ``<bdi>`` of its own, with the direction controls that could reach past it made harmless
    (:func:`orchestrator.bidi.balanced`). Without it, a right-to-left override in the text reversed, as drawn, the
    rest of its line: the words, states and dates the page writes after it. ``None`` shows as nothing."""
    text = "" if value is None else value
    if isinstance(text, SafeData):  # already HTML (a filter's output): balanced, not escaped twice
        return format_html("<bdi>{}</bdi>", mark_safe(balanced(str(text))))  # noqa: S308 (was safe already)
    return format_html("<bdi>{}</bdi>", balanced(str(text)))


@register.filter
def first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


@register.filter
def get_item(mapping: dict, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, dict) else None


@register.filter
def count_label(value: int | None, cap: int | None = None) -> str:
    """A badge count; at the server's cap it reads "99+"."""
    value = value or 0
    if cap and value >= cap:
        return f"{cap - 1}+"
    return str(value)


@register.filter
def thousands(value: int | None) -> str:
    """A whole number with thousands separators, as the pages' messages write sizes ("2,621,440"); "" for None."""
    return "" if value is None else f"{int(value):,}"


@register.filter
def urlencode_params(params: dict) -> str:
    """A dict of query parameters as a query string (values escaped)."""
    from urllib.parse import urlencode

    return urlencode(params or {})


@register.filter
def bootstrap(field: Any) -> str:
    """A bound form field's widget with Bootstrap's classes (form-control, form-select or form-check-input),
    ``is-invalid`` when it has errors, and ``aria-describedby`` pointing at its help and error texts."""
    from django import forms

    widget = field.field.widget
    if isinstance(widget, forms.RadioSelect):  # CheckboxSelectMultiple too: a box per choice, each with its label
        return _choice_boxes(field)
    if isinstance(widget, forms.CheckboxInput):
        css = "form-check-input"
    elif isinstance(widget, forms.Select | forms.SelectMultiple):
        css = "form-select"
    else:
        css = "form-control"
    if field.errors:
        css += " is-invalid"
    attrs = {"class": f"{widget.attrs.get('class', '')} {css}".strip(), "aria-describedby": f"{field.auto_id}-help"}
    if field.errors:
        attrs["aria-invalid"] = "true"
    return field.as_widget(attrs=attrs)


def _choice_boxes(field: Any) -> str:
    """Radio buttons or check boxes in Bootstrap's layout (a ``form-check`` per choice, the box beside its name), in
    a group named by the field's label: given form-control like a text box, each was drawn as an empty text field
    with its name on the line below."""
    css = "form-check-input" + (" is-invalid" if field.errors else "")
    boxes = []
    for choice in field:
        choice.data["attrs"] = {**choice.data["attrs"], "class": css}
        boxes.append((choice.tag(), choice.id_for_label, choice.choice_label))
    options = format_html_join(
        "", '<div class="form-check">{}<label class="form-check-label" for="{}">{}</label></div>', boxes
    )
    return format_html(
        '<div id="{}" role="group" aria-label="{}" aria-describedby="{}-help"{}>{}</div>',
        field.auto_id,
        field.label,
        field.auto_id,
        # is-invalid shows the errors after the group (Bootstrap's ".is-invalid ~ .invalid-feedback").
        mark_safe(' class="is-invalid" aria-invalid="true"') if field.errors else "",
        options,
    )


# A person's text longer than this (lines, or characters: one long line wraps into many) is clamped on the page,
# with a "Show all" disclosure: a comment may hold 4,000 characters (inputs.COMMENT_MAX), 2,000 lines of them.
LONG_TEXT_LINES = 6
LONG_TEXT_CHARS = 400


@register.inclusion_tag("includes/long_text.html")
def long_text(text: str, quoted: bool = True) -> dict[str, Any]:
    """A person's free text (a decision's comment, an answer's reason) with its line breaks shown
    (``white-space: pre-line``, static/baton/baton.css ``.long-text``), isolated for right-to-left text
    (``<bdi>``) and, in “quotes” unless ``quoted`` is False. Past :data:`LONG_TEXT_LINES` lines or
    :data:`LONG_TEXT_CHARS` characters it is clamped to a few lines, the whole of it in a ``<details>`` "Show all"
    that scrolls within itself, so one comment cannot fill the page. Returns the template's context; raises
    nothing."""
    text = str(text or "").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.count("\n") + 1
    return {
        "text": text,
        "quoted": quoted,
        "lines": lines,
        "long": lines > LONG_TEXT_LINES or len(text) > LONG_TEXT_CHARS,
    }
