"""Inbox pages and task actions. Each action is a POST with CSRF calling one service."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import Http404, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dates import MONTHS_3
from django.utils.functional import SimpleLazyObject
from django.views.decorators.http import require_POST

from approvals import forms, saved_views, selectors
from approvals.models import (
    ACTIONABLE_TASK_STATES,
    HumanTask,
    Priority,
    TaskDecision,
    TaskKind,
    TaskState,
    is_overdue,
)
from approvals.services import base as task_rules
from approvals.services import tasks as task_actions
from orchestrator import accounts, registry
from orchestrator.accounts import hidden_404, request_meta
from orchestrator.bidi import isolate
from orchestrator.dsl import Human
from orchestrator.inputs import COMMENT_MAX, NOTE_MAX
from orchestrator.models import StepState
from orchestrator.selectors import steps_of
from orchestrator.services import locks
from orchestrator.templatetags.baton import duration, label
from orchestrator.typing import AuthedRequest

# A form task's fields are posted as "form-<name>": a workflow's form may name a field as the page names its own
# (decision, comment), and sharing a name the two overwrote each other.
FORM_PREFIX = "form"
# Rows the Escalations page shows at most; past them it says how many there are (overdue) or that there are more.
ESCALATION_ROWS = 200

TABS: dict[str, tuple[str, Callable[[User], QuerySet[HumanTask]]]] = {
    "mine": ("My tasks", selectors.my_tasks),
    "queue": ("Team queue", selectors.team_queue),
    "done": ("Done by me", selectors.done_by),
}


def _base_queryset(user: User, query: selectors.InboxQuery) -> QuerySet[HumanTask]:
    if query.tab == "mine":
        return selectors.my_tasks(user, include_snoozed=query.snoozed)
    return TABS[query.tab][1](user)


def _url_maker(name: str) -> Callable[[int], str]:
    """``reverse(name, args=[pk])`` for a whole page of pks at the cost of one reverse (about 16 us each)."""
    marker = "918273645"
    before, after = reverse(name, args=[int(marker)]).split(marker)
    return lambda pk: f"{before}{pk}{after}"


class _ShortDate:
    """``{{ value|date:"M j, H:i T" }}`` in the current time zone, without the filter's cost (about 28 us a call)."""

    def __init__(self) -> None:
        self.months: dict[int, str] = {}

    def __call__(self, value: datetime) -> str:
        local = timezone.localtime(value)
        month = self.months.get(local.month)
        if month is None:
            month = self.months[local.month] = str(MONTHS_3[local.month]).title()
        # With its zone: a person reading "due 14:05" must know which clock that is (issue 10, "Times").
        return f"{month} {local.day}, {local.hour:02d}:{local.minute:02d} {local.tzname()}"


def _task_rows(tasks: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """The page's rows with what the row template shows worked out once, in Python: links, dates, durations.

    The template then only reads dict keys: the first thing Django's variable lookup tries, so the cheapest.
    The id is printed three times a row, so it is turned into text once (an int goes through number
    localization each time).
    """
    detail_url, claim_url, short = _url_maker("approvals:task_detail"), _url_maker("approvals:task_claim"), _ShortDate()
    state_labels = dict(TaskState.choices)
    rows = []
    for task in tasks:
        due_at, snoozed_until, completed_at = task["due_at"], task["snoozed_until"], task["completed_at"]
        # Waiting on an operator (paused or failed): said on the row, and never "overdue" (nobody can act on it).
        on_hold = task["instance__state"] if task["instance__state"] in selectors.ON_HOLD_STATES else ""
        on_hold = on_hold if task["state"] in ACTIONABLE_TASK_STATES else ""
        row: dict[str, Any] = {
            **task,
            "id": str(task["id"]),
            "url": detail_url(task["id"]),
            "claim_url": claim_url(task["id"]),
            "state_label": state_labels.get(task["state"], task["state"]),
            "assignee": task.get("assignee__username") or "",
            "workflow": label(task["instance__workflow_name"]),
            "business_key": task["instance__business_key"],
            "due": short(due_at) if due_at is not None else "",
            "overdue": is_overdue(due_at, task["state"], now) and not on_hold,
            "on_hold": on_hold,
            "snoozed": short(snoozed_until) if snoozed_until is not None and snoozed_until > now else "",
            "completed": short(completed_at) if completed_at is not None else "",
            # Done by me: when the viewer did their part (their vote, for a task still waiting for others).
            "done": short(task["done_at"]) if task.get("done_at") is not None else "",
            "waiting": duration(task["created_at"], now),
            # In "Done by me", an open task is one the viewer voted on as part of its quorum: the row says how
            # many votes it still waits for (their own is in; four-eyes keeps it out of their other lists).
            "waits_for": task["quorum"] - task["approvals"] if task["state"] in ACTIONABLE_TASK_STATES else 0,
        }
        if "done_at" in task:
            # Done by me: what the person did and when, printed twice (its column, and under the title where the
            # column is hidden, below 992 px), so worked out once here.
            if row["waits_for"]:
                row["done_text"] = f"you approved {row['done']} · waits for {row['waits_for']} more"
            else:
                # The person's own decision and when they made it: on a quorum task another's vote may have
                # completed it later, and the other way (its outcome, its completion) the row told an approver
                # they had rejected it.
                what = task.get("done_decision") or task["decision"] or row["state_label"].lower()
                row["done_text"] = f"{what} · {row['done'] or row['completed']}"
        rows.append(row)
    return rows


@login_required
def inbox(request: AuthedRequest) -> HttpResponse:
    """My tasks, the team queue, and what I have done: filtered, sorted, keyset-paged, live."""
    tab = request.GET.get("tab", "")
    counts = SimpleLazyObject(lambda: selectors.inbox_counts(request.user))
    if tab not in TABS:
        # Nothing assigned yet: open on what can be claimed.
        tab = "queue" if not counts["inbox"] and counts["queue"] else "mine"
    query = selectors.InboxQuery.parse(request.GET, tab)
    now = timezone.now()
    page = selectors.page_of(_base_queryset(request.user, query).values(*selectors.row_fields(tab)), query)
    page = replace(page, tasks=_task_rows(page.tasks, now))
    if not (request.htmx and request.htmx.target == "task-list"):
        # A live re-fetch of the rows shows no messages: they would pile up for the person's next page.
        for error in query.errors:
            messages.warning(request, error)
    context = {
        "tab": tab,
        "page": page,
        "query": query,
        "params": query.as_params(),
        "next_params": query.as_params(after=page.next_cursor) if page.next_cursor else None,
        "first_params": query.as_params(),
        "now": now,
    }
    if request.htmx and request.htmx.target == "task-list":
        # The live re-fetch needs only the rows: no filters, saved views or counts to build.
        return render(request, "approvals/_task_list.html", context)
    context |= {
        "tabs": [(key, name) for key, (name, _) in TABS.items()],
        "counts": counts,
        "workflows": registry.latest_all(),
        "priorities": Priority.choices,
        "due_buckets": [
            ("overdue", "Overdue"),
            ("today", "Due today"),
            ("later", "Due later"),
            ("none", "No due date"),
        ],
        "states": TaskState.choices,
        "sorts": [("due", "Due date"), ("priority", "Priority"), ("age", "Oldest first"), ("recent", "Recently done")],
        "saved_views": list(selectors.saved_views_for(request.user)),
        # A refused "save view" comes back here with the name typed (saved_view_create).
        "view_name": str(request.GET.get("view_name", "")).replace("\x00", "")[:200],
        "share_groups": selectors.user_groups(request.user),
        "active_nav": "inbox",
    }
    return render(request, "approvals/inbox.html", context)


@login_required
def escalations(request: AuthedRequest) -> HttpResponse:
    """For managers: overdue, escalated and operator-escalation tasks, most urgent first; with ``?show=overdue``,
    exactly the tasks the dashboard's "Overdue tasks" card counts (``selectors.overdue_tasks``), which it links to.
    Others get 404. Any other ``show`` value lists everything to chase."""
    if not selectors.is_manager(request.user):
        raise Http404("No such page.")
    now = timezone.now()
    show = "overdue" if request.GET.get("show") == "overdue" else "all"
    context: dict[str, Any] = {"now": now, "show": show, "active_nav": "escalations"}
    if show == "overdue":
        # One row more than shown tells whether there are more; only then is the whole number counted, so the card's
        # figure can be read against the page however many there are.
        tasks = list(selectors.overdue_tasks(now)[: ESCALATION_ROWS + 1])
        if len(tasks) > ESCALATION_ROWS:
            context["total"] = selectors.overdue_tasks(now).count()
    else:
        tasks = list(selectors.escalations(request.user)[: ESCALATION_ROWS + 1])
    context |= {"tasks": tasks[:ESCALATION_ROWS], "more": len(tasks) > ESCALATION_ROWS, "rows": ESCALATION_ROWS}
    return render(request, "approvals/escalations.html", context)


@login_required
def notifications(request: AuthedRequest) -> HttpResponse:
    """The bell's list; opening it marks what it shows as read."""
    items = list(selectors.notifications_for(request.user)[:100])
    unread = [n.pk for n in items if n.read_at is None]
    context = {"items": items, "unread": set(unread), "active_nav": "notifications"}
    response = render(request, "approvals/notifications.html", context)
    if unread:
        task_actions.notifications_mark_read(request.user, unread)
    return response


@require_POST
@login_required
def tasks_claim_bulk(request: AuthedRequest) -> HttpResponse:
    """Claim the selected rows of the team queue."""
    form = forms.BulkClaimForm(request.POST)
    ids = form.cleaned_data["task"] if form.is_valid() else []
    if form.errors:
        messages.error(request, " ".join(map(str, form.errors["task"])))
        return redirect(f"{reverse('approvals:inbox')}?tab=queue")
    if not ids:
        messages.warning(request, "Select the tasks to claim first.")
        return redirect(f"{reverse('approvals:inbox')}?tab=queue")
    result = task_actions.tasks_claim_bulk(ids, request.user, request_meta=request_meta(request))
    # Each refusal recorded as the single claim's 403 or hidden 404 is: the redirect below is no refusal to the
    # middleware that records those, and a bulk claim was a side door (the initiator's claim, a scan of ids).
    for pk in result.forbidden:
        accounts.item_refused(request, "task", pk, result.refused[pk])
    for pk in result.hidden:
        accounts.hidden_item_refused(request, "task", HumanTask, pk)
    if result.claimed:
        messages.success(request, f"Claimed {len(result.claimed)} task{'s' if len(result.claimed) != 1 else ''}.")
    if result.refused:
        # Titles only of tasks the person may open: any id can be posted, and a title tells what a task is about.
        visible = selectors.visible_tasks(request.user).filter(pk__in=result.refused)
        titles = dict(visible.values_list("pk", "title"))
        # Each title isolated (FIRST STRONG ISOLATE ... POP DIRECTIONAL ISOLATE): it comes from the business data, and a
        # right-to-left override in one reversed the rest of the message as drawn, the other tasks' reasons included.
        details = "; ".join(
            f"“{isolate(titles[pk])}”: {why}" if pk in titles else f"task {pk}: {why}"
            for pk, why in result.refused.items()
        )
        messages.warning(request, f"{len(result.refused)} could not be claimed. {details}")
    return redirect(f"{reverse('approvals:inbox')}?tab=mine")


@require_POST
@login_required
def saved_view_create(request: AuthedRequest) -> HttpResponse:
    """Save the current filters under a name, optionally shared with one of the user's groups."""
    form = forms.SavedViewForm(request.POST)
    tab = request.POST.get("tab", "mine")
    query = selectors.InboxQuery.parse(request.POST, tab if tab in TABS else "mine")
    if form.is_valid() and not query.errors:
        name = form.cleaned_data["name"]
        shared_with = form.cleaned_data["shared_with"]
        # Only a group the user belongs to; anything else saves a private view.
        group = request.user.groups.filter(pk=shared_with).first() if shared_with else None
        params = {k: v for k, v in query.as_params().items() if k != "tab"}
        saved_views.saved_view_save(request.user, name, query.tab, params, group)
        messages.success(request, f"Saved view “{name}”" + (f", shared with {group.name}." if group else "."))
    else:
        problems = [" ".join(map(str, errors)) for errors in form.errors.values()] + query.errors
        messages.error(request, " ".join(problems))
        # The inbox opens the save form again with the name as typed (less a NUL nobody can see).
        typed = str(request.POST.get("name", "")).replace("\x00", "")[:200]
        return redirect(f"{reverse('approvals:inbox')}?{urlencode({**query.as_params(), 'view_name': typed})}")
    return redirect(f"{reverse('approvals:inbox')}?{urlencode(query.as_params())}")


@require_POST
@login_required
def saved_view_delete(request: AuthedRequest, view_id: int) -> HttpResponse:
    if saved_views.saved_view_delete(request.user, view_id):
        messages.info(request, "Saved view deleted.")
    else:
        messages.error(request, "Only the owner can delete a saved view.")
    return redirect("approvals:inbox")


@require_POST
@login_required
def task_snooze(request: AuthedRequest, task_id: int) -> HttpResponse:
    """Hide a claimed task from My tasks until a time."""
    form = forms.SnoozeForm(request.POST)
    if not form.is_valid():
        return _render_task(request, _task_or_404(request, task_id), status=400, snooze_form=form)
    until = form.cleaned_data["until"]
    try:
        task_actions.task_snooze(task_id, request.user, until, request_meta=request_meta(request))
    except task_rules.TaskError as exc:
        return _refused(request, task_id, exc, snooze_form=form)
    # With its zone, as every time shown (docs/architecture.md, "What people type").
    messages.success(request, f"Snoozed until {timezone.localtime(until):%Y-%m-%d %H:%M %Z}.")
    return redirect("approvals:inbox")


def _task_or_404(request: AuthedRequest, task_id: int) -> HumanTask:
    task = selectors.visible_tasks(request.user).filter(pk=task_id).first()
    if task is None:
        raise hidden_404(request, "task", HumanTask, task_id, "No such task.")
    return task


@login_required
def task_detail(request: AuthedRequest, task_id: int) -> HttpResponse:
    """A task with its instance's data, step timeline, earlier decisions and the decision form.

    An htmx request aimed at ``task-decision`` (the live refresh after someone else claims or decides) gets that
    card alone.
    """
    return _render_task(request, _task_or_404(request, task_id))


def _render_task(
    request: AuthedRequest,
    task: HumanTask,
    *,
    status: int = 200,
    decide_form: forms.DecideForm | None = None,
    delegate_form: forms.DelegateForm | None = None,
    snooze_form: forms.SnoozeForm | None = None,
    field_errors: dict[str, list[str]] | None = None,
) -> HttpResponse:
    """The task page; after a refused action, its forms as they were posted, with the errors (``field_errors``:
    a service's per-field refusals), so nothing typed is lost."""
    instance = task.instance
    user = request.user
    posted = request.POST if request.method == "POST" else None
    form = None
    definition = locks.definition_or_none(instance)
    # Said on the page; a decision is refused with the same reason (task_actions.task_decide).
    undecidable = task_actions.why_undecidable(instance, task)
    if task.kind == TaskKind.FORM and definition is not None and not undecidable:
        node = definition.node(task.step.name)
        if isinstance(node, Human):
            form = node.form(data=posted if decide_form is not None else None, prefix=FORM_PREFIX)
            if posted is not None and decide_form is not None:
                form.is_valid()
                for name, errors in (field_errors or {}).items():
                    if name in form.fields and name not in form.errors:
                        form.add_error(name, errors)
    for posted_form in (decide_form, delegate_form, snooze_form):
        # The card sits beside the page's content: the message at the top says what to fix, the form where.
        for posted_errors in posted_form.errors.values() if posted_form is not None else ():
            messages.error(request, " ".join(map(str, posted_errors)))
    decide_form = decide_form or forms.DecideForm()
    for name, errors in (field_errors or {}).items():
        if name == "comment" and not decide_form.has_error("comment"):
            decide_form.add_error("comment", errors)
        # The service's refusal of a snooze time or a delegate (a time in the past, someone who may not take it)
        # marked where it was typed, as the form's own errors are; the message at the top said it already.
        for posted_form in (delegate_form, snooze_form):
            if posted_form is not None and name in posted_form.fields and not posted_form.has_error(name):
                posted_form.add_error(name, errors)
    decisions = list(instance.decisions.select_related("user", "task").order_by("created_at"))
    for decision in decisions:
        # "staff rejected", never the verb with a "d" added ("rejectd", "submitd").
        decision.past_tense = task_rules.past_tense(decision.decision)  # type: ignore[attr-defined]
    approved_before = any(d.user_id == user.pk and d.decision == task_rules.APPROVE for d in decisions)
    decided_this = any(d.user_id == user.pk and d.task_id == task.pk for d in decisions)
    context = {
        "task": task,
        "instance": instance,
        "data_rows": sorted((k, v) for k, v in instance.data.items() if not isinstance(v, dict)),
        # Sent with a decision from beside the data it fingerprints (the details card, which no live refresh
        # swaps), so it always names what the person read.
        "data_digest": task_rules.data_digest(instance.data),
        "steps": steps_of(instance),
        "decisions": decisions,
        "form": form,
        "decide_form": decide_form,
        "delegate_form": delegate_form or forms.DelegateForm(),
        "snooze_form": snooze_form or forms.SnoozeForm(),
        "comment_max": COMMENT_MAX,
        "note_max": NOTE_MAX,
        "is_initiator": instance.initiator_id == user.pk,
        # Said instead of the forms, in the services' words: they refuse whoever it bars to decide or steer the task.
        "four_eyes": task_rules.four_eyes_bar(
            task.kind, instance.initiator_id, user.pk, approved_before=approved_before, decided_this=decided_this
        ),
        "is_assignee": task.assignee_id == user.pk,
        "is_candidate": task_rules.is_candidate(user, task),
        "is_manager": selectors.is_manager(user),
        "delegates": _delegates(task, exclude=user) if task.is_actionable else [],
        "definition_missing": undecidable,
        "redeploy": task_actions.REDEPLOY,
        # Paused or failed: a decision is refused until an operator resumes or retries (task_actions._decide).
        "on_hold": instance.state in selectors.ON_HOLD_STATES and task.is_actionable,
        "active_nav": "inbox",
    }
    if request.htmx and request.htmx.target == "task-decision":
        return render(request, "approvals/_task_decision.html", context, status=status)
    return render(request, "approvals/task_detail.html", context, status=status)


def _delegates(task: HumanTask, *, exclude: User) -> list[Any]:
    """Active candidates the task could be handed to: never the viewer, never its holder, never the instance's
    initiator, nobody who decided it already or, for an approval, approved another step of the instance (the
    service refuses them)."""
    users = get_user_model().objects.filter(groups__in=task.candidate_groups.all()) | task.candidate_users.all()
    users = users.filter(is_active=True).exclude(
        pk__in=[exclude.pk, task.instance.initiator_id or 0, task.assignee_id or 0]
    )
    decided = TaskDecision.objects.filter(task=task)
    if task.kind == TaskKind.APPROVAL:
        decided = decided | TaskDecision.objects.filter(instance_id=task.instance_id, decision=task_rules.APPROVE)
    users = users.exclude(pk__in=decided.values("user_id"))
    return list(users.distinct().order_by("username")[:50])


def _after_action(request: AuthedRequest, task: HumanTask) -> HttpResponse:
    return redirect("approvals:task_detail", task_id=task.pk)


def _fail(request: AuthedRequest, task_id: int, exc: task_rules.TaskError) -> HttpResponse:
    """A refused claim or release (nothing typed to keep): a message on the task page."""
    if isinstance(exc, task_rules.TaskNotFound):
        # No message: it would surface on the person's next, unrelated page.
        raise hidden_404(request, "task", HumanTask, task_id, str(exc))
    level = messages.WARNING if isinstance(exc, task_rules.TaskConflict) else messages.ERROR
    messages.add_message(request, level, str(exc))
    if isinstance(exc, task_rules.TaskForbidden):
        # Refused for who the person is (four-eyes, no longer a candidate): 403, with the reason on the task page.
        response = task_detail(request, task_id)
        response.status_code = 403
        return response
    response = redirect("approvals:task_detail", task_id=task_id)
    if isinstance(exc, task_rules.TaskConflict):
        response.status_code = 303
    return response


REFUSAL_STATUS = [(task_rules.TaskConflict, 409), (task_rules.TaskForbidden, 403), (task_rules.TaskInvalid, 400)]


def _refused(request: AuthedRequest, task_id: int, exc: task_rules.TaskError, **forms_as_posted: Any) -> HttpResponse:
    """A refused action that carried typed input: the task page as it is now, with the refusal's message and
    the posted forms (``forms_as_posted``), so the person can act on what changed without typing again."""
    if isinstance(exc, task_rules.TaskNotFound):
        raise hidden_404(request, "task", HumanTask, task_id, str(exc))
    status = next((code for kind, code in REFUSAL_STATUS if isinstance(exc, kind)), 400)
    level = messages.WARNING if isinstance(exc, task_rules.TaskConflict) else messages.ERROR
    messages.add_message(request, level, str(exc))
    errors = exc.errors if isinstance(exc, task_rules.TaskInvalid) else {}
    return _render_task(request, _task_or_404(request, task_id), status=status, field_errors=errors, **forms_as_posted)


@require_POST
@login_required
def task_claim(request: AuthedRequest, task_id: int) -> HttpResponse:
    try:
        task = task_actions.task_claim(task_id, request.user, request_meta=request_meta(request))
    except task_rules.TaskError as exc:
        return _fail(request, task_id, exc)
    messages.success(request, "Claimed. The task is yours.")
    return _after_action(request, task)


@require_POST
@login_required
def task_release(request: AuthedRequest, task_id: int) -> HttpResponse:
    try:
        task_actions.task_release(task_id, request.user, request_meta=request_meta(request))
    except task_rules.TaskError as exc:
        return _fail(request, task_id, exc)
    messages.info(request, "Released back to the team queue.")
    return redirect("approvals:inbox")


@require_POST
@login_required
def task_delegate(request: AuthedRequest, task_id: int) -> HttpResponse:
    form = forms.DelegateForm(request.POST)
    if not form.is_valid():
        return _render_task(request, _task_or_404(request, task_id), status=400, delegate_form=form)
    to, note = form.cleaned_data["to_user"], form.cleaned_data["note"]
    try:
        task_actions.task_delegate(
            task_id,
            request.user,
            to,
            note=note,
            seen_holder=form.cleaned_data["holder"],
            request_meta=request_meta(request),
        )
    except task_rules.TaskError as exc:
        return _refused(request, task_id, exc, delegate_form=form)
    messages.success(request, f"Delegated to {to.get_username()}.")
    return redirect("approvals:inbox")


@require_POST
@login_required
def task_decide(request: AuthedRequest, task_id: int) -> HttpResponse:
    """Approve, reject, submit or resolve; then open the next task of the queue.

    Any refusal (someone else claimed or decided first, four-eyes, a missing comment, form errors) shows the
    task page again with the comment and the form's fields as typed.
    """
    form = forms.DecideForm(request.POST)
    if not form.is_valid():
        return _render_task(request, _task_or_404(request, task_id), status=400, decide_form=form)
    decision = form.cleaned_data["decision"]
    data = _form_task_data(request.POST)
    try:
        task = task_actions.task_decide(
            task_id,
            request.user,
            decision,
            comment=form.cleaned_data["comment"],
            data=data,
            seen=form.cleaned_data["seen"] or None,
            request_meta=request_meta(request),
        )
    except task_rules.TaskError as exc:
        return _refused(request, task_id, exc, decide_form=form)
    stopped = task.kind != TaskKind.ESCALATION and task.step.state == StepState.DEAD
    if task.state == TaskState.COMPLETED and stopped:
        # The decision is kept, but what follows it raised: the workflow stopped (task_actions.task_decide).
        messages.success(
            request, f"{task_rules.past_tense(decision).capitalize()} “{isolate(task.title)}”. Your decision is kept."
        )
        messages.warning(
            request,
            f"The workflow stopped after your decision: {task.step.error_type} while starting its next step. "
            "The operators have been told; nothing more is needed from you.",
        )
    elif task.state == TaskState.COMPLETED:
        # The title in quotes: titles often start with their action ("Approve ..."), which read "Approved: Approve ...".
        messages.success(request, f"{task_rules.past_tense(decision).capitalize()} “{isolate(task.title)}”.")
    else:
        messages.success(request, f"Your approval is recorded ({task.approvals} of {task.quorum}).")
    following = _next_task(request, exclude=task.pk)
    if following is not None:
        return redirect("approvals:task_detail", task_id=following.pk)
    return redirect("approvals:inbox")


def _form_task_data(posted: QueryDict) -> QueryDict:
    """The workflow form's fields of a posted decision, under their own names (the page posts them as
    ``FORM_PREFIX-<name>``), every value of each: ticked boxes and multiple selects keep all theirs."""
    data = QueryDict(mutable=True)
    start = f"{FORM_PREFIX}-"
    for key, values in posted.lists():
        if key.startswith(start):
            data.setlist(key[len(start) :], values)
    return data


def _next_task(request: AuthedRequest, exclude: int) -> HumanTask | None:
    for tab in ("mine", "queue"):
        query = selectors.InboxQuery(tab=tab)
        qs = _base_queryset(request.user, query).exclude(pk=exclude)
        following = selectors.page_of(qs, query, size=1).tasks
        if following:
            return following[0]
    return None
