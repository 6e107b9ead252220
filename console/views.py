"""The operator's pages: home, the workflow catalog, start forms and the sign-in page (routed by
baton_site/urls.py). Incidents, the instance list, the instance page, its actions and bulk actions are in
``console/ops_views.py``.

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
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from console import forms
from orchestrator import registry, selectors
from orchestrator.accounts import request_meta
from orchestrator.bidi import isolate
from orchestrator.forms import add_field_errors
from orchestrator.services import instances as instance_services
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

    def form_invalid(self, form: Any) -> HttpResponse:
        # A sign-in refused by the form's own checks (a name too long, a NUL byte, a field left out) never reaches
        # authenticate(), so Django sends no user_login_failed: it is recorded here, as a failed sign-in too.
        if {"username", "password"} & set(form.errors):
            from orchestrator.accounts import sign_in_refused

            sign_in_refused(self.request, str(self.request.POST.get("username", "")))
        return super().form_invalid(form)


@login_required
def home(request: AuthedRequest) -> HttpResponse:
    """People with tasks start in their inbox; operators on the instance list when they have nothing to do."""
    from approvals.selectors import inbox_counts

    counts = inbox_counts(request.user)
    if selectors.can_operate(request.user) and not (counts["inbox"] or counts["queue"]):
        return redirect("console:instance_list")
    return redirect("approvals:inbox")


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
            add_field_errors(form, exc.errors)
        else:
            messages.success(request, f"Started {isolate(instance)}.")
            if selectors.instance_for_user(request.user, instance.pk, with_data=False) is not None:
                return redirect("console:instance_detail", instance_id=instance.pk)
            return redirect(reverse("approvals:inbox"))
    key_errors: list[str] = [str(e) for e in options.errors.get("idempotency_key", [])]
    posted_key = request.POST.get(options.add_prefix("idempotency_key"))
    for error in key_errors:
        form.add_error(None, error)
    context = {
        "workflow": workflow,
        "form": form,
        # A key that was refused is replaced: the next submission starts afresh with a good one.
        "idempotency_key": (not key_errors and posted_key) or uuid.uuid4().hex,
        "idempotency_key_name": options.add_prefix("idempotency_key"),
        "active_nav": "workflows",
    }
    return render(request, "orchestrator/workflow_start.html", context, status=400 if form.errors else 200)
