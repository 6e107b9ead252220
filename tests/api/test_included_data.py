"""``?included_data=metadata`` on an instance's detail and its steps page (api/views.py, ``metadata_only``): the
instance's data and digest and the steps' result and error are left out of the answer and out of the SQL, so a
metadata read of an instance with megabytes of results is small and pulls none of them from PostgreSQL; ``all``
(the default) answers as before; anything else is a 400 naming the parameter and its values."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from orchestrator.models import StepRun, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory, OrderInputFactory, long_history

pytestmark = pytest.mark.django_db

# About 900 KB of JSON: a result just under the engine's 1 MiB limit (BATON_MAX_RESULT_BYTES).
LARGE = {"rows": [{"i": i, "text": "x" * 200} for i in range(4000)]}
RESULTS = 6
# The columns a metadata read must not select, as Django's SQL names them.
PAYLOAD_COLUMNS = (
    '"orchestrator_steprun"."result"',
    '"orchestrator_steprun"."error"',
    '"orchestrator_workflowinstance"."data"',
)
STEP_METADATA = {
    "id",
    "url",
    "name",
    "kind",
    "state",
    "attempt",
    "max_attempts",
    "due_at",
    "started_at",
    "finished_at",
    "error_type",
}


def detail_path(instance) -> str:
    return f"/api/instances/{instance.pk}/"


def steps_path(instance) -> str:
    return f"/api/instances/{instance.pk}/steps/"


@pytest.fixture
def heavy(roles) -> WorkflowInstance:
    """An expense staff started, with :data:`RESULTS` more step runs each holding a ~900 KB result and a failed
    one's traceback, and about 900 KB of business data: about 6 MB of payloads in all."""
    instance = instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)
    runs = long_history(instance, RESULTS * 2, step_name="check", per_round=2)
    StepRun.objects.filter(pk__in=[run.pk for run in runs]).update(
        result=LARGE, error="Traceback (most recent call last):\n" + "  x\n" * 1000, error_type="ValueError"
    )
    WorkflowInstance.objects.filter(pk=instance.pk).update(data={**instance.data, "attachment": LARGE})
    return instance


def payload_reads(queries) -> list[str]:
    return [query["sql"][:200] for query in queries if any(column in query["sql"] for column in PAYLOAD_COLUMNS)]


# --- what is left out -----------------------------------------------------------------------------------


def test_the_metadata_detail_keeps_everything_but_the_data_and_the_steps_payloads(api_as, roles, heavy):
    # given
    client = api_as(roles.operator)
    whole = client.get(detail_path(heavy)).json()

    # when
    response = client.get(detail_path(heavy), {"included_data": "metadata"})

    # then: the instance without data and data_digest; each step without result and error, error_type kept
    assert response.status_code == 200, response.content[:300]
    body = response.json()
    assert set(whole) - set(body) == {"data", "data_digest"}
    assert {key: value for key, value in whole.items() if key not in ("data", "data_digest", "steps", "steps_url")} == {
        key: value for key, value in body.items() if key not in ("steps", "steps_url")
    }
    assert len(body["steps"]) == RESULTS + 1
    for step in body["steps"]:
        assert set(step) == STEP_METADATA
    assert [{k: v for k, v in step.items() if k in STEP_METADATA} for step in whole["steps"]] == body["steps"]
    assert body["steps"][-1]["error_type"] == "ValueError"


def test_all_is_the_default_and_answers_every_field(api_as, roles, heavy):
    # given
    client = api_as(roles.operator)

    # when
    default = client.get(detail_path(heavy))
    explicit = client.get(detail_path(heavy), {"included_data": "all"})
    page = client.get(steps_path(heavy), {"included_data": "all", "limit": 2})

    # then
    assert default.json() == explicit.json()
    assert explicit.json()["data"]["attachment"] == LARGE
    assert explicit.json()["steps"][-1]["result"] == LARGE
    assert explicit.json()["steps_url"] == steps_path(heavy)
    assert page.json()["results"][-1]["result"] == LARGE


def test_the_metadata_steps_page_and_its_links_keep_to_metadata(api_as, roles, heavy):
    # given: the detail's link to every step, as a metadata detail gives it
    client = api_as(roles.staff)
    link = client.get(detail_path(heavy), {"included_data": "metadata"}).json()["steps_url"]

    # when: every page, following next
    rows, url = [], f"{link}&limit=3"
    while url:
        page = client.get(url)
        assert page.status_code == 200, page.content[:300]
        rows += page.json()["results"]
        url = page.json()["next"]

    # then
    assert link == f"{steps_path(heavy)}?included_data=metadata"
    assert len(rows) == RESULTS + 1
    assert all(set(row) == STEP_METADATA for row in rows)


# --- the SQL and the size -------------------------------------------------------------------------------


def test_a_metadata_read_selects_no_payload_column_in_the_same_statements(api_as, roles, heavy):
    # given: the token's last use written (once a minute: not in the counts below)
    client = api_as(roles.operator)
    client.get(detail_path(heavy))

    # when
    with CaptureQueriesContext(connection) as detail:
        client.get(detail_path(heavy), {"included_data": "metadata"})
    with CaptureQueriesContext(connection) as page:
        client.get(steps_path(heavy), {"included_data": "metadata", "limit": 100})
    with CaptureQueriesContext(connection) as whole:
        client.get(detail_path(heavy))

    # then: the detail's four statements (token, instance, latest runs with their total, latest tasks with theirs)
    # and the page's three (token, instance, page), none reading a payload; the whole detail reads them all
    assert (len(detail), len(page), len(whole)) == (4, 3, 4)
    assert payload_reads(detail) == []
    assert payload_reads(page) == []
    assert len(payload_reads(whole)) == 2  # the instance's data, the runs' result and error


def test_the_metadata_answer_of_megabytes_of_results_is_small(api_as, roles, heavy):
    # given
    client = api_as(roles.operator)

    # when
    whole = client.get(detail_path(heavy))
    detail = client.get(detail_path(heavy), {"included_data": "metadata"})
    page = client.get(steps_path(heavy), {"included_data": "metadata", "limit": 100})

    # then: about 6 MB whole, a few KB as metadata
    assert len(whole.content) > RESULTS * 900_000
    assert len(detail.content) < 10_000, len(detail.content)
    assert len(page.content) < 10_000, len(page.content)


# --- junk -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [detail_path, steps_path], ids=["detail", "steps"])
@pytest.mark.parametrize(
    "value",
    [
        "foo",
        "METADATA",
        "metadata ",
        "",
        "metadata\x00",
        "\x00",
        "x" * 3000,
    ],
    ids=["foo", "upper", "space", "empty", "nul-after", "nul", "huge"],
)
def test_junk_included_data_is_a_400_naming_it_and_its_values(api_as, roles, heavy, path, value):
    # when
    response = api_as(roles.operator).get(path(heavy), {"included_data": value})

    # then
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert list(problem["errors"]) == ["included_data"]
    assert "all" in problem["errors"]["included_data"][0]
    assert "metadata" in problem["errors"]["included_data"][0]
    assert problem["detail"].startswith("included_data: ")
    # the value is not echoed: it may be kilobytes, or hold a NUL
    assert "xxxx" not in problem["detail"]
    assert "\x00" not in problem["detail"]


def test_a_query_string_too_long_for_baton_is_a_414_problem_not_a_500(api_as, roles, heavy):
    response = api_as(roles.operator).get(detail_path(heavy), {"included_data": "m" * 5000})
    assert response.status_code == 414
    assert response["Content-Type"] == "application/problem+json"


def test_the_tasks_page_and_the_step_take_no_included_data(api_as, roles, heavy):
    """A task summary carries no payload (id, kind, title, state, url), and one step is answered whole: the
    parameter would change nothing there, and is refused as any parameter an endpoint does not take."""
    # given
    client = api_as(roles.operator)
    step = heavy.steps.order_by("id").first()

    # when
    tasks = client.get(f"/api/instances/{heavy.pk}/tasks/", {"included_data": "metadata"})
    one = client.get(f"/api/instances/{heavy.pk}/steps/{step.pk}/", {"included_data": "metadata"})

    # then
    for response in (tasks, one):
        assert response.status_code == 400, response.content[:300]
        assert list(response.json()["errors"]) == ["included_data"]


def test_a_foreign_instance_is_the_details_404_with_or_without_metadata(api_as, roles):
    # given: an order staff2 started, before any task of it reaches staff's team
    instance = instance_start("order_fulfilment", OrderInputFactory(), initiator=roles.staff2)
    client = api_as(roles.staff)

    # when
    plain = client.get(detail_path(instance))
    metadata = client.get(detail_path(instance), {"included_data": "metadata"})
    junk = client.get(detail_path(instance), {"included_data": "foo"})

    # then: the parameter is checked first (its 400 says nothing of the instance), the 404 as ever
    assert (plain.status_code, metadata.status_code, junk.status_code) == (404, 404, 400)
    assert {**plain.json(), "instance": ""} == {**metadata.json(), "instance": ""}


def test_a_metadata_answer_has_every_field_the_schema_requires(api_as, roles, heavy):
    """The schema required ``data_digest`` and each step's ``error``: a client (and schemathesis) validating a
    metadata answer by it would call the answer wrong."""
    # given
    client = api_as(roles.operator)
    components = client.get("/api/schema/?format=json").json()["components"]["schemas"]

    # when
    detail = client.get(detail_path(heavy), {"included_data": "metadata"}).json()
    page = client.get(steps_path(heavy), {"included_data": "metadata"}).json()

    # then: each answer holds what its component requires, and nothing it does not describe
    for body, name in [(detail, "InstanceDetail"), *[(step, "Step") for step in detail["steps"] + page["results"]]]:
        assert set(components[name]["required"]) <= set(body), name
        assert set(body) <= set(components[name]["properties"]), name


# --- access checks leave the data unread ------------------------------------------------------------------


def data_reads(queries) -> int:
    return sum('"orchestrator_workflowinstance"."data"' in query["sql"] for query in queries)


def test_an_operator_action_reads_the_data_only_where_its_service_and_its_answer_need_it(api_as, roles, heavy):
    # given: an instance with about 900 KB of business data
    client = api_as(roles.operator)
    client.get(detail_path(heavy))  # the token's last use written

    # when: an operator pauses it
    with CaptureQueriesContext(connection) as pause:
        response = client.post(f"{detail_path(heavy)}pause/", {"reason": "supplier audit"}, format="json")

    # then: the data is read once, by the answer (the instance as it is now), not by the access check before the
    # pause (the pause reads what it needs under its lock)
    assert response.status_code == 200, response.content[:300]
    assert data_reads(pause) == 1, [query["sql"][:120] for query in pause]


def test_the_access_check_of_a_live_instance_page_reads_no_data(roles, heavy):
    # given
    from orchestrator.consumers import instance_group_if_allowed

    # when: an operator's browser subscribes to the instance's live news
    with CaptureQueriesContext(connection) as queries:
        group = instance_group_if_allowed(roles.operator, heavy.pk)

    # then
    assert group is not None
    assert data_reads(queries) == 0
