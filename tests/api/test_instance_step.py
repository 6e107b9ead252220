"""One step run whole: ``GET /api/instances/{id}/steps/{step_id}/`` (api/views.py, ``InstanceViewSet.step``), the
``url`` of each step in the detail and the steps page. The instance is checked as the detail checks it (a hidden
one is the detail's 404, recorded as ``access.refused``); a run of another instance, or none, is a 404 too."""

from __future__ import annotations

import pytest

from orchestrator.models import StepRun, WorkflowInstance
from orchestrator.services.instances import instance_start
from orchestrator.services.results import clean_text
from tests.api.test_hidden_refusals import api
from tests.audit.test_hidden_refusals import MISSING, assert_recorded, refusals
from tests.factories import ExpenseInputFactory, OrderInputFactory, long_history

pytestmark = pytest.mark.django_db

LARGE = {"rows": [{"i": i, "text": "x" * 200} for i in range(4000)]}  # about 900 KB of JSON
ERROR = 'Traceback (most recent call last):\n  File "/srv/baton/flows/payouts.py", line 12, in pay\nValueError: boom'


def step_path(instance, step) -> str:
    return f"/api/instances/{instance.pk}/steps/{step.pk}/"


def expense(roles) -> WorkflowInstance:
    """An expense staff started: one step run (the team approval) and its open task."""
    return instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)


def test_the_step_is_answered_whole_as_the_pages_list_it_with_its_result_in_full(api_as, roles):
    # given: a run with a result of about 900 KB, among others
    instance = expense(roles)
    runs = long_history(instance, 6, step_name="check", per_round=2)
    StepRun.objects.filter(pk=runs[1].pk).update(result=LARGE)
    client = api_as(roles.staff)

    # when
    response = client.get(step_path(instance, runs[1]))

    # then: the run, whole; what the steps page and the detail list for it, url included
    assert response.status_code == 200, response.content[:300]
    body = response.json()
    assert (body["id"], body["name"], body["result"]) == (runs[1].pk, "check", LARGE)
    assert body["url"] == step_path(instance, runs[1])
    listed = client.get(f"/api/instances/{instance.pk}/steps/", {"limit": 100}).json()["results"]
    assert [row for row in listed if row["id"] == runs[1].pk] == [body]
    assert [row for row in client.get(f"/api/instances/{instance.pk}/").json()["steps"] if row["id"] == body["id"]] == [
        body
    ]


def test_each_listed_steps_url_answers_that_step_even_after_a_metadata_read(api_as, roles):
    # given
    instance = expense(roles)
    long_history(instance, 4, step_name="check", per_round=2)
    client = api_as(roles.staff)

    # when: the urls of a metadata detail, followed
    listed = client.get(f"/api/instances/{instance.pk}/", {"included_data": "metadata"}).json()["steps"]
    fetched = [client.get(step["url"]) for step in listed]

    # then: each answers its step, with the payloads the listing left out
    assert len(listed) == 3
    assert [response.status_code for response in fetched] == [200] * 3
    assert [response.json()["id"] for response in fetched] == [step["id"] for step in listed]
    assert all({"result", "error"} <= set(response.json()) for response in fetched)


def test_the_step_costs_three_statements(api_as, roles, django_assert_num_queries):
    # given
    instance = expense(roles)
    step = instance.steps.get()
    client = api_as(roles.operator)
    client.get(step_path(instance, step))  # the token's last use is written once a minute: not counted below

    # then: the token with its user and permissions, the instance (without its data), the step
    with django_assert_num_queries(3):
        assert client.get(step_path(instance, step)).status_code == 200


def test_server_paths_in_its_error_are_for_operators_only(api_as, roles):
    # given: a run whose error holds a traceback (and a NUL, as the engine stores one: clean_text)
    instance = expense(roles)
    step = instance.steps.get()
    StepRun.objects.filter(pk=step.pk).update(error=clean_text(ERROR + "\x00"), error_type="ValueError")

    # when
    operator = api_as(roles.operator).get(step_path(instance, step)).json()["error"]
    initiator = api_as(roles.staff).get(step_path(instance, step)).json()["error"]

    # then
    assert operator == ERROR + "\\x00"
    assert 'File "payouts.py", line 12' in initiator
    assert "/srv/baton" not in initiator


# --- access ---------------------------------------------------------------------------------------------


def test_who_may_not_see_the_instance_gets_the_details_404_recorded_as_the_details(roles):
    # given: an order staff started, before any task: staff2 (another approver) may not see it
    order = instance_start("order_fulfilment", OrderInputFactory(amount="900.00"), initiator=roles.staff)
    step = order.steps.order_by("id").first()
    client = api(roles.staff2)
    path = step_path(order, step)

    # when
    hidden = client.get(path)
    missing = client.get(f"/api/instances/{MISSING}/steps/{step.pk}/")
    own = api(roles.staff).get(path)

    # then: the same problem as for a missing instance, and the refusal of the instance on the trail
    assert (hidden.status_code, missing.status_code, own.status_code) == (404, 404, 200)
    assert hidden["Content-Type"] == "application/problem+json"
    assert {**hidden.json(), "instance": ""} == {**missing.json(), "instance": ""}
    [event] = refusals()
    assert_recorded(event, roles.staff2, "instance", order.pk, path, hidden)
    assert event.payload["route"] == "api:instance-step"


def test_a_step_of_another_instance_is_a_404_as_a_step_that_does_not_exist(api_as, roles):
    # given: two instances the manager sees
    first, second = expense(roles), expense(roles)
    client = api_as(roles.manager)
    foreign_step = second.steps.get()

    # when
    crossed = client.get(f"/api/instances/{first.pk}/steps/{foreign_step.pk}/")
    missing = client.get(f"/api/instances/{first.pk}/steps/{MISSING}/")
    past_bigint = client.get(f"/api/instances/{first.pk}/steps/{2**70}/")

    # then: one answer for all three, nothing recorded (the instance was the caller's to see)
    assert (crossed.status_code, missing.status_code, past_bigint.status_code) == (404, 404, 404)
    assert crossed["Content-Type"] == "application/problem+json"
    shown = [{**response.json(), "instance": ""} for response in (crossed, missing, past_bigint)]
    assert shown[0] == shown[1] == shown[2]
    assert refusals() == []


def test_anonymous_is_401_and_a_write_is_405(api_as, roles):
    # given
    instance = expense(roles)
    step = instance.steps.get()

    # when
    anonymous = api_as(None).get(step_path(instance, step))
    write = api_as(roles.operator).post(step_path(instance, step), {})

    # then
    assert (anonymous.status_code, write.status_code) == (401, 405)


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": "10"}, "limit"), ({"cursor": "abc"}, "cursor"), ({"fields": "id"}, "fields")],
)
def test_the_step_takes_no_parameter_but_format(api_as, roles, params, field):
    # given
    instance = expense(roles)
    step = instance.steps.get()
    client = api_as(roles.operator)

    # when
    refused = client.get(step_path(instance, step), params)
    formatted = client.get(step_path(instance, step), {"format": "json"})

    # then
    assert refused.status_code == 400
    assert list(refused.json()["errors"]) == [field]
    assert formatted.status_code == 200
