"""Skipping a failed instance's dead step through the API: the console's own service and checks (a failed
instance, its one dead task or timer step, a reason, an output that can be stored), operators only."""

from __future__ import annotations

import pytest

from orchestrator.models import AuditEvent, InstanceState, StepRun, StepState, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory, UserFactory

pytestmark = pytest.mark.django_db


def skip_path(instance: WorkflowInstance) -> str:
    return f"/api/instances/{instance.pk}/skip/"


def what_changes(instance: WorkflowInstance) -> tuple:
    return (
        AuditEvent.objects.filter(instance=instance).count(),
        tuple(StepRun.objects.filter(instance=instance).order_by("pk").values_list("pk", "state")),
        WorkflowInstance.objects.values_list("state", "data").get(pk=instance.pk),
    )


@pytest.mark.parametrize("by", ["name", "id"])
def test_an_operator_skips_the_dead_step_with_its_output_and_the_instance_goes_on(failed, api_as, roles, run_steps, by):
    # given
    dead = failed.steps.get(name="payout", state=StepState.DEAD)
    step = dead.name if by == "name" else dead.pk

    # when
    response = api_as(roles.operator).post(
        skip_path(failed), {"step": step, "output": {"payout_id": "P-77"}, "reason": "paid by hand"}
    )
    run_steps(failed, advance=True)

    # then: the step is skipped with the output, the data holds it, the flow went on, one audit event of each kind
    assert response.status_code == 200, response.content
    dead.refresh_from_db()
    failed.refresh_from_db()
    assert dead.state == StepState.SKIPPED
    assert dead.result == {"payout_id": "P-77"}
    assert failed.data["payout_id"] == "P-77"
    assert failed.state == InstanceState.COMPLETED
    skipped = AuditEvent.objects.get(instance=failed, action="step.skipped")
    assert (skipped.actor_label, skipped.reason, skipped.payload) == (
        "user:operator",
        "paid by hand",
        {"result": {"payout_id": "P-77"}},
    )
    assert AuditEvent.objects.filter(instance=failed, action="instance.retried").count() == 1


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"step": "payout", "output": {}}, 400, "reason"),
        ({"step": "payout", "output": {}, "reason": ""}, 400, "reason"),
        ({"step": "payout", "output": {}, "reason": "x" * 2001}, 400, "reason"),
        ({"output": {}, "reason": "r"}, 400, "step"),
        ({"step": True, "reason": "r"}, 400, "step"),
        ({"step": 0, "reason": "r"}, 400, "step"),
        ({"step": [1], "reason": "r"}, 400, "step"),
        ({"step": "no_such_step", "reason": "r"}, 400, "step"),
        ({"step": "payout", "output": [1], "reason": "r"}, 400, "output"),
        ({"step": "payout", "output": "{}", "reason": "r"}, 400, "output"),
        ({"step": "payout", "output": {"k" * 201: 1}, "reason": "r"}, 400, "output"),
        ({"step": "payout", "output": {" ": 1}, "reason": "r"}, 400, "output"),
        ({"step": "team_approval", "output": {}, "reason": "r"}, 409, None),
        ({"step": 2**62, "output": {}, "reason": "r"}, 409, None),
    ],
)
def test_bad_skips_name_the_field_and_change_nothing(failed, api_as, roles, body, status, field):
    client = api_as(roles.operator)
    before = what_changes(failed)

    response = client.post(skip_path(failed), body)

    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    if field:
        assert field in response.json()["errors"], response.json()
    assert what_changes(failed) == before


def test_an_output_writing_who_approved_is_422_sets_records_and_changes_nothing(failed, api_as, roles):
    # given the expense's failed payout; the team approved it (its decision is in the data under team_approval)
    before = what_changes(failed)
    forged = {"payout_id": "P-77", "team_approval": {"decision": "reject", "by": "staff2", "comment": ""}}

    # when the operator's output for the payout would rewrite that decision
    response = api_as(roles.operator).post(
        skip_path(failed), {"step": "payout", "output": forged, "reason": "paid by hand"}
    )

    # then: 422 with its own code naming output.team_approval (not the 400 of an output that cannot be stored)
    assert response.status_code == 422, response.content
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "sets_records"
    assert problem["detail"] == "The output may not set the workflow's own records: team_approval."
    assert list(problem["errors"]) == ["output.team_approval"]
    assert what_changes(failed) == before


def test_an_output_naming_another_workflows_step_is_skipped_with(failed, api_as, roles):
    # when: "approve" is bench_approval's human step, not the expense's
    response = api_as(roles.operator).post(
        skip_path(failed), {"step": "payout", "output": {"payout_id": "P-1", "approve": "yes"}, "reason": "by hand"}
    )

    # then
    assert response.status_code == 200, response.content
    assert WorkflowInstance.objects.get(pk=failed.pk).data["approve"] == "yes"


def test_only_operators_skip_and_only_what_they_see(failed, api_as, roles):
    stranger = UserFactory(username="stranger")  # no group: not a candidate of its approval either
    clients = {
        "anonymous": api_as(None),
        "initiator (approver)": api_as(roles.staff),
        "manager": api_as(roles.manager),
        "stranger": api_as(stranger),
    }
    before = what_changes(failed)
    body = {"step": "payout", "output": {}, "reason": "r"}

    answers = {who: client.post(skip_path(failed), body).status_code for who, client in clients.items()}

    assert answers == {"anonymous": 401, "initiator (approver)": 403, "manager": 403, "stranger": 404}
    assert what_changes(failed) == before


def test_an_operator_may_not_skip_a_step_of_an_instance_they_started(api_as, roles, run_steps):
    # given: an expense the operator started, approved by staff2, whose payout then failed
    instance = instance_start(
        "expense_approval", {**ExpenseInputFactory(amount="40.00"), "fail_payout": 3}, initiator=roles.operator
    )
    task = instance.tasks.get()
    assert api_as(roles.staff2).post(f"/api/tasks/{task.pk}/decide/", {"decision": "approve"}).status_code == 200
    run_steps(instance, advance=True)
    assert WorkflowInstance.objects.get(pk=instance.pk).state == InstanceState.FAILED
    before = what_changes(instance)

    # when: the operator skips it, saying what it returned
    response = api_as(roles.operator).post(
        skip_path(instance), {"step": "payout", "output": {"payout_id": "MINE"}, "reason": "paid by hand"}
    )

    # then: 403, as four-eyes refuses the initiator the escalation's Skip; nothing changed
    assert response.status_code == 403, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert "you started it" in response.json()["detail"]
    assert what_changes(instance) == before


def test_a_running_instance_has_nothing_to_skip(api_as, roles):
    instance = instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)

    response = api_as(roles.operator).post(skip_path(instance), {"step": "team_approval", "reason": "r"})

    assert response.status_code == 409
    assert "failed" in response.json()["detail"]


def test_a_step_error_shows_server_paths_to_operators_only_as_on_the_page(failed, api_as, roles):
    # given: the dead payout step's error holds its traceback, with the server's file paths
    step = failed.steps.get(state=StepState.DEAD)
    assert 'File "/' in step.error

    # when
    seen_by = {
        who: api_as(getattr(roles, who)).get(f"/api/instances/{failed.pk}/").json()
        for who in ("staff", "manager", "operator")
    }

    # then: the initiator and a manager see the file names (as the page shows them), the operator the paths
    def error_of(detail: dict) -> str:
        return next(s["error"] for s in detail["steps"] if s["id"] == step.pk)

    assert 'File "/' not in error_of(seen_by["staff"])
    assert 'File "/' not in error_of(seen_by["manager"])
    assert error_of(seen_by["staff"]).splitlines()[0] == step.error.splitlines()[0]
    assert error_of(seen_by["operator"]) == step.error
