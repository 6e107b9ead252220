"""Starting instances: idempotency keys, input validation, version pinning and after-commit dispatch."""

from __future__ import annotations

import json

import pytest
from django import forms
from django.contrib.auth.models import Group
from django.db import DatabaseError, connection, transaction

from orchestrator import registry
from orchestrator.dsl import Human, StepContext, Task, Workflow
from orchestrator.models import AuditEvent, InstanceState, StepRun, StepState, WorkflowInstance
from orchestrator.registry import UnknownWorkflow
from orchestrator.services.instances import IdempotencyConflict, InputSetsRecords, InvalidInput, instance_start
from orchestrator.services.steps import step_execute
from tests.factories import ExpenseInputFactory, OrderInputFactory

pytestmark = pytest.mark.django_db


def test_same_key_returns_the_same_instance(run_steps):
    """A repeated start with the same key and input returns the first instance and schedules nothing new."""
    # given
    order = OrderInputFactory()
    first = instance_start("order_fulfilment", order, idempotency_key="order-1")
    steps, events = StepRun.objects.count(), AuditEvent.objects.count()

    # when
    again = instance_start("order_fulfilment", dict(order), idempotency_key="order-1")

    # then
    assert again.pk == first.pk
    assert (StepRun.objects.count(), AuditEvent.objects.count()) == (steps, events)


def test_same_key_with_another_input_is_a_conflict():
    """Reusing a key for a different input raises IdempotencyConflict naming the existing instance."""
    # given
    first = instance_start("order_fulfilment", OrderInputFactory(amount="50"), idempotency_key="order-2")

    # when
    with pytest.raises(IdempotencyConflict) as conflict:
        instance_start("order_fulfilment", OrderInputFactory(amount="60"), idempotency_key="order-2")

    # then
    assert conflict.value.instance.pk == first.pk
    assert WorkflowInstance.objects.filter(idempotency_key="order-2").count() == 1


def test_keys_are_scoped_per_workflow_and_optional(users):
    """The same key under another workflow starts another instance; starts without a key never collide."""
    # given
    order = instance_start("order_fulfilment", OrderInputFactory(), idempotency_key="shared")

    # when
    bench = instance_start("bench_approval", {}, idempotency_key="shared")
    keyless = [instance_start("bench_approval", {}) for _ in range(2)]

    # then
    assert len({order.pk, bench.pk, *(i.pk for i in keyless)}) == 4
    assert [i.idempotency_key for i in keyless] == [None, None]


def test_invalid_input_is_refused_with_field_errors():
    """Input failing the start form raises InvalidInput with the errors per field; nothing is created."""
    # given
    order = OrderInputFactory(email="not-an-address", amount="-5")
    del order["customer"]

    # when
    with pytest.raises(InvalidInput) as invalid:
        instance_start("order_fulfilment", order)

    # then
    assert set(invalid.value.errors) == {"email", "amount", "customer"}
    assert invalid.value.errors["customer"] == ["This field is required."]
    assert not WorkflowInstance.objects.exists()


def test_input_is_cleaned_and_stored_as_json():
    """The stored data is the form's cleaned data (as JSON) plus any extra switches, and the title uses it."""
    # given
    order = OrderInputFactory(order_id="A-7", customer="Globex", amount="12.5", items="3", fail_payment=1)

    # when
    instance = instance_start("order_fulfilment", order)

    # then
    assert instance.data["amount"] == "12.5"  # a Decimal, stored as text so no precision is lost
    assert instance.data["items"] == 3
    assert instance.data["fail_payment"] == 1
    assert instance.title == "Order A-7 for Globex"


def test_start_publishes_its_first_step_only_after_commit(broker, django_capture_on_commit_callbacks):
    """The first step's message is sent once the transaction commits, never before."""
    # given: a test transaction that has not committed yet
    with django_capture_on_commit_callbacks(execute=True):
        # when
        instance = instance_start("order_fulfilment", OrderInputFactory())
        before_commit = broker.step_ids()

    # then
    first = instance.steps.get()
    assert before_commit == []
    assert broker.step_ids() == [first.pk]


def test_start_costs_a_fixed_number_of_queries(django_assert_num_queries, users):
    """instance_start of bench_approval: insert the instance (taking the first step's id ahead), then the first
    step and the audit events with the instance's title and chain head in one statement."""
    # given: bench_approval has no start form
    # when / then: 2 statements of work, inside the test's transaction without a savepoint (as the API's keyed
    # start calls it); by default a savepoint adds SAVEPOINT and RELEASE
    with django_assert_num_queries(2):
        instance = instance_start("bench_approval", {}, savepoint=False)
    with django_assert_num_queries(4):
        instance_start("bench_approval", {})
    assert instance.steps.get().state == StepState.SCHEDULED


@pytest.fixture
def database_refusing_instances():
    """The database itself refuses an instance whose data holds ``refuse_me`` (a check constraint added for the test
    and rolled back with it): a failure the service cannot see coming, as a full disk or a lost session is."""
    with connection.cursor() as cursor:
        cursor.execute(
            "ALTER TABLE orchestrator_workflowinstance ADD CONSTRAINT test_refuse_me CHECK (NOT data ? 'refuse_me')"
        )


def test_a_start_failing_inside_a_callers_transaction_rolls_the_callers_work_back(users, database_refusing_instances):
    # given: a caller's transaction that wrote a row first (as the API writes its key's row after the start)
    # when: the start fails in the database, asked to take no savepoint of its own and with no idempotency key
    def callers_transaction() -> None:
        with transaction.atomic():
            Group.objects.create(name="written-before-the-start")
            instance_start("bench_approval", {"refuse_me": 1}, savepoint=False)

    with pytest.raises(DatabaseError):
        callers_transaction()

    # then: the error reached the caller and its whole transaction was rolled back, nothing half-written
    assert not Group.objects.filter(name="written-before-the-start").exists()
    assert not WorkflowInstance.objects.exists()


@pytest.mark.parametrize(
    "options", [{}, {"idempotency_key": "nul-1"}, {"idempotency_key": "nul-2", "savepoint": False}], ids=str
)
def test_a_start_failing_inside_a_callers_transaction_by_default_leaves_that_transaction_usable(
    users, options, database_refusing_instances
):
    # given: a caller's transaction; when: a start with its savepoint (the default, and always with an idempotency
    # key, whose race is recovered inside it) fails in the database
    with transaction.atomic():
        Group.objects.create(name="written-before-the-start")
        with pytest.raises(DatabaseError):
            instance_start("bench_approval", {"refuse_me": 1}, **options)

        # then: only the start was rolled back; the caller carries on and keeps its row
        assert not connection.needs_rollback
        Group.objects.create(name="written-after-the-start")
    assert Group.objects.filter(name__startswith="written-").count() == 2
    assert not WorkflowInstance.objects.exists()


def test_a_first_step_given_its_id_ahead_is_the_step_its_audit_event_and_message_name(users):
    """The id taken ahead is the step row's, its audit event's subject, and the next steps' ids come after it."""
    # given
    first = instance_start("bench_approval", {})
    second = instance_start("bench_approval", {})

    # when
    steps = [instance.steps.get() for instance in (first, second)]
    scheduled = [AuditEvent.objects.get(instance=instance, action="step.scheduled") for instance in (first, second)]

    # then
    assert [event.subject_id for event in scheduled] == [step.pk for step in steps]
    assert steps[0].pk < steps[1].pk
    other = StepRun.objects.create(instance=first, name="later", kind="task", state="scheduled")
    assert other.pk > steps[1].pk


# --- version pinning ------------------------------------------------------------------------------------

ran: list[str] = []


def v1_step(ctx: StepContext) -> dict:
    ran.append(f"v1:{ctx.step}")
    return {}


def v2_step(ctx: StepContext) -> dict:
    ran.append(f"v2:{ctx.step}")
    return {}


PINNED_V1 = Workflow("pinned_demo", 1, [Task("first", v1_step), Task("second", v1_step)])
PINNED_V2 = Workflow("pinned_demo", 2, [Task("first", v2_step), Task("checked", v2_step), Task("second", v2_step)])


@pytest.fixture
def pinned_v1(register_workflow) -> Workflow:
    ran.clear()
    register_workflow(PINNED_V1)
    yield PINNED_V1
    registry.unregister("pinned_demo", 2)


def test_a_started_instance_keeps_its_version_when_a_new_one_is_registered(pinned_v1, run_steps):
    """An instance started on v1 runs v1's nodes and code after v2 is registered; a new start gets v2."""
    # given
    old = instance_start("pinned_demo", {})
    run_steps(old, limit=1)

    # when
    registry.register(PINNED_V2)
    new = instance_start("pinned_demo", {})
    run_steps()

    # then
    old.refresh_from_db()
    new.refresh_from_db()
    assert (old.workflow_version, new.workflow_version) == (1, 2)
    assert (old.state, new.state) == (InstanceState.COMPLETED, InstanceState.COMPLETED)
    assert list(old.steps.order_by("id").values_list("name", flat=True)) == ["first", "second"]
    assert list(new.steps.order_by("id").values_list("name", flat=True)) == ["first", "checked", "second"]
    assert sorted(ran) == ["v1:first", "v1:second", "v2:checked", "v2:first", "v2:second"]


def test_an_explicit_version_can_be_started(pinned_v1):
    """instance_start(version=1) pins v1 even when v2 is the latest; an unknown version is refused."""
    # given
    registry.register(PINNED_V2)

    # when
    instance = instance_start("pinned_demo", {}, version=1)

    # then
    assert instance.workflow_version == 1
    with pytest.raises(UnknownWorkflow):
        instance_start("pinned_demo", {}, version=3)


def test_a_step_whose_version_is_gone_fails_loudly(pinned_v1, run_steps):
    """If the pinned version's code is no longer deployed, the step dies naming the cause and the instance fails."""
    # given
    instance = instance_start("pinned_demo", {})
    registry.unregister("pinned_demo", 1)

    # when
    result = step_execute(instance.steps.get().pk)

    # then
    instance.refresh_from_db()
    step = instance.steps.get()
    assert result == "not runnable"
    assert (step.state, step.error_type) == (StepState.DEAD, "UnknownWorkflow")
    assert step.error == "definition pinned_demo v1 is not available"
    assert instance.state == InstanceState.FAILED
    assert instance.error == "first failed: definition pinned_demo v1 is not available"


def _noop(ctx: StepContext) -> None:
    return None


@pytest.mark.parametrize("fields", [{"name": "Ada"}, {"id": "x-1"}, {"name": "Ada", "id": 7}])
def test_input_fields_named_like_the_titles_own_placeholders_start(register_workflow, fields):
    """An input field called ``name`` or ``id`` starts the instance; the title's ``{name}``/``{id}`` stay its own."""
    # given
    register_workflow(Workflow(name="titled", version=1, title_template="{name} #{id}", steps=[Task("a", _noop)]))

    # when
    instance = instance_start("titled", dict(fields))

    # then
    assert instance.title == f"Titled #{instance.pk}"
    assert instance.data == fields


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"note": "a\x00b"}, "input['note'] contains a NUL"),
        ({"note": "\ud800"}, "lone surrogate"),
        ({"amount": float("nan")}, "NaN or Infinity"),
        ({"deep": json.loads("[" * 500 + "]" * 500)}, "nested deeper"),
    ],
    ids=["nul", "surrogate", "nan", "deep"],
)
def test_data_the_database_cannot_store_is_refused_before_anything_is_written(users, data, says):
    """Not only the API checks a start's input: the command, schedules and Python callers reach the service with
    whatever they hold, and a DataError from PostgreSQL would be a traceback or a 500 there."""
    with pytest.raises(InvalidInput) as refused:
        instance_start("bench_approval", data)

    assert says in str(refused.value)
    assert not WorkflowInstance.objects.exists()


class TeamForm(forms.Form):
    team = forms.ModelChoiceField(queryset=Group.objects.all())
    reviewers = forms.ModelMultipleChoiceField(queryset=Group.objects.all(), required=False)


def test_a_start_form_s_chosen_models_are_stored_as_their_keys(register_workflow):
    """A ModelChoiceField's cleaned value is the model: stored through json's default=str it was the text "Group
    object (3)", and a multiple choice "<QuerySet [...]>", which no step could use."""
    # given a workflow whose start form chooses groups
    register_workflow(Workflow("team_flow", 1, [Task("go", lambda ctx: None)], start_form=TeamForm))
    team, other = Group.objects.create(name="finance"), Group.objects.create(name="audit")

    # when it is started with one group and two reviewers
    instance = instance_start("team_flow", {"team": team.pk, "reviewers": [team.pk, other.pk]})

    # then the data holds their keys, as sent
    instance.refresh_from_db()
    assert instance.data["team"] == team.pk
    assert sorted(instance.data["reviewers"]) == sorted([team.pk, other.pk])


# --- the engine's records (orchestrator/records.py) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("forged", "keys"),
    [
        ({"manager_approval": {"decision": "approve", "by": "ceo", "comment": ""}}, ["manager_approval"]),
        ({"team_approval": "approve", "manager_approval": {}}, ["manager_approval", "team_approval"]),
    ],
    ids=["a decision", "two beside each other"],
)
def test_an_input_writing_who_approved_is_refused_naming_each_key_and_starts_nothing(users, forged, keys):
    """The expense's start form does not ask for ``manager_approval``, but a start keeps every key it is given: the
    submitter would have written the manager's decision that the workflow's decision reads."""
    # given a valid expense with the decisions of its human steps beside it
    data = {**ExpenseInputFactory(), **forged}

    # when
    with pytest.raises(InputSetsRecords) as refused:
        instance_start("expense_approval", data, initiator=users.staff)

    # then: an InvalidInput (every caller already answers those), naming each key, and nothing is written
    assert isinstance(refused.value, InvalidInput)
    assert refused.value.keys == keys
    assert list(refused.value.errors) == keys
    assert refused.value.errors[keys[0]] == [
        f"This is where the workflow records what its step {keys[0]!r} did; a start's input cannot set it."
    ]
    assert not WorkflowInstance.objects.exists()
    assert not AuditEvent.objects.filter(action="instance.started").exists()


def test_an_input_naming_no_record_of_this_workflow_starts(users):
    """A record's name nested under another key, and names of another workflow's human steps and waits, are the
    sender's own data: the rule is this workflow's records, at the top of the data (else it passed by refusing all)."""
    # given
    extra = {
        "approve": {"decision": "approve"},  # bench_approval's human step
        "wait_payment": {"timed_out": True},  # a wait of the tests' payment flows
        "history": {"manager_approval": {"decision": "reject"}},
        "payout": "bank transfer",  # this workflow's task: its result is merged, never kept under its name
    }

    # when
    instance = instance_start("expense_approval", {**ExpenseInputFactory(), **extra}, initiator=users.staff)

    # then
    instance.refresh_from_db()
    assert {key: instance.data[key] for key in extra} == extra
    assert AuditEvent.objects.filter(instance=instance, action="instance.started").count() == 1


class ReviewForm(forms.Form):
    """A start form whose clean() adds a key named like the workflow's human step (a definition's mistake the
    definition check cannot see: it reads declared fields only)."""

    note = forms.CharField(required=False)

    def clean(self) -> dict:
        cleaned = super().clean() or {}
        cleaned["review"] = {"decision": "approve"}
        return cleaned


def test_a_record_the_start_form_itself_would_set_is_refused_too(register_workflow):
    """Checked as the form cleaned it as well as as given: a form's clean() that adds a human step's name would put
    a decision in the data before anyone decided."""
    # given
    register_workflow(
        Workflow("review_flow", 1, [Human("review", candidate_groups=["approvers"])], start_form=ReviewForm)
    )

    # when the input does not give the key
    with pytest.raises(InputSetsRecords) as refused:
        instance_start("review_flow", {"note": "hello"})

    # then
    assert refused.value.keys == ["review"]
    assert not WorkflowInstance.objects.exists()
