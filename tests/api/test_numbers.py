"""Numbers in a workflow's forms, as the API reads them: digits 0-9 with a point, one rule for a start's input and
a form task's data; a decimal stored written out."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django import forms

from approvals.models import HumanTask
from orchestrator.dsl import FORM, Human, Workflow
from orchestrator.inputs import PLAIN_DIGITS, form_json_default
from orchestrator.models import WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory

pytestmark = pytest.mark.django_db

ARABIC_INDIC_1000 = "\u0661\u0660\u0660\u0660"
FULLWIDTH_1000 = "\uff11\uff10\uff10\uff10"


class QuoteForm(forms.Form):
    price = forms.DecimalField(max_digits=12, decimal_places=7)
    units = forms.IntegerField()


@pytest.fixture
def quote_task(register_workflow, roles) -> HumanTask:
    """An open form task for the managers asking for a price (a decimal) and a number of units."""
    register_workflow(
        Workflow("numbers_quote", 1, [Human("quote", kind_of_task=FORM, form=QuoteForm, candidate_groups=["managers"])])
    )
    return instance_start("numbers_quote", {}, initiator=roles.staff).tasks.get()


def start(api_as, roles, amount):
    body = {"workflow": "expense_approval", "input": {**ExpenseInputFactory(), "amount": amount}}
    return api_as(roles.staff).post("/api/instances/", body)


@pytest.mark.parametrize("amount", ["1_000", ARABIC_INDIC_1000, FULLWIDTH_1000, "1_0.5"])
def test_a_start_amount_with_underscores_or_other_digits_is_a_400_naming_it(api_as, roles, amount):
    """``1_000`` and Arabic-Indic digits were read as 1000 (Python's ``Decimal`` takes both): a value no other
    system reading the same JSON would take so."""
    # when
    response = start(api_as, roles, amount)

    # then
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["errors"] == {"input.amount": [PLAIN_DIGITS]}
    assert not WorkflowInstance.objects.exists()


@pytest.mark.parametrize(("amount", "stored"), [("1E+3", "1000"), ("1.2345E+2", "123.45"), ("120.00", "120.00")])
def test_a_start_amount_with_an_exponent_is_stored_written_out(api_as, roles, amount, stored):
    """``1E+3`` was stored as the text "1E+3", which steps, the pages and exports then read."""
    # when
    response = start(api_as, roles, amount)

    # then
    assert response.status_code == 201, response.content[:300]
    assert WorkflowInstance.objects.get().data["amount"] == stored


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"price": "1_000", "units": "2"}, "data.price"),
        ({"price": ARABIC_INDIC_1000, "units": "2"}, "data.price"),
        ({"price": "10", "units": "1_000"}, "data.units"),
        ({"price": "10", "units": FULLWIDTH_1000}, "data.units"),
    ],
)
def test_a_form_tasks_number_with_underscores_or_other_digits_is_a_400_naming_it(
    api_as, roles, quote_task, data, field
):
    # when
    response = api_as(roles.manager).post(f"/api/tasks/{quote_task.pk}/decide/", {"decision": "submit", "data": data})

    # then: the same rule as a start's input
    assert response.status_code == 400, response.content[:300]
    assert response.json()["errors"] == {field: [PLAIN_DIGITS]}


def test_a_form_tasks_decimal_with_an_exponent_is_stored_written_out(api_as, roles, quote_task):
    # when
    response = api_as(roles.manager).post(
        f"/api/tasks/{quote_task.pk}/decide/", {"decision": "submit", "data": {"price": "1E-7", "units": 3}}
    )

    # then
    assert response.status_code == 200, response.content[:300]
    data = WorkflowInstance.objects.get(pk=quote_task.instance_id).data
    assert (data["price"], data["units"]) == ("0.0000001", 3)


def test_a_decimal_of_a_billion_digits_written_out_is_refused_not_written(roles, register_workflow):
    # given: a decimal field without max_digits, which Django lets any exponent through
    class Open(forms.Form):
        amount = forms.DecimalField()

    register_workflow(Workflow("numbers_open", 1, [Human("h", candidate_groups=["x"])], start_form=Open))
    from orchestrator.services.instances import InvalidInput

    # when
    with pytest.raises(InvalidInput) as refused:
        instance_start("numbers_open", {"amount": "1E+999999999"}, initiator=roles.staff)

    # then
    assert refused.value.errors == {"amount": ["Give a number of at most 100 digits."]}
    assert form_json_default(Decimal("1E+999999999")) == "1E+999999999"  # never written out, whoever calls


def test_a_page_form_is_read_as_django_reads_it(roles):
    """A person typing on a page is not refused for the digits of their keyboard: only JSON is held to 0-9."""
    from django.http import QueryDict

    from orchestrator.inputs import bound_form

    # when
    form = bound_form(QuoteForm, QueryDict(f"price={ARABIC_INDIC_1000}&units=2"))

    # then
    assert form.is_valid(), form.errors
    assert form_json_default(form.cleaned_data["price"]) == "1000"


class KindsForm(forms.Form):
    """A start form with a field of each kind whose reading Django wrote for a page's text."""

    ratio = forms.FloatField(required=False)
    count = forms.IntegerField(required=False)
    due = forms.DateField(required=False)
    at = forms.DateTimeField(required=False)
    clock = forms.TimeField(required=False)
    host = forms.GenericIPAddressField(required=False)
    note = forms.CharField(required=False)


@pytest.fixture
def kinds(register_workflow) -> Workflow:
    return register_workflow(Workflow("numbers_kinds", 1, [Human("h", candidate_groups=["x"])], start_form=KindsForm))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ratio", 10**400, "Enter a number."),
        ("count", 10**400, "Give a number of at most 100 digits."),
        ("due", 20260101, "Enter a valid date."),
        ("at", 1764633600, "Enter a valid date/time."),
        ("clock", 9.5, "Enter a valid time."),
        ("host", 3232235777, "Enter a valid IPv4 or IPv6 address."),
        ("due", ["2026-01-01"], "Give one value (text or a number), not a list or an object."),
        ("at", {"date": "2026-01-01"}, "Give one value (text or a number), not a list or an object."),
        ("clock", True, "Give text or a number, not true or false."),
    ],
    ids=[
        "float past 1e308",
        "integer of 401 digits",
        "date as a number",
        "time stamp",
        "time as a number",
        "address as a number",
        "date in a list",
        "date-time as an object",
        "time as true",
    ],
)
def test_a_json_value_a_fields_reading_cannot_take_is_a_400_naming_the_field(
    api_as, roles, kinds, field, value, message
):
    """Given a start form with date, time, address and number fields, when the input gives one of them a JSON value
    Django's field was not written for, then 400 naming input.<field> (Django's date and time fields called
    ``.strip()`` on a number, its float field ``float()`` on 10**400: AttributeError and OverflowError, a 500; an
    integer of 401 digits was stored while the same value in a decimal field was refused)."""
    # when
    response = api_as(roles.staff).post("/api/instances/", {"workflow": "numbers_kinds", "input": {field: value}})

    # then
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["errors"] == {f"input.{field}": [message]}
    assert not WorkflowInstance.objects.exists()


def test_numbers_a_field_reads_as_numbers_are_kept_as_before(roles, kinds):
    """A number where the field takes one, or text, reads as before: the text conversion is only for what crashed."""
    # when
    instance = instance_start(
        "numbers_kinds", {"ratio": 2, "count": 3.0, "note": 12, "due": "2026-02-28"}, initiator=roles.staff
    )

    # then
    assert {key: instance.data[key] for key in ("ratio", "count", "note", "due")} == {
        "ratio": 2.0,
        "count": 3,
        "note": "12",
        "due": "2026-02-28",
    }


@pytest.mark.parametrize(
    ("field", "value"), [("due", "\u0661\u0669\u0669\u0669-01-01"), ("at", "\uff12\uff10\uff12\uff16-01-01T10:00:00Z")]
)
def test_a_date_with_other_digits_than_0_9_from_json_is_a_400_naming_it(api_as, roles, kinds, field, value):
    """``١٩٩٩-01-01`` was stored as 1999-01-01 (Django's date reading takes any Unicode digit), while a number so
    written is refused."""
    # when
    response = api_as(roles.staff).post("/api/instances/", {"workflow": "numbers_kinds", "input": {field: value}})

    # then
    assert response.status_code == 400, response.content[:300]
    assert response.json()["errors"] == {
        f"input.{field}": ["Give digits 0-9 (other digits, Arabic-Indic or fullwidth, are no date here)."]
    }


@pytest.mark.parametrize(
    ("path", "name", "value"),
    [
        ("/api/instances/", "version", "\u0661"),
        ("/api/instances/", "version", "1_0"),
        ("/api/instances/", "limit", "\u0661"),
        ("/api/tasks/", "limit", "\uff11"),
        ("/api/audit/events/", "instance", "\u0661"),
        ("/api/audit/events/", "instance", "1_0"),
        ("/api/audit/events/", "subject_id", "\uff11"),
        ("/api/audit/events/", "limit", "\u0661\u0660"),
        ("/api/workflows/expense_approval/", "version", "\u0661"),
    ],
)
def test_a_whole_number_in_the_query_with_other_digits_or_underscores_is_a_400_naming_it(
    api_as, roles, path, name, value
):
    """``?version=`` in Arabic-Indic digits listed version 1, ``?instance=1_0`` the trail of instance 10 and a limit
    so written gave its pages (Python's ``\\d`` and ``int()`` take any digit and ``_``), while a number so written
    in a body is refused."""
    # when
    response = api_as(roles.admin).get(path, {name: value})

    # then
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert list(response.json()["errors"]) == [name]


@pytest.mark.parametrize("version", ["\u0661", "1_0", " 1"])
def test_a_start_version_with_other_digits_or_underscores_is_a_400_naming_it(api_as, roles, version):
    """``{"version": "1_0"}`` asked for version 10 and an Arabic-Indic one started version 1."""
    # when
    response = api_as(roles.staff).post(
        "/api/instances/", {"workflow": "expense_approval", "version": version, "input": ExpenseInputFactory()}
    )

    # then
    assert response.status_code == 400, response.content[:300]
    assert response.json()["errors"] == {"version": ["A whole number, in digits 0-9."]}
    assert not WorkflowInstance.objects.exists()


def test_a_plain_whole_number_in_the_query_and_the_body_reads_as_before(api_as, roles):
    # when
    started = api_as(roles.staff).post(
        "/api/instances/", {"workflow": "expense_approval", "version": "1", "input": ExpenseInputFactory()}
    )
    listed = api_as(roles.admin).get("/api/instances/", {"version": "1", "limit": "5"})
    trail = api_as(roles.admin).get("/api/audit/events/", {"instance": str(started.json()["id"]), "limit": "10"})

    # then
    assert started.status_code == 201, started.content[:300]
    assert [row["id"] for row in listed.json()["results"]] == [started.json()["id"]]
    assert trail.status_code == 200, trail.content[:300]
    assert trail.json()["results"]


class SplitForm(forms.Form):
    """A start form with a date and time in two parts: its widget reads ``when_0`` and ``when_1``."""

    when = forms.SplitDateTimeField(required=False)


@pytest.mark.parametrize(
    "parts",
    [{"when_0": 20260101, "when_1": 1000}, {"when_0": "2026-01-01", "when_1": 10.5}],
    ids=["both numbers", "a time as a number"],
)
def test_a_two_part_field_given_numbers_in_its_parts_is_a_400_naming_it(api_as, roles, register_workflow, parts):
    """Given a start form with a SplitDateTimeField, when its parts (the keys its widget reads) are JSON numbers, then
    400 naming input.when (its date and time parts called ``.strip()`` on a number: an AttributeError, a 500)."""
    # given
    register_workflow(Workflow("numbers_split", 1, [Human("h", candidate_groups=["x"])], start_form=SplitForm))

    # when
    response = api_as(roles.staff).post("/api/instances/", {"workflow": "numbers_split", "input": parts})

    # then
    assert response.status_code == 400, response.content[:300]
    assert list(response.json()["errors"]) == ["input.when"]
    assert not WorkflowInstance.objects.exists()


def test_a_two_part_field_given_text_in_its_parts_reads_as_before(roles, register_workflow):
    # given
    register_workflow(Workflow("numbers_split", 1, [Human("h", candidate_groups=["x"])], start_form=SplitForm))

    # when
    instance = instance_start("numbers_split", {"when_0": "2026-01-01", "when_1": "10:00"}, initiator=roles.staff)

    # then
    assert instance.data["when"].startswith("2026-01-01")
