"""Workflows as code: a small declarative DSL.

A workflow is a named, versioned list of nodes. Nodes run in list order unless a node names its ``next``;
a :class:`Decision` picks the next node from the instance data; a :class:`Parallel` runs linear branches side
by side and continues once all of them have finished (fan-in)::

    Workflow(
        name="order_fulfilment", version=1, owner="Fulfilment", criticality="high",
        steps=[
            Task("reserve_inventory", reserve, compensate=release),
            Decision("approval_needed", lambda data: "approve" if data["amount"] > 1000 else "ship"),
            Human("approve", candidate_groups=["managers"]),
            Task("ship", ship, on_failure=COMPENSATE),
        ],
    )
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

FailureAction = Literal["fail", "compensate", "escalate"]
FAIL: FailureAction = "fail"
COMPENSATE: FailureAction = "compensate"
ESCALATE: FailureAction = "escalate"

HumanKind = Literal["approval", "form"]
APPROVAL: HumanKind = "approval"
FORM: HumanKind = "form"

PRIORITIES = ("low", "normal", "high", "urgent")


class DefinitionError(Exception):
    """A workflow definition is malformed (raised when it is built, not when it runs)."""


class PermanentError(Exception):
    """Raised by a handler for a failure that retrying cannot fix (a declined card, invalid input)."""


Duration = float | timedelta


def seconds(value: Duration, what: str) -> float:
    """``value`` in seconds: a ``timedelta``, or a number of seconds. Raises DefinitionError naming ``what`` for
    anything else (a string, None, a bool) or a value that is not finite."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value in (_INF, -_INF):
        raise DefinitionError(f"{what} must be a timedelta or a finite number of seconds, not {value!r}")
    return float(value)


_INF = float("inf")


def as_timedelta(value: Duration) -> timedelta:
    """``value`` as a ``timedelta`` (a number counts seconds). Raises DefinitionError as :func:`seconds` does."""
    return value if isinstance(value, timedelta) else timedelta(seconds=seconds(value, "a duration"))


@dataclass(frozen=True)
class Retry:
    """Retry policy: exponential back-off with jitter.

    ``backoff`` (the first wait) and ``max_delay`` (the cap) are durations: a ``timedelta``, or a number of
    seconds; they are kept as seconds. ``multiplier`` grows the wait per attempt, ``jitter`` spreads it by that
    fraction either way. Raises DefinitionError for values out of range.
    """

    max_attempts: int = 3
    backoff: Duration = 1.0
    multiplier: float = 2.0
    max_delay: Duration = 300.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        # Frozen: the durations are normalised to seconds once, here.
        object.__setattr__(self, "backoff", seconds(self.backoff, "Retry.backoff"))
        object.__setattr__(self, "max_delay", seconds(self.max_delay, "Retry.max_delay"))
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise DefinitionError(f"Retry.max_attempts must be a whole number of at least 1, not {self.max_attempts!r}")
        if (
            seconds(self.backoff, "backoff") < 0
            or seconds(self.max_delay, "max_delay") < 0
            or self.multiplier < 1
            or not 0 <= self.jitter <= 1
        ):
            raise DefinitionError("Retry needs backoff >= 0, max_delay >= 0, multiplier >= 1, 0 <= jitter <= 1")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based); ``rng`` for a repeatable jitter."""
        backoff, max_delay = seconds(self.backoff, "backoff"), seconds(self.max_delay, "max_delay")
        try:
            base = min(max_delay, backoff * self.multiplier ** (attempt - 1))
        except OverflowError:  # a step retrying for days reaches exponents no float holds; it is capped anyway
            base = max_delay
        spread = base * self.jitter
        return max(0.0, base - spread + (rng or random).random() * 2 * spread)


@dataclass
class StepContext:
    """What a handler sees: a copy of the instance data and a stable key for external side effects."""

    instance_id: int
    step: str
    attempt: int
    data: dict[str, Any]
    idempotency_key: str
    business_key: str = ""


Handler = Callable[[StepContext], Mapping[str, Any] | None]


@dataclass
class Node:
    """Base of every node; ``next`` overrides the list order."""

    name: str
    next: str | None = field(default=None, kw_only=True)
    label: str = field(default="", kw_only=True)

    kind = "node"

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()


@dataclass
class Task(Node):
    """An automated step: ``handler(ctx)`` runs on a Celery worker.

    ``timeout`` is a duration (a ``timedelta``, or a number of seconds; kept as seconds): the handler's soft time
    limit, after which it gets ``SoftTimeLimitExceeded`` and the attempt fails.
    """

    handler: Handler | None = None
    compensate: Handler | None = None
    retry: Retry = field(default_factory=Retry)
    timeout: Duration = 60.0
    on_failure: FailureAction = FAIL
    queue: str | None = None

    kind = "task"

    def __post_init__(self) -> None:
        if self.handler is None:
            raise DefinitionError(f"Task {self.name!r} needs a handler")
        self.timeout = seconds(self.timeout, f"Task {self.name!r}: timeout")
        if self.on_failure not in (FAIL, COMPENSATE, ESCALATE):
            raise DefinitionError(f"Task {self.name!r}: on_failure must be fail, compensate or escalate")
        if self.timeout <= 0:
            raise DefinitionError(f"Task {self.name!r}: timeout must be positive")


@dataclass(frozen=True)
class Remind:
    """Escalation rung: remind the assignee (or the candidates) ``after`` the task opened (a ``timedelta``, or a
    number of seconds)."""

    after: timedelta

    def __post_init__(self) -> None:
        _rung_after(self)


@dataclass(frozen=True)
class Reassign:
    """Escalation rung: hand the task to ``group`` ``after`` the task opened (a ``timedelta``, or a number of
    seconds)."""

    after: timedelta
    group: str

    def __post_init__(self) -> None:
        _rung_after(self)


@dataclass(frozen=True)
class Escalate:
    """Escalation rung: ``after`` the task opened (a ``timedelta``, or a number of seconds), mark the task escalated
    to ``group`` (managers) or fail the instance."""

    after: timedelta
    group: str = "managers"
    fail_instance: bool = False

    def __post_init__(self) -> None:
        _rung_after(self)


def _rung_after(rung: Any) -> None:
    """A rung's ``after`` as a ``timedelta`` (a number counts seconds); raises DefinitionError for anything else."""
    if not isinstance(rung.after, timedelta):
        object.__setattr__(rung, "after", timedelta(seconds=seconds(rung.after, f"{type(rung).__name__}.after")))


Rung = Remind | Reassign | Escalate


@dataclass
class Human(Node):
    """A human step: an approval or a form, for candidate groups and/or users."""

    kind_of_task: HumanKind = APPROVAL
    candidate_groups: Sequence[str] = ()
    candidate_users: Sequence[str] = ()
    task_title: str = ""
    form: Any = None
    quorum: int = 1
    # How long the task may stay open before it is overdue: a ``timedelta``, or a number of seconds.
    sla: Duration | None = None
    priority: str = "normal"
    escalation: Sequence[Rung] = ()
    # What a rejection does: "fail", "compensate", "end" (complete with outcome "rejected") or a node name.
    on_reject: str = "end"

    kind = "human"

    def __post_init__(self) -> None:
        if not self.candidate_groups and not self.candidate_users:
            raise DefinitionError(f"Human step {self.name!r} needs candidate groups or users")
        if self.kind_of_task == FORM and self.form is None:
            raise DefinitionError(f"Human step {self.name!r} is a form step without a form class")
        if isinstance(self.quorum, bool) or not isinstance(self.quorum, int) or self.quorum < 1:
            raise DefinitionError(f"Human step {self.name!r}: quorum must be a whole number of at least 1")
        if self.priority not in PRIORITIES:
            raise DefinitionError(f"Human step {self.name!r}: priority must be one of {PRIORITIES}")
        if self.sla is not None and not isinstance(self.sla, timedelta):
            self.sla = timedelta(seconds=seconds(self.sla, f"Human step {self.name!r}: sla"))

    def render_title(self, instance_title: str) -> str:
        return (self.task_title or self.title).format(title=instance_title)


@dataclass
class Timer(Node):
    """Wait for a duration (``wait``: a ``timedelta``, or a number of seconds), or until an aware datetime that
    ``until(data)`` computes from the instance data."""

    wait: Duration | None = None
    until: Callable[[dict[str, Any]], datetime] | None = None

    kind = "timer"

    def __post_init__(self) -> None:
        if (self.wait is None) == (self.until is None):
            raise DefinitionError(f"Timer {self.name!r} needs exactly one of wait= or until=")
        if self.wait is not None and not isinstance(self.wait, timedelta):
            self.wait = timedelta(seconds=seconds(self.wait, f"Timer {self.name!r}: wait"))


TimeoutAction = Literal["fail", "compensate", "escalate", "continue"]
CONTINUE: TimeoutAction = "continue"


# A wait longer than about ten years is a typo (the bound of dates a person may enter, inputs.HORIZON).
SIGNAL_TIMEOUT_MAX = timedelta(days=3653)


@dataclass
class Signal(Node):
    """Wait for a named event from outside (``signal_deliver``): "payment confirmed", "documents received".

    ``event`` is the name senders use (the node's name unless given). ``timeout`` (a timedelta) bounds the wait;
    what a timeout does is ``on_timeout``: ``fail`` the instance, ``compensate`` it, ``escalate`` to operators or
    ``continue`` with the next node (the data then holds ``{<node name>: {"timed_out": true}}``). The payload is
    validated by ``form`` (a Django form class: its cleaned data is merged, less the empty values of fields the
    payload left out) or ``schema`` (a callable taking the payload dict, returning the dict to merge and raising
    ``django.core.exceptions.ValidationError``); without either the payload, a JSON object, is merged as it came.
    A signal that arrives before the instance reaches the node is kept and consumed when it does
    (docs/architecture.md, "Signals").
    """

    event: str = ""
    timeout: timedelta | None = None
    on_timeout: TimeoutAction = FAIL
    form: Any = None
    schema: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    kind = "signal"

    def __post_init__(self) -> None:
        self.event = self.event or self.name
        if not self.event.isidentifier() and not all(part.isidentifier() for part in self.event.split(".")):
            raise DefinitionError(f"Signal {self.name!r}: event {self.event!r} must be dotted identifiers")
        if self.on_timeout not in (FAIL, COMPENSATE, ESCALATE, CONTINUE):
            raise DefinitionError(f"Signal {self.name!r}: on_timeout must be fail, compensate, escalate or continue")
        if self.timeout is not None and (not isinstance(self.timeout, timedelta) or self.timeout <= timedelta(0)):
            raise DefinitionError(f"Signal {self.name!r}: timeout must be a positive timedelta")
        if self.timeout is not None and self.timeout > SIGNAL_TIMEOUT_MAX:
            # Beyond, the deadline is a typo; far beyond (timedelta(days=10**7)), now + timeout overflows datetime
            # when an instance enters the node, failing the step before it rather than the definition at import.
            raise DefinitionError(f"Signal {self.name!r}: timeout must be at most {SIGNAL_TIMEOUT_MAX.days} days")
        if self.form is not None and self.schema is not None:
            raise DefinitionError(f"Signal {self.name!r}: give form= or schema=, not both")


@dataclass
class Decision(Node):
    """Branch: ``choose(data)`` returns the name of the next node (or None to end the workflow)."""

    choose: Callable[[dict[str, Any]], str | None] | None = None
    choices: Sequence[str] = ()

    kind = "decision"

    def __post_init__(self) -> None:
        if self.choose is None:
            raise DefinitionError(f"Decision {self.name!r} needs choose=")


@dataclass
class Parallel(Node):
    """Fan out into linear branches; continue at ``next`` once every branch has finished."""

    branches: Sequence[Sequence[Node]] = ()

    kind = "parallel"

    def __post_init__(self) -> None:
        if len(self.branches) < 2:
            raise DefinitionError(f"Parallel {self.name!r} needs at least two branches")
        for branch in self.branches:
            if not branch:
                raise DefinitionError(f"Parallel {self.name!r} has an empty branch")
            for node in branch:
                if isinstance(node, Parallel | Decision):
                    raise DefinitionError(f"Parallel {self.name!r}: branches hold tasks, human steps and timers only")


MissedRuns = Literal["catch_up_once", "skip"]
CATCH_UP_ONCE: MissedRuns = "catch_up_once"
SKIP_MISSED: MissedRuns = "skip"


@dataclass(frozen=True)
class Schedule:
    """Start the workflow on a schedule, declared beside it: ``Workflow(..., schedules=[Schedule(...)])``.

    Exactly one of ``cron`` (five fields, read in ``timezone``, an IANA name) and ``every`` (a timedelta of at least
    a minute). ``input`` is the start input of every run. ``missed`` says what happens to runs missed while Baton
    was down: ``catch_up_once`` starts one run for them (the latest missed time), ``skip`` starts none. The
    ``automation`` app keeps these in its schedule table, synced on ``migrate`` and by the first sweep of a
    process (docs/architecture.md, "Scheduled starts"). What is wrong in the declaration itself raises
    ``DefinitionError`` here (or in ``Workflow``: a name used twice in one workflow); one that conflicts with
    something else (a name an admin's schedule or another workflow has, an input the start form refuses) is left
    out by the sync, listed on the schedules page and warned of by ``manage.py check``.
    """

    name: str
    cron: str = ""
    every: timedelta | None = None
    timezone: str = "UTC"
    input: Mapping[str, Any] = field(default_factory=dict)
    missed: MissedRuns = CATCH_UP_ONCE

    def __post_init__(self) -> None:
        from orchestrator.recurrence import check_recurrence

        if not self.name or len(self.name) > 100 or "\x00" in self.name:
            raise DefinitionError("Schedule needs a name of at most 100 characters, with no NUL character")
        if self.missed not in (CATCH_UP_ONCE, SKIP_MISSED):
            raise DefinitionError(f"Schedule {self.name!r}: missed must be catch_up_once or skip")
        problem = check_recurrence(self.cron, self.every, self.timezone)
        if problem:
            raise DefinitionError(f"Schedule {self.name!r}: {problem}")
        try:
            # What the schedule table's JSON column holds: a Decimal, a date or NaN failed the sync before every
            # sweep's fires, and PostgreSQL refuses a NUL or a lone surrogate.
            text = json.dumps(dict(self.input), allow_nan=False, ensure_ascii=False)
            text.encode()  # a lone surrogate raises here
        except (TypeError, ValueError) as exc:
            raise DefinitionError(f"Schedule {self.name!r}: input is not JSON the database can hold: {exc}") from None
        if "\\u0000" in text:
            raise DefinitionError(f"Schedule {self.name!r}: input is not JSON the database can hold: a NUL character")


END = None

# The instance row's columns: a workflow's and a step's name (CharField(max_length=100)) and the version
# (PositiveIntegerField, PostgreSQL's integer).
NAME_MAX = 100
VERSION_MAX = 2**31 - 1


def _is_callable(value: Any) -> bool:
    return callable(value) and not isinstance(value, str | bytes)


def _is_name(value: Any) -> bool:
    """Whether ``value`` can name a group or a user: text, not blank, at most 150 characters (Django's columns),
    no NUL (PostgreSQL refuses it: the query looking the group up failed at the first task)."""
    return isinstance(value, str) and bool(value.strip()) and len(value) <= 150 and "\x00" not in value


def _form_problem(form: Any) -> str:
    """What is wrong with ``form`` as a workflow's form (a start form, a form step's, a signal's), or "".

    It must be a Django form class (not an instance: each start binds its own). A file field can never be filled:
    starts, signals and task decisions carry JSON, never an upload, so a required one refused every start."""
    from django import forms

    if form is None:
        return ""
    if not isinstance(form, type) or not issubclass(form, forms.BaseForm):
        return f"{form!r} is not a Django form class: give the class (class MyForm(forms.Form)), not an instance"
    files = sorted(name for name, fld in getattr(form, "base_fields", {}).items() if isinstance(fld, forms.FileField))
    if files:
        return (
            f"{form.__name__} has file fields ({', '.join(files)}): inputs arrive as JSON and can hold no upload;"
            " take a link or a document id as text instead"
        )
    return ""


def _positive_within(value: timedelta | None, what: str) -> str:
    """A problem when ``value`` (a duration, None allowed) is not positive or is past the ten-year horizon."""
    if value is None:
        return ""
    if value <= timedelta(0):
        return f"{what} must be positive, not {value}"
    if value > SIGNAL_TIMEOUT_MAX:
        return f"{what} must be at most {SIGNAL_TIMEOUT_MAX.days} days"
    return ""


def _node_problem(node: Node) -> str:
    """What is wrong with ``node`` that its own constructor let through, or "": the callables it will call, its
    durations, its people and its forms. Checked by :class:`Workflow`, so the message names the workflow and
    version; each of these otherwise failed at the first run that reached the node, as an AttributeError or a
    TypeError in the engine (a handler given as a string, a candidate group given as "managers", whose letters
    became nine groups)."""
    if isinstance(node, Task):
        if not _is_callable(node.handler):
            return f"handler {node.handler!r} is not callable: give the function itself, not its name"
        if node.compensate is not None and not _is_callable(node.compensate):
            return f"compensate {node.compensate!r} is not callable: give the function itself, not its name"
        if not isinstance(node.retry, Retry):
            return f"retry must be a Retry(...), not {node.retry!r}"
        if node.queue is not None and (not isinstance(node.queue, str) or not node.queue):
            return f"queue must be a queue name, not {node.queue!r}"
    elif isinstance(node, Decision):
        if not _is_callable(node.choose):
            return f"choose {node.choose!r} is not callable: give a function of the data returning a node name"
        if isinstance(node.choices, str) or not all(isinstance(choice, str) for choice in node.choices):
            return f"choices must be a list of node names, not {node.choices!r}"
    elif isinstance(node, Timer):
        if node.until is not None and not _is_callable(node.until):
            return f"until {node.until!r} is not callable: give a function of the data returning an aware datetime"
        return _positive_within(node.wait if isinstance(node.wait, timedelta) else None, "wait")
    elif isinstance(node, Human):
        for what, names in (("candidate_groups", node.candidate_groups), ("candidate_users", node.candidate_users)):
            if isinstance(names, str) or not all(_is_name(name) for name in names):
                return f'{what} must be a list of names ({what}=["managers"]), not {names!r}'
        if node.kind_of_task not in (APPROVAL, FORM):
            return f"kind_of_task must be {APPROVAL!r} or {FORM!r}, not {node.kind_of_task!r}"
        problem = _positive_within(node.sla if isinstance(node.sla, timedelta) else None, "sla")
        if problem:
            return problem
        for rung in node.escalation:
            if not isinstance(rung, Remind | Reassign | Escalate):
                return f"escalation holds {rung!r}: give Remind(...), Reassign(...) or Escalate(...)"
            problem = _positive_within(rung.after, f"{type(rung).__name__}.after")
            if problem:
                return problem
            if isinstance(rung, Reassign | Escalate) and not _is_name(rung.group):
                return f"{type(rung).__name__}.group must be a group's name, not {rung.group!r}"
        if not isinstance(node.on_reject, str):
            return f"on_reject must be 'fail', 'compensate', 'end' or a node name, not {node.on_reject!r}"
        return _form_problem(node.form)
    elif isinstance(node, Signal):
        if node.schema is not None and not _is_callable(node.schema):
            return f"schema {node.schema!r} is not callable: give a function of the payload returning a dict"
        return _form_problem(node.form)
    return ""


@dataclass
class Workflow:
    """A versioned workflow definition. Build once at import time; it is immutable afterwards."""

    name: str
    version: int
    steps: Sequence[Node]
    title: str = ""
    owner: str = ""
    criticality: str = "medium"
    description: str = ""
    # Builds an instance title from the input, shown in inboxes ("Order #123 for ACME").
    title_template: str = "{name} #{id}"
    start_form: Any = None
    # Scheduled starts of this workflow (automation app): see :class:`Schedule`.
    schedules: Sequence[Schedule] = ()

    nodes: dict[str, Node] = field(init=False, default_factory=dict)
    # For each node, the node that follows it in list order (None: end of its sequence).
    following: dict[str, str | None] = field(init=False, default_factory=dict)
    # For each node inside a branch: (parallel name, branch index).
    branch_of: dict[str, tuple[str, int]] = field(init=False, default_factory=dict)
    # The names of the Human and Signal nodes: the keys of the instance data where the engine records what they did
    # (orchestrator.records).
    records: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier() or len(self.name) > NAME_MAX:
            raise DefinitionError(
                f"Workflow name {self.name!r} must be a Python identifier of at most {NAME_MAX} characters"
            )
        if isinstance(self.version, bool) or not isinstance(self.version, int) or not 1 <= self.version <= VERSION_MAX:
            # A string compared with 1 raised TypeError; past VERSION_MAX the instance row's column refused the
            # first start.
            raise DefinitionError(
                f"Workflow {self.name!r}: version must be a positive whole number, 1 to {VERSION_MAX},"
                f" not {self.version!r}"
            )
        if isinstance(self.steps, str | bytes) or not isinstance(self.steps, Sequence):
            raise DefinitionError(f"{self.key}: steps must be a list of nodes, not {self.steps!r}")
        if not self.steps:
            raise DefinitionError(f"{self.key} has no steps")
        if self.criticality not in ("low", "medium", "high", "critical"):
            raise DefinitionError("criticality must be low, medium, high or critical")
        self._index(self.steps, None)
        for node in self.nodes.values():
            problem = _node_problem(node)
            if problem:
                raise DefinitionError(f"{self.key}: step {node.name!r}: {problem}")
        problem = _form_problem(self.start_form)
        if problem:
            raise DefinitionError(f"{self.key}: start_form: {problem}")
        self._check_forms_leave_records()
        names = [schedule.name for schedule in self.schedules]
        for name in sorted({n for n in names if names.count(n) > 1}):
            # Only one of them could be in the schedule table: which one ran was the last in the list, unsaid.
            raise DefinitionError(f"{self.name}: schedule name {name!r} is used twice")
        for node in self.nodes.values():
            targets: list[str | None] = [node.next]
            if isinstance(node, Decision):
                targets += list(node.choices)
            if isinstance(node, Human) and node.on_reject not in ("fail", "compensate", "end"):
                targets.append(node.on_reject)
            for target in targets:
                if target is not None and target not in self.nodes:
                    raise DefinitionError(
                        f"{self.key}: {node.name!r} points at unknown node {target!r}: name a step of this workflow"
                    )
                if target is not None and target in self.branch_of and node.name not in self.branch_of:
                    raise DefinitionError(f"{self.key}: {node.name!r} jumps into a parallel branch")

    def _check_forms_leave_records(self) -> None:
        """Raise ``DefinitionError`` when a form of this workflow (the start form, a form step's, a signal's)
        declares a field named like a ``Human`` or ``Signal`` node: under those names the engine records who
        decided and whether a wait timed out, and a form's cleaned data is merged into the instance data, so the
        field would overwrite the record (docs/architecture.md, "Records in the data")."""
        self.records = records = frozenset(
            name for name, node in self.nodes.items() if isinstance(node, Human | Signal)
        )
        forms = [("start_form", self.start_form)] + [
            (f"step {node.name!r}", node.form) for node in self.nodes.values() if isinstance(node, Human | Signal)
        ]
        for where, form in forms:
            taken = sorted(records.intersection(getattr(form, "base_fields", None) or {}))
            if taken:
                raise DefinitionError(
                    f"{self.key}: {where}: {form.__name__} has fields named like steps whose outcome the engine"
                    f" records under that name ({', '.join(taken)}): rename the fields"
                )

    def _index(self, nodes: Sequence[Node], branch: tuple[str, int] | None) -> None:
        for position, node in enumerate(nodes):
            if not isinstance(node, Node):
                raise DefinitionError(
                    f"{self.key}: {node!r} is not a node: give Task, Human, Timer, Signal, Decision or Parallel"
                )
            if not isinstance(node.name, str) or not node.name.isidentifier() or len(node.name) > NAME_MAX:
                # The name is a key of the instance data, a step row's column (100 characters), a diagram id
                # and a Signal's default event: a space, a dot or an empty name broke one of them at run time.
                raise DefinitionError(
                    f"{self.key}: step name {node.name!r} must be a Python identifier of at most {NAME_MAX}"
                    " characters (letters, digits and underscores)"
                )
            if node.name in self.nodes:
                raise DefinitionError(f"{self.key}: node name {node.name!r} is used twice")
            self.nodes[node.name] = node
            self.following[node.name] = nodes[position + 1].name if position + 1 < len(nodes) else None
            if branch is not None:
                self.branch_of[node.name] = branch
            if isinstance(node, Parallel):
                for index, sub in enumerate(node.branches):
                    self._index(sub, (node.name, index))

    @property
    def key(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def display_title(self) -> str:
        return self.title or self.name.replace("_", " ").capitalize()

    @property
    def has_parallel(self) -> bool:
        return any(isinstance(node, Parallel) for node in self.nodes.values())

    @property
    def has_signal(self) -> bool:
        """Whether any node waits for a signal: an instance of a definition without one never keeps a signal (a
        delivery of an event it never waits for is refused)."""
        return any(isinstance(node, Signal) for node in self.nodes.values())

    @property
    def first(self) -> Node:
        return self.steps[0]

    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise DefinitionError(f"{self.key} has no node {name!r}") from None

    def next_after(self, name: str) -> str | None:
        """The node after ``name`` when it finishes normally (explicit ``next`` wins over list order)."""
        node = self.node(name)
        return node.next if node.next is not None else self.following[name]

    def fingerprint(self) -> str:
        """A hash of the graph's shape, so a changed definition under an unchanged version is detectable."""
        parts = []
        for name, node in self.nodes.items():
            parts.append(f"{name}:{node.kind}:{self.next_after(name)}:{self.branch_of.get(name)}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
