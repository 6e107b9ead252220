"""Inbox pages and task actions. Each action is a POST with CSRF calling one service."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from approvals import selectors, services
from approvals.models import HumanTask, TaskKind, TaskState
from orchestrator import registry
from orchestrator.dsl import Human
from orchestrator.selectors import steps_of
from orchestrator.typing import AuthedRequest
from orchestrator.views import request_meta

TABS = {
    "mine": ("My tasks", selectors.my_tasks),
    "queue": ("Team queue", selectors.team_queue),
    "done": ("Done by me", selectors.done_by),
}
SORTS = {
    "due": ("due_at", "-priority", "id"),
    "priority": ("-priority", "due_at", "id"),
    "age": ("created_at", "id"),
    "recent": ("-completed_at", "-id"),
}


def _tab_queryset(request: AuthedRequest, tab: str) -> QuerySet[HumanTask]:
    qs = TABS[tab][1](request.user)
    sort = request.GET.get("sort") or ("recent" if tab == "done" else "due")
    return qs.order_by(*SORTS.get(sort, SORTS["due"]))


@login_required
def inbox(request: AuthedRequest) -> HttpResponse:
    """My tasks, the team queue, and what I have done; the list refreshes live."""
    tab = request.GET.get("tab", "mine")
    if tab not in TABS:
        tab = "mine"
    counts = selectors.inbox_counts(request.user)
    if tab == "mine" and "tab" not in request.GET and not counts["inbox"] and counts["queue"]:
        tab = "queue"  # nothing assigned yet: show what can be claimed
    page = Paginator(_tab_queryset(request, tab), 25).get_page(request.GET.get("page"))
    context = {
        "tab": tab,
        "tabs": [(key, label) for key, (label, _) in TABS.items()],
        "page": page,
        "counts": counts,
        "sort": request.GET.get("sort", ""),
        "now": timezone.now(),
        "active_nav": "inbox",
    }
    if request.htmx and request.htmx.target == "task-list":
        return render(request, "approvals/_task_list.html", context)
    return render(request, "approvals/inbox.html", context)


def _task_or_404(request: AuthedRequest, task_id: int) -> HumanTask:
    task = selectors.visible_tasks(request.user).filter(pk=task_id).first()
    if task is None:
        raise Http404("No such task.")
    return task


@login_required
def task_detail(request: AuthedRequest, task_id: int) -> HttpResponse:
    """A task with its instance's data, step timeline, earlier decisions and the decision form."""
    task = _task_or_404(request, task_id)
    instance = task.instance
    form = None
    if task.kind == TaskKind.FORM:
        node = registry.get(instance.workflow_name, instance.workflow_version).node(task.step.name)
        assert isinstance(node, Human)
        form = node.form(data=request.POST or None)
    user = request.user
    context = {
        "task": task,
        "instance": instance,
        "data_rows": sorted((k, v) for k, v in instance.data.items() if not isinstance(v, dict)),
        "steps": steps_of(instance),
        "decisions": list(instance.decisions.select_related("user", "task").order_by("created_at")),
        "form": form,
        "is_initiator": instance.initiator_id == user.pk,
        "is_assignee": task.assignee_id == user.pk,
        "is_candidate": services.is_candidate(user, task),
        "is_manager": services.is_manager(user),
        "delegates": _delegates(task) if task.is_actionable else [],
        "active_nav": "inbox",
    }
    status = 200
    if request.method == "POST" and task.kind == TaskKind.FORM:
        status = 400
    return render(request, "approvals/task_detail.html", context, status=status)


def _delegates(task: HumanTask) -> list[Any]:
    users = get_user_model().objects.filter(groups__in=task.candidate_groups.all()) | task.candidate_users.all()
    return list(users.exclude(pk=task.instance.initiator_id or 0).distinct().order_by("username")[:50])


def _after_action(request: AuthedRequest, task: HumanTask) -> HttpResponse:
    return redirect("task_detail", task_id=task.pk)


def _fail(request: AuthedRequest, task_id: int, exc: services.TaskError) -> HttpResponse:
    level = messages.WARNING if isinstance(exc, services.TaskConflict) else messages.ERROR
    messages.add_message(request, level, str(exc))
    if isinstance(exc, services.TaskNotFound):
        raise Http404(str(exc))
    response = redirect("task_detail", task_id=task_id)
    if isinstance(exc, services.TaskConflict):
        response.status_code = 303
    return response


@require_POST
@login_required
def task_claim(request: AuthedRequest, task_id: int) -> HttpResponse:
    try:
        task = services.task_claim(task_id, request.user, request_meta=request_meta(request))
    except services.TaskError as exc:
        return _fail(request, task_id, exc)
    messages.success(request, "Claimed. The task is yours.")
    return _after_action(request, task)


@require_POST
@login_required
def task_release(request: AuthedRequest, task_id: int) -> HttpResponse:
    try:
        services.task_release(task_id, request.user, request_meta=request_meta(request))
    except services.TaskError as exc:
        return _fail(request, task_id, exc)
    messages.info(request, "Released back to the team queue.")
    return redirect("inbox")


@require_POST
@login_required
def task_delegate(request: AuthedRequest, task_id: int) -> HttpResponse:
    to = get_user_model().objects.filter(pk=request.POST.get("to_user") or 0).first()
    if to is None:
        messages.error(request, "Choose who to delegate to.")
        return redirect("task_detail", task_id=task_id)
    try:
        services.task_delegate(
            task_id, request.user, to, note=request.POST.get("note", ""), request_meta=request_meta(request)
        )
    except services.TaskError as exc:
        return _fail(request, task_id, exc)
    messages.success(request, f"Delegated to {to.get_username()}.")
    return redirect("inbox")


@require_POST
@login_required
def task_decide(request: AuthedRequest, task_id: int) -> HttpResponse:
    """Approve, reject, submit or resolve; then open the next task of the queue."""
    decision = request.POST.get("decision", "")
    data = {k: v for k, v in request.POST.items() if k not in ("csrfmiddlewaretoken", "decision", "comment")}
    try:
        task = services.task_decide(
            task_id,
            request.user,
            decision,
            comment=request.POST.get("comment", ""),
            data=data,
            request_meta=request_meta(request),
        )
    except services.TaskInvalid as exc:
        if exc.errors and decision == services.SUBMIT:
            messages.error(request, str(exc))
            return task_detail(request, task_id)
        return _fail(request, task_id, exc)
    except services.TaskError as exc:
        return _fail(request, task_id, exc)
    if task.state == TaskState.COMPLETED:
        messages.success(request, f"{services._past(decision).capitalize()}: {task.title}.")
    else:
        messages.success(request, f"Your approval is recorded ({task.approvals} of {task.quorum}).")
    following = _next_task(request, exclude=task.pk)
    if following is not None:
        return redirect("task_detail", task_id=following.pk)
    return redirect("inbox")


def _next_task(request: AuthedRequest, exclude: int) -> HumanTask | None:
    for tab in ("mine", "queue"):
        candidate = _tab_queryset(request, tab).exclude(pk=exclude).first()
        if candidate is not None:
            return candidate
    return None
