"""Instances through the API: start (validated, idempotent per client), list (filters, cursor), detail, and the
operator's actions, each with the pages' role and object checks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from api.models import IdempotencyKey
from orchestrator.dsl import Decision, Human, Signal, Task, Timer, Workflow
from orchestrator.models import AuditEvent, InstanceState, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory, OrderInputFactory, UserFactory

pytestmark = pytest.mark.django_db

START = "/api/instances/"


def expense(**overrides):
    return {"workflow": "expense_approval", "input": ExpenseInputFactory(**overrides)}


# --- start ----------------------------------------------------------------------------------------------


def test_a_start_returns_201_with_the_instance_and_its_url_shows_steps_and_tasks(api_as, roles):
    # given
    client = api_as(roles.staff)

    # when
    response = client.post(START, expense(amount="80.00"))
    detail = client.get(response["Location"])

    # then
    assert response.status_code == 201
    body = response.json()
    instance = WorkflowInstance.objects.get(pk=body["id"])
    assert instance.initiator == roles.staff
    assert body["initiator"] == "staff"
    assert response["Location"] == f"/api/instances/{instance.pk}/" == body["url"]
    assert detail.json()["state"] == InstanceState.WAITING
    assert detail.json()["data"]["amount"] == "80.00"
    assert [step["name"] for step in detail.json()["steps"]] == ["team_approval"]
    assert detail.json()["tasks"][0]["state"] == "open"
    assert AuditEvent.objects.filter(instance=instance, action="instance.started").count() == 1


def test_the_start_form_names_each_bad_field(api_as, roles):
    # when
    response = api_as(roles.staff).post(START, {"workflow": "expense_approval", "input": {"amount": "-3"}})

    # then
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    errors = response.json()["errors"]
    assert set(errors) >= {"input.employee", "input.amount", "input.category", "input.description"}
    assert not WorkflowInstance.objects.exists()


@pytest.mark.parametrize("key", [None, "forged-1"], ids=["without a key", "with an idempotency key"])
def test_an_input_writing_who_approved_is_422_sets_records_naming_each_key(api_as, roles, key):
    # given an expense whose input holds the manager's decision (a human step of expense_approval)
    body = expense()
    body["input"]["manager_approval"] = {"decision": "approve", "by": "ceo", "comment": ""}
    headers = {"Idempotency-Key": key} if key else {}

    # when
    response = api_as(roles.staff).post(START, body, **headers)

    # then: its own code, the key named under input, nothing started and the key not used up
    assert response.status_code == 422, response.content
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert (problem["code"], problem["title"]) == ("sets_records", "Sets the workflow's own records")
    assert problem["detail"] == "The input may not set the workflow's own records: manager_approval."
    assert problem["errors"] == {
        "input.manager_approval": [
            "This is where the workflow records what its step 'manager_approval' did; a start's input cannot set it."
        ]
    }
    assert not WorkflowInstance.objects.exists()
    assert not IdempotencyKey.objects.exists()
    del body["input"]["manager_approval"]
    assert api_as(roles.staff).post(START, body, **headers).status_code == 201


def test_an_input_key_naming_another_workflows_step_starts(api_as, roles):
    # given: "approve" is bench_approval's human step, not expense_approval's
    body = expense()
    body["input"]["approve"] = {"decision": "approve"}

    # when
    response = api_as(roles.staff).post(START, body)

    # then
    assert response.status_code == 201, response.content
    assert WorkflowInstance.objects.get().data["approve"] == {"decision": "approve"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"workflow": "no_such_flow"}, "workflow"),
        ({"workflow": "expense_approval", "version": 99}, "workflow"),
        ({"workflow": "expense_approval", "version": 0}, "version"),
        ({"workflow": "expense_approval", "input": [1, 2]}, "input"),
        ({"workflow": "expense_approval", "input": "text"}, "input"),
        ({"input": {}}, "workflow"),
        ({"workflow": "x" * 101}, "workflow"),
        ({"workflow": "expense_approval", "business_key": "k" * 101}, "business_key"),
    ],
)
def test_a_bad_start_body_names_its_field(api_as, roles, body, field):
    # when
    response = api_as(roles.staff).post(START, body)

    # then
    assert response.status_code == 400, response.json()
    assert field in response.json()["errors"]


def test_a_person_without_the_start_permission_gets_403(api_as, roles):
    # given: no group at all
    outsider = UserFactory(username="outsider")

    # when
    response = api_as(outsider).post(START, expense())

    # then
    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"


def test_an_explicit_version_and_a_business_key_are_kept(api_as, roles):
    # when
    response = api_as(roles.staff).post(
        START,
        {"workflow": "order_fulfilment", "version": 1, "input": OrderInputFactory(), "business_key": "ORDER-7"},
    )

    # then
    assert response.status_code == 201, response.json()
    assert response.json()["version"] == 1
    assert response.json()["business_key"] == "ORDER-7"


def test_a_start_costs_six_statements_with_a_key_or_without(api_as, roles, django_assert_num_queries):
    # given: a token client allowed to start; the token's last use already recorded (written once a minute)
    client = api_as(roles.staff)
    assert client.post(START, expense(), **{"Idempotency-Key": "warm"}).status_code == 201

    # when / then: the token with its user and the user's permissions (1: the start permission needs no statement
    # of its own); BEGIN, the engine's start of expense_approval (3: the instance, its first step, the audit
    # events, the key's row riding in the last one's statement) inside the API's transaction without a savepoint
    # of its own, COMMIT. No look-up of the key first. Under the test's own transaction the API's BEGIN/COMMIT are
    # a SAVEPOINT/RELEASE pair: the same count. Without a key the engine's transaction is the outer one in
    # production (BEGIN/COMMIT: 6); here it is nested in the test's, and its savepoint's SAVEPOINT/RELEASE make the
    # same 6. bench/README.md, "API starts".
    with django_assert_num_queries(6):
        assert client.post(START, expense(), **{"Idempotency-Key": "counted"}).status_code == 201
    with django_assert_num_queries(6):
        assert client.post(START, expense()).status_code == 201
    assert IdempotencyKey.objects.filter(key="counted").count() == 1


def test_a_start_permission_held_directly_through_a_group_or_as_superuser_is_honoured(api_as, roles, db):
    # given: one user with the start permission only as their own, one only through a group, one with neither
    from django.contrib.auth.models import Group, Permission, User

    start = Permission.objects.get(content_type__app_label="orchestrator", codename="add_workflowinstance")
    own = User.objects.create_user("starter-own", password="x")
    own.user_permissions.add(start)
    grouped = User.objects.create_user("starter-group", password="x")
    starters = Group.objects.create(name="starters-only")
    starters.permissions.add(start)
    grouped.groups.add(starters)
    neither = User.objects.create_user("starter-none", password="x")
    boss = User.objects.create_superuser("starter-boss", password="x")  # every permission, none assigned

    # when
    users = (own, grouped, neither, boss)
    statuses = {user.username: api_as(user).post(START, expense()).status_code for user in users}

    # then
    assert statuses == {"starter-own": 201, "starter-group": 201, "starter-none": 403, "starter-boss": 201}


def test_a_permission_granted_counts_at_the_next_request_with_the_same_token(api_as, db):
    # given: a token client whose user may not start
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user("late-starter", password="x")
    client = api_as(user)
    assert client.post(START, expense()).status_code == 403

    # when: the permission is granted
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="orchestrator", codename="add_workflowinstance")
    )

    # then: the very next request with the same token may start
    assert client.post(START, expense()).status_code == 201


def test_a_permission_removed_refuses_the_next_start(api_as, roles):
    # given: staff may start through their group, with a token already in use
    client = api_as(roles.staff)
    assert client.post(START, expense()).status_code == 201

    # when: the group loses the permission
    roles.approvers.permissions.remove(
        roles.approvers.permissions.get(content_type__app_label="orchestrator", codename="add_workflowinstance")
    )

    # then: the very next start with the same token is refused
    assert client.post(START, expense()).status_code == 403


# --- idempotency ----------------------------------------------------------------------------------------


def test_the_same_key_and_body_give_the_same_instance_201_then_200(api_as, roles):
    # given
    client, body = api_as(roles.staff), expense()

    # when
    first = client.post(START, body, **{"Idempotency-Key": "order-42"})
    again = client.post(START, body, **{"Idempotency-Key": "order-42"})

    # then
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert again["Idempotent-Replayed"] == "true"
    assert WorkflowInstance.objects.count() == 1


def test_the_same_key_with_another_body_is_422_and_starts_nothing(api_as, roles):
    # given
    client = api_as(roles.staff)
    first = client.post(START, expense(amount="10.00"), **{"Idempotency-Key": "k1"})

    # when
    other = client.post(START, expense(amount="11.00"), **{"Idempotency-Key": "k1"})

    # then
    assert other.status_code == 422
    assert str(first.json()["id"]) in other.json()["detail"]
    assert WorkflowInstance.objects.count() == 1


def test_a_used_key_with_an_invalid_body_is_still_422(api_as, roles):
    # given
    client = api_as(roles.staff)
    first = client.post(START, expense(), **{"Idempotency-Key": "k2"})

    # when: the same key with a body the start form refuses
    other = client.post(START, {"workflow": "expense_approval", "input": {}}, **{"Idempotency-Key": "k2"})

    # then: the key answers (it was used for another body), not the form
    assert other.status_code == 422
    assert str(first.json()["id"]) in other.json()["detail"]
    assert WorkflowInstance.objects.count() == 1


def test_keys_are_scoped_per_client(api_as, roles):
    # given: two people send the same key with different bodies
    body = expense()

    # when
    mine = api_as(roles.staff).post(START, body, **{"Idempotency-Key": "shared"})
    theirs = api_as(roles.staff2).post(START, expense(amount="99.00"), **{"Idempotency-Key": "shared"})

    # then
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]
    assert IdempotencyKey.objects.count() == 2


def test_a_refused_start_does_not_use_up_its_key(api_as, roles):
    # given
    client = api_as(roles.staff)
    refused = client.post(START, {"workflow": "expense_approval", "input": {}}, **{"Idempotency-Key": "retry-me"})

    # when
    fixed = client.post(START, expense(), **{"Idempotency-Key": "retry-me"})

    # then
    assert (refused.status_code, fixed.status_code) == (400, 201)


@pytest.mark.parametrize(
    "key", ["", " padded ", "tab\there", "ünï", "x" * 201, "nul\x00", "lone\ud800", "line-end\n", "\n"]
)
def test_a_malformed_key_is_400(api_as, roles, key):
    # when
    response = api_as(roles.staff).post(START, expense(), **{"Idempotency-Key": key})

    # then
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["errors"]
    assert not WorkflowInstance.objects.exists()


@pytest.mark.parametrize("key", ["a,b", "a, b", "order-42,"])
def test_a_key_holding_a_comma_is_400_saying_to_send_one_header(api_as, roles, key):
    """Two Idempotency-Key headers reach Baton joined by a comma ("a,b"): a key neither header is, so a retry
    sending one of them started a second instance. The key is one string (the IETF httpapi idempotency-key draft:
    a single sf-string), so a comma is refused, however it came."""
    # when
    response = api_as(roles.staff).post(START, expense(), **{"Idempotency-Key": key})

    # then
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["detail"].startswith("Send one Idempotency-Key header, with a key that holds no comma")
    assert "Idempotency-Key" in response.json()["errors"]
    assert not WorkflowInstance.objects.exists()
    assert not IdempotencyKey.objects.exists()


# --- list and detail ------------------------------------------------------------------------------------


@pytest.fixture
def started(roles):
    """Three expenses by staff (one with a business key), one order by staff2."""
    made = [instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff) for _ in range(2)]
    made.append(instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff, business_key="EXP-1"))
    made.append(instance_start("order_fulfilment", OrderInputFactory(), initiator=roles.staff2))
    return made


def test_people_list_what_they_started_and_operators_everything(api_as, roles, started):
    # when
    mine = api_as(roles.staff).get(START).json()["results"]
    everything = api_as(roles.operator).get(START).json()["results"]

    # then
    assert [row["id"] for row in mine] == [i.pk for i in reversed(started[:3])]
    assert [row["id"] for row in everything] == [i.pk for i in reversed(started)]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"workflow": "order_fulfilment"}, [3]),
        ({"business_key": "EXP-1"}, [2]),
        ({"state": "waiting", "workflow": "expense_approval"}, [2, 1, 0]),
        ({"version": 1, "workflow": "expense_approval"}, []),
        ({"started_after": "2000-01-01T00:00:00Z"}, [3, 2, 1, 0]),
        ({"started_before": "2000-01-02T00:00:00+02:00"}, []),
    ],
)
def test_the_list_filters(api_as, roles, started, params, expected):
    # when
    response = api_as(roles.operator).get(START, params)

    # then
    assert response.status_code == 200, response.json()
    assert [row["id"] for row in response.json()["results"]] == [started[i].pk for i in expected]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"state": "exploded"}, "state"),
        ({"version": "one"}, "version"),
        ({"started_after": "yesterday"}, "started_after"),
        ({"started_after": "2026-01-01T10:00:00"}, "started_after"),
        ({"started_before": "9999-12-31T23:59:59-23:59"}, "started_before"),
        ({"business_key": "x\x00"}, "business_key"),
        ({"cursor": "bm9wZQ=="}, "cursor"),
        ({"cursor": "cD1hYmM="}, "cursor"),
    ],
)
def test_a_bad_filter_is_a_400_naming_it(api_as, roles, started, params, field):
    # when
    response = api_as(roles.operator).get(START, params)

    # then
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]


@pytest.mark.parametrize("given", ["exploded", "FAILED", "Failed", "x" * 500, "\u202efailed"])
def test_a_state_that_is_none_is_refused_naming_the_states(api_as, roles, started, given):
    # when an operator filters by a state Baton does not have
    response = api_as(roles.operator).get(START, {"state": given})

    # then the 400 names every state, so a client need not look them up in the schema, and does not echo the value
    assert response.status_code == 400, response.content
    message = response.json()["errors"]["state"][0]
    assert message == f"Give one of: {', '.join(InstanceState.values)}."
    assert given not in response.content.decode()


@pytest.mark.parametrize(
    "params",
    [
        {"started_after": "2030-01-01T00:00:00Z", "started_before": "2020-01-01T00:00:00Z"},
        # the same instant written in two zones: nothing starts at or after it and before it
        {"started_after": "2026-06-01T10:00:00+02:00", "started_before": "2026-06-01T08:00:00Z"},
    ],
)
def test_a_started_range_the_wrong_way_round_is_a_400_naming_started_before(api_as, roles, started, params):
    """The console refuses it ("must be after Started from"): nothing could match, and an empty list says
    "none started then" to a script that only swapped its bounds."""
    # when
    response = api_as(roles.operator).get(START, params)

    # then
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert list(response.json()["errors"]) == ["started_before"], response.json()
    assert "started_after" in response.json()["errors"]["started_before"][0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # the format's very shape, in year 0: DRF said "wrong format. Use one of these formats instead" (a day that
        # does not exist is told so: tests/api/test_times.py)
        ("started_after", "0000-01-01T00:00:00Z"),
        # a real time whose UTC is past year 9999: DRF said "Datetime value out of range." without the range
        ("started_before", "9999-12-31T23:59:59-01:00"),
        ("started_before", "0001-01-01T00:00:00+01:00"),
    ],
)
def test_a_time_of_the_right_shape_but_no_real_or_storable_day_is_a_400_giving_the_range(
    api_as, roles, started, field, value
):
    # when
    response = api_as(roles.operator).get(START, {field: value})

    # then: the message says what to send instead, as it does for a real time out of range
    assert response.status_code == 400, response.content[:300]
    (message,) = response.json()["errors"][field]
    assert "between 2000-01-01 and" in message, message
    assert "format" not in message, message
    assert message != "Datetime value out of range."


def test_the_cursor_walks_every_instance_once_even_while_new_ones_start(api_as, roles, started):
    # given
    client = api_as(roles.operator)

    # when
    first = client.get(START, {"limit": 2}).json()
    instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)  # newer: not on later pages
    second = client.get(first["next"]).json()

    # then
    seen = [row["id"] for row in first["results"] + second["results"]]
    assert seen == [i.pk for i in reversed(started)]
    assert second["next"] is None


def test_the_list_costs_the_same_queries_for_one_or_many_instances(api_as, roles, django_assert_num_queries):
    # given
    client = api_as(roles.operator)
    client.get(START)  # the token's last use is written once a minute: not in the count below
    for _ in range(3):
        instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)

    # then: the token with its user and the user's permissions (1) + the page (1)
    with django_assert_num_queries(2):
        assert len(client.get(START).json()["results"]) == 3
    for _ in range(10):
        instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff2)
    with django_assert_num_queries(2):
        assert len(client.get(START).json()["results"]) == 13


def test_a_foreign_instance_is_404_and_a_visible_one_has_steps(api_as, roles, started):
    # when
    foreign = api_as(roles.staff).get(f"/api/instances/{started[3].pk}/")
    own = api_as(roles.staff).get(f"/api/instances/{started[0].pk}/")
    missing = api_as(roles.operator).get("/api/instances/99999999999999999999/")

    # then
    assert foreign.status_code == 404
    assert foreign["Content-Type"] == "application/problem+json"
    assert own.status_code == 200
    assert own.json()["steps"][0]["attempt"] == 0
    assert missing.status_code == 404


def test_a_candidate_sees_the_instance_of_their_task(api_as, roles, started):
    # when: staff2 is an approver, a candidate of staff's expense
    response = api_as(roles.staff2).get(f"/api/instances/{started[0].pk}/")

    # then
    assert response.status_code == 200


def test_the_list_holds_exactly_the_instances_whose_detail_opens_for_each_role(api_as, roles, started):
    """README promised "instances you may see", but the list held only those a person started: a candidate
    opened the instance of their task (the page's rule) and never found it in the list. Foreign ones stay out,
    and stay 404."""
    # given: everyone, and someone in no group at all
    outsider = UserFactory(username="outsider")
    people = {
        "staff": roles.staff,
        "staff2": roles.staff2,
        "manager": roles.manager,
        "operator": roles.operator,
        "outsider": outsider,
    }
    every = WorkflowInstance.objects.order_by("-id").values_list("pk", flat=True)
    for name, user in people.items():
        client = api_as(user)

        # when
        listed = [row["id"] for row in client.get(START, {"limit": 100}).json()["results"]]
        opened = [pk for pk in every if client.get(f"{START}{pk}/").status_code == 200]

        # then
        assert listed == opened, name
    assert api_as(roles.staff2).get(START).json()["results"][-1]["id"] == started[0].pk  # a candidate's, listed
    assert api_as(outsider).get(START).json()["results"] == []
    assert api_as(outsider).get(f"{START}{started[0].pk}/").status_code == 404


def test_a_candidates_list_costs_the_same_queries_for_one_or_many_instances(api_as, roles, django_assert_num_queries):
    # given: staff2, an approver, sees staff's expenses through their team tasks
    client = api_as(roles.staff2)
    client.get(START)  # the token's last use is written once a minute: not in the count below
    for _ in range(3):
        instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)

    # then: the token with its user and permissions (1) + the user's groups, for the candidate rule (1) + the page
    with django_assert_num_queries(3):
        assert len(client.get(START).json()["results"]) == 3
    for _ in range(10):
        instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)
    instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff2)
    with django_assert_num_queries(3):
        assert len(client.get(START).json()["results"]) == 14


# --- operator actions -----------------------------------------------------------------------------------


def test_an_operator_pauses_until_a_time_resumes_and_cancels_with_reasons(api_as, roles, started):
    # given
    client, instance = api_as(roles.operator), started[0]
    until = (timezone.now() + timedelta(hours=2)).isoformat()

    # when
    paused = client.post(f"/api/instances/{instance.pk}/pause/", {"reason": "supplier audit", "until": until})
    resumed = client.post(f"/api/instances/{instance.pk}/resume/", {"reason": "audit done"})
    cancelled = client.post(f"/api/instances/{instance.pk}/cancel/", {"reason": "duplicate"})

    # then
    assert paused.status_code == 200
    assert paused.json()["state"] == "paused"
    assert paused.json()["paused_until"]
    assert resumed.status_code == 200
    assert resumed.json()["state"] in ("running", "waiting")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    reasons = list(
        AuditEvent.objects.filter(
            instance=instance, action__in=["instance.paused", "instance.resumed", "instance.cancelled"]
        )
        .order_by("seq")
        .values_list("reason", "actor_label")
    )
    assert reasons == [
        ("supplier audit", "user:operator"),
        ("audit done", "user:operator"),
        ("duplicate", "user:operator"),
    ]


def test_an_action_the_state_forbids_is_409_and_a_missing_reason_400(api_as, roles, started):
    # given
    client = api_as(roles.operator)

    # when
    retry = client.post(f"/api/instances/{started[0].pk}/retry/", {"reason": "try"})
    resume = client.post(f"/api/instances/{started[0].pk}/resume/", {"reason": "go"})
    no_reason = client.post(f"/api/instances/{started[0].pk}/cancel/", {})
    blank = client.post(f"/api/instances/{started[0].pk}/cancel/", {"reason": "   "})
    naive = client.post(f"/api/instances/{started[0].pk}/pause/", {"reason": "x", "until": "2030-01-01T10:00:00"})
    past = client.post(f"/api/instances/{started[0].pk}/pause/", {"reason": "x", "until": "2001-01-01T10:00:00Z"})

    # then
    assert (retry.status_code, resume.status_code) == (409, 409)
    assert "Only failed instances" in retry.json()["detail"]
    assert no_reason.status_code == 400
    assert "reason" in no_reason.json()["errors"]
    assert blank.status_code == 400
    assert naive.status_code == 400
    assert "time zone" in naive.json()["errors"]["until"][0]
    assert past.status_code == 400
    assert "until" in past.json()["errors"]
    assert WorkflowInstance.objects.get(pk=started[0].pk).state == InstanceState.WAITING


def test_a_role_without_operate_gets_403_on_what_it_sees_and_404_on_what_it_does_not(api_as, roles, started):
    # when
    own = api_as(roles.staff).post(f"/api/instances/{started[0].pk}/pause/", {"reason": "mine"})
    foreign = api_as(roles.staff).post(f"/api/instances/{started[3].pk}/pause/", {"reason": "theirs"})
    manager = api_as(roles.manager).post(f"/api/instances/{started[3].pk}/cancel/", {"reason": "no"})

    # then
    assert (own.status_code, foreign.status_code, manager.status_code) == (403, 404, 403)


def test_a_failed_instance_is_retried_and_completes(api_as, roles, run_steps, failed):
    # given: approved through the API, then payroll refuses the payout three times (every attempt it has)
    instance = failed

    # when
    response = api_as(roles.operator).post(f"/api/instances/{instance.pk}/retry/", {"reason": "payroll is back"})
    run_steps(instance, advance=True)

    # then
    assert response.status_code == 200
    assert response.json()["state"] == "running"
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED
    retried = AuditEvent.objects.get(instance=instance, action="instance.retried")
    assert (retried.reason, retried.actor_label) == ("payroll is back", "user:operator")


def test_a_pause_ends_within_the_pages_horizon(api_as, roles, started, settings):
    # given: the console lets a pause end at most BATON_PAUSE_MAX_DAYS ahead (for longer: cancel)
    settings.BATON_PAUSE_MAX_DAYS = 30
    client, instance = api_as(roles.operator), started[0]
    too_far = (timezone.now() + timedelta(days=31)).isoformat()
    in_range = (timezone.now() + timedelta(days=29)).isoformat()

    # when
    refused = client.post(f"/api/instances/{instance.pk}/pause/", {"reason": "audit", "until": too_far})
    state_after_refusal = WorkflowInstance.objects.get(pk=instance.pk).state
    paused = client.post(f"/api/instances/{instance.pk}/pause/", {"reason": "audit", "until": in_range})

    # then
    assert refused.status_code == 400, refused.content
    assert "until" in refused.json()["errors"], refused.json()
    assert "30 days" in refused.json()["detail"]
    assert state_after_refusal != "paused"
    assert paused.status_code == 200, paused.content


def test_a_pause_past_the_horizon_names_until_not_the_pages_label(api_as, roles, started, settings):
    # given: a pause may end at most BATON_PAUSE_MAX_DAYS ahead; the service says so under the console's label
    settings.BATON_PAUSE_MAX_DAYS = 30
    client, instance = api_as(roles.operator), started[0]
    too_far = (timezone.now() + timedelta(days=31)).isoformat()

    # when
    refused = client.post(f"/api/instances/{instance.pk}/pause/", {"reason": "audit", "until": too_far})

    # then: the 400 names the field as sent, as every other field's does, never the page's "Resume at"
    problem = refused.json()
    assert refused.status_code == 400, problem
    assert "Resume at" not in problem["detail"]
    assert problem["detail"].startswith("Check the fields: until: A pause ends by "), problem["detail"]
    assert list(problem["errors"]) == ["until"]
    assert problem["errors"]["until"][0].startswith("A pause ends by ")
    assert "Resume at" not in problem["errors"]["until"][0]


def _noop(ctx):
    return {}


FIRST_NODES = {
    "timer": [Timer("wait", wait=timedelta(hours=1)), Task("after", _noop)],
    "signal": [Signal("go"), Task("after", _noop)],
    "decision": [
        Decision("route", choose=lambda data: "review", choices=["review"]),
        Human("review", candidate_groups=["approvers"]),
    ],
    "human": [Human("review", candidate_groups=["approvers"]), Task("after", _noop)],
    "task": [Task("first", _noop)],
}


@pytest.mark.parametrize("first", sorted(FIRST_NODES))
def test_a_keyed_start_writes_its_key_whatever_its_first_node(api_as, roles, register_workflow, first):
    # given a workflow whose first node is a timer, a signal, a decision, a person or a task
    register_workflow(Workflow(name=f"api_first_{first}", version=1, steps=FIRST_NODES[first]))
    body = {"workflow": f"api_first_{first}", "input": {}}
    client = api_as(roles.staff)

    # when it is started with a key, and the same request is sent again
    started = client.post(START, body, **{"Idempotency-Key": f"first-{first}"})
    again = client.post(START, body, **{"Idempotency-Key": f"first-{first}"})

    # then the key's row was written with the start, and the repeat answers with that instance
    assert (started.status_code, again.status_code) == (201, 200)
    key = IdempotencyKey.objects.get(key=f"first-{first}")
    assert key.instance_id == started.json()["id"] == again.json()["id"]
    assert WorkflowInstance.objects.count() == 1


def test_a_cancel_with_compensation_undoes_what_the_instance_did_first(api_as, roles, run_steps):
    # given an order waiting for its manager, its stock reserved and its payment taken
    instance = instance_start("order_fulfilment", OrderInputFactory(amount="1500.00"), initiator=roles.staff)
    run_steps(instance, advance=True)
    instance.refresh_from_db()
    assert instance.state == InstanceState.WAITING

    # when an operator cancels it asking for compensation, and the worker runs the compensations
    cancelled = api_as(roles.operator).post(
        f"/api/instances/{instance.pk}/cancel/", {"reason": "customer withdrew", "compensate": True}
    )
    run_steps(instance, advance=True)

    # then it was undone, as the console's Cancel with compensation does, and the request is audited as a cancel
    assert cancelled.status_code == 200, cancelled.content
    assert cancelled.json()["state"] == "compensating"
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPENSATED
    requested = AuditEvent.objects.get(instance=instance, action="instance.compensation_requested")
    assert (requested.reason, requested.payload, requested.actor_label) == (
        "customer withdrew",
        {"cancel": True},
        "user:operator",
    )


@pytest.mark.parametrize(("compensate", "state"), [(False, "cancelled"), ("false", "cancelled"), ("no", "cancelled")])
def test_a_cancel_without_compensation_ends_it_as_it_is(api_as, roles, started, compensate, state):
    # when an operator cancels saying not to compensate (or saying nothing of it, the test above's neighbour)
    response = api_as(roles.operator).post(
        f"/api/instances/{started[0].pk}/cancel/", {"reason": "duplicate", "compensate": compensate}
    )

    # then it ends cancelled, nothing undone
    assert response.status_code == 200, response.content
    assert response.json()["state"] == state
    assert not AuditEvent.objects.filter(instance=started[0], action="instance.compensation_requested").exists()


@pytest.mark.parametrize("compensate", ["nope", 2, [], {"yes": True}])
def test_a_compensate_that_is_no_true_or_false_is_a_400_and_cancels_nothing(api_as, roles, started, compensate):
    # when
    response = api_as(roles.operator).post(
        f"/api/instances/{started[0].pk}/cancel/", {"reason": "duplicate", "compensate": compensate}
    )

    # then
    assert response.status_code == 400, response.content
    assert response["Content-Type"].startswith("application/problem+json")
    assert response.json()["errors"]["compensate"] == ["Give true or false."]
    started[0].refresh_from_db()
    assert started[0].state != InstanceState.CANCELLED
