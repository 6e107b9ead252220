"""A step whose outcome cannot be recorded: one recorded failure naming the real error, never a re-run.

Everything that can raise between a handler's return and the commit is tried: a result JSON or PostgreSQL cannot
hold, a Decision, a Timer or a human step that cannot be entered after it, and a value too large for its column.
Each handler counts its calls, so "the handler ran once" is a fact read back, not an assumption.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from approvals.models import HumanTask, TaskKind, TaskState
from orchestrator.dsl import COMPENSATE, ESCALATE, Decision, Human, Parallel, Retry, StepContext, Task, Timer, Workflow
from orchestrator.models import AuditEvent, InstanceState, StepKind, StepRun, StepState
from orchestrator.services.compensation import RESULT_LOST
from orchestrator.services.instances import instance_start

pytestmark = pytest.mark.django_db

calls: dict[str, int] = {}
returned: dict[str, object] = {}


def counted(name: str, result: object = None):
    """A handler that counts its calls under ``name`` and returns ``result`` (or what ``returned[name]`` holds)."""

    def handler(ctx: StepContext) -> object:
        calls[name] = calls.get(name, 0) + 1
        return returned.get(name, result)

    handler.__name__ = name
    return handler


@pytest.fixture(autouse=True)
def _fresh_counts():
    calls.clear()
    returned.clear()


RETRYING = Retry(max_attempts=3, backoff=0.01)


def deep(levels: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(levels):
        value = {"inner": value}
    return value


class Unreadable(dict):
    """A mapping that looks like a dict but cannot be read (a lazy proxy whose source went away)."""

    def items(self):
        raise RuntimeError("the source of this mapping is gone")


def looped() -> dict:
    value: dict = {}
    value["self"] = value
    return value


# What a handler returns, the error type recorded, and a fragment of the message that names the place.
BAD_RESULTS = [
    pytest.param({"at": datetime(2026, 1, 1, tzinfo=UTC)}, "TypeError", "result['at'] is a datetime", id="datetime"),
    pytest.param({"tags": {"a", "b"}}, "TypeError", "result['tags'] is a set", id="set"),
    pytest.param({"amount": Decimal("1.10")}, "TypeError", "result['amount'] is a Decimal", id="decimal"),
    pytest.param({"raw": b"\x01\x02"}, "TypeError", "result['raw'] is a bytes", id="bytes"),
    pytest.param({"ratio": float("nan")}, "ValueError", "result['ratio'] is nan", id="nan"),
    pytest.param({"ratio": math.inf}, "ValueError", "result['ratio'] is inf", id="infinity"),
    pytest.param({"note": "a\x00b"}, "ValueError", "result['note'] contains a NUL", id="nul-in-string"),
    pytest.param({"a\x00b": 1}, "ValueError", "has a key that contains a NUL", id="nul-in-key"),
    pytest.param({"text": "\ud800"}, "ValueError", "lone surrogate", id="lone-surrogate"),
    pytest.param({1: "one"}, "TypeError", "has a key of type int", id="int-key"),
    pytest.param(
        {"rows": [1, {"when": [datetime(2026, 1, 1)]}]}, "TypeError", "result['rows'][1]['when'][0]", id="nested"
    ),
    pytest.param(deep(5000), "ValueError", "nested deeper than 200 levels", id="too-deep"),
    pytest.param(looped(), "ValueError", "refers to itself", id="cycle"),
    pytest.param(deep(990), "ValueError", "nested deeper than", id="deep-yet-under-the-encoder-limit"),
    pytest.param({"lazy": Unreadable(a=1)}, "RuntimeError", "source of this mapping is gone", id="unreadable-mapping"),
    pytest.param({"blob": "x" * 2_000_000}, "ValueError", "more than BATON_MAX_RESULT_BYTES", id="too-big"),
    pytest.param(["not", "a", "dict"], "TypeError", "handler returned list", id="not-a-dict"),
]


@pytest.mark.parametrize(("result", "error_type", "message"), BAD_RESULTS)
def test_a_result_that_cannot_be_stored_is_one_permanent_failure(
    register_workflow, run_steps, result, error_type, message
):
    """The handler runs once; its attempt is recorded as a failure naming the error and the place; no retry even
    with attempts left; the instance follows on_failure (fail) and the next step never starts."""
    # given
    register_workflow(
        Workflow("bad_result", 1, [Task("act", counted("act", result), retry=RETRYING), Task("next", counted("next"))])
    )
    instance = instance_start("bad_result", {})

    # when
    ran = run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    step = instance.steps.get(name="act")
    assert calls == {"act": 1}
    assert [(r.name, r.attempt, r.result) for r in ran] == [("act", 1, "failed")]
    assert (step.state, step.attempt, step.error_type) == (StepState.DEAD, 1, error_type)
    assert message in step.error
    assert step.result == {RESULT_LOST: True}
    assert instance.state == InstanceState.FAILED
    assert instance.error.startswith("act failed: ")
    assert not instance.steps.filter(name="next").exists()
    dead = AuditEvent.objects.get(instance=instance, action="step.dead")
    assert dead.payload == {"attempt": 1, "error_type": error_type, "permanent": True, "returned": True}


def needs_region(data: dict) -> str:
    return "eu" if data["region"] == "eu" else "us"


def until_deadline(data: dict) -> datetime:
    return datetime.fromisoformat(data["deadline"])


def until_naive(data: dict) -> datetime:
    return datetime(2030, 1, 1)  # no tzinfo: a naive time


def route_to(target: object):
    """A Decision's choose that returns ``target``, whatever it is."""

    def choose(data: dict) -> object:
        return target

    return choose


def until_value(value: object):
    """A Timer's until that returns ``value``, whatever it is."""

    def until(data: dict) -> object:
        return value

    return until


def decision_to(target: object) -> list:
    return [Decision("route", route_to(target), choices=["eu"]), Task("eu", counted("eu"))]


FOLLOWERS = [
    pytest.param(decision_to("nowhere"), "EngineError", "decision 'route' chose 'nowhere'", id="decision-unknown"),
    pytest.param(decision_to(5), "EngineError", "decision 'route' chose 5", id="decision-int"),
    pytest.param(decision_to(["eu"]), "EngineError", "decision 'route' chose ['eu']", id="decision-list"),
    pytest.param(
        decision_to(datetime(2030, 1, 1, tzinfo=UTC)),
        "EngineError",
        "decision 'route' chose datetime.datetime(2030",
        id="decision-dt",
    ),
    pytest.param(decision_to("eu\x00"), "EngineError", "decision 'route' chose 'eu\\x00'", id="decision-nul"),
    pytest.param(
        [
            Decision("route", route_to("left"), choices=["eu"]),
            Task("eu", counted("eu")),
            Parallel("both", branches=[[Task("left", counted("left"))], [Task("right", counted("right"))]]),
        ],
        "EngineError",
        "decision 'route' chose 'left', a step inside parallel 'both'",
        id="decision-into-a-branch",
    ),
    pytest.param(
        [Timer("wait", until=until_value(date(2030, 1, 1)))],
        "EngineError",
        "until() returned datetime.date",
        id="timer-date",
    ),
    pytest.param(
        [Timer("wait", until=until_value("2030-01-01T00:00:00+00:00"))],
        "EngineError",
        "until() returned '2030",
        id="timer-text",
    ),
    pytest.param(
        [Decision("route", needs_region, choices=["eu", "us"]), Task("eu", counted("eu")), Task("us", counted("us"))],
        "KeyError",
        "'region'",
        id="decision-raises",
    ),
    pytest.param([Timer("wait", until=until_deadline)], "KeyError", "'deadline'", id="timer-until-raises"),
    pytest.param(
        [Timer("wait", until=until_naive)], "EngineError", "until() returned datetime.datetime(2030", id="timer-naive"
    ),
    pytest.param(
        [Human("approve", candidate_groups=["approvers"], task_title="Approve {amount}")],
        "KeyError",
        "'amount'",
        id="human-task-cannot-open",
    ),
]


@pytest.mark.parametrize(("followers", "error_type", "message"), FOLLOWERS)
def test_a_next_node_that_cannot_be_entered_fails_the_step_once(
    register_workflow, run_steps, followers, error_type, message
):
    """Entering what follows the step raises after the handler returned: one failed attempt naming that error,
    the handler not run again, nothing of the next node left behind, the instance failed."""
    # given
    register_workflow(Workflow("bad_next", 1, [Task("act", counted("act", {"ok": True}), retry=RETRYING), *followers]))
    instance = instance_start("bad_next", {})

    # when
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    step = instance.steps.get(name="act")
    assert calls == {"act": 1}
    assert (step.state, step.attempt, step.error_type) == (StepState.DEAD, 1, error_type)
    assert message in step.error.splitlines()[0]
    assert "the handler returned" in step.error
    assert instance.state == InstanceState.FAILED
    assert instance.steps.count() == 1  # the node after it was rolled back with the failed record
    assert not HumanTask.objects.filter(instance=instance).exists()
    assert "ok" not in instance.data  # the lost result was not merged either


def test_a_value_too_long_for_its_column_is_refused_by_postgresql_and_recorded(register_workflow, run_steps):
    """The last step's result sets an outcome longer than its column: PostgreSQL's DataError, raised when the
    instance completes, is recorded on that step in a fresh transaction."""
    # given
    register_workflow(Workflow("long_outcome", 1, [Task("act", counted("act", {"outcome": "x" * 41}), retry=RETRYING)]))
    instance = instance_start("long_outcome", {})

    # when
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    step = instance.steps.get()
    assert calls == {"act": 1}
    assert (step.state, step.attempt, step.error_type) == (StepState.DEAD, 1, "DataError")
    assert "value too long for type character varying(40)" in step.error
    assert (instance.state, instance.outcome) == (InstanceState.FAILED, "")


def test_a_timer_whose_successor_cannot_be_entered_dies_once(register_workflow, run_steps):
    """The record of a fired timer fails (the decision after it raises): the timer dies, it does not fire again."""
    # given
    register_workflow(
        Workflow(
            "timer_then_bad_decision",
            1,
            [Timer("wait", wait=timedelta(seconds=1)), Decision("route", needs_region), Task("eu", counted("eu"))],
        )
    )
    instance = instance_start("timer_then_bad_decision", {})

    # when
    ran = run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    timer = instance.steps.get(name="wait")
    assert [(r.name, r.result) for r in ran] == [("wait", "failed")]
    assert (timer.kind, timer.state, timer.attempt, timer.error_type) == (StepKind.TIMER, StepState.DEAD, 1, "KeyError")
    assert instance.state == InstanceState.FAILED


def test_an_unrecordable_result_escalates_when_the_step_says_so(register_workflow, run_steps, users):
    """on_failure=escalate is followed: operators get an escalation naming the real error."""
    # given
    register_workflow(
        Workflow("bad_escalate", 1, [Task("act", counted("act", {"at": datetime.now(UTC)}), on_failure=ESCALATE)])
    )
    instance = instance_start("bad_escalate", {})

    # when
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    escalation = HumanTask.objects.get(instance=instance)
    assert calls == {"act": 1}
    assert (escalation.kind, escalation.state) == (TaskKind.ESCALATION, TaskState.OPEN)
    assert escalation.title.endswith("act failed and needs an operator's decision")
    assert "result['at'] is a datetime" in escalation.description
    assert instance.state == InstanceState.WAITING


def undo(name: str):
    def compensate(ctx: StepContext) -> dict:
        calls[f"undo_{name}"] = calls.get(f"undo_{name}", 0) + 1
        return {}

    return compensate


def test_compensation_undoes_a_step_whose_result_was_lost(register_workflow, run_steps):
    """The handler returned, so its side effect happened: with on_failure=compensate the saga undoes that step too,
    latest first, and the instance ends compensated."""
    # given
    register_workflow(
        Workflow(
            "bad_compensate",
            1,
            [
                Task("reserve", counted("reserve", {"reserved": True}), compensate=undo("reserve")),
                Task(
                    "charge",
                    counted("charge", {"charged_at": datetime.now(UTC)}),
                    compensate=undo("charge"),
                    on_failure=COMPENSATE,
                    retry=RETRYING,
                ),
            ],
        )
    )
    instance = instance_start("bad_compensate", {})

    # when
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    assert calls == {"reserve": 1, "charge": 1, "undo_charge": 1, "undo_reserve": 1}
    compensations = instance.steps.filter(kind=StepKind.COMPENSATION).order_by("id")
    assert [c.compensates.name for c in compensations] == ["charge", "reserve"]
    originals = instance.steps.filter(kind=StepKind.TASK).order_by("id").values_list("name", "state")
    assert list(originals) == [("reserve", StepState.COMPENSATED), ("charge", StepState.COMPENSATED)]
    assert instance.state == InstanceState.COMPENSATED


def test_a_step_that_raised_is_not_compensated(register_workflow, run_steps):
    """The other side of that rule: a handler that raised (no result, effect unknown) is not undone by the saga."""

    # given
    def declined(ctx: StepContext) -> None:
        raise ValueError("declined")

    register_workflow(
        Workflow(
            "raised_compensate",
            1,
            [
                Task("reserve", counted("reserve", {}), compensate=undo("reserve")),
                Task("charge", declined, compensate=undo("charge"), on_failure=COMPENSATE, retry=Retry(max_attempts=1)),
            ],
        )
    )
    instance = instance_start("raised_compensate", {})

    # when
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    assert calls == {"reserve": 1, "undo_reserve": 1}
    assert instance.steps.get(name="charge", kind=StepKind.TASK).state == StepState.DEAD
    assert instance.state == InstanceState.COMPENSATED


def test_an_exception_message_with_a_nul_is_recorded_as_text(register_workflow, run_steps):
    """A handler's error message carrying "\\x00" (PostgreSQL text cannot hold it) is recorded, escaped, as the
    failure it is: the attempt is not left running."""

    # given
    def broken(ctx: StepContext) -> None:
        calls["broken"] = calls.get("broken", 0) + 1
        raise ValueError("bad byte \x00 in the reply")

    register_workflow(Workflow("nul_error", 1, [Task("act", broken, retry=Retry(max_attempts=2, backoff=0.01))]))
    instance = instance_start("nul_error", {})

    # when
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    step = instance.steps.get()
    assert calls == {"broken": 2}  # an exception is worth another attempt: two attempts, two calls
    assert (step.state, step.attempt, step.error_type) == (StepState.DEAD, 2, "ValueError")
    assert step.error.startswith("bad byte \\x00 in the reply")
    assert instance.error == "act failed: bad byte \\x00 in the reply"


def test_the_failure_is_recorded_in_one_transaction_after_the_rolled_back_one(register_workflow, run_steps):
    """Nothing of the failed record survives: the audit chain holds the claim, then the failure, and verifies."""
    from orchestrator.audit import verify_chain

    # given
    register_workflow(Workflow("chain_check", 1, [Task("act", counted("act", {"ok": 1})), Decision("d", needs_region)]))
    instance = instance_start("chain_check", {})

    # when
    run_steps(instance, advance=True)

    # then
    events = list(AuditEvent.objects.filter(instance=instance).order_by("seq"))
    assert [e.action for e in events] == [
        "instance.started",
        "step.scheduled",
        "step.started",
        "step.dead",
        "instance.failed",
    ]
    assert verify_chain(events) is None
    assert StepRun.objects.filter(instance=instance, state=StepState.RUNNING).count() == 0


def test_every_kind_of_json_value_is_still_recorded_as_it_is(register_workflow, run_steps):
    """The check refuses only what cannot be stored: tuples (as lists), unicode, big integers, booleans, None and
    nesting within the limit go through, and the next step sees them."""
    # given
    result = {
        "pair": (1, 2),
        "name": "Zoë 🚚 \\x00 (an escaped backslash, not a NUL)",
        "big": 10**30,
        "ratio": 0.25,
        "flags": [True, False, None],
        "nested": deep(20),
    }
    register_workflow(Workflow("good_result", 1, [Task("act", counted("act", result)), Task("next", counted("next"))]))
    instance = instance_start("good_result", {})

    # when
    run_steps(instance)

    # then
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED
    assert calls == {"act": 1, "next": 1}
    assert instance.steps.get(name="act").result == {**result, "pair": [1, 2]}
    assert instance.data["name"] == result["name"]
    assert instance.data["big"] == 10**30


def test_a_result_nested_deeper_than_the_rule_is_refused_wherever_the_check_runs(
    register_workflow, run_steps, client, users
):
    """The depth rule is a fixed bound (``MAX_DEPTH``), not whatever the JSON encoder managed from the worker's
    stack at that moment: a result the worker stored must also be readable by the instance page, whose template
    stack is far deeper; before, 900 levels passed the worker's check and the page answered 500."""
    # given a result nested deeper than the rule, yet shallow enough for the encoder from the worker's stack
    from orchestrator.services.results import MAX_DEPTH

    levels = 900  # the encoder follows it from the worker's stack (before: stored, and the page failed)
    register_workflow(Workflow("deep_result", 1, [Task("act", counted("act", deep(levels)))]))
    instance = instance_start("deep_result", {})

    # when
    run_steps(instance, advance=True)

    # then it is one permanent failure naming the depth, and the page still renders
    step = instance.steps.get(name="act")
    assert (step.state, step.error_type, calls) == (StepState.DEAD, "ValueError", {"act": 1})
    assert f"nested deeper than {MAX_DEPTH} levels" in step.error
    client.force_login(users.admin)
    assert client.get(f"/instances/{instance.pk}/").status_code == 200


def test_a_result_as_deep_as_the_rule_allows_is_stored_and_shown(register_workflow, run_steps, client, users):
    """The deepest result the rule accepts is recorded and its instance page renders (the bound leaves the
    encoder room on any stack a page or a later step reads it from)."""
    # given
    from orchestrator.services.results import MAX_DEPTH

    register_workflow(Workflow("deep_ok", 1, [Task("act", counted("act", deep(MAX_DEPTH - 2)))]))
    instance = instance_start("deep_ok", {})

    # when
    run_steps(instance, advance=True)

    # then
    instance.refresh_from_db()
    assert instance.steps.get(name="act").state == StepState.SUCCEEDED
    assert instance.state == InstanceState.COMPLETED
    client.force_login(users.admin)
    assert client.get(f"/instances/{instance.pk}/").status_code == 200
