# mypy: disable-error-code="arg-type,list-item"
# (the definitions here are wrong on purpose: what a developer passes without a type checker)
"""A developer's mistakes in a workflow definition fail when the definition is built, with a message naming the
workflow, its version and the step and saying what to give instead: not as an AttributeError or TypeError in the
engine at the first production run that reaches the step (orchestrator/dsl.py, ``Workflow``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django import forms

from orchestrator import registry
from orchestrator.dsl import (
    FORM,
    Decision,
    DefinitionError,
    Escalate,
    Human,
    Reassign,
    Remind,
    Retry,
    Signal,
    StepContext,
    Task,
    Timer,
    Workflow,
)


def noop(ctx: StepContext) -> None:
    return None


class Upload(forms.Form):
    receipt = forms.FileField()


class Plain(forms.Form):
    amount = forms.DecimalField()
    day = forms.DateField(required=False)


def people(**kwargs: Any) -> Human:
    return Human("approve", candidate_groups=["approvers"], **kwargs)


MISTAKES: list[tuple[str, Callable[[], Any], str]] = [
    ("handler-as-a-name", lambda: Workflow("w", 1, [Task("a", "noop")]), "step 'a': handler 'noop' is not callable"),
    ("handler-a-number", lambda: Workflow("w", 1, [Task("a", 5)]), "step 'a': handler 5 is not callable"),
    ("compensate-as-a-name", lambda: Workflow("w", 1, [Task("a", noop, compensate="undo")]), "compensate 'undo'"),
    ("retry-not-a-retry", lambda: Workflow("w", 1, [Task("a", noop, retry=3)]), "retry must be a Retry"),
    ("choose-as-a-name", lambda: Workflow("w", 1, [Decision("d", "pick"), Task("a", noop)]), "choose 'pick'"),
    ("choices-a-string", lambda: Workflow("w", 1, [Decision("d", noop, choices="a"), Task("a", noop)]), "choices"),
    ("until-as-a-name", lambda: Workflow("w", 1, [Timer("t", until="soon")]), "until 'soon' is not callable"),
    ("wait-zero", lambda: Workflow("w", 1, [Timer("t", wait=0)]), "step 't': wait must be positive"),
    ("wait-negative", lambda: Workflow("w", 1, [Timer("t", wait=timedelta(hours=-1))]), "wait must be positive"),
    ("wait-past-ten-years", lambda: Workflow("w", 1, [Timer("t", wait=timedelta(days=10**6))]), "at most 3653"),
    ("groups-a-string", lambda: Workflow("w", 1, [Human("h", candidate_groups="managers")]), '["managers"]'),
    ("users-blank", lambda: Workflow("w", 1, [Human("h", candidate_users=[" "])]), "candidate_users"),
    ("group-with-nul", lambda: Workflow("w", 1, [Human("h", candidate_groups=["a\x00"])]), "candidate_groups"),
    ("rung-group-blank", lambda: Workflow("w", 1, [people(escalation=[Reassign(60, group="")])]), "Reassign.group"),
    ("kind-of-task-unknown", lambda: Workflow("w", 1, [people(kind_of_task="vote")]), "kind_of_task"),
    ("sla-negative", lambda: Workflow("w", 1, [people(sla=-60)]), "sla must be positive"),
    ("rung-zero", lambda: Workflow("w", 1, [people(escalation=[Remind(0)])]), "Remind.after must be positive"),
    ("rung-negative", lambda: Workflow("w", 1, [people(escalation=[Escalate(-5)])]), "Escalate.after"),
    ("rung-not-a-rung", lambda: Workflow("w", 1, [people(escalation=["remind"])]), "give Remind(...)"),
    ("form-an-instance", lambda: Workflow("w", 1, [people(kind_of_task=FORM, form=Plain())]), "not a Django form"),
    ("form-with-a-file", lambda: Workflow("w", 1, [people(kind_of_task=FORM, form=Upload)]), "file fields (receipt)"),
    ("signal-form-file", lambda: Workflow("w", 1, [Signal("paid", form=Upload)]), "step 'paid': Upload has file"),
    ("signal-schema-name", lambda: Workflow("w", 1, [Signal("paid", schema="check")]), "schema 'check'"),
    ("start-form-instance", lambda: Workflow("w", 1, [Task("a", noop)], start_form=Plain()), "start_form: "),
    ("start-form-file", lambda: Workflow("w", 1, [Task("a", noop)], start_form=Upload), "start_form: Upload has"),
    ("step-not-a-node", lambda: Workflow("w", 1, ["a"]), "'a' is not a node"),
    ("steps-a-node", lambda: Workflow("w", 1, Task("a", noop)), "steps must be a list of nodes"),
    ("step-name-space", lambda: Workflow("w", 1, [Task("send mail", noop)]), "step name 'send mail'"),
    ("step-name-dot", lambda: Workflow("w", 1, [Task("send.mail", noop)]), "Python identifier"),
    ("step-name-empty", lambda: Workflow("w", 1, [Task("", noop)]), "step name ''"),
    ("step-name-symbol", lambda: Workflow("w", 1, [Task("€", noop)]), "step name '€'"),
    ("step-name-long", lambda: Workflow("w", 1, [Task("a" * 101, noop)]), "at most 100 characters"),
]


@pytest.mark.parametrize(("build", "expected"), [pytest.param(b, e, id=i) for i, b, e in MISTAKES])
def test_a_mistake_in_a_step_fails_the_definition_naming_workflow_version_and_step(build, expected) -> None:
    # given a definition with one developer's mistake in it

    # when it is built (at import, in every process's start)
    with pytest.raises(DefinitionError) as raised:
        build()

    # then it is refused there, naming the workflow and version (w@v1) and what to give instead
    assert expected in str(raised.value)
    assert str(raised.value).startswith("w@v1: ")


@pytest.mark.parametrize("version", [0, -1, "1", 1.5, True, None, 2**31])
def test_a_version_that_is_not_a_whole_number_the_database_holds_is_refused(version) -> None:
    # given a version of 0, below, a string, a float, a bool, none, or past PostgreSQL's integer column
    # when the definition is built
    with pytest.raises(DefinitionError) as raised:
        Workflow("w", version, [Task("a", noop)])

    # then it is refused naming the workflow, not a TypeError comparing a string with 1
    assert f"Workflow 'w': version must be a positive whole number, 1 to {2**31 - 1}" in str(raised.value)


@pytest.mark.parametrize("name", ["my workflow", "a" * 101, 5, ""])
def test_a_workflow_name_the_instance_row_cannot_hold_is_refused(name) -> None:
    # given a workflow name with a space, past the column's 100 characters, a number, empty
    # when the definition is built
    with pytest.raises(DefinitionError, match="must be a Python identifier of at most 100 characters"):
        Workflow(name, 1, [Task("a", noop)])


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: Retry(max_attempts="3"), "Retry.max_attempts must be a whole number"),
        (lambda: Human("h", candidate_groups=["g"], quorum="2"), "quorum must be a whole number"),
    ],
)
def test_a_count_given_as_text_is_a_definition_error_not_a_type_error(build, expected) -> None:
    # given a count typed as a string
    # when the node is built
    with pytest.raises(DefinitionError, match=expected):
        build()


def test_lambdas_bound_methods_and_callable_objects_are_handlers() -> None:
    # given the callables a developer reasonably writes
    class Shipper:
        def ship(self, ctx: StepContext) -> dict[str, Any]:
            return {"shipped": True}

        def __call__(self, ctx: StepContext) -> None:
            return None

    # when they are the handlers, choose and until of a definition
    workflow = Workflow(
        "w",
        1,
        [
            Task("a", lambda ctx: {"a": 1}),
            Task("b", Shipper().ship, compensate=Shipper()),
            Decision("d", lambda data: None),
        ],
        start_form=Plain,
    )

    # then it is built (the worker finds them through the registry: nothing is pickled by name)
    assert list(workflow.nodes) == ["a", "b", "d"]


def test_register_refuses_what_is_not_a_workflow() -> None:
    # given a function that builds a workflow, registered instead of its result
    def build() -> Workflow:
        return Workflow("w", 1, [Task("a", noop)])

    # when it is registered
    with pytest.raises(DefinitionError, match="register\\(\\) takes a Workflow"):
        registry.register(build)

    # then nothing is registered under any name
    assert not registry.is_registered("w", 1)


def other(ctx: StepContext) -> None:
    return None


def same_code() -> Workflow:
    """``same_code@v1``, built anew at each call, as a module imported twice builds it."""
    return Workflow("same_code", 1, [Task("a", noop), Decision("d", lambda data: None)])


@pytest.fixture
def registered_once() -> Any:
    """``same_code@v1`` registered with ``noop``; unregistered after the test."""
    registry.register(same_code())
    yield
    registry.unregister("same_code", 1)


@pytest.mark.parametrize(
    "again",
    [
        pytest.param(lambda: Workflow("same_code", 1, [Task("a", other), Decision("d", lambda data: None)]), id="fn"),
        pytest.param(lambda: Workflow("same_code", 1, [Task("a", noop), Decision("d", lambda data: "a")]), id="lambda"),
        pytest.param(
            lambda: Workflow("same_code", 1, [Task("a", noop, timeout=5), Decision("d", lambda data: None)]),
            id="setting",
        ),
    ],
)
def test_the_same_name_and_version_registered_again_with_other_code_is_refused(registered_once, again) -> None:
    # given same_code@v1 registered, and another definition of the same shape under the same name and version
    # (another handler, a lambda computing something else, another timeout)

    # when the second is registered
    with pytest.raises(DefinitionError) as raised:
        registry.register(again())

    # then it is refused (it silently replaced the first one's handlers), naming the version and what to do
    assert "same_code@v1 is already registered from tests.orchestrator.test_dsl_mistakes" in str(raised.value)
    assert "bump the version" in str(raised.value)
    assert registry.get("same_code", 1).nodes["a"].handler is noop  # type: ignore[attr-defined]


def test_the_same_definition_built_twice_registers_again(registered_once) -> None:
    # given same_code@v1 registered, and the same definition built a second time (a module imported twice)
    again = same_code()

    # when it is registered
    registry.register(again)

    # then it is accepted: the same code under the same version
    assert registry.get("same_code", 1) is again
