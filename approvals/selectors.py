"""Reads for the inbox pages. Each list is a constant number of queries whatever its size:
the user's group ids (one query), the page (one query with its joins), and capped counts.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import connections
from django.db.models import Count, Exists, F, FilteredRelation, OuterRef, Q, QuerySet, Window
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from approvals.models import (
    ACTIONABLE_TASK_STATES,
    HumanTask,
    Notification,
    Priority,
    SavedView,
    TaskCandidate,
    TaskDecision,
    TaskKind,
    TaskState,
)
from orchestrator.inputs import SEARCH_MAX, business_key_forms, drop_repeated
from orchestrator.models import InstanceState, WorkflowInstance
from orchestrator.selectors import latest_with_total

# Instances whose tasks wait and cannot be decided: a paused one (its tasks' SLAs count unpaused time only, and the
# resume moves them on by the pause) and a failed one (its deadlines wait for an operator's retry). A task of theirs
# past its due time is on hold for the people who hold it, not overdue: nobody can act on it.
ON_HOLD_STATES = (InstanceState.PAUSED, InstanceState.FAILED)

# Counts above this show as "99+": counting 100,000 queued rows on every page would cost more than it tells.
COUNT_CAP = 100
MANAGERS = "managers"
OPERATORS = "operators"  # services.base.OPERATORS


def user_groups(user: User) -> list[tuple[int, str]]:
    """The user's groups as (id, name) by name, read once and cached on the user object for the request.

    One query serves the candidate filter, the saved views, the "share with" choices and the navigation's
    manager check.
    """
    cached = getattr(user, "_baton_groups", None)
    if cached is None:
        cached = list(user.groups.order_by("name").values_list("pk", "name"))
        user._baton_groups = cached  # type: ignore[attr-defined]
    return cached


def group_ids(user: User) -> list[int]:
    """The user's group ids, cached on the user object for the request."""
    return [pk for pk, _name in user_groups(user)]


def is_manager(user: User) -> bool:
    return user.is_superuser or user.groups.filter(name=MANAGERS).exists()


def shows_manager_pages(user: User) -> bool:
    """``is_manager`` for the navigation, from the groups already read for this request (no query of its own)."""
    return user.is_superuser or any(name == MANAGERS for _pk, name in user_groups(user))


def _candidate_filter(user: User) -> Q:
    # One EXISTS (not two ORed): PostgreSQL then probes the candidate index per queued row and stops at the
    # page size, instead of hashing every candidate row of every task.
    mine = TaskCandidate.objects.filter(task_id=OuterRef("pk")).filter(
        Q(group_id__in=group_ids(user)) | Q(user_id=user.pk)
    )
    return Q(Exists(mine))


def _with_related(qs: QuerySet[HumanTask]) -> QuerySet[HumanTask]:
    return qs.select_related("instance", "assignee")


def my_tasks(user: User, *, include_snoozed: bool = False) -> QuerySet[HumanTask]:
    """Tasks assigned to the user and still to do (snoozed ones hidden until they wake)."""
    qs = HumanTask.objects.filter(assignee=user, state__in=ACTIONABLE_TASK_STATES)
    if not include_snoozed:
        qs = qs.filter(Q(snoozed_until__isnull=True) | Q(snoozed_until__lte=timezone.now()))
    return _with_related(qs)


def team_queue(user: User) -> QuerySet[HumanTask]:
    """Unclaimed tasks the user may claim through their groups or by name.

    Tasks of instances the user started are left out, escalations included (four-eyes: resolving a failure of
    one's own instance steers it as much as deciding it does, and the services refuse it); so are quorum tasks the
    user already decided (waiting for the others: the services refuse a second decision and its claim), and
    approvals of instances the user approved another task of (four-eyes: the services refuse their claim).
    """
    approved = TaskDecision.objects.filter(
        instance_id=OuterRef("instance_id"), user=user, decision="approve"
    )  # services.base.APPROVE
    qs = (
        HumanTask.objects.filter(state__in=[TaskState.OPEN, TaskState.ESCALATED], assignee__isnull=True)
        .filter(_candidate_filter(user))
        .exclude(instance__initiator=user)
        .exclude(decisions__user=user)
        .exclude(Q(kind=TaskKind.APPROVAL) & Exists(approved))
    )
    return _with_related(qs)


def done_by(user: User) -> QuerySet[HumanTask]:
    """Tasks the user completed, and tasks the user decided as one vote of a quorum: those still wait for the
    others' votes (open, in nobody's list of the user's: four-eyes keeps them out of My tasks and the queue) or were
    completed by another's vote, and the person who voted must still find them (the row says what they wait for).

    Every decision through ``task_decide`` leaves a TaskDecision row; an escalation's resolution leaves none, only
    ``completed_by``: hence the two halves. The task ids are one ``UNION ALL`` of two index scans (TaskDecision's
    ``decision_user_task`` and HumanTask's ``task_done_by``, both led by the user), joined to the tasks as a semi-join
    on their primary key; no scan of either table. A task is in both halves when the user's vote completed it: the
    ``IN`` makes it one row.

    Each task carries ``done_decision``, the user's own decision (None when they completed it without one), and
    ``done_at``: when the user did their part, their own decision's time (a quorum vote that
    still waits has no completion time; one completed by another's vote later was done by the user earlier), else
    the completion time (an escalation they resolved). "Recently done" sorts by it (``InboxQuery.order``). Read in
    the same statement, by a left join on the person's decision of each task (one at most: ``decision_one_per_user``).
    """
    voted = TaskDecision.objects.filter(user=user).values("task_id")
    completed = HumanTask.objects.filter(completed_by=user, state=TaskState.COMPLETED).values("id")
    return _with_related(
        HumanTask.objects.filter(pk__in=voted.union(completed, all=True)).annotate(
            my_decision=FilteredRelation("decisions", condition=Q(decisions__user=user)),
            done_at=Coalesce(F("my_decision__created_at"), F("completed_at")),
            # What the user decided (None: they completed it without a decision of theirs, an escalation's answer):
            # on a quorum task it may differ from the task's outcome, which another person's vote decided.
            done_decision=F("my_decision__decision"),
        )
    )


def may_open(user: User) -> Q:
    """A filter on HumanTask: the tasks ``user`` may open, by :func:`visible_tasks`' rule (candidate, assignee, the
    one who completed it, or a manager). Reads the user's groups once per request (``user_groups``, which the
    navigation reads too), so annotating a list with it costs no statement of its own."""
    if shows_manager_pages(user):
        return Q(pk__isnull=False)
    return Q(assignee=user) | Q(completed_by=user) | _candidate_filter(user)


def visible_tasks(user: User) -> QuerySet[HumanTask]:
    """Every task the user may open: candidate, assignee, the one who completed it, or a manager."""
    qs = HumanTask.objects.all()
    if not is_manager(user):
        qs = qs.filter(Q(assignee=user) | Q(completed_by=user) | _candidate_filter(user))
    return _with_related(qs).select_related("step")


def instance_ids_seen(user: User) -> QuerySet[Any]:
    """The ids (``instance_id``) of the instances ``user`` sees through a task: those of :func:`visible_tasks`
    (candidate, assignee, who completed it; a manager every task's), as a subquery for a list of instances
    (``orchestrator.selectors.instances_for_user``). The manager check reads the groups already read for the
    candidate filter (:func:`user_groups`), so a list pays one query for both, not one more."""
    qs = HumanTask.objects.all()
    if not shows_manager_pages(user):
        qs = qs.filter(Q(assignee=user) | Q(completed_by=user) | _candidate_filter(user))
    return qs.order_by().values("instance_id")


def escalations(user: User) -> QuerySet[HumanTask]:
    """For managers: open tasks that are overdue, escalated, or operator escalations, most urgent first. A task past
    its due time whose workflow is on hold (``ON_HOLD_STATES``) is not overdue: nobody can act on it."""
    now = timezone.now()
    overdue = Q(due_at__lt=now) & ~Q(instance__state__in=ON_HOLD_STATES)
    qs = HumanTask.objects.filter(state__in=ACTIONABLE_TASK_STATES).filter(
        overdue | Q(state=TaskState.ESCALATED) | Q(kind="escalation")
    )
    # The page names each task's instance by title and state; its data (up to megabytes) is never shown.
    return _with_related(qs).defer("instance__data").order_by(F("due_at").asc(nulls_last=True), "-priority", "id")


def overdue_tasks(now: datetime) -> QuerySet[HumanTask]:
    """For managers: the tasks :func:`overdue` at ``now`` (aware), most overdue first, each with its instance and
    assignee joined. The very tasks the dashboard's "Overdue tasks" card counts (:func:`tasks_open_counts`), which
    opens Escalations filtered to these; Escalations' own list keeps its rule (it leaves out every task of a
    workflow on hold, and adds escalated ones not yet due), so the card's number and these rows agree."""
    qs = HumanTask.objects.filter(overdue(now))
    return _with_related(qs).defer("instance__data").order_by("due_at", "-priority", "id")


def _capped(qs: QuerySet[Any]) -> QuerySet[Any]:
    # Walk the same index as the default list order, so the count stops after COUNT_CAP rows.
    return qs.order_by(*_order_by(SORTS["due"])).values("pk")[:COUNT_CAP]


def inbox_counts(user: User, *, fresh: bool = False) -> dict[str, int]:
    """Counts for the navigation badges and tabs (capped at COUNT_CAP), computed once per request's user.

    The three counts go to the database as one statement, ``SELECT (SELECT count(*) FROM (<capped>)), ...``,
    built from the querysets' own SQL: one round trip instead of three, and none of ``count()``'s query
    cloning. Each part still walks its own index and stops after COUNT_CAP rows.
    """
    cached = getattr(user, "_baton_counts", None)
    if cached is None or fresh:
        capped = [
            _capped(my_tasks(user)),
            _capped(team_queue(user)),
            Notification.objects.filter(user=user, read_at__isnull=True).values("pk")[:COUNT_CAP],
        ]
        parts, params = [], []
        for qs in capped:
            # The ORM's own SQL with placeholders; every value travels in params.
            sql, part_params = qs.query.get_compiler(using=qs.db).as_sql()
            parts.append(f"(SELECT COUNT(*) FROM ({sql}) capped)")  # noqa: S608
            params.extend(part_params)
        with connections[capped[0].db].cursor() as cursor:
            cursor.execute(f"SELECT {', '.join(parts)}", params)
            inbox, queue, unread = cursor.fetchone()
        cached = {"inbox": inbox, "queue": queue, "unread": unread, "cap": COUNT_CAP}
        user._baton_counts = cached  # type: ignore[attr-defined]
    return cached


def late(now: datetime) -> Q:
    """The tasks past their SLA at ``now`` (aware): due before it, less those whose due time fell inside their
    instance's pause that still lasts. A task's SLA counts unpaused time only (docs/architecture.md, "Deadlines and
    pauses"): such a due time moves on by the pause at the resume, so while the pause lasts the task is held, not
    late. One already due when the pause began (``due_at <= paused_at``) was late before it and stays late.

    A filter on HumanTask; the pause is looked up per task already past due (one index probe of the instance), so
    a read of the late tasks still walks only those."""
    held = WorkflowInstance.objects.filter(
        pk=OuterRef("instance_id"), state=InstanceState.PAUSED, paused_at__lt=OuterRef("due_at")
    )
    return Q(due_at__lt=now) & Q(~Exists(held))


def overdue(now: datetime) -> Q:
    """The one definition of an **overdue** task at ``now`` (aware), a filter on HumanTask: waiting for a person
    (open, claimed or escalated), past its SLA (:func:`late`: one whose due time fell inside its instance's pause
    that still lasts is held, not overdue; one late before the pause began stays overdue), and not an operators'
    escalation (those have no due time and are listed as escalations). Incidents lists these; the dashboard and
    /metrics count them (:func:`tasks_open_counts`), so the three agree.

    A failed instance's task past its due time is overdue here, for the operators who must retry or end the
    instance, where the inbox shows its holders the task on hold (``ON_HOLD_STATES``: they cannot act on it)."""
    return Q(state__in=ACTIONABLE_TASK_STATES) & late(now) & ~Q(kind=TaskKind.ESCALATION)


def tasks_open_counts(now: datetime) -> dict[str, int]:
    """Tasks waiting for a person (open, claimed or escalated) and those of them :func:`overdue` at ``now``
    (aware): ``{"open": n, "overdue": m}``, for the dashboard and /metrics. One statement over the partial index of
    actionable tasks, probing the instance of each task already past its due time (:func:`late`)."""
    counts = HumanTask.objects.filter(state__in=ACTIONABLE_TASK_STATES).aggregate(
        open=Count("id"), overdue=Count("id", filter=overdue(now))
    )
    return {"open": counts["open"] or 0, "overdue": counts["overdue"] or 0}


def tasks_of_instance(instance_id: int) -> QuerySet[HumanTask]:
    return HumanTask.objects.filter(instance_id=instance_id).select_related("assignee", "completed_by").order_by("id")


# What a task's summary shows (its id, kind, title and state; the API's link is made from the id): the rest of the
# row (the description, a form task's form data) is not read for a list of an instance's tasks.
SUMMARY_FIELDS = ("id", "instance_id", "kind", "title", "state")


def task_summaries_of(instance_id: int) -> QuerySet[HumanTask]:
    """Every task of instance ``instance_id`` in id order, read for a summary only (:data:`SUMMARY_FIELDS`): what
    the API pages through at ``/api/instances/{id}/tasks/``. No visibility check: the caller has checked the
    instance (``orchestrator.selectors.instance_for_user``); each task's own page keeps its own rule."""
    return HumanTask.objects.filter(instance_id=instance_id).only(*SUMMARY_FIELDS).order_by("id")


def latest_tasks_of(instance_id: int, limit: int) -> tuple[list[HumanTask], int]:
    """The latest ``limit`` task summaries of instance ``instance_id`` in id order, and how many it has, in one
    statement (``orchestrator.selectors.latest_with_total``): a loop back to a human step makes a task each round."""
    return latest_with_total(task_summaries_of(instance_id), limit)


# --- filters, sorting and keyset pagination ----------------------------------------------------------

# (field, descending) in order; due_at is the one nullable key and sorts last when empty.
SORTS: dict[str, list[tuple[str, bool]]] = {
    "due": [("due_at", False), ("priority", True), ("id", False)],
    "priority": [("priority", True), ("due_at", False), ("id", False)],
    "age": [("created_at", False), ("id", False)],
    "recent": [("completed_at", True), ("id", True)],
}
# "Recently done" in Done by me: by when the viewer did their part (``done_by``'s ``done_at``), not when the task
# completed (a quorum vote still waiting has no completion time, and sorted last).
DONE_SORTS = {"recent": [("done_at", True), ("id", True)]}
DUE_BUCKETS = ("overdue", "today", "later", "none")
# The inbox's one-value parameters, as the page names them: each given twice is left out with a message.
ONE_VALUE_PARAMETERS = {
    "workflow": "Workflow",
    "priority": "Priority",
    "due": "Due",
    "state": "State",
    "q": "Search",
    "sort": "Sort",
    "after": "Page",
    "size": "Page size",
}
NULLABLE = {"due_at", "completed_at", "done_at"}


@dataclass
class InboxQuery:
    """The inbox's filters, sort and cursor, parsed from a query string (bad values are dropped, not fatal)."""

    tab: str = "mine"
    workflow: str = ""
    priority: int | None = None
    due: str = ""
    state: str = ""
    q: str = ""
    sort: str = ""
    after: str = ""
    snoozed: bool = False
    size: int = 25
    errors: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, params: Any, tab: str) -> InboxQuery:
        query = cls(tab=tab)
        params, repeated = drop_repeated(params, ONE_VALUE_PARAMETERS)
        query.errors.extend(repeated)
        query.workflow = query._text(params, "workflow", "Workflow")
        raw_priority = params.get("priority", "")
        if raw_priority not in ("", None):
            try:
                query.priority = int(raw_priority)
                if query.priority not in Priority.values:
                    raise ValueError
            except (TypeError, ValueError):
                query.priority = None
                query.errors.append("Unknown priority; showing all priorities.")
        due = params.get("due", "")
        if due and due not in DUE_BUCKETS:
            query.errors.append("Unknown due filter; showing all.")
            due = ""
        query.due = due
        state = params.get("state", "")
        if state and state not in TaskState.values:
            query.errors.append("Unknown state; showing all.")
            state = ""
        query.state = state
        query.q = query._text(params, "q", "Search")
        sort = params.get("sort", "")
        if sort and sort not in SORTS:
            query.errors.append("Unknown sort order; showing the default order.")
        query.sort = sort if sort in SORTS else ""
        # A cursor is base64 of a short JSON list; anything else is reported when it fails to decode.
        query.after = str(params.get("after", ""))[:300].replace("\x00", "")
        query.snoozed = params.get("snoozed") == "1"
        try:
            query.size = min(100, max(5, int(params.get("size", 25))))
        except (TypeError, ValueError):
            query.size = 25
            query.errors.append("Unknown page size; showing 25 tasks a page.")
        return query

    def _text(self, params: Any, name: str, label: str) -> str:
        """A free-text parameter, stripped; a NUL character (PostgreSQL cannot compare text holding one) is
        removed and text past SEARCH_MAX cut, each with a message, so the filter still applies as typed."""
        value = str(params.get(name, "")).strip()
        if "\x00" in value:
            value = value.replace("\x00", "").strip()
            self.errors.append(f"{label}: the invisible NUL character was removed.")
        if len(value) > SEARCH_MAX:
            value = value[:SEARCH_MAX]
            self.errors.append(f"{label}: only the first {SEARCH_MAX} characters are used.")
        return value

    @property
    def sort_key(self) -> str:
        return self.sort or ("recent" if self.tab == "done" else "due")

    @property
    def order(self) -> list[tuple[str, bool]]:
        """The (field, descending) keys of this list's order: SORTS', but Done by me's "recent" is DONE_SORTS'
        (its queryset, ``done_by``, carries ``done_at``)."""
        if self.tab == "done" and self.sort_key in DONE_SORTS:
            return DONE_SORTS[self.sort_key]
        return SORTS[self.sort_key]

    def as_params(self, **override: Any) -> dict[str, str]:
        """The non-empty filters as query parameters (for links, saved views and the cursor)."""
        values = {
            "tab": self.tab,
            "workflow": self.workflow,
            "priority": "" if self.priority is None else str(self.priority),
            "due": self.due,
            "state": self.state,
            "q": self.q,
            "sort": self.sort,
            "snoozed": "1" if self.snoozed else "",
            "size": "" if self.size == 25 else str(self.size),
        }
        values.update({k: str(v) for k, v in override.items()})
        return {k: v for k, v in values.items() if v}

    @property
    def is_filtered(self) -> bool:
        return bool(self.workflow or self.priority is not None or self.due or self.state or self.q)


def apply_filters(qs: QuerySet[HumanTask], query: InboxQuery, now: datetime | None = None) -> QuerySet[HumanTask]:
    now = now or timezone.now()
    if query.workflow:
        qs = qs.filter(instance__workflow_name=query.workflow)
    if query.priority is not None:
        qs = qs.filter(priority=query.priority)
    if query.state:
        qs = qs.filter(state=query.state)
    if query.due:
        end_of_day = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
        qs = {
            # The rows that say "overdue" (views._task_rows): still to do, and not held by a paused or failed
            # workflow (on hold: nobody can act on them, and a pause moves the due time on at the resume).
            "overdue": lambda: qs.filter(due_at__lt=now, state__in=ACTIONABLE_TASK_STATES).exclude(
                instance__state__in=ON_HOLD_STATES
            ),
            "today": lambda: qs.filter(due_at__gte=now, due_at__lt=end_of_day),
            "later": lambda: qs.filter(due_at__gte=end_of_day),
            "none": lambda: qs.filter(due_at__isnull=True),
        }[query.due]()
    if query.q:
        # Both terms hit indexes on the instance (trigram on the title in PostgreSQL, btree on the key).
        qs = qs.filter(
            Q(instance__title__icontains=query.q) | Q(instance__business_key__in=business_key_forms(query.q))
        )
    return qs


def _order_by(sort: list[tuple[str, bool]]) -> list[Any]:
    # NULLS LAST only on nullable keys: on the others it would not match the indexes' order.
    return [
        (F(name).desc(nulls_last=True) if desc else F(name).asc(nulls_last=True))
        if name in NULLABLE
        else (F(name).desc() if desc else F(name).asc())
        for name, desc in sort
    ]


def _after(sort: list[tuple[str, bool]], values: list[Any]) -> Q:
    """Rows strictly after ``values`` in the order ``sort`` (NULLs last), as one OR of prefix-equal terms."""
    condition = Q(pk__in=[])
    equal = Q()
    for (name, desc), value in zip(sort, values, strict=True):
        if value is None:
            # Only NULLs remain at or after a NULL: nothing is "greater" here, move on to the next key.
            equal &= Q(**{f"{name}__isnull": True})
            continue
        greater = Q(**{f"{name}__lt" if desc else f"{name}__gt": value})
        if name in NULLABLE:
            greater |= Q(**{f"{name}__isnull": True})
        condition |= equal & greater
        equal &= Q(**{name: value})
    return condition


def _encode(values: list[Any]) -> str:
    raw = json.dumps([v.isoformat() if isinstance(v, datetime) else v for v in values])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(cursor: str, sort: list[tuple[str, bool]]) -> list[Any] | None:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list) or len(raw) != len(sort):
            return None
        values: list[Any] = []
        for (name, _desc), value in zip(sort, raw, strict=True):
            if name.endswith("_at") and value is not None:
                parsed = parse_datetime(str(value))
                if parsed is None:
                    return None
                # In UTC: an offset PostgreSQL refuses (a tampered "-23:59") fails here, as a bad link, not there.
                values.append(timezone.make_aware(parsed, UTC) if timezone.is_naive(parsed) else parsed.astimezone(UTC))
            elif value is None or isinstance(value, int):
                values.append(value)
            else:
                return None
        return values
    except (ValueError, TypeError, OverflowError):
        return None


# What an inbox row shows, read with ``.values()``: plain dicts, no model instances, and none of the instance's
# columns (its JSON data) that the list does not show. The sort keys of every order in SORTS are among them.
# The assignee's name is added by ``row_fields`` for the one list that shows it.
ROW_FIELDS = (
    "id",
    "title",
    "kind",
    "state",
    "priority",
    "quorum",
    "approvals",
    "due_at",
    "snoozed_until",
    "created_at",
    "completed_at",
    "decision",
    "instance__workflow_name",
    "instance__business_key",
    "instance__state",
)


def row_fields(tab: str) -> tuple[str, ...]:
    """ROW_FIELDS for a tab: "Done by me" also shows who held each task and when the viewer did their part
    (``done_by``'s ``done_at``, its "recent" order's key). The team queue's tasks have no
    assignee and My tasks are the viewer's own, so those two lists skip the join to the users table."""
    return (*ROW_FIELDS, "assignee__username", "done_at", "done_decision") if tab == "done" else ROW_FIELDS


@dataclass
class Page:
    """A page of tasks: model instances, or dicts when the queryset was a ``.values()`` one."""

    tasks: list[Any]
    next_cursor: str
    has_previous: bool


def page_of(qs: QuerySet[HumanTask, Any], query: InboxQuery, size: int | None = None) -> Page:
    """One page in keyset order: the cost does not grow with how deep the user pages."""
    sort = query.order
    qs = apply_filters(qs, query).order_by(*_order_by(sort))
    values = _decode(query.after, sort) if query.after else None
    if query.after and values is None:
        query.errors.append("That page link is no longer valid; showing the first page.")
    if values is not None:
        qs = qs.filter(_after(sort, values))
    size = size or query.size
    rows = list(qs[: size + 1])
    tasks = rows[:size]
    next_cursor = ""
    if len(rows) > size:
        last = tasks[-1]
        key = last.__getitem__ if isinstance(last, dict) else lambda name: getattr(last, name)
        next_cursor = _encode([key(name) for name, _ in sort])
    return Page(tasks=tasks, next_cursor=next_cursor, has_previous=values is not None)


def saved_views_for(user: User) -> QuerySet[SavedView]:
    """The user's own saved views and those shared with one of their groups."""
    return SavedView.objects.filter(Q(owner=user) | Q(shared_with_id__in=group_ids(user))).select_related(
        "owner", "shared_with"
    )


def notifications_for(user: User) -> QuerySet[Notification]:
    return Notification.objects.filter(user=user).order_by("-created_at", "-id")


# --- tasks nobody may act on ----------------------------------------------------------------------------------


def able_count_sql(task: str = "t", instance: str = "i") -> tuple[str, list[Any]]:
    """An SQL expression (a scalar subquery) counting the people able to act on the task aliased ``task``, whose
    instance is aliased ``instance`` in the enclosing statement, and its parameters. Able is
    ``approvals.services.base.able_people``'s rule (docs/architecture.md, "Who may act on a task"): active, a
    candidate by name or through a group, not the instance's initiator, not someone who already decided this task,
    and for an approval not someone who approved another task of the instance.

    The one SQL statement of that rule: ``services.people.short_of_people`` (the re-check after a change of people)
    and :func:`tasks_nobody_can_act` (Incidents) both read it. Portable SQL (PostgreSQL and SQLite). It counts
    every able candidate of the task: its cost is the task's candidate rows and their groups' memberships.
    Raises nothing."""
    users, members = get_user_model()._meta.db_table, User.groups.through._meta.db_table
    sql = (
        f"(SELECT count(DISTINCT u.id) FROM {TaskCandidate._meta.db_table} c"  # noqa: S608 - tables, aliases: ours
        f" LEFT JOIN {members} m ON m.group_id = c.group_id"
        f" JOIN {users} u ON u.id = COALESCE(c.user_id, m.user_id)"
        f" WHERE c.task_id = {task}.id AND u.is_active"
        # "IS DISTINCT FROM", written so that SQLite reads it too: an instance started by nobody bars nobody.
        f" AND ({instance}.initiator_id IS NULL OR u.id <> {instance}.initiator_id)"
        f" AND NOT EXISTS (SELECT 1 FROM {TaskDecision._meta.db_table} d WHERE d.user_id = u.id"
        f" AND (d.task_id = {task}.id OR ({task}.kind = %s AND d.instance_id = {task}.instance_id"
        " AND d.decision = %s))))"
    )
    return sql, [TaskKind.APPROVAL.value, "approve"]  # services.base.APPROVE


def group_unable_words(*, has_members: bool, has_active: bool, has_active_other: bool) -> str:
    """Why nobody in a candidate group may act on a task, in a manager's words, from what its members are: any
    members at all, any active one, any active one besides the instance's initiator (four-eyes bars the
    initiator; the rest of the active members then decided the task or approved another of the instance).

    The one wording of it: ``services.base.group_unable_why`` (a ladder rung's group) and
    :func:`tasks_nobody_can_act` (Incidents) say it so. Raises nothing."""
    if not has_active:
        return "every member is deactivated" if has_members else "it has no members"
    if not has_active_other:
        return "its only active member started this workflow"
    return "its active members started this workflow or already decided or approved in it (four-eyes)"


@dataclass
class NobodyCanActRow:
    """One task too few people may act on, with why: ``able`` of the ``needed`` people may act (``needed``: the
    quorum less the approvals in), ``reasons`` candidate by candidate in a manager's words, ``fix`` what would let
    it move, and its candidate groups' and users' ids (who may open the task page: :func:`may_open`'s rule, which
    :func:`mark_openable` sets ``opens_task`` by for one viewer)."""

    task: HumanTask
    able: int
    needed: int
    reasons: list[str] = field(default_factory=list)
    fix: str = ""
    group_ids: list[int] = field(default_factory=list)
    user_ids: list[int] = field(default_factory=list)
    opens_task: bool = False


def mark_openable(user: User, rows: list[NobodyCanActRow]) -> None:
    """Set each row's ``opens_task``: whether ``user`` may open the task's page by :func:`may_open`'s rule (a
    manager, or a candidate by name or group; an escalated task has no assignee and no one who completed it),
    from the candidates the rows carry and the user's groups read once per request (:func:`user_groups`): no
    statement per row. Raises nothing."""
    if not rows:
        return
    manager = shows_manager_pages(user)
    mine = set() if manager else set(group_ids(user))
    for row in rows:
        row.opens_task = manager or user.pk in row.user_ids or bool(mine.intersection(row.group_ids))


@dataclass
class NobodyCanAct:
    """What :func:`tasks_nobody_can_act` found: the first rows; how many such tasks the sample holds (``total``);
    whether there were more escalated tasks than the sample (``sampled``: then more may exist beyond it); and how
    many of ``total`` are operators' escalations or :func:`overdue` (``listed_elsewhere``: Incidents lists and
    counts those in their own sections already)."""

    rows: list[NobodyCanActRow] = field(default_factory=list)
    total: int = 0
    sampled: bool = False
    listed_elsewhere: int = 0

    @property
    def more(self) -> bool:
        return self.total > len(self.rows)


def tasks_nobody_can_act(now: datetime, *, limit: int, sample: int) -> NobodyCanAct:
    """The actionable tasks fewer people may act on than they still need (:func:`able_count_sql`: for a quorum
    task, fewer than its quorum less the approvals in; for any other, nobody at all), oldest first: the first
    ``limit`` with their instance and why, and how many in all among the ``sample`` oldest escalated tasks. Work
    that can never move until someone adds a person. ``now`` (aware) decides which of them are :func:`overdue`.

    Escalated tasks only: every path that leaves a task with too few people escalates it
    (``services.base.escalate_nobody_can_act``: at its opening, after a change of people, at a ladder rung whose
    group has nobody), and Managers and Operators joining it do not help when they leave nobody either; so the
    read never walks the open tasks, only the escalated ones, through their partial index
    (``console_task_escalated``), up to ``sample`` of them. docs/architecture.md ("Who may act on a task") says
    which open tasks this leaves out.

    One statement finds them (the same on PostgreSQL and SQLite); when it finds any, one reads the first ``limit``
    with their instance, one their candidates: three at most, whatever their number. Raises nothing of its own."""
    tasks, instances = HumanTask._meta.db_table, WorkflowInstance._meta.db_table
    able, params = able_count_sql("t", "i")
    with connections["default"].cursor() as cursor:
        # The tables' names are the models'; the values are parameters. The capped count of escalated tasks rides
        # along on every row (and on the one row the outer join leaves when none is short of people).
        cursor.execute(
            f"SELECT (SELECT count(*) FROM (SELECT 1 FROM {tasks} WHERE state = %s LIMIT %s) e),"  # noqa: S608
            " s.id, s.able, s.needed"
            " FROM (SELECT 1 AS one) one LEFT JOIN ("
            "  SELECT x.id, x.created_at, x.able, x.needed FROM ("
            f"   SELECT t.id, t.created_at, t.quorum - t.approvals AS needed, {able} AS able"
            f"   FROM (SELECT id, instance_id, kind, quorum, approvals, created_at FROM {tasks}"
            "    WHERE state = %s ORDER BY created_at, id LIMIT %s) t"
            f"   JOIN {instances} i ON i.id = t.instance_id"
            "  ) x WHERE x.able < x.needed"
            " ) s ON 1 = 1 ORDER BY s.created_at, s.id",
            [TaskState.ESCALATED.value, sample + 1, *params, TaskState.ESCALATED.value, sample],
        )
        found = cursor.fetchall()
    result = NobodyCanAct(sampled=found[0][0] > sample)
    short = {pk: (able_now, needed) for _escalated, pk, able_now, needed in found if pk is not None}
    result.total = len(short)
    if not short:
        return result
    listed = list(
        HumanTask.objects.filter(pk__in=list(short))
        .annotate(elsewhere=Window(Count("id", filter=Q(kind=TaskKind.ESCALATION) | overdue(now))))
        .select_related("instance")
        .defer("instance__data", "description", "form_data")
        .order_by("created_at", "id")[:limit]
    )
    result.listed_elsewhere = listed[0].elsewhere if listed else 0
    rows = {task.pk: NobodyCanActRow(task, *short[task.pk]) for task in listed}
    _why_nobody(rows)
    result.rows = list(rows.values())
    return result


def _why_nobody(rows: dict[int, NobodyCanActRow]) -> None:
    """Fill each row's reasons, fix and candidates from one statement over the tasks' candidate rows: per group,
    whether it has members, active ones, active ones besides the initiator (each an EXISTS that stops at its first
    row, whatever the group's size); per user, active and the initiator or not."""
    members = User.groups.through.objects
    in_group = members.filter(group_id=OuterRef("group_id"))
    active = in_group.filter(user__is_active=True)
    candidates = (
        TaskCandidate.objects.filter(task_id__in=list(rows))
        .annotate(
            has_members=Exists(in_group),
            has_active=Exists(active),
            has_active_other=Exists(active.exclude(user_id=OuterRef("task__instance__initiator_id"))),
        )
        .order_by("task_id", "group__name", "user__username")
        .values_list(
            "task_id",
            "group_id",
            "group__name",
            "user_id",
            "user__username",
            "user__is_active",
            "has_members",
            "has_active",
            "has_active_other",
        )
    )
    groups: dict[int, list[str]] = {pk: [] for pk in rows}
    for task_id, group_id, group, user_id, username, user_active, has_members, has_active, other in candidates:
        row = rows[task_id]
        initiator_id = row.task.instance.initiator_id
        if group_id is not None:
            row.group_ids.append(group_id)
            groups[task_id].append(group)
            # No initiator: every active member is "another" one (the EXISTS above compared with NULL).
            other = has_active if initiator_id is None else other
            why = group_unable_words(has_members=has_members, has_active=has_active, has_active_other=other)
            row.reasons.append(f"group {group}: {why}")
        else:
            row.user_ids.append(user_id)
            if not user_active:
                row.reasons.append(f"user {username} is deactivated")
            elif user_id == initiator_id:
                row.reasons.append(f"user {username} started this workflow (four-eyes)")
            else:
                row.reasons.append(f"user {username} already decided or approved in this workflow (four-eyes)")
    for pk, row in rows.items():
        if not row.reasons:
            row.reasons.append("no candidate group or user exists")
        others = [name for name in groups[pk] if name not in (MANAGERS, OPERATORS)]
        named = f", or to group{'s' if len(others) > 1 else ''} {', '.join(others)}" if others else ""
        where = f"to Managers or Operators{named}"
        missing = row.needed - row.able
        who = "an active person" if missing == 1 else f"{missing} active people"
        row.fix = (
            f"Add {who} who did not start this workflow"
            + (" and approved none of its tasks" if row.task.kind == TaskKind.APPROVAL else "")
            + f" {where}."
        )
