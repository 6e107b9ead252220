"""A workflow's true/false fields read JSON as typed: true and false (and their usual spellings: yes/no, on/off,
1/0) are taken, anything else is refused naming the field with "Give true or false." and writes nothing. Django's
checkbox read every other value through ``bool()``: ``{"expedite": "nope"}`` (or "no", "off", 2) expedited."""

from __future__ import annotations

import pytest
from django import forms

from approvals.models import HumanTask, TaskDecision, TaskState
from approvals.services.base import APPROVE
from approvals.services.tasks import task_decide
from orchestrator.dsl import Task, Workflow
from orchestrator.inputs import NOT_A_BOOLEAN, bound_form, json_boolean
from orchestrator.models import AuditEvent, ReceivedSignal, WorkflowInstance
from orchestrator.services.instances import InvalidInput, instance_start
from tests.factories import ExpenseInputFactory
from tests.orchestrator.test_signals import flow, waiting_instance

pytestmark = pytest.mark.django_db

START = "/api/instances/"

# What a true/false field takes, and what it reads from each.
TAKEN = [
    (True, True),
    (False, False),
    ("true", True),
    ("TRUE", True),
    ("False", False),
    ("yes", True),
    ("No", False),
    ("on", True),
    ("OFF", False),
    ("1", True),
    ("0", False),
    (1, True),
    (0, False),
]
# What it refuses: other words (those Django read as true among them), other numbers, lists, objects, the empty
# string, a word with spaces or a NUL around it.
JUNK = ["nope", "maybe", "n", "t", "", " true", "true\x00", 2, -1, 0.5, [], [True], {}, {"value": True}]
# The junk that reaches a form through the API (its JSON parser refuses a NUL anywhere in a body first).
PARSED_JUNK = [value for value in JUNK if not (isinstance(value, str) and "\x00" in value)]


class ExpressForm(forms.Form):
    """A start form with a box, a yes/no/unknown answer and some text."""

    order = forms.CharField(max_length=40)
    expedite = forms.BooleanField(required=False)
    insured = forms.NullBooleanField(required=False)


class TermsForm(forms.Form):
    """A box that must be ticked."""

    accepted = forms.BooleanField()


class GiftPaymentForm(forms.Form):
    """A signal's form with a box."""

    paid_amount = forms.DecimalField(max_digits=10, decimal_places=2)
    reference = forms.CharField(max_length=40)
    gift = forms.BooleanField(required=False)


def _noop(ctx: object) -> dict:
    return {}


@pytest.fixture
def express(register_workflow) -> Workflow:
    return register_workflow(
        Workflow(name="api_express", version=1, start_form=ExpressForm, steps=[Task("pack", _noop)])
    )


# --- the rule itself ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sent", "read"), TAKEN)
def test_json_boolean_reads_true_false_and_their_spellings(sent, read):
    # when / then
    assert json_boolean(sent) is read
    assert json_boolean(sent, null=True) is read


@pytest.mark.parametrize("sent", [*JUNK, None])
def test_json_boolean_refuses_anything_else(sent):
    # when / then (null only where the field allows it)
    with pytest.raises(forms.ValidationError) as refused:
        json_boolean(sent)
    assert refused.value.messages == [NOT_A_BOOLEAN]
    assert json_boolean(None, null=True) is None


def test_a_required_box_sent_false_is_required_and_junk_says_what_to_give():
    # when
    unticked = bound_form(TermsForm, {"accepted": "no"})
    junk = bound_form(TermsForm, {"accepted": "sure"})
    ticked = bound_form(TermsForm, {"accepted": "yes"})

    # then: Django's rule for a required box (it must be ticked) holds; junk is named as junk, not "required"
    assert unticked.errors == {"accepted": ["This field is required."]}
    assert junk.errors == {"accepted": [NOT_A_BOOLEAN]}
    assert ticked.is_valid()
    assert ticked.cleaned_data == {"accepted": True}


def test_a_pages_posted_box_is_read_as_django_reads_it():
    # given a page's POST (a QueryDict: a ticked box posts "on", an unticked one nothing)
    from django.http import QueryDict

    # when
    ticked = bound_form(ExpressForm, QueryDict("order=A-1&expedite=on"))
    unticked = bound_form(ExpressForm, QueryDict("order=A-1"))

    # then
    assert ticked.is_valid()
    assert ticked.cleaned_data["expedite"] is True
    assert unticked.is_valid()
    assert unticked.cleaned_data["expedite"] is False


# --- a start through the API ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("sent", "read"), TAKEN)
def test_a_start_takes_true_or_false_as_typed_and_stores_a_boolean(api_as, roles, express, sent, read):
    # when
    response = api_as(roles.staff).post(START, {"workflow": "api_express", "input": {"order": "A-1", "expedite": sent}})

    # then
    assert response.status_code == 201, response.content
    assert WorkflowInstance.objects.get().data["expedite"] is read


@pytest.mark.parametrize("sent", JUNK, ids=repr)
def test_a_start_with_junk_for_a_box_is_refused_naming_it_and_starts_nothing(api_as, roles, express, sent):
    # given
    client = api_as(roles.staff)
    events = AuditEvent.objects.count()

    # when
    response = client.post(START, {"workflow": "api_express", "input": {"order": "A-1", "expedite": sent}})

    # then: a 400 naming input.expedite (a NUL is refused by the parser first, naming where it is)
    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    errors = response.json()["errors"]
    if isinstance(sent, str) and "\x00" in sent:
        assert [key for key in errors if key.endswith("input.expedite")], errors
    else:
        assert errors == {"input.expedite": [NOT_A_BOOLEAN]}, errors
    assert not WorkflowInstance.objects.exists()
    assert AuditEvent.objects.count() == events


def test_null_for_a_box_is_refused(api_as, roles, express):
    """The API refuses null in ``input`` (its fields take a value); a caller of the service gets the box's rule."""
    # when
    response = api_as(roles.staff).post(START, {"workflow": "api_express", "input": {"order": "A-1", "expedite": None}})
    with pytest.raises(InvalidInput) as refused:
        instance_start("api_express", {"order": "A-1", "expedite": None})

    # then
    assert response.status_code == 400, response.content
    assert list(response.json()["errors"]) == ["input.expedite"]
    assert refused.value.errors == {"expedite": [NOT_A_BOOLEAN]}
    assert not WorkflowInstance.objects.exists()


@pytest.mark.parametrize(("sent", "read"), TAKEN)
def test_a_yes_no_unknown_answer_takes_true_or_false_as_typed(api_as, roles, express, sent, read):
    # when
    response = api_as(roles.staff).post(START, {"workflow": "api_express", "input": {"order": "A-1", "insured": sent}})

    # then
    assert response.status_code == 201, response.content
    assert WorkflowInstance.objects.get().data["insured"] is read


def test_a_yes_no_unknown_answer_takes_null_from_a_caller_of_the_service(express):
    # when (a schedule's or a script's start: the API refuses null in input before any form reads it)
    instance = instance_start("api_express", {"order": "A-1", "insured": None})

    # then
    assert instance.data["insured"] is None


@pytest.mark.parametrize("sent", ["maybe", "", 2, [], [None], {}, {"k": 1}], ids=repr)
def test_a_yes_no_unknown_answer_refuses_junk_where_it_read_unknown_or_failed(api_as, roles, express, sent):
    """Django's nullable select read "maybe" as unknown, and a list or an object raised TypeError (a 500)."""
    # when
    response = api_as(roles.staff).post(START, {"workflow": "api_express", "input": {"order": "A-1", "insured": sent}})

    # then
    assert response.status_code == 400, response.content
    assert response.json()["errors"] == {"input.insured": [NOT_A_BOOLEAN]}
    assert not WorkflowInstance.objects.exists()


def test_a_box_left_out_is_false_as_before(api_as, roles, express):
    # when
    response = api_as(roles.staff).post(START, {"workflow": "api_express", "input": {"order": "A-1"}})

    # then
    assert response.status_code == 201, response.content
    data = WorkflowInstance.objects.get().data
    assert (data["expedite"], data["insured"]) == (False, None)


# --- a signal's payload ---------------------------------------------------------------------------------------


@pytest.fixture
def gift_waiting(register_workflow, run_steps, roles) -> WorkflowInstance:
    """An instance waiting for a payment whose form has a "gift" box."""
    register_workflow(flow("api_gift", form=GiftPaymentForm))
    return waiting_instance(run_steps, "api_gift")


def _signal(payload: dict) -> dict:
    return {"event": "payment.confirmed", "signal_id": "sig-1", "payload": payload}


@pytest.mark.parametrize("sent", PARSED_JUNK, ids=repr)
def test_a_signal_with_junk_for_a_box_is_refused_naming_it_and_changes_nothing(api_as, roles, gift_waiting, sent):
    # given
    data_before = gift_waiting.data

    # when
    response = api_as(roles.operator).post(
        f"/api/instances/{gift_waiting.pk}/signals/", _signal({"paid_amount": "12.50", "reference": "P", "gift": sent})
    )

    # then
    assert response.status_code == 422, response.content
    assert response.json()["errors"] == {"payload.gift": [NOT_A_BOOLEAN]}
    assert not ReceivedSignal.objects.exists()
    gift_waiting.refresh_from_db()
    assert gift_waiting.data == data_before


@pytest.mark.parametrize(("sent", "read"), [("no", False), ("Yes", True), (0, False), (True, True)])
def test_a_signal_with_true_or_false_as_typed_joins_the_data_as_a_boolean(api_as, roles, gift_waiting, sent, read):
    # when
    response = api_as(roles.operator).post(
        f"/api/instances/{gift_waiting.pk}/signals/", _signal({"paid_amount": "12.50", "reference": "P", "gift": sent})
    )

    # then
    assert response.status_code == 201, response.content
    assert response.json()["state"] == "consumed"
    gift_waiting.refresh_from_db()
    assert gift_waiting.data["gift"] is read


# --- a form task decided through the API ----------------------------------------------------------------------


@pytest.fixture
def classify(roles) -> HumanTask:
    """The classification form task of an expense in the category "other" (version 2; managers fill it in)."""
    instance = instance_start("expense_approval", ExpenseInputFactory(category="other"), initiator=roles.operator)
    task_decide(instance.tasks.get().pk, roles.staff, APPROVE)
    return HumanTask.objects.get(instance=instance, step__name="classify")


@pytest.mark.parametrize("sent", PARSED_JUNK, ids=repr)
def test_a_form_task_with_junk_for_a_box_is_refused_naming_it_and_decides_nothing(api_as, roles, classify, sent):
    # when
    response = api_as(roles.manager).post(
        f"/api/tasks/{classify.pk}/decide/",
        {"decision": "submit", "data": {"cost_centre": "CC-100", "tax_deductible": sent}},
    )

    # then
    assert response.status_code == 400, response.content
    assert response.json()["errors"] == {"data.tax_deductible": [NOT_A_BOOLEAN]}
    classify.refresh_from_db()
    assert classify.state == TaskState.OPEN
    assert not TaskDecision.objects.filter(task=classify).exists()
    assert "tax_deductible" not in WorkflowInstance.objects.get(pk=classify.instance_id).data


@pytest.mark.parametrize(("sent", "read"), [("no", False), ("off", False), ("ON", True), (1, True), (False, False)])
def test_a_form_task_with_true_or_false_as_typed_stores_a_boolean(api_as, roles, classify, sent, read):
    # when
    response = api_as(roles.manager).post(
        f"/api/tasks/{classify.pk}/decide/",
        {"decision": "submit", "data": {"cost_centre": "CC-100", "tax_deductible": sent}},
    )

    # then
    assert response.status_code == 200, response.content
    classify.refresh_from_db()
    assert classify.state == TaskState.COMPLETED
    assert classify.form_data["tax_deductible"] is read
    assert WorkflowInstance.objects.get(pk=classify.instance_id).data["tax_deductible"] is read
