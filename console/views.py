"""The operator's pages: home, instances (list, detail, operator actions), the workflow catalog, start forms,
and the sign-in page (routed by baton_site/urls.py).

They show the engine and the human tasks side by side, so they live here, above both apps: nothing in
``orchestrator`` imports ``approvals``.

Views stay thin: read through selectors, write through one service call, map domain errors to a message.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required, permission_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from approvals.selectors import tasks_of_instance
from console import forms
from orchestrator import registry, selectors
from orchestrator.accounts import request_meta
from orchestrator.audit import Actor
from orchestrator.diagram import workflow_dot
from orchestrator.inputs import REASON_MAX
from orchestrator.models import InstanceState, StepState
from orchestrator.services import instances as instance_services
from orchestrator.services.locks import definition_unavailable
from orchestrator.typing import AuthedRequest


class LoginView(auth_views.LoginView):
    """Django's sign-in page; it lists the demo's logins when ``BATON_DEMO`` is on and the demo app installed."""

    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        from django.apps import apps
        from django.conf import settings

        context = super().get_context_data(**kwargs)
        context["demo_logins"] = []
        if settings.BATON_DEMO and apps.is_installed("demo"):
            from demo.data import DEMO_USERS

            context["demo_logins"] = DEMO_USERS
        return context


@login_required
def home(request: AuthedRequest) -> HttpResponse:
    """People with tasks start in their inbox; operators on the instance list when they have nothing to do."""
    from approvals.selectors import inbox_counts

    counts = inbox_counts(request.user)
    if selectors.can_operate(request.user) and not (counts["inbox"] or counts["queue"]):
        return redirect("console:instance_list")
    return redirect("approvals:inbox")


STATE_FILTERS = [s.value for s in InstanceState]


@login_required
def instance_list(request: AuthedRequest) -> HttpResponse:
    """Instances the user may see, filterable by state and workflow, newest first.

    The query string goes through InstanceFilterForm: a bad value (a NUL character, an over-long search, an
    unknown state, a page that is not a number) is named in a message and left out; the rest still applies.
    """
    qs = selectors.instances_for_user(request.user)
    counts = selectors.state_counts(qs)
    filters_form = forms.InstanceFilterForm(request.GET)
    filters_form.is_valid()
    filters = filters_form.filters()
    state, workflow, query = filters["state"], filters["workflow"], filters["q"].strip()
    partial = bool(request.htmx and request.htmx.target == "instance-rows")
    if not partial:  # a live re-fetch of the rows shows no messages: they would pile up for the next page
        for problem in filters_form.messages():
            messages.warning(request, problem)
    if state:
        qs = qs.filter(state=state)
    if workflow:
        qs = qs.filter(workflow_name=workflow)
    if query:
        qs = qs.filter(title__icontains=query) | qs.filter(business_key=query)
    page = Paginator(qs, 25).get_page(filters["page"])
    context = {
        "page": page,
        "state": state,
        "workflow": workflow,
        # What was typed stays in the box, even when it could not be used (less the NUL nobody can see).
        "q": query if query else str(request.GET.get("q", "")).replace("\x00", "")[: forms.SEARCH_MAX * 2],
        "counts": counts,
        "states": STATE_FILTERS,
        "workflows": registry.latest_all(),
        "active_nav": "instances",
    }
    return render(
        request, "orchestrator/_instance_rows.html" if partial else "orchestrator/instance_list.html", context
    )


def _instance_or_404(request: AuthedRequest, instance_id: int) -> Any:
    instance = selectors.instance_for_user(request.user, instance_id)
    if instance is None:
        raise Http404("No such instance.")
    return instance


@login_required
def instance_detail(request: AuthedRequest, instance_id: int) -> HttpResponse:
    """One instance: diagram, step timeline, tasks, audit trail and the operator's actions."""
    instance = _instance_or_404(request, instance_id)
    return _render_detail(request, instance)


def _render_detail(
    request: AuthedRequest,
    instance: Any,
    *,
    operation: str = "",
    operate_form: forms.OperateForm | None = None,
    status: int = 200,
) -> HttpResponse:
    """The instance page; after a refused operator action, with that action's form as it was typed and its
    errors (``operation`` names the form)."""
    steps = selectors.steps_of(instance)
    latest: dict[str, str] = {}
    for step in steps:
        if step.kind != "compensation":
            latest[step.name] = step.state
    try:
        workflow = registry.get(instance.workflow_name, instance.workflow_version)
        dot = workflow_dot(workflow, latest)
    except registry.UnknownWorkflow:
        workflow, dot = None, ""
    can_audit = request.user.has_perm("orchestrator.view_auditevent") or selectors.can_operate(request.user)
    context = {
        "instance": instance,
        "workflow": workflow,
        "steps": steps,
        "tasks": list(tasks_of_instance(instance.pk)),
        "events": list(selectors.audit_of(instance)) if can_audit else [],
        "can_audit": can_audit,
        "can_operate": selectors.can_operate(request.user),
        "dot": dot,
        # Said on the page itself (not a one-off flash), for as long as the code of this version is missing.
        "definition_missing": definition_unavailable(instance) if workflow is None else "",
        "data_rows": sorted(instance.data.items()),
        "active_nav": "instances",
        "StepState": StepState,
        "operation": operation,
        "op_form": operate_form,
        "reason_max": REASON_MAX,
    }
    if request.htmx and request.htmx.target == "instance-live":
        return render(request, "orchestrator/_instance_live.html", context)
    return render(request, "orchestrator/instance_detail.html", context, status=status)


OPERATIONS = {
    "retry": "Retried",
    "pause": "Paused",
    "resume": "Resumed",
    "cancel": "Cancelled",
}


@require_POST
@login_required
def instance_operate(request: AuthedRequest, instance_id: int, operation: str) -> HttpResponse:
    """An operator's retry, pause, resume or cancel, with the reason that goes into the audit trail."""
    if operation not in OPERATIONS:
        raise Http404
    instance = _instance_or_404(request, instance_id)
    if not selectors.can_operate(request.user):
        raise PermissionDenied
    form = forms.OperateForm(request.POST)
    if not form.is_valid():
        # The forms sit low on the page: the message at the top says what to fix, the form shows where.
        for errors in form.errors.values():
            messages.error(request, " ".join(map(str, errors)))
        return _render_detail(request, instance, operation=operation, operate_form=form, status=400)
    reason, until = form.cleaned_data["reason"], form.cleaned_data["until"]
    actor = Actor.of(request.user)
    meta = request_meta(request)
    try:
        if operation == "retry":
            instance_services.instance_retry(instance.pk, actor=actor, reason=reason, request_meta=meta)
        elif operation == "pause":
            instance_services.instance_pause(instance.pk, actor=actor, reason=reason, until=until, request_meta=meta)
        elif operation == "resume":
            instance_services.instance_resume(instance.pk, actor=actor, reason=reason, request_meta=meta)
        else:
            instance_services.instance_cancel(instance.pk, actor=actor, reason=reason, request_meta=meta)
    except (ValidationError, instance_services.NotAllowed) as exc:
        # Refused: the page again, with the reason as typed, so nothing has to be typed twice.
        if isinstance(exc, ValidationError):
            problem = " ".join(exc.messages)
            messages.error(request, problem)
        else:
            problem = str(exc)
            messages.warning(request, problem)
        form.add_error(None, problem)
        instance = _instance_or_404(request, instance.pk)
        return _render_detail(request, instance, operation=operation, operate_form=form, status=409)
    messages.success(request, f"{OPERATIONS[operation]}: {instance}.")
    return redirect("console:instance_detail", instance_id=instance.pk)


@login_required
def workflow_list(request: AuthedRequest) -> HttpResponse:
    """The catalog: every workflow's latest version, its owner and criticality, and live counts."""
    stats = selectors.workflow_stats()
    rows = []
    for workflow in registry.latest_all():
        rows.append(
            {
                "workflow": workflow,
                "versions": [w.version for w in registry.all_versions(workflow.name)],
                "stats": stats.get(workflow.name, {"total": 0, "active": 0, "failed": 0}),
                "dot": workflow_dot(workflow),
            }
        )
    return render(request, "orchestrator/workflow_list.html", {"rows": rows, "active_nav": "workflows"})


@login_required
@permission_required("orchestrator.add_workflowinstance", raise_exception=True)
def workflow_start(request: AuthedRequest, name: str) -> HttpResponse:
    """Start an instance from the workflow's start form."""
    try:
        workflow = registry.get(name)
    except registry.UnknownWorkflow:
        raise Http404("No such workflow.") from None
    if workflow.start_form is None:
        raise Http404("This workflow is started by other systems, not from a form.")
    form = workflow.start_form(data=request.POST or None)
    options = forms.StartOptionsForm(request.POST or None)
    if request.method == "POST" and form.is_valid() and options.is_valid():
        try:
            instance = instance_services.instance_start(
                workflow.name,
                dict(form.cleaned_data),
                initiator=request.user,
                idempotency_key=options.cleaned_data["idempotency_key"] or None,
                request_meta=request_meta(request),
            )
        except instance_services.IdempotencyConflict:
            messages.error(request, "This form was already submitted with other values.")
        except instance_services.InvalidInput as exc:
            for field, errors in exc.errors.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            messages.success(request, f"Started {instance}.")
            if selectors.instance_for_user(request.user, instance.pk) is not None:
                return redirect("console:instance_detail", instance_id=instance.pk)
            return redirect(reverse("approvals:inbox"))
    key_errors: list[str] = [str(e) for e in options.errors.get("idempotency_key", [])]
    for error in key_errors:
        form.add_error(None, error)
    context = {
        "workflow": workflow,
        "form": form,
        # A key that was refused is replaced: the next submission starts afresh with a good one.
        "idempotency_key": (not key_errors and request.POST.get("idempotency_key")) or uuid.uuid4().hex,
        "active_nav": "workflows",
    }
    return render(request, "orchestrator/workflow_start.html", context, status=400 if form.errors else 200)
