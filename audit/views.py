"""The admins' audit pages: the timeline, its exports, and the chain status with its verification job.

Only holders of ``orchestrator.view_trail`` (superusers) see them; everyone else signed in gets 403 (and the
refusal is itself recorded, orchestrator/accounts.py). Views stay thin: selectors read, services write.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_POST, require_safe

from audit import selectors, services
from audit.exports import ExportHeader, export_lines, stream
from audit.forms import AuditFilterForm
from audit.templatetags.audit_tags import pretty_json
from orchestrator.accounts import current_request_meta
from orchestrator.audit import ACCESS_CHAIN, AUDIT_CHAIN, Actor, append_standalone
from orchestrator.audit_actions import AuditAction
from orchestrator.heartbeat import keep_alive
from orchestrator.models import AuditEvent
from orchestrator.templatetags.baton import bdi

EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}


def trail_required(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Signed in (else the sign-in page), and allowed to see the whole trail (else 403)."""

    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not selectors.can_view_trail(request.user):
            raise PermissionDenied("The audit trail is for auditors and administrators.")
        return view(request, *args, **kwargs)

    return wrapped


def _url(name: str, *args: Any) -> str:
    # "" when the site does not mount that app's pages (the page then shows the id without a link).
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return ""


def _rows(events: list[AuditEvent]) -> list[dict[str, Any]]:
    """What the timeline shows of each event, as plain strings: a page of 50 events renders in a few milliseconds
    this way, where template lookups and date filters on the models cost several times more (bench/audit.py)."""
    zone = timezone.get_current_timezone()
    # Reversed once per page with a placeholder id, then filled in per event: reverse() costs more than the row.
    instance_url = _url("console:instance_detail", 0)
    task_url = _url("approvals:task_detail", 0)
    user_url = _url("admin:auth_user_change", 0)
    group_url = _url("admin:auth_group_change", 0)
    links = {"task": task_url, "user": user_url, "group": group_url, "instance": instance_url}
    rows = []
    for event in events:
        local = event.occurred_at.astimezone(zone)
        meta = event.request_meta if isinstance(event.request_meta, dict) else {}
        subject_url = ""
        pattern = links.get(event.subject_type, "")
        if pattern and event.subject_id is not None:
            subject_url = pattern.replace("/0/", f"/{event.subject_id}/", 1)
        transition = ""
        if event.from_state or event.to_state:
            transition = f"{event.from_state or '·'} → {event.to_state or '·'}"
        rows.append(
            {
                "pk": event.pk,
                "when": local.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "iso": local.isoformat(),
                "utc": event.occurred_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f UTC"),
                "action": event.action,
                "transition": transition,
                "actor": event.actor_label,
                "actor_query": urlencode({"actor": event.actor_label}),
                "subject": event.subject_type + (f" #{event.subject_id}" if event.subject_id is not None else ""),
                "subject_url": subject_url,
                "instance_id": event.instance_id or "",
                "instance_url": instance_url.replace("/0/", f"/{event.instance_id}/", 1) if event.instance_id else "",
                "workflow": event.instance.workflow_name if event.instance_id and event.instance else "",
                "reason": event.reason,
                "chain": event.chain,
                "seq": event.seq,
                "hash": event.hash,
                "key_id": event.key_id,
                "prev_hash": event.prev_hash,
                "request_id": event.request_id,
                "request_query": urlencode({"request_id": event.request_id}) if event.request_id else "",
                "ip": str(meta.get("ip", "")),
                "user_agent": str(meta.get("user_agent", "")),
                "path": str(meta.get("path", "")),
                "payload": pretty_json(event.payload) if event.payload else "",
            }
        )
        rows[-1]["html"] = _row_html(rows[-1])
    return rows


def _optional(condition: Any, template: str, *args: Any) -> str:
    return format_html(template, *args) if condition else ""


def _row_html(row: dict[str, Any]) -> str:
    """One event of the timeline as HTML, every value escaped by format_html. Built here rather than in a template
    loop: fifty events with their details cost the template engine most of the page's time (bench/README.md)."""
    subject = (
        format_html('<a href="{}">{}</a>', row["subject_url"], row["subject"]) if row["subject_url"] else row["subject"]
    )
    instance = _optional(
        row["instance_id"],
        ' <span>· instance <a href="{}">#{}</a> <span class="text-body-secondary">{}</span></span>',
        row["instance_url"],
        row["instance_id"],
        row["workflow"],
    )
    # What people and other systems wrote (a reason, a name, a user agent, the data) in a <bdi> each: a direction
    # control in one reversed, as drawn, the rest of its line (orchestrator/bidi.py). The rest is Baton's own.
    reason = bdi(row["reason"])
    full = row["reason"]
    short = bdi(full if len(full) <= 300 else full[:299] + "…")
    details = [
        format_html('<dt class="col-sm-3">Time (UTC)</dt><dd class="col-sm-9 font-monospace">{}</dd>', row["utc"]),
        format_html(
            '<dt class="col-sm-3">Chain, position</dt><dd class="col-sm-9 font-monospace">{} #{}</dd>',
            row["chain"],
            row["seq"],
        ),
        format_html(
            '<dt class="col-sm-3">Hash</dt><dd class="col-sm-9 font-monospace text-break">{}{}</dd>',
            row["hash"],
            _optional(row["key_id"], ' <span class="text-body-secondary">(key {})</span>', row["key_id"]),
        ),
        format_html(
            '<dt class="col-sm-3">Previous hash</dt><dd class="col-sm-9 font-monospace text-break">{}</dd>',
            row["prev_hash"] or "(first of its chain)",
        ),
        _optional(
            row["request_id"],
            '<dt class="col-sm-3">Request</dt><dd class="col-sm-9 font-monospace text-break">'
            '<a href="?{}" title="Everything this request did">{}</a></dd>',
            row["request_query"],
            row["request_id"],
        ),
        _optional(
            row["user_agent"],
            '<dt class="col-sm-3">User agent</dt><dd class="col-sm-9 text-break">{}</dd>',
            bdi(row["user_agent"]),
        ),
        _optional(
            row["path"],
            '<dt class="col-sm-3">Path</dt><dd class="col-sm-9 font-monospace text-break">{}</dd>',
            bdi(row["path"]),
        ),
        _optional(
            row["payload"],
            '<dt class="col-sm-3">Data</dt><dd class="col-sm-9">'
            '<pre class="bg-body-tertiary p-2 rounded mb-0 text-wrap">{}</pre></dd>',
            bdi(row["payload"]),
        ),
        _optional(full, '<dt class="col-sm-3">Reason</dt><dd class="col-sm-9 text-break">{}</dd>', reason),
    ]
    return format_html(
        '<li class="audit-event border-bottom py-2" data-event="{}">'
        '<div class="d-flex flex-wrap align-items-baseline gap-2">'
        '<time class="text-body-secondary small font-monospace" datetime="{}" title="{}">{}</time> '
        '<span class="badge text-bg-light border font-monospace">{}</span> {}'
        '<a class="small ms-md-auto" href="?{}" title="Only this actor\'s events">{}</a></div>'
        '<div class="small d-flex flex-wrap gap-2"><span>{}</span>{}{}</div>{}'
        '<details class="small mt-1"><summary class="text-body-secondary">Details · {} #{}</summary>'
        '<dl class="row mb-0 mt-1 audit-details">{}</dl></details></li>',
        row["pk"],
        row["iso"],
        row["utc"],
        row["when"],
        row["action"],
        _optional(row["transition"], '<span class="small">{}</span>', row["transition"]),
        row["actor_query"],
        bdi(row["actor"]),
        subject,
        instance,
        _optional(row["ip"], ' <span class="text-body-secondary">· from {}</span>', bdi(row["ip"])),
        _optional(full, '<div class="small text-break audit-reason">“{}”</div>', short),
        row["chain"],
        row["seq"],
        mark_safe("".join(details)),  # noqa: S308 (each part was built by format_html, which escaped it)
    )


def _status() -> dict[str, Any]:
    latest, finished = selectors.verification_status()
    return {"latest": latest, "finished": finished}


@require_safe
@trail_required
def timeline(request: HttpRequest) -> HttpResponse:
    """Every event, newest first, filtered; keyset pages (``after`` / ``before`` cursors), 50 a page."""
    form = AuditFilterForm(request.GET)
    valid = form.is_valid()
    page = selectors.AuditPage([])
    filters = selectors.AuditFilters()
    if valid:
        filters = form.filters()
        # Each event links its instance by title; the instance's data (megabytes, in the end) is not read.
        events = selectors.audit_events_filtered(filters).select_related("instance").defer("instance__data")
        page = selectors.keyset_page(
            events, after=str(request.GET.get("after", ""))[:300], before=str(request.GET.get("before", ""))[:300]
        )
        for error in page.errors:
            messages.warning(request, error)
    query = urlencode(filters.as_params())
    context = {
        "form": form,
        "rows": _rows(page.events),
        "page": page,
        "query": query,
        "filtered": not filters.is_empty(),
        # A cursor that was honoured (a damaged one shows the newest page): an empty page is then past an end.
        "paged": valid and not page.errors and bool(request.GET.get("after") or request.GET.get("before")),
        "zone": timezone.get_current_timezone_name(),
        "active_nav": "audit",
        **_status(),
    }
    return render(request, "audit/timeline.html", context, status=200 if valid else 400)


@require_GET
@trail_required
def export(request: HttpRequest, kind: str) -> HttpResponse | StreamingHttpResponse:
    """The filtered events as CSV or JSON Lines (``kind``), oldest first, streamed; the export is recorded."""
    if kind not in EXPORT_TYPES:
        raise Http404("Exports are csv or jsonl.")
    form = AuditFilterForm(request.GET)
    if not form.is_valid():
        context = {
            "form": form,
            "rows": [],
            "page": selectors.AuditPage([]),
            "zone": timezone.get_current_timezone_name(),
            "active_nav": "audit",
            **_status(),
        }
        return render(request, "audit/timeline.html", context, status=400)
    return export_response(request, kind, form.filters())


def export_response(
    request: HttpRequest, kind: str, filters: selectors.AuditFilters
) -> StreamingHttpResponse | HttpResponse:
    """The streamed export of the events ``filters`` select, as ``kind`` ("csv" or "jsonl"), oldest first, signed
    line by line (``audit.exports``; ``manage.py baton_verify_audit --file`` checks it). The export itself is
    recorded on the access chain with who asked and the filters. The one path of the export page and the API's
    ``/api/audit/export.<kind>``: the caller has checked ``can_view_trail`` and validated the filters.

    A HEAD request gets the headers alone and records nothing: no file leaves, so there is no export to record
    (the trail would otherwise show exports nobody received)."""
    stamp = timezone.now().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    if request.method == "HEAD":
        head = HttpResponse(content_type=EXPORT_TYPES[kind])
        head["Content-Disposition"] = f'attachment; filename="baton-audit-{stamp}.{kind}"'
        head["Cache-Control"] = "no-store"
        return head
    header = ExportHeader(filters=filters.as_params(), generated_by=request.user.get_username())
    append_standalone(
        ACCESS_CHAIN,
        actor=Actor.of(request.user),
        action=AuditAction.AUDIT_EXPORTED,
        subject_type="export",
        subject_id=None,
        payload={"format": kind, "export_id": header.export_id, "filters": header.filters},
        request_meta=current_request_meta(),
    )
    lines = export_lines(kind, selectors.audit_events_filtered(filters), header)
    # Under ASGI (daphne) a sync iterator would be read whole into memory before the first byte is sent: an async
    # one streams. Under WSGI (gunicorn, the test client) the sync iterator streams as it is, reporting the worker
    # alive while lines flow: an export outlasts `make web`'s worker timeout (orchestrator/heartbeat.py).
    content = stream(lines) if isinstance(request, ASGIRequest) else keep_alive(line.encode() for line in lines)
    response = StreamingHttpResponse(content, content_type=EXPORT_TYPES[kind])
    response["Content-Disposition"] = f'attachment; filename="baton-audit-{stamp}.{kind}"'
    response["Cache-Control"] = "no-store"
    return response


@require_safe
@trail_required
def chains(request: HttpRequest) -> HttpResponse:
    """Chain status: the last verification's verdict and first broken link, the run under way, "Verify now"."""
    services.settle_stale()
    context = {"counts": selectors.chain_counts(), "active_nav": "audit", **_status()}
    return render(request, "audit/chains.html", context)


@require_safe
@trail_required
def verification_progress(request: HttpRequest) -> HttpResponse:
    """The progress card alone, re-fetched by the page when the live socket says the run moved."""
    return render(request, "audit/_verification.html", _status())


@require_POST
@trail_required
def verification_start(request: HttpRequest) -> HttpResponse:
    """Queue a verification of every chain ("Verify now"); one already under way is the one shown."""
    try:
        verification = services.verification_request(request.user)  # type: ignore[arg-type]  # trail_required: signed in
    except services.VerificationBusy as busy:
        messages.info(
            request, f"A verification is already {busy.running.get_state_display().lower()}; it is shown below."
        )
        return redirect("audit:chains")
    append_standalone(
        AUDIT_CHAIN,
        actor=Actor.of(request.user),
        action=AuditAction.AUDIT_VERIFICATION_REQUESTED,
        subject_type="verification",
        subject_id=verification.pk,
        request_meta=current_request_meta(),
    )
    messages.success(request, "Verification queued: the bar below follows it.")
    return redirect("audit:chains")
