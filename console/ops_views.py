"""The operator console's pages: Incidents, the instance list, the instance page, its actions, and bulk actions.

Views stay thin: a form cleans what was typed, a selector reads, one service call writes, and a refusal comes back
as the page again with the message and what was typed (400 for input, 409 for a state that does not allow it).

Who sees what: Incidents is for the people who answer for running work (operators, managers, admins: the
``view_workflowinstance`` permission); anyone else gets a 404. Every action and bulk action needs
``operate_workflowinstance``: someone who can see the instance gets 403, anyone else 404.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import BooleanField, ExpressionWrapper
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from approvals import selectors as task_selectors
from approvals.models import HumanTask
from approvals.selectors import tasks_of_instance
from approvals.services import base as task_errors
from approvals.services import tasks as task_services
from console import ops_forms as forms
from console import selectors
from console import services as bulk_services
from console.models import BulkJob
from orchestrator import registry
from orchestrator import selectors as engine_selectors
from orchestrator.accounts import hidden_404, request_meta
from orchestrator.audit import Actor
from orchestrator.bidi import isolate
from orchestrator.diagram import workflow_dot
from orchestrator.forms import named
from orchestrator.inputs import REASON_MAX
from orchestrator.models import InstanceState, StepKind, StepState, WorkflowInstance
from orchestrator.services import instances as instance_services
from orchestrator.services import operations
from orchestrator.services.locks import definition_unavailable
from orchestrator.typing import AuthedRequest

logger = logging.getLogger(__name__)


def _can_watch(user: User) -> bool:
    return engine_selectors.can_view_all_instances(user)


def _require_operator(request: AuthedRequest) -> None:
    """404 for someone who may not know the page exists, 403 for a viewer who may not act."""
    if not engine_selectors.can_operate(request.user):
        if _can_watch(request.user):
            raise PermissionDenied
        raise Http404("No such page.")


def _problems(form: Any) -> str:
    """A refused form's messages as one line, each named by its field's label (a form with two boxes said
    "Ensure this value has at most 1000 characters" without saying which); errors of the whole form unnamed."""
    return " ".join(
        " ".join(map(str, errors)) if name == "__all__" else named(str(form.fields[name].label or name), errors)
        for name, errors in form.errors.items()
    )


# --- Incidents ------------------------------------------------------------------------------------------


@login_required
def incidents(request: AuthedRequest) -> HttpResponse:
    """What needs a person now, across workflows; live (re-fetched when an instance changes state)."""
    if not _can_watch(request.user):
        raise Http404("No such page.")
    context = _incidents_context(request)
    if request.htmx and request.htmx.target == "incidents-live":
        return render(request, "console/_incidents_live.html", context)
    return render(request, "console/incidents.html", context)


def _incidents_context(request: AuthedRequest, draft: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Incidents page's context; ``draft`` is an escalation answer that was refused, shown again as typed with
    why (``{"task": id, "problem": str, "decision": str, "comment": str, "to_user": int | None}``)."""
    operators = list(
        User.objects.filter(groups__name="operators", is_active=True).order_by("username").only("id", "username")
    )
    found = selectors.incidents()
    task_selectors.mark_openable(request.user, found.nobody_can_act.rows)
    return {
        "found": found,
        "operators": operators,
        "can_operate": engine_selectors.can_operate(request.user),
        "reason_max": REASON_MAX,
        "decisions": forms.ESCALATION_DECISIONS,
        "draft": draft or {},
        "active_nav": "incidents",
    }


def _answer_refused(request: AuthedRequest, task_id: int, problem: str, status: int) -> HttpResponse:
    """The Incidents page again with ``problem`` said and the refused answer as it was typed (a redirect lost the
    reason someone wrote), answered ``status`` (400 for a bad form, 403 for an action this person may not take on
    it, 409 for an answer the task refuses)."""
    to_user = str(request.POST.get("to_user", ""))
    # Said beside the answer, not at the top of the page: on a phone the form is scrolled into view, far below.
    draft = {
        "task": task_id,
        "problem": problem,
        "decision": str(request.POST.get("decision", ""))[:40],
        "comment": str(request.POST.get("comment", ""))[: REASON_MAX * 2],
        "to_user": int(to_user) if to_user.isdecimal() and len(to_user) < 12 else None,
    }
    return render(request, "console/incidents.html", _incidents_context(request, draft), status=status)


@require_POST
@login_required
def escalation_answer(request: AuthedRequest, task_id: int) -> HttpResponse:
    """Resolve (retry, skip, mark resolved, fail) or reassign an escalation from the Incidents page, through the
    same task services as the task page: candidates and four-eyes are checked there."""
    if not _can_watch(request.user) or task_id > ID_MAX:
        raise Http404("No such page.")
    form = forms.EscalationForm(request.POST)
    if not form.is_valid():
        return _answer_refused(request, task_id, _problems(form), 400)
    data, meta = form.cleaned_data, request_meta(request)
    try:
        if data["op"] == "resolve":
            task = task_services.task_decide(
                task_id, request.user, data["decision"], comment=data["comment"], request_meta=meta
            )
            messages.success(request, f"Resolved ({data['decision']}): {isolate(task.title)}.")
        else:
            to_user = User.objects.filter(pk=data["to_user"]).first()
            if to_user is None:
                raise task_errors.TaskInvalid("No such person.")
            task = task_services.task_delegate(
                task_id, request.user, to_user, note=data["comment"], seen_holder=data["holder"], request_meta=meta
            )
            messages.success(request, f"Reassigned to {isolate(to_user.get_username())}: {isolate(task.title)}.")
    except task_errors.TaskNotFound:
        raise hidden_404(request, "task", HumanTask, task_id, "No such task.") from None
    except task_errors.TaskError as exc:
        # As the task page and the API answer them: bad input 400, a forbidden action 403, the task's state 409.
        if isinstance(exc, task_errors.TaskInvalid):
            code = 400
        elif isinstance(exc, task_errors.TaskForbidden):
            code = 403
        else:
            code = 409
        return _answer_refused(request, task_id, str(exc), code)
    return redirect("console:incidents")


# --- the instance list ----------------------------------------------------------------------------------


@login_required
def instance_list(request: AuthedRequest) -> HttpResponse:
    """Instances the user may see, filtered (workflow, version, state, started between, error text, business
    key, a field of the business data), newest first in keyset pages, with counts by state; live."""
    form = forms.InstanceListForm(request.GET)
    form.is_valid()
    flt = form.to_filter()
    partial = bool(request.htmx and request.htmx.target == "instance-rows")
    if not partial:
        for problem in form.messages():
            messages.warning(request, problem)
    can_operate = engine_selectors.can_operate(request.user)
    qs = selectors.filtered(request.user, flt)
    counts, counts_more = selectors.counts_by_state(selectors.filtered(request.user, _all_states(flt)), flt)
    page = selectors.page_of(qs, form.cleaned_data.get("after") if hasattr(form, "cleaned_data") else None)
    context = {
        "page": page,
        "flt": flt,
        "form": form,
        "params": flt.as_params(),
        # What was typed stays in the boxes, even when it could not be used (less the NUL nobody can see).
        "q": str(request.GET.get("q", "")).replace("\x00", "")[: 2 * 100],
        "workflow": flt.workflow,
        "counts": counts,
        # The counts are of the first COUNT_CAP matches (a business-data filter matching more): each is "n+".
        "counts_more": counts_more,
        "cap": selectors.COUNT_CAP,
        "states": [s for s in InstanceState],
        "workflows": registry.latest_all(),
        "can_operate": can_operate,
        # The latest started bulk jobs: the way back to a job's progress (and its Stop) once its page is left.
        "bulk_jobs": selectors.recent_jobs(BULK_JOBS_SHOWN) if can_operate and not partial else [],
        "now": timezone.now(),
        "active_nav": "instances",
    }
    template = "console/_instance_rows.html" if partial else "console/instance_list.html"
    return render(request, template, context)


# How many of the latest started bulk jobs the instance list links to.
BULK_JOBS_SHOWN = 5


def _all_states(flt: selectors.InstanceFilter) -> selectors.InstanceFilter:
    """The same filter across every state: the state tabs count each state under the other filters."""
    return replace(flt, state="")


# --- the instance page ----------------------------------------------------------------------------------


def _instance_or_404(request: AuthedRequest, instance_id: int) -> Any:
    instance = engine_selectors.instance_for_user(request.user, instance_id)
    if instance is None:
        raise hidden_404(request, "instance", WorkflowInstance, instance_id, "No such instance.")
    return instance


# The latest audit events and step runs the instance page lists; the rest are counted (the audit timeline, filtered
# to the instance, lists every event). A step run's row, with its attempts, costs several history rows to render:
# at 200 of each the page took 0.3 s, at these 0.2 s whatever the history (bench/README.md, "The instance page
# against its history").
EVENTS_SHOWN = 200
STEPS_SHOWN = 50


@login_required
def instance_detail(request: AuthedRequest, instance_id: int) -> HttpResponse:
    """One instance: actions at the top, every attempt of every step, data, compensation plan, tasks, history."""
    return _render_detail(request, _instance_or_404(request, instance_id))


def _render_detail(
    request: AuthedRequest, instance: Any, *, operation: str = "", form: Any = None, status: int = 200
) -> HttpResponse:
    can_operate = engine_selectors.can_operate(request.user)
    can_audit = request.user.has_perm("orchestrator.view_auditevent") or can_operate
    workflow = _definition(instance)
    # An instance's history and its step runs have no bound (a loop gone round, a wait re-armed, thousands of
    # signals): the page reads the latest of each and counts the rest. When a read holds them all (an ordinary
    # instance) everything comes from it, as it always did; past it, what needs the whole (the diagram's state of
    # each step, the one dead step to skip, the undo plan) has a narrow query of its own.
    steps = list(instance.steps.order_by("-id")[:STEPS_SHOWN])[::-1]
    events, events_total = engine_selectors.recent_audit_of(instance, EVENTS_SHOWN)
    rows = [s for s in steps if s.kind != StepKind.COMPENSATION]
    every_step = len(steps) < STEPS_SHOWN
    steps_total = len(rows) if every_step else instance.steps.exclude(kind=StepKind.COMPENSATION).count()
    step_events = events if events_total == len(events) else selectors.attempt_events(instance, [s.pk for s in rows])
    attempts = selectors.attempts_by_step(rows, step_events, show_paths=can_operate)
    if every_step:
        latest = {s.name: s.state for s in rows}
        dead = [s for s in rows if s.state == StepState.DEAD]
        planned = steps
    else:
        latest = selectors.latest_step_states(instance)
        dead = selectors.dead_steps(instance) if instance.state == InstanceState.FAILED else []
        planned = selectors.undoable_steps(instance, workflow)
    dot = workflow_dot(workflow, latest) if workflow is not None else ""
    held = selectors.waits_held_by_pause(instance, rows, workflow)
    step_rows = [
        {
            "step": s,
            "attempts": attempts.get(s.pk, []),
            "by_hand": selectors.resolved_by_hand(s),
            "held": held.get(s.pk),
        }
        for s in rows
    ]
    # Who reads the history (who sent what, when) sees the signals still waiting for a step to take them; only an
    # instance of a workflow that waits for signals (or whose definition is gone) can keep any: no query otherwise.
    may_keep = workflow is None or any(node.kind == "signal" for node in workflow.nodes.values())
    kept_signals, kept_total = engine_selectors.kept_signals_of(instance) if can_audit and may_keep else ([], 0)
    context = {
        "kept_signals": kept_signals,
        "kept_total": kept_total,
        "kept_more": kept_total - len(kept_signals),
        "instance": instance,
        "workflow": workflow,
        "step_rows": step_rows,
        "plan": _compensation_plan(planned, workflow),
        # Each task with whether this reader may open its page (else it is named without a link).
        "tasks": list(
            tasks_of_instance(instance.pk).annotate(
                can_open=ExpressionWrapper(task_selectors.may_open(request.user), output_field=BooleanField())
            )
        ),
        "events": events if can_audit else [],
        "events_total": events_total,
        "events_more": events_total - len(events),
        "steps_total": steps_total,
        "steps_more": steps_total - len(rows),
        "can_audit": can_audit,
        "can_operate": can_operate,
        "dot": dot,
        "definition_missing": definition_unavailable(instance) if workflow is None else "",
        "data_rows": sorted(instance.data.items()),
        "data_json": editor_text(instance.data),
        "skippable": dead[0] if len(dead) == 1 and instance.state == InstanceState.FAILED else None,
        "operation": operation,
        "op_form": form,
        "reason_max": REASON_MAX,
        # What the data editor accepts: the engine's own limit on a value it stores (operations.typed_json_max).
        "data_max": settings.BATON_MAX_RESULT_BYTES,
        # What a form may send at all (Django refuses more before any view): the JSON forms check it before sending
        # (static/baton/forms.js), so typed text past it stays on the page with a message instead of being lost.
        "body_max": settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
        "pause_days": operations.pause_horizon().days,
        "active_nav": "instances",
    }
    target = request.htmx.target if request.htmx else None
    if target == "instance-live":
        return render(request, "console/_instance_live.html", context)
    if target == "instance-head":
        return render(request, "console/_instance_head.html", context)
    return render(request, "console/instance_detail.html", context, status=status)


# Bytes of a data editor's body that are not its text: the reason (REASON_MAX characters, up to 4 bytes each in
# UTF-8), the CSRF token, the version read and each field's framing as Django counts it.
EDITOR_FORM_ROOM = 8 * 1024


def form_bytes(text: str) -> int:
    """The bytes ``text`` typed into a textarea counts against ``DATA_UPLOAD_MAX_MEMORY_SIZE`` when a browser sends
    it in a multipart body: UTF-8, each line break sent as CR LF."""
    return len(text.encode()) + text.count("\n")


def editor_text(data: dict[str, Any]) -> str:
    """``data`` as the data editor's box holds it: indented JSON, keys sorted, as a person reads it; compact when
    the indented text would be more than a form may send (``DATA_UPLOAD_MAX_MEMORY_SIZE``, less the form's other
    fields). Data within the engine's limit made of many short values (a list of numbers, each indented onto a line
    of its own) could be several times the size indented, and the box then held text that could not be saved as
    it stood."""
    indented = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if limit is None or form_bytes(indented) <= limit - EDITOR_FORM_ROOM:
        return indented
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _definition(instance: Any) -> Any:
    try:
        return registry.get(instance.workflow_name, instance.workflow_version)
    except registry.UnknownWorkflow:
        return None


def _compensation_plan(steps: list[Any], workflow: Any) -> list[dict[str, Any]]:
    """The instance's undo plan, latest first: each step that took effect and has a compensation, with whether it
    was undone (by its compensation or by hand), is being undone, or is still to undo. Empty when nothing would."""
    if workflow is None:
        return []
    undoing = {s.compensates_id: s for s in steps if s.kind == StepKind.COMPENSATION}
    plan = []
    for step in sorted(steps, key=lambda s: (s.finished_at or s.created_at, s.pk), reverse=True):
        if step.kind != StepKind.TASK or step.state not in (StepState.SUCCEEDED, StepState.COMPENSATED):
            continue
        node = workflow.nodes.get(step.name)
        if getattr(node, "compensate", None) is None:
            continue
        comp = undoing.get(step.pk)
        if step.state == StepState.COMPENSATED:
            status = "undone by hand" if comp is not None and comp.state == StepState.SKIPPED else "undone"
        elif comp is not None:
            status = {"dead": "undo failed: needs a person"}.get(comp.state, "being undone")
        else:
            status = "to undo"
        plan.append({"step": step, "status": status, "compensation": comp})
    return plan


# Each action: the form it reads, and the words of its success message.
ACTIONS: dict[str, tuple[type, str]] = {
    "retry": (forms.ReasonForm, "Retried"),
    "pause": (forms.PauseForm, "Paused"),
    "resume": (forms.ReasonForm, "Resumed"),
    "cancel": (forms.ReasonForm, "Cancelled"),
    "cancel-compensate": (forms.ReasonForm, "Cancelling with compensation"),
    "compensate": (forms.ReasonForm, "Compensating"),
    "skip": (forms.SkipForm, "Skipped the step of"),
    "edit-data": (forms.DataEditForm, "Data saved for"),
}


@require_POST
@login_required
def instance_action(request: AuthedRequest, instance_id: int, operation: str) -> HttpResponse:
    """An operator's action on one instance, always with a reason that is audited with their name."""
    if operation not in ACTIONS:
        raise Http404("No such action.")
    instance = _instance_or_404(request, instance_id)
    if not engine_selectors.can_operate(request.user):
        raise PermissionDenied
    form_class, done = ACTIONS[operation]
    form = form_class(request.POST)
    if not form.is_valid():
        messages.error(request, _problems(form))
        return _render_detail(request, instance, operation=operation, form=form, status=400)
    data, actor, meta = form.cleaned_data, Actor.of(request.user), request_meta(request)
    reason = data["reason"]
    try:
        if operation == "retry":
            instance_services.instance_retry(instance.pk, actor=actor, reason=reason, request_meta=meta)
        elif operation == "pause":
            operations.instance_pause_until(
                instance.pk, actor=actor, reason=reason, until=data["until"], request_meta=meta
            )
        elif operation == "resume":
            instance_services.instance_resume(instance.pk, actor=actor, reason=reason, request_meta=meta)
        elif operation == "cancel":
            instance_services.instance_cancel(instance.pk, actor=actor, reason=reason, request_meta=meta)
        elif operation in ("compensate", "cancel-compensate"):
            operations.instance_compensate(
                instance.pk, actor=actor, reason=reason, cancel=operation == "cancel-compensate", request_meta=meta
            )
        elif operation == "skip":
            output = operations.parse_json_object(data["output"] or "{}", "Output")
            operations.instance_step_skip(
                instance.pk, data["step"], output, actor=actor, reason=reason, request_meta=meta
            )
        else:
            new_data = operations.parse_json_object(data["new_data"], "Data")
            operations.instance_data_edit(
                instance.pk, new_data, actor=actor, reason=reason, expected_seq=data["seq"], request_meta=meta
            )
    except (ValidationError, instance_services.NotAllowed) as exc:
        problem = " ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        (messages.error if isinstance(exc, ValidationError) else messages.warning)(request, problem)
        form.add_error(None, problem)
        instance = _instance_or_404(request, instance.pk)
        return _render_detail(
            request, instance, operation=operation, form=form, status=400 if isinstance(exc, ValidationError) else 409
        )
    messages.success(request, f"{done}: {isolate(instance)}.")
    return redirect("console:instance_detail", instance_id=instance.pk)


# --- bulk actions ---------------------------------------------------------------------------------------


@require_POST
@login_required
def bulk_dry_run(request: AuthedRequest) -> HttpResponse:
    """Count and list the instances the filter matches that the action applies to; nothing happens to them."""
    _require_operator(request)
    form = forms.BulkDryRunForm(request.POST)
    if not form.is_valid():
        for problem in form.messages():
            messages.error(request, problem)
        return redirect(reverse("console:instance_list") + "?" + _query(form.to_filter()))
    try:
        job = bulk_services.bulk_dry_run(request.user, form.cleaned_data["action"], form.to_filter())
    except ValidationError as exc:
        messages.warning(request, " ".join(exc.messages))
        return redirect(reverse("console:instance_list") + "?" + _query(form.to_filter()))
    return redirect("console:bulk_detail", job_id=job.pk)


def _query(flt: selectors.InstanceFilter) -> str:
    from urllib.parse import urlencode

    return urlencode(flt.as_params())


# The largest id PostgreSQL's bigint holds: a larger one in a URL is no job, not a database error.
ID_MAX = 2**63 - 1


def _job_or_404(request: AuthedRequest, job_id: int) -> BulkJob:
    if not _can_watch(request.user):
        raise Http404("No such page.")
    job = BulkJob.objects.select_related("created_by").filter(pk=job_id).first() if job_id <= ID_MAX else None
    if job is None:
        raise Http404("No such bulk job.")
    _require_operator(request)
    # A dry run is its author's draft; a started job is every operator's to follow.
    if job.state == "dry_run" and job.created_by_id != request.user.pk:
        raise hidden_404(request, "bulk_job", BulkJob, job_id, "No such bulk job.")
    return job


@login_required
def bulk_detail(
    request: AuthedRequest, job_id: int, *, form: Any = None, stop_form: Any = None, status: int = 200
) -> HttpResponse:
    """A dry run (its exact count, a sample, the confirmation) or a job's live progress and honest outcome.
    ``form`` / ``stop_form``: a refused confirmation or stop, shown again as typed."""
    job = _job_or_404(request, job_id)
    context = {
        "job": job,
        "progress": selectors.bulk_progress(job),
        "sample": selectors.bulk_sample(job),
        "form": form or forms.BulkConfirmForm(),
        "stop_reason": stop_form["reason"].value() if stop_form is not None else "",
        "action_past": bulk_services.past_tense(job.action),
        "ttl_minutes": int(bulk_services.DRY_RUN_TTL.total_seconds() // 60),
        "reason_max": REASON_MAX,
        "active_nav": "instances",
    }
    if request.htmx and request.htmx.target == "bulk-live":
        return render(request, "console/_bulk_progress.html", context)
    return render(request, "console/bulk_detail.html", context, status=status)


@require_POST
@login_required
def bulk_confirm(request: AuthedRequest, job_id: int) -> HttpResponse:
    """Start the job on exactly the dry run's instances, with a reason."""
    job = _job_or_404(request, job_id)
    form = forms.BulkConfirmForm(request.POST)
    if not form.is_valid():
        messages.error(request, _problems(form))
        return bulk_detail(request, job.pk, form=form, status=400)
    try:
        bulk_services.bulk_confirm(
            job.pk,
            request.user,
            reason=form.cleaned_data["reason"],
            until=form.cleaned_data["until"],
            request_meta=request_meta(request),
        )
    except bulk_services.BulkNotFound:
        raise Http404("No such bulk job.") from None
    except (ValidationError, bulk_services.BulkError) as exc:
        problem = " ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        messages.warning(request, problem)
        form.add_error(None, problem)
        return bulk_detail(request, job.pk, form=form, status=400 if isinstance(exc, ValidationError) else 409)
    messages.success(request, f"Started: {job.get_action_display().lower()} of {job.total:,} instances.")
    return redirect("console:bulk_detail", job_id=job.pk)


@require_POST
@login_required
def bulk_stop(request: AuthedRequest, job_id: int) -> HttpResponse:
    """Stop a running job: what is left is skipped, what was done stays done."""
    job = _job_or_404(request, job_id)
    form = forms.ReasonForm(request.POST)
    if not form.is_valid():
        # The job's page again, saying why, with the reason as typed in the stop box (a redirect lost it).
        messages.error(request, _problems(form))
        return bulk_detail(request, job.pk, stop_form=form, status=400)
    try:
        left = bulk_services.bulk_stop(
            job.pk, request.user, reason=form.cleaned_data["reason"], request_meta=request_meta(request)
        )
    except bulk_services.BulkError as exc:
        messages.warning(request, str(exc))
    else:
        messages.success(request, f"Stopped: {left:,} instances left as they were.")
    return redirect("console:bulk_detail", job_id=job.pk)
