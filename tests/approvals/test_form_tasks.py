"""FORM tasks: expense_approval v2 asks managers to classify an expense of category "other"."""

from __future__ import annotations

import re

import pytest
from django import forms
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from approvals.models import HumanTask, TaskDecision, TaskKind, TaskState
from approvals.selectors import team_queue
from approvals.services.base import APPROVE, SUBMIT, TaskInvalid
from approvals.services.tasks import task_decide
from orchestrator.bidi import isolate
from orchestrator.dsl import FORM, Human, Workflow
from orchestrator.models import InstanceState, StepState, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory

pytestmark = pytest.mark.django_db


def task_of(instance: WorkflowInstance, step: str) -> HumanTask | None:
    return HumanTask.objects.filter(instance=instance, step__name=step).order_by("-id").first()


def other_expense(users, amount: str = "800") -> WorkflowInstance:
    """An "other" expense the operator submitted, approved by staff at team level."""
    instance = instance_start(
        "expense_approval", ExpenseInputFactory(category="other", amount=amount), initiator=users.operator
    )
    task_decide(task_of(instance, "team_approval").pk, users.staff, APPROVE)
    instance.refresh_from_db()
    return instance


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_team_approval_of_an_other_expense_opens_a_classification_form(users):
    """On v2, after the team approves an "other" expense, managers get a FORM task to classify it."""
    # when
    instance = other_expense(users)

    # then
    task = task_of(instance, "classify")
    assert instance.workflow_version == 2
    assert instance.state == InstanceState.WAITING
    assert (task.kind, task.state, task.title) == (TaskKind.FORM, TaskState.OPEN, f"Classify {instance.title}")
    assert list(task.candidate_groups.values_list("name", flat=True)) == ["managers"]
    assert [t.pk for t in team_queue(users.manager)] == [task.pk]
    assert task_of(instance, "manager_approval") is None


def test_other_categories_skip_the_classification(users):
    """A travel expense goes from team approval straight to the manager (above EUR 500), no form."""
    # given
    instance = instance_start("expense_approval", ExpenseInputFactory(category="travel", amount="800"))

    # when
    task_decide(task_of(instance, "team_approval").pk, users.staff, APPROVE)

    # then
    assert task_of(instance, "classify") is None
    assert task_of(instance, "manager_approval").state == TaskState.OPEN


def test_an_invalid_form_is_refused_with_field_errors(users):
    """No cost centre: TaskInvalid names the field; the task, the step and the instance are untouched."""
    # given
    instance = other_expense(users)
    task = task_of(instance, "classify")

    # when
    with pytest.raises(TaskInvalid) as invalid:
        task_decide(task.pk, users.manager, SUBMIT, data={"tax_deductible": "on", "note": "hm"})

    # then
    assert str(invalid.value) == "The form has errors."
    assert invalid.value.errors == {"cost_centre": ["This field is required."]}
    task.refresh_from_db()
    instance.refresh_from_db()
    assert task.state == TaskState.OPEN
    assert task.step.state == StepState.RUNNING
    assert not TaskDecision.objects.filter(task=task).exists()
    assert "cost_centre" not in instance.data


def test_a_form_task_takes_submit_only(users):
    """Approving a form task is not a thing: the person is told to submit the form."""
    # given
    task = task_of(other_expense(users), "classify")

    # when / then
    with pytest.raises(TaskInvalid, match=r"A form task takes one decision: \"submit\""):
        task_decide(task.pk, users.manager, APPROVE, data={"cost_centre": "CC-100"})


def test_a_form_task_s_page_calls_it_a_form(users):
    """The classification form's page said "Manual resolution in Expense: ..." above a form to fill in: the kind's
    label was an escalation's words, never what a form task is."""
    # given
    task = task_of(other_expense(users), "classify")

    # when
    content = login(users.manager).get(reverse("approvals:task_detail", args=[task.pk])).content.decode()

    # then
    assert task.get_kind_display() == "Form"
    assert "Manual resolution" not in content
    assert re.search(r"Form in <a href=\"/instances/\d+/\">", content)


def test_an_invalid_form_through_the_page_shows_the_error_with_400(users):
    """Submitting the page without a cost centre re-renders the task with 400 and the error beside the field."""
    # given
    task = task_of(other_expense(users), "classify")
    client = login(users.manager)

    # when
    response = client.post(
        reverse("approvals:task_decide", args=[task.pk]),
        {"decision": "submit", "comment": "", "form-tax_deductible": "on", "form-note": "taxi"},
    )

    # then
    assert response.status_code == 400
    assert response.templates[0].name == "approvals/task_detail.html"
    content = response.content.decode()
    assert "The form has errors." in content
    assert 'class="form-select is-invalid"' in content
    assert '<div class="invalid-feedback">This field is required.</div>' in content
    assert 'value="taxi"' in content  # what the person typed is kept
    task.refresh_from_db()
    assert task.state == TaskState.OPEN


@pytest.mark.parametrize(("amount", "following"), [("800", "manager_approval"), ("120", "payout")])
def test_a_valid_form_joins_the_instance_data_and_the_flow_goes_on(users, run_steps, amount, following):
    """Cleaned values (a real boolean) join the instance data; then the manager signs off above 500, else payout."""
    # given
    instance = other_expense(users, amount=amount)
    task = task_of(instance, "classify")

    # when
    done = task_decide(task.pk, users.manager, SUBMIT, data={"cost_centre": "CC-300", "tax_deductible": "on"})
    run_steps(instance)

    # then
    instance.refresh_from_db()
    assert (done.state, done.decision, done.completed_by) == (TaskState.COMPLETED, SUBMIT, users.manager)
    assert done.form_data == {"cost_centre": "CC-300", "tax_deductible": True, "note": ""}
    assert (instance.data["cost_centre"], instance.data["tax_deductible"]) == ("CC-300", True)
    assert instance.data["tax_deductible"] is True
    assert instance.steps.get(name="classify").state == StepState.SUCCEEDED
    if following == "manager_approval":
        assert task_of(instance, "manager_approval").state == TaskState.OPEN
        assert instance.state == InstanceState.WAITING
    else:
        assert instance.steps.get(name="payout").state == StepState.SUCCEEDED
        assert instance.state == InstanceState.COMPLETED


def test_an_unticked_box_is_false_and_the_page_goes_on(users):
    """Through the page, an unticked "Tax deductible" box is stored as False and the manager moves on."""
    # given
    instance = other_expense(users)
    task = task_of(instance, "classify")

    # when
    response = login(users.manager).post(
        reverse("approvals:task_decide", args=[task.pk]),
        {"decision": "submit", "form-cost_centre": "CC-100"},
        follow=True,
    )

    # then
    assert response.status_code == 200
    assert f"Submitted “{isolate(task.title)}”." in response.content.decode()
    instance.refresh_from_db()
    assert (instance.data["cost_centre"], instance.data["tax_deductible"]) == ("CC-100", False)
    manager_task = task_of(instance, "manager_approval")
    assert response.redirect_chain[-1][0] == reverse("approvals:task_detail", args=[manager_task.pk])


class TagsForm(forms.Form):
    """A form task whose fields take several values: ticked boxes and a multiple select of groups."""

    tags = forms.MultipleChoiceField(
        choices=[("urgent", "Urgent"), ("legal", "Legal"), ("tax", "Tax")], widget=forms.CheckboxSelectMultiple
    )
    reviewers = forms.ModelMultipleChoiceField(queryset=Group.objects.all(), required=False)
    note = forms.CharField(required=False)


def test_a_form_with_several_ticked_boxes_keeps_every_value_through_the_page(users, register_workflow):
    """Given a form task with checkboxes and a multiple select, when a manager ticks two boxes and picks two groups
    on the task page, then every value is kept (the page passed only the last value of each field to the form, as
    one text: any ticked box was refused as "Enter a list of values.")."""
    # given
    register_workflow(
        Workflow("tagging", 1, [Human("tag", kind_of_task=FORM, form=TagsForm, candidate_groups=["managers"])])
    )
    instance = instance_start("tagging", {}, initiator=users.operator)
    task = task_of(instance, "tag")

    # when
    response = login(users.manager).post(
        reverse("approvals:task_decide", args=[task.pk]),
        {
            "decision": "submit",
            "form-tags": ["urgent", "tax"],
            "form-reviewers": [users.approvers.pk, users.operators.pk],
            "form-note": "two of each",
        },
    )

    # then
    assert response.status_code == 302, response.content.decode()[:2000]
    task.refresh_from_db()
    assert task.state == TaskState.COMPLETED
    assert task.form_data == {
        "tags": ["urgent", "tax"],
        "reviewers": [users.approvers.pk, users.operators.pk],
        "note": "two of each",
    }


class ReviewForm(forms.Form):
    """A form task whose fields are named as the task page's own: its decision buttons and its comment box."""

    decision = forms.ChoiceField(choices=[("accept", "Accept"), ("decline", "Decline")])
    comment = forms.CharField(label="Reviewer's remarks")


def field_name(page: str, field: str) -> str:
    """The name the task page posts ``field`` of the workflow's form under (read off its rendered input)."""
    tag = re.search(rf'<(?:input|select|textarea)\b[^>]*\bid="id_(?:[\w]+-)?{field}"[^>]*>', page)
    assert tag is not None, f"no input for {field}"
    name = re.search(r'\bname="([^"]+)"', tag.group(0))
    assert name is not None
    return name.group(1)


def test_a_form_whose_fields_are_named_decision_and_comment_is_submitted_from_the_page(users, register_workflow):
    """Given a form task with fields named "decision" and "comment", when a manager fills them and the decision
    comment on the task page and submits, then each lands where it belongs (they shared the page's own names: the
    form's values were dropped and it was refused as "This field is required.")."""
    # given
    register_workflow(
        Workflow("review", 1, [Human("review", kind_of_task=FORM, form=ReviewForm, candidate_groups=["managers"])])
    )
    task = task_of(instance_start("review", {}, initiator=users.operator), "review")
    client = login(users.manager)
    page = client.get(reverse("approvals:task_detail", args=[task.pk])).content.decode()
    posted: dict[str, list[str]] = {}
    for name, value in [
        (field_name(page, "decision"), "decline"),
        (field_name(page, "comment"), "the figures do not add up"),
        ("comment", "Reviewed with finance"),
        ("decision", "submit"),
    ]:
        posted.setdefault(name, []).append(value)

    # when
    response = client.post(reverse("approvals:task_decide", args=[task.pk]), posted)

    # then
    assert response.status_code == 302, response.content.decode()[:2000]
    task.refresh_from_db()
    assert (task.state, task.decision, task.comment) == (TaskState.COMPLETED, SUBMIT, "Reviewed with finance")
    assert task.form_data == {"decision": "decline", "comment": "the figures do not add up"}


class SignedForm(forms.Form):
    """A form task whose fields are named as the keys of the step's record: who decided, and what."""

    by = forms.CharField(label="Delivered by")
    decision = forms.CharField(label="Supplier's decision")
    comment = forms.CharField(label="Remarks")


def test_a_form_task_whose_fields_are_named_by_and_decision_records_who_really_decided(users, register_workflow):
    """Given a form task whose form has fields "by", "decision" and "comment", when a manager submits it with
    "by": "ceo" and "decision": "reject", then the step's record (instance data under the step's name, the step's
    result) says the manager submitted it; the form's values join the data and the task's form data as typed (the
    form's values overwrote the record: anyone holding the task could write "rejected by the CEO")."""
    # given
    register_workflow(
        Workflow("signed", 1, [Human("check", kind_of_task=FORM, form=SignedForm, candidate_groups=["managers"])])
    )
    instance = instance_start("signed", {}, initiator=users.operator)
    task = task_of(instance, "check")

    # when
    typed = {"by": "ceo", "decision": "reject", "comment": "theirs"}
    task_decide(task.pk, users.manager, SUBMIT, comment="looks fine", data=typed)

    # then
    instance.refresh_from_db()
    record = {"by": "manager", "decision": SUBMIT, "comment": "looks fine"}
    assert {key: instance.data["check"][key] for key in record} == record
    task.step.refresh_from_db()
    assert {key: task.step.result[key] for key in record} == record
    assert (instance.data["by"], instance.data["decision"], instance.data["comment"]) == ("ceo", "reject", "theirs")
    task.refresh_from_db()
    assert task.form_data == typed
