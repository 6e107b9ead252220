"""``manage.py check`` reports a workflow's form that raises (orchestrator/checks.py): found before deployment,
not as a 500 on the start page, the API or a task page at the first input that misses a field."""

from __future__ import annotations

from io import StringIO

import pytest
from django import forms
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from orchestrator.checks import workflow_forms
from orchestrator.dsl import FORM, Human, StepContext, Task, Workflow


def noop(ctx: StepContext) -> None:
    return None


class ReadsAMissingField(forms.Form):
    amount = forms.DecimalField()

    def clean(self):
        # the common slip: a field that failed its own check is not in cleaned_data
        if self.cleaned_data["amount"] > 1000:
            raise forms.ValidationError("Too much")
        return self.cleaned_data


class RaisesWhenBuilt(forms.Form):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("the rates service is down")


class Careful(forms.Form):
    amount = forms.DecimalField()

    def clean(self):
        if (self.cleaned_data.get("amount") or 0) > 1000:
            raise forms.ValidationError("Too much")
        return self.cleaned_data


def test_a_start_form_whose_clean_raises_on_a_missing_field_is_an_error_naming_workflow_and_version(
    register_workflow,
) -> None:
    # given a workflow whose start form reads cleaned_data["amount"] in clean()
    register_workflow(Workflow("raising_form", 1, [Task("a", noop)], start_form=ReadsAMissingField))

    # when the checks run
    errors = [e for e in workflow_forms() if e.obj == "raising_form@v1"]

    # then one error names the workflow, the version, the form and the exception, and says what to do
    assert [e.id for e in errors] == ["baton.E010"]
    assert "raising_form@v1, start_form ReadsAMissingField: raises KeyError" in errors[0].msg
    assert "self.cleaned_data.get(name)" in (errors[0].hint or "")


def test_a_step_form_that_raises_when_built_fails_manage_py_check(register_workflow) -> None:
    # given a form step whose form's __init__ raises
    step = Human("fill", candidate_groups=["approvers"], kind_of_task=FORM, form=RaisesWhenBuilt)
    register_workflow(Workflow("raising_step_form", 2, [step]))

    # when manage.py check runs
    with pytest.raises(SystemCheckError) as raised:
        call_command("check", stdout=StringIO(), stderr=StringIO())

    # then it stops, naming the version, the step and the error
    assert "raising_step_form@v2, step 'fill' form RaisesWhenBuilt: raises RuntimeError" in str(raised.value)


def test_a_careful_form_passes(register_workflow) -> None:
    # given a start form that reads cleaned_data with .get
    register_workflow(Workflow("careful_form", 1, [Task("a", noop)], start_form=Careful))

    # when the checks run / then nothing is said of it
    assert [e for e in workflow_forms() if e.obj == "careful_form@v1"] == []
