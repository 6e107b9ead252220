"""Tasks through the API: my tasks and my queue, claim, release, decide with a comment, delegate; the inbox's
rules (four-eyes, candidates, managers) hold whoever calls."""

from __future__ import annotations

import pytest

from approvals.models import HumanTask, TaskState
from orchestrator.models import AuditEvent
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def task(roles) -> HumanTask:
    """The open team-approval task of an expense staff started (candidates: the approvers)."""
    instance = instance_start("expense_approval", ExpenseInputFactory(amount="70.00"), initiator=roles.staff)
    return instance.tasks.get()


def test_the_queue_holds_what_i_may_claim_and_mine_what_i_claimed(api_as, roles, task):
    # given
    client = api_as(roles.staff2)

    # when
    queue_before = client.get("/api/tasks/", {"scope": "queue"}).json()["results"]
    claimed = client.post(f"/api/tasks/{task.pk}/claim/")
    mine = client.get("/api/tasks/").json()["results"]
    queue_after = client.get("/api/tasks/", {"scope": "queue"}).json()["results"]

    # then
    assert [t["id"] for t in queue_before] == [task.pk]
    assert claimed.status_code == 200
    assert claimed.json()["assignee"] == "staff2"
    assert [t["id"] for t in mine] == [task.pk]
    assert queue_after == []


def test_the_initiator_never_acts_on_their_own_task(api_as, roles, task):
    # when: staff started it and is an approver
    queue = api_as(roles.staff).get("/api/tasks/", {"scope": "queue"}).json()["results"]
    claim = api_as(roles.staff).post(f"/api/tasks/{task.pk}/claim/")
    decide = api_as(roles.staff).post(f"/api/tasks/{task.pk}/decide/", {"decision": "approve"})

    # then
    assert queue == []
    assert (claim.status_code, decide.status_code) == (403, 403)
    assert "four-eyes" in decide.json()["detail"]
    assert HumanTask.objects.get(pk=task.pk).state == TaskState.OPEN


def test_a_decision_with_a_comment_completes_the_task_and_is_audited(api_as, roles, task):
    # when
    response = api_as(roles.staff2).post(
        f"/api/tasks/{task.pk}/decide/", {"decision": "reject", "comment": "no receipt attached"}
    )

    # then
    assert response.status_code == 200
    assert response.json()["state"] == "completed"
    assert response.json()["decision"] == "reject"
    event = AuditEvent.objects.get(instance=task.instance, action="task.completed")
    assert event.actor_label == "user:staff2"


def test_a_rejection_without_a_comment_names_the_comment(api_as, roles, task):
    # when
    response = api_as(roles.staff2).post(f"/api/tasks/{task.pk}/decide/", {"decision": "reject"})

    # then
    assert response.status_code == 400
    assert "comment" in response.json()["errors"] or "comment" in response.json()["detail"].lower()


def test_a_second_claim_is_409(api_as, roles, task):
    # given
    api_as(roles.staff2).post(f"/api/tasks/{task.pk}/claim/")

    # when
    response = api_as(roles.manager).post(f"/api/tasks/{task.pk}/claim/")

    # then
    assert response.status_code == 409
    assert "claimed" in response.json()["detail"]


def test_release_and_delegate(api_as, roles, task, users):
    # given
    extra = type(roles.staff).objects.create_user("staff3")
    extra.groups.add(roles.approvers)
    client = api_as(roles.staff2)
    client.post(f"/api/tasks/{task.pk}/claim/")

    # when
    released = client.post(f"/api/tasks/{task.pk}/release/")
    client.post(f"/api/tasks/{task.pk}/claim/")
    delegated = client.post(f"/api/tasks/{task.pk}/delegate/", {"to_user": "staff3", "note": "you know the client"})
    to_initiator = api_as(roles.manager).post(f"/api/tasks/{task.pk}/delegate/", {"to_user": "staff"})
    to_nobody = client.post(f"/api/tasks/{task.pk}/delegate/", {"to_user": "nobody"})

    # then
    assert released.status_code == 200
    assert released.json()["state"] == "open"
    assert delegated.status_code == 200
    assert delegated.json()["assignee"] == "staff3"
    assert to_initiator.status_code == 400
    assert to_nobody.status_code in (400, 403)
    assert to_nobody.json()["status"] == to_nobody.status_code


# --- a delegation of the holder the caller saw (expected_holder) ------------------------------------------


@pytest.fixture
def staff3(roles):
    """A third approver, to hand tasks to."""
    extra = type(roles.staff).objects.create_user("staff3")
    extra.groups.add(roles.approvers)
    return extra


def test_a_delegation_of_the_holder_the_caller_saw_goes_ahead(api_as, roles, task, staff3):
    """Given staff2 holding the task, when the manager delegates it to staff3 saying they saw staff2 hold it, then it
    is delegated."""
    # given
    api_as(roles.staff2).post(f"/api/tasks/{task.pk}/claim/")

    # when
    response = api_as(roles.manager).post(
        f"/api/tasks/{task.pk}/delegate/", {"to_user": "staff3", "expected_holder": "staff2"}
    )

    # then
    assert response.status_code == 200
    assert response.json()["assignee"] == "staff3"


@pytest.mark.parametrize(
    ("seen", "meanwhile", "says"),
    [
        ("staff2", "staff2 delegates to staff3", "staff2 delegated it to staff3"),
        ("", "staff3 claims", "staff3 claimed it"),
    ],
    ids=["delegated since", "claimed since"],
)
def test_a_delegation_after_the_task_changed_hands_is_a_409_naming_the_holder_now(
    api_as, roles, task, staff3, seen, meanwhile, says
):
    """Given the manager saw the task held by staff2 (or unclaimed), when it changed hands meanwhile and the manager
    hands it on, then it is a 409 problem naming who holds it now and how they got it, and the task stays with them:
    the API took the task from whoever had just been given it, without a word."""
    # given
    if meanwhile.startswith("staff2"):
        api_as(roles.staff2).post(f"/api/tasks/{task.pk}/claim/")
        api_as(roles.staff2).post(f"/api/tasks/{task.pk}/delegate/", {"to_user": "staff3"})
    else:
        api_as(staff3).post(f"/api/tasks/{task.pk}/claim/")

    # when
    response = api_as(roles.manager).post(
        f"/api/tasks/{task.pk}/delegate/", {"to_user": "staff2", "expected_holder": seen}
    )

    # then
    assert response.status_code == 409
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert (problem["status"], problem["code"], problem["title"]) == (409, "holder_changed", "The task changed hands")
    assert f"({says})" in problem["detail"]
    assert problem["errors"] == {"expected_holder": ["staff3 holds this task now."]}
    assert HumanTask.objects.get(pk=task.pk).assignee == staff3
    # and the detail says what a client does next, not the page's "What you wrote is kept" (a form left filled in)
    assert "What you wrote is kept" not in problem["detail"]
    assert "Read the task again and decide again" in problem["detail"]


def test_a_delegation_without_expected_holder_is_not_checked(api_as, roles, task, staff3):
    """Left out, the holder is not checked (as before the field): the manager takes it from staff2 for staff3."""
    # given
    api_as(roles.staff2).post(f"/api/tasks/{task.pk}/claim/")

    # when
    response = api_as(roles.manager).post(f"/api/tasks/{task.pk}/delegate/", {"to_user": "staff3"})

    # then
    assert response.status_code == 200
    assert response.json()["assignee"] == "staff3"


@pytest.mark.parametrize(
    "junk",
    [5, True, None, ["staff2"], {"username": "staff2"}, "nobody", "x" * 151],
    ids=["number", "boolean", "null", "list", "object", "unknown user", "too long"],
)
def test_a_junk_expected_holder_is_a_400_problem_not_a_500(api_as, roles, task, staff3, junk):
    """Anything but the username of someone (or "" for nobody) is refused as invalid input naming the field, and
    the task is left as it was."""
    # given
    api_as(roles.staff2).post(f"/api/tasks/{task.pk}/claim/")

    # when
    response = api_as(roles.manager).post(
        f"/api/tasks/{task.pk}/delegate/", {"to_user": "staff3", "expected_holder": junk}
    )

    # then
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert list(response.json()["errors"]) == ["expected_holder"]
    assert HumanTask.objects.get(pk=task.pk).assignee == roles.staff2


def test_a_nul_in_expected_holder_is_a_400_problem_naming_it(api_as, roles, task, staff3):
    """A NUL character: the body's parser refuses it before any field is read, naming where it is."""
    # given
    api_as(roles.staff2).post(f"/api/tasks/{task.pk}/claim/")

    # when
    response = api_as(roles.manager).post(
        f"/api/tasks/{task.pk}/delegate/", {"to_user": "staff3", "expected_holder": "staff\x002"}
    )

    # then
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["detail"].startswith("body.expected_holder: remove the NUL character")
    assert HumanTask.objects.get(pk=task.pk).assignee == roles.staff2


def test_a_task_of_another_team_is_404(api_as, roles, task):
    # when: the operator is no approver and no manager
    seen = api_as(roles.operator).get(f"/api/tasks/{task.pk}/")
    claim = api_as(roles.operator).post(f"/api/tasks/{task.pk}/claim/")
    decide = api_as(roles.operator).post(f"/api/tasks/{task.pk}/decide/", {"decision": "nonsense"})

    # then
    assert (seen.status_code, claim.status_code, decide.status_code) == (404, 404, 404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"decision": "maybe"}, "decision"),
        ({"decision": "approve", "comment": "x" * 4001}, "comment"),
        ({"decision": "approve", "data": []}, "data"),
        ({}, "decision"),
        # an approval takes no fields: the amount a client meant to set was dropped without a word
        ({"decision": "approve", "data": {"amount": "9999.00"}}, "data"),
    ],
)
def test_a_bad_decision_body_names_its_field(api_as, roles, task, body, field):
    # when
    response = api_as(roles.staff2).post(f"/api/tasks/{task.pk}/decide/", body)

    # then
    assert response.status_code == 400
    assert field in response.json()["errors"]
    task.refresh_from_db()
    assert task.state == TaskState.OPEN


def test_the_task_lists_cost_the_same_queries_for_one_or_many(api_as, roles, django_assert_num_queries):
    # given
    client = api_as(roles.staff2)
    client.get("/api/tasks/", {"scope": "queue"})  # the token's last use, written once a minute
    for _ in range(2):
        instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)

    # then
    with django_assert_num_queries(3):
        assert len(client.get("/api/tasks/", {"scope": "queue"}).json()["results"]) == 2
    for _ in range(8):
        instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)
    with django_assert_num_queries(3):
        assert len(client.get("/api/tasks/", {"scope": "queue"}).json()["results"]) == 10


@pytest.mark.parametrize("to", ["staff", "manager", "ghost"])
def test_a_refused_delegation_names_to_user(api_as, roles, task, to):
    # given: staff started it (the initiator), the manager delegates to themself, ghost is deactivated
    ghost = type(roles.staff).objects.create_user("ghost", is_active=False)
    ghost.groups.add(roles.approvers)

    # when
    response = api_as(roles.manager).post(f"/api/tasks/{task.pk}/delegate/", {"to_user": to})

    # then
    assert response.status_code == 400, response.content
    assert "to_user" in response.json()["errors"], response.json()


@pytest.fixture
def quorum_task(roles, register_workflow) -> HumanTask:
    """A sign-off by two approvers, started by the manager."""
    from orchestrator.dsl import Human, Workflow

    register_workflow(Workflow("api_quorum_two", 1, [Human("sign_off", candidate_groups=["approvers"], quorum=2)]))
    return instance_start("api_quorum_two", {}, initiator=roles.manager).tasks.get()


def test_who_approved_a_quorum_task_can_neither_claim_it_nor_be_handed_it_nor_find_it_in_their_queue(
    api_as, roles, quorum_task
):
    # given: staff approved; one approval is still missing
    assert api_as(roles.staff).post(f"/api/tasks/{quorum_task.pk}/decide/", {"decision": "approve"}).status_code == 200
    extra = type(roles.staff).objects.create_user("staff3")
    extra.groups.add(roles.approvers)

    # when
    queue = api_as(roles.staff).get("/api/tasks/", {"scope": "queue"}).json()["results"]
    claim = api_as(roles.staff).post(f"/api/tasks/{quorum_task.pk}/claim/")
    api_as(roles.staff2).post(f"/api/tasks/{quorum_task.pk}/claim/")
    handed = api_as(roles.staff2).post(f"/api/tasks/{quorum_task.pk}/delegate/", {"to_user": "staff"})

    # then: the task is never parked with someone who cannot decide it; others still can
    assert queue == []
    assert claim.status_code == 409, claim.content
    assert handed.status_code == 400, handed.content
    assert "to_user" in handed.json()["errors"]
    assert HumanTask.objects.get(pk=quorum_task.pk).assignee == roles.staff2
    assert api_as(roles.staff2).post(f"/api/tasks/{quorum_task.pk}/delegate/", {"to_user": "staff3"}).status_code == 200


def test_a_decision_the_task_kind_does_not_take_names_decision(api_as, roles):
    # given: a classification form task (managers), which takes "submit", not "approve"
    from approvals.services.base import APPROVE
    from approvals.services.tasks import task_decide

    instance = instance_start("expense_approval", ExpenseInputFactory(category="other"), initiator=roles.operator)
    task_decide(instance.tasks.get().pk, roles.staff, APPROVE)
    classify = HumanTask.objects.get(instance=instance, step__name="classify")

    # when
    response = api_as(roles.manager).post(f"/api/tasks/{classify.pk}/decide/", {"decision": "approve"})

    # then
    assert response.status_code == 400, response.content
    assert "decision" in response.json()["errors"], response.json()


def test_a_decision_on_data_changed_since_it_was_read_is_a_conflict_when_the_caller_says_what_it_read(
    api_as, roles, task
):
    """Given staff2 reading the instance (data_digest of an amount of 70.00), when an operator edits the amount and
    staff2 then approves sending what it read (``seen``), then the answer is 409 and nothing is decided; sent with
    the digest read again it goes through. A caller that sends no ``seen`` is not checked."""
    from orchestrator.audit import Actor
    from orchestrator.services.operations import instance_data_edit

    # given
    client = api_as(roles.staff2)
    read = client.get(f"/api/instances/{task.instance_id}/").json()
    assert read["data"]["amount"] == "70.00"

    # when
    instance_data_edit(
        task.instance_id, {**read["data"], "amount": "7000.00"}, actor=Actor.of(roles.operator), reason="typo"
    )
    stale = client.post(f"/api/tasks/{task.pk}/decide/", {"decision": "approve", "seen": read["data_digest"]})

    # then
    assert stale.status_code == 409
    assert "data changed" in stale.json()["detail"]
    assert HumanTask.objects.get(pk=task.pk).state == TaskState.OPEN
    fresh = client.get(f"/api/instances/{task.instance_id}/").json()["data_digest"]
    assert fresh != read["data_digest"]
    done = client.post(f"/api/tasks/{task.pk}/decide/", {"decision": "approve", "seen": fresh})
    assert done.status_code == 200


@pytest.mark.parametrize(
    "seen",
    [
        "not-a-digest",
        "sha256:{digest}",  # a client's own label on what it was given
        "{digest_upper}",
        "{full_sha256}",  # a client computing its own, longer, fingerprint of the data
    ],
)
def test_a_seen_that_is_no_data_digest_is_a_400_naming_seen_not_a_conflict(api_as, roles, task, seen):
    """``seen`` not shaped as any ``data_digest`` read "the workflow's data changed after you opened this task"
    (409): a client re-reading the instance and sending its value the same way got the same 409 for ever, about a
    change nobody made."""
    import hashlib

    # given: staff2 has read the instance, whose data nobody changed since
    client = api_as(roles.staff2)
    digest = client.get(f"/api/instances/{task.instance_id}/").json()["data_digest"]
    full = hashlib.sha256(digest.encode()).hexdigest()
    sent = seen.format(digest=digest, digest_upper=digest.upper(), full_sha256=full)

    # when
    response = client.post(f"/api/tasks/{task.pk}/decide/", {"decision": "approve", "seen": sent})

    # then
    assert response.status_code == 400, response.content[:300]
    assert list(response.json()["errors"]) == ["seen"], response.json()
    assert HumanTask.objects.get(pk=task.pk).state == TaskState.OPEN


def test_who_approved_an_earlier_step_cannot_delegate_the_later_one(api_as, roles):
    """Given a manager (also an approver) who gave an expense's team approval, when they hand its manager approval
    to another manager through the API, then it is a 403 problem naming four-eyes and the task stays open."""
    # given
    roles.manager.groups.add(roles.approvers)
    other = type(roles.staff).objects.create_user("manager2")
    other.groups.add(roles.managers)
    instance = instance_start("expense_approval", ExpenseInputFactory(amount="800.00"), initiator=roles.staff)
    team = instance.tasks.get()
    assert api_as(roles.manager).post(f"/api/tasks/{team.pk}/decide/", {"decision": "approve"}).status_code == 200
    later = instance.tasks.exclude(pk=team.pk).get()

    # when
    response = api_as(roles.manager).post(f"/api/tasks/{later.pk}/delegate/", {"to_user": "manager2"})

    # then
    assert response.status_code == 403, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    assert "four-eyes" in response.json()["detail"]
    later.refresh_from_db()
    assert (later.state, later.assignee) == (TaskState.OPEN, None)


def test_a_form_tasks_field_errors_are_named_by_their_path_in_the_body(api_as, roles):
    """A form task's errors were keyed ``cost_centre``, a field the body does not have at its top: it is
    ``data.cost_centre``, as a start's field is ``input.amount``."""
    # given: an "other" expense, team-approved: the managers' classification form is open
    from approvals.services.base import APPROVE
    from approvals.services.tasks import task_decide

    instance = instance_start("expense_approval", ExpenseInputFactory(category="other"), initiator=roles.operator)
    task_decide(instance.tasks.get().pk, roles.staff, APPROVE)
    classify = HumanTask.objects.get(instance=instance, step__name="classify")

    # when: the required cost centre is left out, and the note is too long
    response = api_as(roles.manager).post(
        f"/api/tasks/{classify.pk}/decide/", {"decision": "submit", "data": {"note": "n" * 201}}
    )

    # then
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert sorted(problem["errors"]) == ["data.cost_centre", "data.note"], problem
    assert problem["errors"]["data.cost_centre"] == ["This field is required."]
    assert "data.cost_centre: This field is required." in problem["detail"]
    assert HumanTask.objects.get(pk=classify.pk).state == TaskState.OPEN


def test_a_tasks_priority_is_its_stored_value_with_the_label_beside_it_as_the_schema_says(api_as, roles, task):
    """``priority`` was the label ("Normal"), which is no value a client can compare or sort, and which the schema
    called a string of any text."""
    # given: what the schema promises
    schema = api_as(roles.admin).get("/api/schema/?format=json").json()["components"]["schemas"]
    enum = schema["TaskPriorityEnum"]["enum"]

    # when
    shown = api_as(roles.staff2).get(f"/api/tasks/{task.pk}/").json()

    # then
    assert (shown["priority"], shown["priority_label"]) == (1, "Normal")
    assert enum == [0, 1, 2, 3]
    assert shown["priority"] in enum
    assert {"priority", "priority_label"} <= set(schema["Task"]["required"])


def test_a_form_task_says_what_its_data_takes_as_a_start_says_its_input(api_as, roles, task):
    """A client had nothing in the API telling it a form task's fields: it learnt them one 400 at a time, and a
    choice field's ("x is not one of the available choices") never named the choices."""
    # given: an "other" expense, team-approved: the managers' classification form is open
    from approvals.services.base import APPROVE
    from approvals.services.tasks import task_decide

    instance = instance_start("expense_approval", ExpenseInputFactory(category="other"), initiator=roles.operator)
    task_decide(instance.tasks.get().pk, roles.staff, APPROVE)
    classify = HumanTask.objects.get(instance=instance, step__name="classify")

    # when: the manager reads it, and an approver reads an approval
    form_task = api_as(roles.manager).get(f"/api/tasks/{classify.pk}/").json()
    approval = api_as(roles.staff2).get(f"/api/tasks/{task.pk}/").json()

    # then: the form's fields as JSON Schema, its choices and required ones named; an approval takes no data
    form_input = form_task["form_input"]
    assert form_input["type"] == "object"
    assert set(form_input["properties"]) == {"cost_centre", "tax_deductible", "note"}
    assert form_input["properties"]["cost_centre"]["enum"] == ["CC-100", "CC-200", "CC-300"]
    assert form_input["properties"]["tax_deductible"]["type"] == "boolean"
    assert form_input["required"] == ["cost_centre"]
    assert approval["form_input"] is None

    # and: what it says is what decide takes
    decided = api_as(roles.manager).post(
        f"/api/tasks/{classify.pk}/decide/", {"decision": "submit", "data": {"cost_centre": "CC-200"}}
    )
    assert decided.status_code == 200, decided.content[:300]
    schema = api_as(roles.admin).get("/api/schema/?format=json").json()
    assert "form_input" in schema["components"]["schemas"]["TaskDetail"]["properties"]


def test_a_scope_that_is_none_is_refused_naming_the_scopes(api_as, roles):
    # when a person lists tasks with a scope the API does not have
    response = api_as(roles.staff).get("/api/tasks/", {"scope": "everything"})

    # then the 400 names the scopes there are
    assert response.status_code == 400, response.content
    assert response.json()["errors"]["scope"] == ["Give one of: mine, queue."]
