"""The engine's records in the instance data (orchestrator/records.py): which keys they are, and the checks every
way in shares. Each way in is tested beside its own code (start, signals, skip, data edit, schedules, the API and
the pages); here the rule itself, on definitions alone."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django import forms

from orchestrator.dsl import (
    CONTINUE,
    Decision,
    DefinitionError,
    Human,
    Parallel,
    Signal,
    StepContext,
    Task,
    Timer,
    Workflow,
)
from orchestrator.records import (
    RecordsRefused,
    record_errors,
    record_keys,
    records_rewritten,
    records_set,
    refuse_records,
)


def noop(ctx: StepContext) -> dict:
    return {}


def route(data: dict) -> str:
    return "approve"


CLAIM = Workflow(
    name="records_claim",
    version=1,
    steps=[
        Task("check", noop),
        Signal("wait_docs", event="docs.received", timeout=timedelta(hours=1), on_timeout=CONTINUE),
        Decision("route", route, choices=["approve"]),
        Human("approve", candidate_groups=["approvers"]),
        Parallel("both", branches=[[Human("legal", candidate_groups=["legal"])], [Timer("cool_off", wait=60)]]),
        Task("pay", noop),
    ],
)


def test_the_records_are_the_names_of_human_steps_and_waits_in_branches_too():
    # when
    keys = record_keys(CLAIM)

    # then: human steps and signal waits, wherever they are; no task, timer, decision or parallel
    assert keys == frozenset({"wait_docs", "approve", "legal"})


def test_a_workflow_without_human_steps_or_waits_has_no_records():
    assert record_keys(Workflow(name="records_none", version=1, steps=[Task("only", noop)])) == frozenset()


@pytest.mark.parametrize(
    ("data", "taken"),
    [
        ({"approve": {"decision": "approve", "by": "ceo"}}, ["approve"]),
        ({"wait_docs": {"timed_out": False}, "amount": 3, "legal": "ok"}, ["legal", "wait_docs"]),
        ({"amount": 3, "check": True, "pay": 1, "route": "x", "cool_off": 0}, []),
        ({"order": {"approve": {"decision": "approve"}}}, []),
        ({}, []),
    ],
    ids=["a record holding an object", "several among others", "other nodes' names", "nested deeper", "empty"],
)
def test_the_keys_a_data_sets_are_its_top_level_keys_among_the_records(data, taken):
    # when / then: only top-level keys count, where the engine writes; sorted, so messages are stable
    assert records_set(record_keys(CLAIM), data) == taken


def test_an_edit_rewrites_a_record_by_adding_or_changing_it_never_by_removing_it():
    # given data holding a decision and a timeout
    before = {"amount": 3, "approve": {"decision": "reject", "by": "ann"}, "wait_docs": {"timed_out": True}}

    # when an edit changes one, removes the other, adds a third and changes business data
    after = {"amount": 4, "approve": {"decision": "approve", "by": "ann"}, "legal": {"decision": "approve"}}

    # then the change and the addition are named; the removal and the business data are not
    assert records_rewritten(record_keys(CLAIM), before, after) == ["approve", "legal"]
    assert records_rewritten(record_keys(CLAIM), before, {"amount": 4, "approve": before["approve"]}) == []


def test_a_refusal_names_each_key_under_its_field_and_says_who_may_not_set_it():
    # when
    with pytest.raises(RecordsRefused) as refused:
        refuse_records(["approve", "wait_docs"], what="output", field="output", sender="a skip's output")

    # then
    assert refused.value.messages == ["The output may not set the workflow's own records: approve, wait_docs."]
    assert refused.value.keys == ["approve", "wait_docs"]
    assert set(refused.value.errors) == {"output.approve", "output.wait_docs"}
    assert refused.value.errors["output.approve"] == [
        "This is where the workflow records what its step 'approve' did; a skip's output cannot set it."
    ]
    assert record_errors(["approve"], field="", sender="x") == {
        "approve": ["This is where the workflow records what its step 'approve' did; x cannot set it."]
    }


def test_no_keys_refuse_nothing():
    assert refuse_records([], what="output", field="output", sender="a skip's output") is None


class DocsForm(forms.Form):
    reference = forms.CharField()


class ForgingForm(DocsForm):
    approve = forms.CharField(required=False)


@pytest.mark.parametrize(
    ("where", "steps", "start_form"),
    [
        ("start_form", [Human("approve", candidate_groups=["a"])], ForgingForm),
        (
            "step 'fill'",
            [
                Human("fill", candidate_groups=["a"], kind_of_task="form", form=ForgingForm),
                Human("approve", candidate_groups=["a"]),
            ],
            None,
        ),
        (
            "step 'docs'",
            [Signal("docs", event="docs.in", form=ForgingForm), Human("approve", candidate_groups=["a"])],
            None,
        ),
        ("step 'approve'", [Human("approve", candidate_groups=["a"], kind_of_task="form", form=ForgingForm)], None),
    ],
    ids=["start form", "form step", "signal form", "the step's own form"],
)
def test_a_form_field_named_like_a_record_is_refused_when_the_workflow_is_defined(where, steps, start_form):
    """A form's cleaned data joins the instance data: a field named like a human step or a wait would overwrite
    what the engine records there, on every start, decision or signal."""
    # when / then
    with pytest.raises(DefinitionError) as refused:
        Workflow(name="records_forms", version=1, steps=steps, start_form=start_form)
    assert str(refused.value) == (
        f"records_forms@v1: {where}: ForgingForm has fields named like steps whose outcome the engine records under"
        " that name (approve): rename the fields"
    )


def test_forms_with_other_field_names_define_a_workflow():
    # when
    workflow = Workflow(
        name="records_forms",
        version=1,
        steps=[
            Human("fill", candidate_groups=["a"], kind_of_task="form", form=DocsForm),
            Signal("docs", event="docs.in", form=DocsForm),
            Human("approve", candidate_groups=["a"]),
        ],
        start_form=DocsForm,
    )

    # then
    assert record_keys(workflow) == frozenset({"fill", "docs", "approve"})
