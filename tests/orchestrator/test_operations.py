"""The console's instance actions (orchestrator/services/operations.py): skip a failed step with its output, edit
the data with a diff in the audit trail, pause within a horizon, run compensation, cancel with compensation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from orchestrator import registry
from orchestrator.audit import Actor
from orchestrator.dsl import CONTINUE, Human, Retry, Signal, StepContext, Task, Workflow
from orchestrator.models import AuditEvent, InstanceState, StepKind, StepState, WorkflowInstance
from orchestrator.records import RecordsRefused
from orchestrator.services import sweep as engine
from orchestrator.services.instances import NotAllowed, instance_pause, instance_retry, instance_start
from orchestrator.services.operations import (
    data_diff,
    instance_compensate,
    instance_data_edit,
    instance_pause_until,
    instance_step_skip,
    parse_json_object,
)

pytestmark = pytest.mark.django_db

OPERATOR = Actor("user:operator")
CALLS: list[str] = []


def charge(ctx: StepContext) -> dict:
    CALLS.append("charge")
    return {"charged": ctx.data.get("amount", 0)}


def refund(ctx: StepContext) -> dict:
    CALLS.append("refund")
    return {"refunded": True}


def payout(ctx: StepContext) -> dict:
    CALLS.append("payout")
    if ctx.data.get("payroll_down"):
        raise ConnectionError("payroll is down\n  (it said 503)")
    return {"payout_id": "P-1"}


def notify(ctx: StepContext) -> dict:
    CALLS.append("notify")
    return {"told": ctx.data.get("payout_id")}


@pytest.fixture
def flow(register_workflow) -> Workflow:
    CALLS.clear()
    return register_workflow(
        Workflow(
            "ops_flow",
            1,
            [
                Task("charge", charge, compensate=refund),
                Task("payout", payout, retry=Retry(max_attempts=2, backoff=0)),
                Task("notify", notify),
            ],
        )
    )


@pytest.fixture
def failed(flow, run_steps) -> WorkflowInstance:
    instance = instance_start("ops_flow", {"amount": 40, "payroll_down": True})
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED, instance.error
    return instance


def test_skip_records_the_given_output_and_goes_on_from_the_next_step(failed, run_steps):
    """Payroll paid by hand: the operator skips the dead payout giving its id; notify runs with it, charge never
    runs again."""
    # given
    payout_step = failed.steps.get(name="payout")
    CALLS.clear()

    # when
    instance_step_skip(failed.pk, payout_step.pk, {"payout_id": "MANUAL-7"}, actor=OPERATOR, reason="paid by hand")
    run_steps(failed)

    # then
    failed.refresh_from_db()
    payout_step.refresh_from_db()
    assert failed.state == InstanceState.COMPLETED
    assert (payout_step.state, payout_step.result) == (StepState.SKIPPED, {"payout_id": "MANUAL-7"})
    assert failed.data["told"] == "MANUAL-7"
    assert CALLS == ["notify"]
    skipped = AuditEvent.objects.get(instance=failed, action="step.skipped")
    assert (skipped.actor_label, skipped.reason, skipped.payload["result"]) == (
        "user:operator",
        "paid by hand",
        {"payout_id": "MANUAL-7"},
    )


@pytest.mark.parametrize(
    ("typed", "problem"),
    [
        ("{", "not valid JSON (line 1, column 2)"),
        ("[1, 2]", "not a list"),
        ('{"a": NaN}', "not valid JSON"),
        ('{"": 1}', "every key needs a name"),
        ('{"a": "x\\u0000y"}', "NUL"),
        ('{"payout_id": "P-1", "payout_id": "P-2"}', "'payout_id' is given twice"),
        ('{"a": {"b": 1, "b": 2}}', "'b' is given twice"),
        # Deeper than Python's recursion limit: json.loads raised RecursionError, a 500 on the console's page.
        ('{"a":' * 5000 + "1" + "}" * 5000, "nested deeper than"),
        ("[" * 100_000, "nested deeper than"),
    ],
)
def test_a_typed_output_that_cannot_be_stored_is_refused_with_the_reason(typed, problem):
    with pytest.raises(ValidationError) as refused:
        parse_json_object(typed, "Output")
    assert problem in " ".join(refused.value.messages)


def test_typed_json_longer_than_a_request_carries_is_refused_saying_the_values_own_limit(settings):
    # given a request limit of 1,000 bytes, and 1,001 characters of typed JSON
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    typed = '{"a": "' + "x" * 990 + '"}  '
    assert len(typed) == 1001

    # when / then
    with pytest.raises(ValidationError) as refused:
        parse_json_object(typed, "Data")
    message = " ".join(refused.value.messages)
    assert "at most 1,000 characters of typed JSON (you typed 1,001)" in message
    assert f"up to {settings.BATON_MAX_RESULT_BYTES:,} bytes of JSON: type it without indentation" in message


def test_typed_json_up_to_the_engines_limit_is_taken_and_past_it_refused_with_both_sizes(settings):
    # given the engine's limit on a stored value, and values of exactly that size and one byte more
    settings.BATON_MAX_RESULT_BYTES = 2048
    frame = len('{"a": ""}')

    # when / then
    assert parse_json_object('{"a": "' + "x" * (2048 - frame) + '"}', "Data") == {"a": "x" * (2048 - frame)}
    with pytest.raises(ValidationError, match="Data: 2,049 bytes of JSON, more than the 2,048 the engine stores"):
        parse_json_object('{"a": "' + "x" * (2049 - frame) + '"}', "Data")


def test_skip_is_refused_for_a_step_that_did_not_fail_and_for_an_instance_that_is_not_failed(failed, flow):
    # given
    charge_step = failed.steps.get(name="charge")
    running = instance_start("ops_flow", {"amount": 1})

    # when / then
    with pytest.raises(NotAllowed, match="only a dead step"):
        instance_step_skip(failed.pk, charge_step.pk, {}, actor=OPERATOR, reason="x")
    with pytest.raises(NotAllowed, match="Only a failed instance"):
        instance_step_skip(running.pk, running.steps.get().pk, {}, actor=OPERATOR, reason="x")
    with pytest.raises(ValidationError, match="reason"):
        instance_step_skip(failed.pk, failed.steps.get(name="payout").pk, {}, actor=OPERATOR, reason="  ")
    assert WorkflowInstance.objects.get(pk=failed.pk).state == InstanceState.FAILED


def test_data_edit_audits_the_diff_and_a_retry_uses_the_new_data(failed, run_steps):
    """The operator switches payroll's flag off in the data: the diff is audited and the retried payout succeeds."""
    # given
    before = dict(failed.data)

    # when
    diff = instance_data_edit(
        failed.pk,
        {**before, "payroll_down": False, "note": "fixed"},
        actor=OPERATOR,
        reason="flag set by mistake",
        expected_seq=failed.audit_seq,
    )
    instance_retry(failed.pk, actor=OPERATOR, reason="data fixed")
    run_steps(failed)

    # then
    assert diff == {"added": {"note": "fixed"}, "changed": {"payroll_down": {"from": True, "to": False}}}
    edited = AuditEvent.objects.get(instance=failed, action="instance.data_edited")
    assert (edited.reason, edited.payload) == ("flag set by mistake", {"diff": diff})
    assert WorkflowInstance.objects.get(pk=failed.pk).state == InstanceState.COMPLETED


def test_two_operators_editing_at_once_the_second_is_refused_not_lost(failed):
    # given
    read_at = failed.audit_seq
    instance_data_edit(failed.pk, {**failed.data, "a": 1}, actor=OPERATOR, reason="first", expected_seq=read_at)

    # when / then
    with pytest.raises(NotAllowed, match="changed while you were editing"):
        instance_data_edit(
            failed.pk, {**failed.data, "b": 2}, actor=Actor("user:other"), reason="second", expected_seq=read_at
        )
    assert WorkflowInstance.objects.get(pk=failed.pk).data == {**failed.data, "a": 1}


def test_data_edit_refuses_no_change_and_a_running_instance(failed, flow):
    running = instance_start("ops_flow", {})
    with pytest.raises(ValidationError, match="nothing changed"):
        instance_data_edit(failed.pk, dict(failed.data), actor=OPERATOR, reason="x")
    with pytest.raises(NotAllowed, match="running"):
        instance_data_edit(running.pk, {"x": 1}, actor=OPERATOR, reason="x")


def test_data_diff_names_added_removed_and_changed_keys():
    assert data_diff({"a": 1, "b": 2, "c": [1]}, {"a": 1, "c": [2], "d": None}) == {
        "added": {"d": None},
        "removed": {"b": 2},
        "changed": {"c": {"from": [1], "to": [2]}},
    }


def test_a_pause_past_the_horizon_or_in_the_past_is_refused(flow):
    # given
    instance = instance_start("ops_flow", {})
    now = timezone.now()

    # when / then
    with pytest.raises(ValidationError, match="a pause ends by"):
        instance_pause_until(instance.pk, actor=OPERATOR, reason="x", until=now + timedelta(days=400), now=now)
    with pytest.raises(ValidationError, match="in the future"):
        instance_pause_until(instance.pk, actor=OPERATOR, reason="x", until=now - timedelta(minutes=1))
    instance_pause_until(instance.pk, actor=OPERATOR, reason="month end", until=now + timedelta(days=3))
    assert WorkflowInstance.objects.get(pk=instance.pk).state == InstanceState.PAUSED


def test_run_compensation_of_a_failed_instance_undoes_the_charge(failed, run_steps):
    # given
    CALLS.clear()

    # when
    instance_compensate(failed.pk, actor=OPERATOR, reason="customer withdrew")
    run_steps(failed)

    # then
    failed.refresh_from_db()
    assert failed.state == InstanceState.COMPENSATED
    assert CALLS == ["refund"]
    assert failed.steps.get(name="charge", kind=StepKind.TASK).state == StepState.COMPENSATED
    asked = AuditEvent.objects.get(instance=failed, action="instance.compensation_requested")
    assert (asked.reason, asked.payload) == ("customer withdrew", {"cancel": False})
    with pytest.raises(NotAllowed, match="already begun"):
        instance_compensate(failed.pk, actor=OPERATOR, reason="again")


def test_cancel_with_compensation_of_a_paused_instance_undoes_what_it_did(flow, run_steps):
    """Paused after its charge: cancelling with compensation refunds and never pays out."""
    # given
    instance = instance_start("ops_flow", {"amount": 5})
    run_steps(instance, limit=1)
    instance_pause(instance.pk, actor=OPERATOR, reason="suspicious")
    CALLS.clear()

    # when
    instance_compensate(instance.pk, actor=OPERATOR, reason="fraud", cancel=True)
    run_steps(instance)

    # then
    instance.refresh_from_db()
    assert (instance.state, instance.paused_until) == (InstanceState.COMPENSATED, None)
    assert CALLS == ["refund"]
    assert instance.steps.get(name="payout").state == StepState.SKIPPED


def test_run_compensation_refuses_a_running_instance(flow):
    instance = instance_start("ops_flow", {})
    with pytest.raises(NotAllowed, match="Only failed instances"):
        instance_compensate(instance.pk, actor=OPERATOR, reason="x")


def test_every_attempt_keeps_its_error_and_worker(failed):
    """The failed attempt's audit event keeps its whole message (line breaks included), the claim its worker."""
    # given
    payout_step = failed.steps.get(name="payout")

    # when
    events = AuditEvent.objects.filter(instance=failed, subject_id=payout_step.pk).order_by("seq")

    # then
    failed_attempt = next(e for e in events if e.action == "step.failed")
    assert "payroll is down\n  (it said 503)" in failed_attempt.payload["error"]
    started = [e for e in events if e.action == "step.started"]
    assert len(started) == 2
    assert all("/" in e.request_meta["worker"] for e in started)


def test_data_edit_is_refused_while_a_step_of_the_paused_instance_is_still_running(flow):
    """Pausing stops nothing in flight: a step claimed before the pause finishes after it, and its result joins the
    data. An edit in between was silently overwritten by that result (and the step ran on the old data)."""
    from orchestrator.services.steps import Outcome, step_claim, step_record

    # given: the first step claimed by a worker (running), then the instance paused, as the edit form advises
    instance = instance_start("ops_flow", {"amount": 40})
    step = instance.steps.get(name="charge")
    claim = step_claim(step.pk)
    assert claim is not None
    instance_pause(instance.pk, actor=OPERATOR, reason="fix the amount")
    seq = WorkflowInstance.objects.get(pk=instance.pk).audit_seq

    # when: an operator edits the field the running step is about to return
    with pytest.raises(NotAllowed, match=r"still running \(charge\)") as refused:
        instance_data_edit(
            instance.pk, {"amount": 50, "charged": 50}, actor=OPERATOR, reason="wrong amount", expected_seq=seq
        )

    # then: refused with the step named; once the step has finished, the edit goes through and stays
    assert "wait" in str(refused.value).lower()
    step.refresh_from_db()
    step_record(step.pk, step.attempt, Outcome(ok=True, result={"charged": 40}))
    seq = WorkflowInstance.objects.get(pk=instance.pk).audit_seq
    instance_data_edit(
        instance.pk, {"amount": 50, "charged": 50}, actor=OPERATOR, reason="wrong amount", expected_seq=seq
    )
    assert WorkflowInstance.objects.get(pk=instance.pk).data == {"amount": 50, "charged": 50}


# --- four-eyes: the initiator steers nothing ------------------------------------------------------------------


@pytest.fixture
def own_failed(flow, run_steps, users) -> WorkflowInstance:
    """A failed instance that the operator started themselves."""
    instance = instance_start("ops_flow", {"amount": 40, "payroll_down": True}, initiator=users.operator)
    run_steps(instance)
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED, instance.error
    return instance


def test_the_initiator_may_not_skip_a_step_of_their_own_instance_with_an_output(own_failed, users):
    # given: an operator's own instance, failed at payout (later steps and decisions read what the skip writes:
    # an "amount" under an approval limit routes around the approval, as the initiator may never choose)
    payout_step = own_failed.steps.get(name="payout")
    events = AuditEvent.objects.filter(instance=own_failed).count()

    # when: they skip it with an output of their choosing
    with pytest.raises(NotAllowed) as refused:
        instance_step_skip(
            own_failed.pk, payout_step.pk, {"amount": 1}, actor=Actor.of(users.operator), reason="paid by hand"
        )

    # then: refused as four-eyes refuses their decisions; nothing changed; another operator may
    assert "you started it" in str(refused.value)
    own_failed.refresh_from_db()
    assert (own_failed.state, own_failed.data["amount"]) == (InstanceState.FAILED, 40)
    assert AuditEvent.objects.filter(instance=own_failed).count() == events
    instance_step_skip(own_failed.pk, payout_step.pk, {}, actor=Actor.of(users.admin), reason="paid by hand")


def test_the_initiator_may_not_edit_the_data_of_their_own_instance(own_failed, users):
    # given: an operator's own failed instance
    events = AuditEvent.objects.filter(instance=own_failed).count()

    # when: they edit the amount that its decisions and approvers read
    with pytest.raises(NotAllowed) as refused:
        instance_data_edit(
            own_failed.pk, {**own_failed.data, "amount": 9000}, actor=Actor.of(users.operator), reason="typo"
        )

    # then: refused, nothing changed; another operator may
    assert "you started it" in str(refused.value)
    own_failed.refresh_from_db()
    assert own_failed.data["amount"] == 40
    assert AuditEvent.objects.filter(instance=own_failed).count() == events
    instance_data_edit(own_failed.pk, {**own_failed.data, "amount": 41}, actor=Actor.of(users.admin), reason="typo")


# --- the engine's records (orchestrator/records.py) ------------------------------------------------------------


@pytest.fixture
def records_flow(register_workflow) -> Workflow:
    """Wait for the documents (an hour, then go on), pay out (fails while payroll is down), a manager approves,
    notify: its records are the wait's timeout and the manager's decision."""
    CALLS.clear()
    return register_workflow(
        Workflow(
            "records_ops",
            1,
            [
                Signal("wait_docs", event="docs.received", timeout=timedelta(hours=1), on_timeout=CONTINUE),
                Task("payout", payout, retry=Retry(max_attempts=2, backoff=0)),
                Human("approve", candidate_groups=["approvers"]),
                Task("notify", notify),
            ],
        )
    )


@pytest.fixture
def timed_out_then_failed(records_flow, run_steps) -> WorkflowInstance:
    """An instance whose documents never came (the engine recorded the timeout) and whose payout then failed."""
    instance = instance_start("records_ops", {"amount": 40, "payroll_down": True})
    run_steps(instance)
    engine.sweep(now=instance.steps.get(name="wait_docs").due_at + timedelta(seconds=1))
    run_steps(instance, advance=True)
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED, instance.error
    assert instance.data["wait_docs"] == {"timed_out": True}
    return instance


def what_changes(instance: WorkflowInstance) -> tuple:
    return (
        AuditEvent.objects.filter(instance=instance).count(),
        tuple(instance.steps.order_by("pk").values_list("pk", "state", "result")),
        WorkflowInstance.objects.values_list("state", "data").get(pk=instance.pk),
    )


@pytest.mark.parametrize(
    ("output", "keys"),
    [
        ({"payout_id": "P-1", "approve": {"decision": "approve", "by": "ceo", "comment": ""}}, ["approve"]),
        ({"wait_docs": {"timed_out": False}}, ["wait_docs"]),
    ],
    ids=["a decision still to come", "a timeout that happened"],
)
def test_a_skip_whose_output_writes_a_record_is_refused_and_changes_nothing(timed_out_then_failed, output, keys):
    # given the failed payout
    instance = timed_out_then_failed
    step = instance.steps.get(name="payout", state=StepState.DEAD)
    before = what_changes(instance)

    # when the operator's output for it holds the manager's decision, or hides the timeout
    with pytest.raises(RecordsRefused) as refused:
        instance_step_skip(instance.pk, step.pk, output, actor=OPERATOR, reason="paid by hand")

    # then a ValidationError (the console shows it as typed input refused) naming output.<key>, and nothing changed:
    # the step still dead, the instance failed, its data as it was, no skip or retry in the trail
    assert isinstance(refused.value, ValidationError)
    assert refused.value.messages == [f"The output may not set the workflow's own records: {', '.join(keys)}."]
    assert list(refused.value.errors) == [f"output.{key}" for key in keys]
    assert what_changes(instance) == before


def test_a_skip_whose_output_names_no_record_of_the_workflow_goes_on(timed_out_then_failed, run_steps):
    # given
    instance = timed_out_then_failed
    step = instance.steps.get(name="payout", state=StepState.DEAD)
    output = {"payout_id": "P-1", "team_approval": "a node of another workflow", "proof": {"approve": "nested"}}

    # when
    instance_step_skip(instance.pk, step.pk, output, actor=OPERATOR, reason="paid by hand")
    run_steps(instance)

    # then the skip went through and the instance waits for the manager, the output in its data
    instance.refresh_from_db()
    assert instance.state == InstanceState.WAITING
    assert {key: instance.data[key] for key in output} == output
    assert AuditEvent.objects.filter(instance=instance, action="step.skipped").count() == 1


@pytest.mark.parametrize(
    ("change", "keys"),
    [
        ({"approve": {"decision": "approve", "by": "ceo", "comment": ""}}, ["approve"]),
        ({"wait_docs": {"timed_out": False}}, ["wait_docs"]),
        ({"wait_docs": {"timed_out": True, "note": "late"}, "approve": "yes", "amount": 41}, ["approve", "wait_docs"]),
    ],
    ids=["adds a decision", "changes a timeout", "both beside business data"],
)
def test_a_data_edit_adding_or_changing_a_record_is_refused_and_changes_nothing(timed_out_then_failed, change, keys):
    # given
    instance = timed_out_then_failed
    before = what_changes(instance)

    # when
    with pytest.raises(RecordsRefused) as refused:
        instance_data_edit(
            instance.pk, {**instance.data, **change}, actor=OPERATOR, reason="x", expected_seq=instance.audit_seq
        )

    # then
    assert refused.value.messages == [f"The edit may not add or change the workflow's own records: {', '.join(keys)}."]
    assert refused.value.errors[f"data.{keys[0]}"] == [
        f"This is where the workflow records what its step {keys[0]!r} did; an edit may remove it, but cannot set it."
    ]
    assert what_changes(instance) == before
    assert not AuditEvent.objects.filter(instance=instance, action="instance.data_edited").exists()


def test_a_data_edit_may_clear_a_stale_record_and_change_business_data_beside_one(timed_out_then_failed):
    """Removing a record is allowed: an operator may clear a stale timeout before a retry that waits again; what
    was removed is in the audited diff. Business data beside a record left as it is edits as before."""
    # given
    instance = timed_out_then_failed
    data = dict(instance.data)

    # when
    kept = instance_data_edit(instance.pk, {**data, "amount": 41}, actor=OPERATOR, reason="typo")
    without = {key: value for key, value in data.items() if key != "wait_docs"}
    cleared = instance_data_edit(instance.pk, {**without, "amount": 41}, actor=OPERATOR, reason="stale")

    # then
    assert kept == {"changed": {"amount": {"from": 40, "to": 41}}}
    assert cleared == {"removed": {"wait_docs": {"timed_out": True}}}
    assert "wait_docs" not in WorkflowInstance.objects.get(pk=instance.pk).data
    assert AuditEvent.objects.filter(instance=instance, action="instance.data_edited").count() == 2


def test_a_data_edit_of_an_instance_whose_definition_is_gone_still_keeps_its_records(timed_out_then_failed):
    """Without the definition the records are known from the instance's own human steps and waits."""
    # given the definition is no longer deployed
    instance = timed_out_then_failed
    registry.unregister("records_ops", 1)

    # when / then: its wait's record is refused, the rest edits
    with pytest.raises(RecordsRefused, match="wait_docs"):
        instance_data_edit(instance.pk, {**instance.data, "wait_docs": {}}, actor=OPERATOR, reason="x")
    instance_data_edit(instance.pk, {**instance.data, "approve": "a step it never reached"}, actor=OPERATOR, reason="x")
    assert WorkflowInstance.objects.get(pk=instance.pk).data["approve"] == "a step it never reached"


@pytest.mark.parametrize(
    "forged",
    [{"timed_out": 1}, {"timed_out": 1.0}, {"timed_out": "true"}],
    ids=["true as 1", "true as 1.0", "true as text"],
)
def test_a_data_edit_changing_a_records_value_to_one_python_calls_equal_is_refused(timed_out_then_failed, forged):
    """Given the wait's record {"timed_out": true}, when an edit writes it as {"timed_out": 1} beside a business
    change, then it is refused as a change of the record (Python's == holds True == 1 == 1.0, so the record was
    rewritten unnoticed, and the audited diff left the change out)."""
    # given
    instance = timed_out_then_failed
    before = what_changes(instance)

    # when
    with pytest.raises(RecordsRefused, match="wait_docs"):
        instance_data_edit(
            instance.pk, {**instance.data, "amount": 41, "wait_docs": forged}, actor=OPERATOR, reason="x"
        )

    # then
    assert what_changes(instance) == before


def test_a_data_edit_of_a_value_to_one_python_calls_equal_is_a_change_in_the_audited_diff(timed_out_then_failed):
    """Given business data {"urgent": true, "amount": 40}, when an edit makes them 1 and 40.0, then the diff (and
    the audit) holds both changes: JSON's true and 1 are two values (a Decision may test one), and an edit of
    only them was refused as "nothing changed"."""
    # given
    instance = timed_out_then_failed
    instance_data_edit(instance.pk, {**instance.data, "urgent": True}, actor=OPERATOR, reason="x")
    instance.refresh_from_db()

    # when
    diff = instance_data_edit(instance.pk, {**instance.data, "urgent": 1, "amount": 40.0}, actor=OPERATOR, reason="y")

    # then
    assert diff == {"changed": {"urgent": {"from": True, "to": 1}, "amount": {"from": 40, "to": 40.0}}}
    assert WorkflowInstance.objects.get(pk=instance.pk).data["urgent"] == 1
