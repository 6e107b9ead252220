"""Template helpers of the catalog and the dashboard: durations in seconds, rates, and full dates with their zone."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone
from django.utils.dateformat import format as date_format
from django.utils.html import format_html

register = template.Library()


@register.filter
def seconds(value: float | None) -> str:
    """``93.0`` -> ``1.6 min``; None -> an em dash (no observation)."""
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 90:
        return f"{value:.1f} s"
    if value < 5400:
        return f"{value / 60:.1f} min"
    if value < 172800:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} d"


@register.filter
def percent(value: float | None) -> str:
    """``0.0425`` -> ``4.3 %``; None -> an em dash (nothing ended in the window)."""
    if value is None:
        return "—"
    return f"{value * 100:.1f} %"


@register.filter
def when(value: datetime | None) -> str:
    """A moment as date, time and zone in the current (the person's) zone, with the UTC instant in a tooltip:
    ``<time datetime="2026-11-29T22:50:00+00:00" title="...">2026-11-29 23:50 CET</time>``."""
    if value is None:
        return "—"
    local = timezone.localtime(value)
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        value.isoformat(),
        f"{local:%Y-%m-%d %H:%M:%S} {timezone.get_current_timezone_name()}",
        date_format(local, "Y-m-d H:i T"),
    )
