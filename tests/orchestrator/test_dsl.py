"""The workflow DSL (definition checks, retry policy, graph navigation) and the definition registry."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from orchestrator import registry
from orchestrator.dsl import (
    FORM,
    Decision,
    DefinitionError,
    Human,
    Parallel,
    Reassign,
    Remind,
    Retry,
    StepContext,
    Task,
    Timer,
    Workflow,
)
from orchestrator.registry import UnknownWorkflow


def noop(ctx: StepContext) -> None:
    return None


def other_noop(ctx: StepContext) -> None:
    return None


def task(name: str, **kwargs) -> Task:
    return Task(name, noop, **kwargs)


def human(name: str, **kwargs) -> Human:
    return Human(name, candidate_groups=["approvers"], **kwargs)


# --- definition checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(lambda: Workflow("w", 1, [task("a"), task("a")]), "used twice", id="duplicate-name"),
        pytest.param(
            lambda: Workflow("w", 1, [task("a"), Parallel("p", branches=[[task("a")], [task("b")]])]),
            "used twice",
            id="duplicate-name-inside-a-branch",
        ),
        pytest.param(lambda: Workflow("w", 1, [task("a", next="nowhere")]), "unknown node 'nowhere'", id="next"),
        pytest.param(
            lambda: Workflow("w", 1, [Decision("d", lambda data: "a", choices=["a", "ghost"]), task("a")]),
            "unknown node 'ghost'",
            id="decision-choice",
        ),
        pytest.param(lambda: Workflow("w", 1, [human("h", on_reject="ghost")]), "unknown node 'ghost'", id="on-reject"),
        pytest.param(
            lambda: Workflow("w", 1, [task("a", next="b1"), Parallel("p", branches=[[task("b1")], [task("b2")]])]),
            "jumps into a parallel branch",
            id="jump-into-branch",
        ),
        pytest.param(lambda: Workflow("w-1", 1, [task("a")]), "identifier", id="name"),
        pytest.param(lambda: Workflow("w", 0, [task("a")]), "positive", id="version"),
        pytest.param(lambda: Workflow("w", 1, []), "no steps", id="empty"),
        pytest.param(lambda: Workflow("w", 1, [task("a")], criticality="extreme"), "criticality", id="criticality"),
    ],
)
def test_malformed_workflow_is_refused_when_built(build, message):
    """A malformed definition raises DefinitionError at build time, naming the problem."""
    # given / when
    with pytest.raises(DefinitionError, match=message):
        build()
    # then: raised above


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(lambda: Parallel("p", branches=[[task("a")]]), "at least two branches", id="one-branch"),
        pytest.param(lambda: Parallel("p", branches=[[task("a")], []]), "empty branch", id="empty-branch"),
        pytest.param(
            lambda: Parallel("p", branches=[[task("a")], [Decision("d", lambda data: None)]]),
            "tasks, human steps and timers only",
            id="decision-in-branch",
        ),
        pytest.param(
            lambda: Parallel("p", branches=[[task("a")], [Parallel("q", branches=[[task("b")], [task("c")]])]]),
            "tasks, human steps and timers only",
            id="nested-parallel",
        ),
    ],
)
def test_parallel_rules(build, message):
    """A parallel needs two or more non-empty linear branches of tasks, human steps and timers."""
    # given / when
    with pytest.raises(DefinitionError, match=message):
        build()
    # then: raised above


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(lambda: Task("a"), "needs a handler", id="task-handler"),
        pytest.param(lambda: task("a", on_failure="ignore"), "on_failure", id="task-on-failure"),
        pytest.param(lambda: task("a", timeout=0), "timeout", id="task-timeout"),
        pytest.param(lambda: Human("h"), "candidate", id="human-candidates"),
        pytest.param(lambda: human("h", kind_of_task=FORM), "without a form", id="human-form"),
        pytest.param(lambda: human("h", quorum=0), "quorum", id="human-quorum"),
        pytest.param(lambda: human("h", priority="asap"), "priority", id="human-priority"),
        pytest.param(lambda: Timer("t"), "exactly one", id="timer-neither"),
        pytest.param(lambda: Timer("t", wait=timedelta(1), until=lambda data: None), "exactly one", id="timer-both"),
        pytest.param(lambda: Decision("d"), "choose", id="decision-choose"),
    ],
)
def test_malformed_node_is_refused(build, message):
    """Each node kind checks its own arguments."""
    # given / when
    with pytest.raises(DefinitionError, match=message):
        build()
    # then: raised above


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"backoff": -1},
        {"max_delay": -1},
        {"multiplier": 0.5},
        {"jitter": -0.1},
        {"jitter": 1.5},
    ],
)
def test_retry_bounds_are_checked(kwargs):
    """Retry refuses policies that make no sense (no attempt, negative or shrinking delays, jitter outside 0..1)."""
    # given / when
    with pytest.raises(DefinitionError):
        Retry(**kwargs)
    # then: raised above


# --- retry delays ---------------------------------------------------------------------------------------


def test_durations_take_a_timedelta_or_seconds_and_keep_one_unit():
    """Given every duration of the DSL as a timedelta and as a number of seconds, when the nodes are built, then
    each keeps one unit (seconds for retry and timeout, a timedelta for waits, SLAs and rungs), equal both ways."""
    # given / when
    as_delta = Retry(backoff=timedelta(seconds=2), max_delay=timedelta(minutes=1))
    as_number = Retry(backoff=2, max_delay=60)
    timed = task("t", timeout=timedelta(seconds=90))
    waiting = Timer("w", wait=30)
    owned = human("h", sla=3600, escalation=[Remind(after=600), Reassign(after=timedelta(hours=2), group="leads")])

    # then
    assert (as_delta.backoff, as_delta.max_delay) == (as_number.backoff, as_number.max_delay) == (2.0, 60.0)
    assert as_delta.delay(3, random.Random(1)) == as_number.delay(3, random.Random(1))
    assert timed.timeout == 90.0
    assert waiting.wait == timedelta(seconds=30)
    assert owned.sla == timedelta(hours=1)
    assert [rung.after for rung in owned.escalation] == [timedelta(minutes=10), timedelta(hours=2)]


@pytest.mark.parametrize(
    "build",
    [
        lambda: Retry(backoff="2"),
        lambda: task("t", timeout=float("nan")),
        lambda: Timer("w", wait=True),
        lambda: human("h", sla="1h"),
        lambda: Remind(after=None),
    ],
)
def test_a_duration_that_is_neither_a_timedelta_nor_seconds_is_refused(build):
    """Given a duration as text, NaN, a bool or None, when the node is built, then DefinitionError says what a
    duration must be."""
    # given / when / then
    with pytest.raises(DefinitionError, match="timedelta or a finite number of seconds"):
        build()


def test_retry_delay_grows_exponentially_up_to_the_cap():
    """Without jitter the delay is backoff * multiplier**(attempt-1), never above max_delay."""
    # given
    policy = Retry(max_attempts=10, backoff=0.5, multiplier=3.0, max_delay=20, jitter=0)

    # when
    delays = [policy.delay(attempt) for attempt in range(1, 7)]

    # then
    assert delays == [0.5, 1.5, 4.5, 13.5, 20, 20]


def test_retry_jitter_stays_within_its_band_and_is_reproducible():
    """With jitter j the delay lies in base*(1-j)..base*(1+j); the same seed gives the same delays."""
    # given
    policy = Retry(max_attempts=10, backoff=2.0, multiplier=2.0, max_delay=60, jitter=0.25)
    bases = [min(60, 2.0 * 2.0 ** (attempt - 1)) for attempt in range(1, 9)]

    # when
    first = [policy.delay(attempt, random.Random(42)) for attempt in range(1, 9)]
    again = [policy.delay(attempt, random.Random(42)) for attempt in range(1, 9)]
    rng = random.Random(7)
    many = [(base, policy.delay(attempt, rng)) for _ in range(200) for attempt, base in enumerate(bases, start=1)]

    # then
    assert first == again
    assert all(base * 0.75 <= delay <= base * 1.25 for base, delay in many)
    assert len({round(delay, 6) for base, delay in many if base == 60}) > 1  # jitter spreads capped delays too


def test_retry_delay_stays_capped_for_a_long_retrying_step():
    """A policy meant to retry for a day or more keeps its capped delay at a high attempt number."""
    # given
    policy = Retry(max_attempts=100_000, backoff=1.0, multiplier=2.0, max_delay=60, jitter=0)

    # when
    delay = policy.delay(1100)

    # then
    assert delay == 60


# --- navigating the graph -------------------------------------------------------------------------------


@pytest.fixture
def branching() -> Workflow:
    return Workflow(
        "branching",
        1,
        [
            task("first"),
            Decision("route", lambda data: "fast", choices=["fast", "slow"]),
            task("slow", next="join"),
            task("fast"),
            Parallel("join", branches=[[task("left_1"), task("left_2")], [human("right")]]),
            task("last"),
        ],
    )


@pytest.mark.parametrize(
    ("node", "expected"),
    [
        ("first", "route"),
        ("slow", "join"),  # explicit next wins over list order
        ("fast", "join"),
        ("join", "last"),
        ("left_1", "left_2"),  # inside a branch: the branch's own order
        ("left_2", None),  # end of a branch: the join takes over
        ("right", None),
        ("last", None),  # end of the workflow
    ],
)
def test_next_after(branching, node, expected):
    """The node after another: its explicit next, else the next in its own sequence, else None."""
    # given: the branching workflow
    # when
    following = branching.next_after(node)
    # then
    assert following == expected


def test_next_after_an_unknown_node_is_a_definition_error(branching):
    """Asking for a node the definition does not have is a DefinitionError naming it."""
    # given: the branching workflow
    # when / then
    with pytest.raises(DefinitionError, match="no node 'ghost'"):
        branching.next_after("ghost")


def test_fingerprint_depends_on_shape_only():
    """Same shape, same fingerprint (handlers and labels aside); a renamed or re-wired node changes it."""

    # given
    def build(*steps):
        return Workflow("shape", 1, list(steps))

    original = build(task("a"), task("b"), task("c"))

    # when
    same_shape = build(Task("a", other_noop, label="A!"), task("b", timeout=5), task("c"))
    renamed = build(task("a"), task("b2"), task("c"))
    rewired = build(task("a", next="c"), task("b"), task("c"))

    # then
    assert original.fingerprint() == build(task("a"), task("b"), task("c")).fingerprint()
    assert same_shape.fingerprint() == original.fingerprint()
    assert renamed.fingerprint() != original.fingerprint()
    assert rewired.fingerprint() != original.fingerprint()


# --- the registry ---------------------------------------------------------------------------------------


@pytest.fixture
def two_versions(register_workflow):
    v1 = register_workflow(Workflow("registry_demo", 1, [task("a")]))
    v2 = register_workflow(Workflow("registry_demo", 2, [task("a"), task("b")]))
    return v1, v2


def test_registry_returns_the_latest_version_by_default(two_versions):
    """Without a version, get() returns the highest registered version."""
    # given
    _v1, v2 = two_versions
    # when
    found = registry.get("registry_demo")
    # then
    assert found is v2
    assert [w.version for w in registry.all_versions("registry_demo")] == [2, 1]


def test_registry_returns_a_pinned_version(two_versions):
    """get(name, version) returns exactly that version; an unknown one raises UnknownWorkflow."""
    # given
    v1, _v2 = two_versions
    # when
    found = registry.get("registry_demo", 1)
    # then
    assert found is v1
    with pytest.raises(UnknownWorkflow):
        registry.get("registry_demo", 3)
    with pytest.raises(UnknownWorkflow):
        registry.get("no_such_workflow")


def test_registering_a_version_again_with_another_shape_raises(two_versions):
    """Editing a deployed version is refused; re-registering the same definition (a module re-import) is fine
    (other code under the same shape is refused too: tests/orchestrator/test_dsl_mistakes.py)."""
    # given
    v1, _v2 = two_versions
    # when
    same_shape = registry.register(Workflow("registry_demo", 1, [task("a")]))
    # then
    assert registry.get("registry_demo", 1) is same_shape
    with pytest.raises(DefinitionError, match="bump the version"):
        registry.register(Workflow("registry_demo", 1, [task("a"), task("extra")]))
    assert registry.get("registry_demo", 1).fingerprint() == v1.fingerprint()


def test_shipped_workflows_are_registered():
    """The modules in BATON_WORKFLOW_MODULES are loaded at start-up."""
    # given / when
    names = [w.name for w in registry.latest_all()]
    # then
    assert {"order_fulfilment", "expense_approval", "bench_approval", "bench_chain"} <= set(names)
