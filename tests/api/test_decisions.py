"""A decision a task does not take (a typo, "aprove"; another kind's, "approve" for a form task; a number or a list)
is a 400 naming ``decision`` and saying which decisions the task takes, and decides nothing. DRF answered
'"aprove" is not a valid choice.' and the service "Submit." or "Approve or reject.": neither said what the task
would take."""

from __future__ import annotations

import pytest

from approvals.models import HumanTask, TaskDecision, TaskKind, TaskState
from approvals.services.base import APPROVE, TaskInvalid
from approvals.services.tasks import task_decide
from orchestrator.dsl import ESCALATE, PermanentError, Retry, StepContext, Task, Workflow
from orchestrator.models import AuditEvent, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory

pytestmark = pytest.mark.django_db

APPROVAL_TAKES = 'An approval takes the decision "approve" or "reject" (a reject with a comment saying why), not {}.'
FORM_TAKES = 'A form task takes one decision: "submit" (with the form\'s fields), not {}.'
ESCALATION_TAKES = (
    'An escalation of a failed step takes the decision "retry", "skip" or "fail" (with a reason), not {}.'
)
# Each as the message shows it (JSON), what was sent.
WRONG = [
    ("aprove", '"aprove"'),
    ("Approve", '"Approve"'),
    ("", '""'),
    (12, "12"),
    (True, "true"),
    (["approve"], '["approve"]'),
    ({"decision": "approve"}, '{"decision": "approve"}'),
]


def _fail(ctx: StepContext) -> dict:
    raise PermanentError("the ledger refused the entry")


@pytest.fixture
def approval(roles) -> HumanTask:
    """The team approval of an expense staff started (staff2 may decide it)."""
    return instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff).tasks.get()


@pytest.fixture
def form_task(roles) -> HumanTask:
    """The classification form task of an expense in the category "other" (the manager fills it in)."""
    instance = instance_start("expense_approval", ExpenseInputFactory(category="other"), initiator=roles.operator)
    task_decide(instance.tasks.get().pk, roles.staff, APPROVE)
    return HumanTask.objects.get(instance=instance, step__name="classify")


@pytest.fixture
def escalation(roles, register_workflow, run_steps) -> HumanTask:
    """The operators' escalation of a step that failed for good."""
    register_workflow(
        Workflow("api_ledger", 1, [Task("book", _fail, retry=Retry(max_attempts=1), on_failure=ESCALATE)])
    )
    instance = instance_start("api_ledger", {}, initiator=roles.staff)
    run_steps(instance)
    return HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)


def decide_as(api_as, user, task: HumanTask, body: dict):
    return api_as(user).post(f"/api/tasks/{task.pk}/decide/", body)


def decided_nothing(task: HumanTask, events: int) -> bool:
    task.refresh_from_db()
    return (
        task.state in (TaskState.OPEN, TaskState.CLAIMED)
        and not TaskDecision.objects.filter(task=task).exists()
        and AuditEvent.objects.count() == events
    )


@pytest.mark.parametrize(("sent", "shown"), [*WRONG, ("submit", '"submit"'), ("retry", '"retry"')])
def test_an_approval_given_another_decision_names_approve_and_reject(api_as, roles, approval, sent, shown):
    # given
    client = api_as(roles.staff2)
    events = AuditEvent.objects.count()

    # when
    response = client.post(f"/api/tasks/{approval.pk}/decide/", {"decision": sent, "comment": "c"})

    # then
    assert response.status_code == 400, response.content
    assert response.json()["errors"] == {"decision": [APPROVAL_TAKES.format(shown)]}
    assert decided_nothing(approval, events)


@pytest.mark.parametrize(("sent", "shown"), [*WRONG, ("approve", '"approve"'), ("reject", '"reject"')])
def test_a_form_task_given_another_decision_names_submit(api_as, roles, form_task, sent, shown):
    # given
    client = api_as(roles.manager)
    events = AuditEvent.objects.count()

    # when
    response = client.post(
        f"/api/tasks/{form_task.pk}/decide/", {"decision": sent, "comment": "c", "data": {"cost_centre": "CC-100"}}
    )

    # then
    assert response.status_code == 400, response.content
    assert response.json()["errors"] == {"decision": [FORM_TAKES.format(shown)]}
    assert response.json()["detail"].endswith(FORM_TAKES.format(shown))
    assert decided_nothing(form_task, events)
    assert "cost_centre" not in WorkflowInstance.objects.get(pk=form_task.instance_id).data


@pytest.mark.parametrize(("sent", "shown"), [*WRONG, ("approve", '"approve"'), ("submit", '"submit"')])
def test_an_escalation_given_another_decision_names_its_answers(api_as, roles, escalation, sent, shown):
    # given
    client = api_as(roles.operator)
    events = AuditEvent.objects.count()

    # when
    response = client.post(f"/api/tasks/{escalation.pk}/decide/", {"decision": sent, "comment": "c"})

    # then
    assert response.status_code == 400, response.content
    assert response.json()["errors"] == {"decision": [ESCALATION_TAKES.format(shown)]}
    assert decided_nothing(escalation, events)


def test_null_for_a_decision_is_refused_naming_it(api_as, roles, approval):
    # given
    client = api_as(roles.staff2)
    events = AuditEvent.objects.count()

    # when
    response = client.post(f"/api/tasks/{approval.pk}/decide/", {"decision": None})

    # then
    assert response.status_code == 400, response.content
    assert list(response.json()["errors"]) == ["decision"]
    assert decided_nothing(approval, events)


def test_a_long_wrong_decision_is_shown_cut(api_as, roles, approval):
    # when
    response = decide_as(api_as, roles.staff2, approval, {"decision": "approve" * 20})

    # then
    message = response.json()["errors"]["decision"][0]
    assert response.status_code == 400
    assert message.endswith(f'not "{("approve" * 6)[:38]}….'), message


def test_a_caller_of_the_service_is_told_the_same(roles, form_task):
    # when
    with pytest.raises(TaskInvalid) as refused:
        task_decide(form_task.pk, roles.manager, APPROVE, data={"cost_centre": "CC-100"})

    # then
    assert str(refused.value) == FORM_TAKES.format('"approve"')
    assert refused.value.errors == {"decision": [FORM_TAKES.format('"approve"')]}


# --- what each task takes, it takes -------------------------------------------------------------------------


@pytest.mark.parametrize(("decision", "comment"), [("approve", ""), ("reject", "no receipt")])
def test_an_approval_takes_approve_and_reject(api_as, roles, approval, decision, comment):
    # when
    response = decide_as(api_as, roles.staff2, approval, {"decision": decision, "comment": comment})

    # then
    assert response.status_code == 200, response.content
    assert response.json()["decision"] == decision


def test_a_form_task_takes_submit(api_as, roles, form_task):
    # when
    response = decide_as(api_as, roles.manager, form_task, {"decision": "submit", "data": {"cost_centre": "CC-100"}})

    # then
    assert response.status_code == 200, response.content
    assert response.json()["state"] == TaskState.COMPLETED


@pytest.mark.parametrize("decision", ["retry", "skip", "fail"])
def test_an_escalation_takes_its_answers(api_as, roles, escalation, decision):
    # when
    response = decide_as(api_as, roles.operator, escalation, {"decision": decision, "comment": "checked the ledger"})

    # then
    assert response.status_code == 200, response.content
    assert response.json()["decision"] == decision


def test_an_escalation_of_a_failed_step_still_explains_mark_resolved(api_as, roles, escalation):
    # when ("resolved" is a decision of escalations, for a failed compensation)
    response = decide_as(api_as, roles.operator, escalation, {"decision": "resolved", "comment": "by hand"})

    # then
    assert response.status_code == 400, response.content
    assert response.json()["errors"] == {
        "decision": ["Mark resolved applies to a failed compensation; use Skip for a failed step."]
    }
