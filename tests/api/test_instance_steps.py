"""An instance's step runs and tasks through the API: the detail lists the latest ``DETAIL_SHOWN`` of each with
their totals and links, ``steps/`` and ``tasks/`` page through every one oldest first, and neither costs more
statements as the history grows (docs/architecture.md, "One instance, bounded")."""

from __future__ import annotations

import base64
import json

import pytest

from api.serializers import DETAIL_SHOWN
from approvals.models import HumanTask, TaskKind
from orchestrator.models import StepRun, WorkflowInstance
from orchestrator.services.instances import instance_start
from orchestrator.services.results import clean_text
from tests.factories import ExpenseInputFactory, OrderInputFactory, long_history
from tests.test_large_data import BIG

pytestmark = pytest.mark.django_db


def detail_path(instance) -> str:
    return f"/api/instances/{instance.pk}/"


def steps_path(instance) -> str:
    return f"/api/instances/{instance.pk}/steps/"


def tasks_path(instance) -> str:
    return f"/api/instances/{instance.pk}/tasks/"


def expense(roles) -> WorkflowInstance:
    """An expense staff started: one step run (the team approval) and its open task."""
    return instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)


def with_runs(instance, runs: int) -> list[StepRun]:
    """``runs`` more step runs of ``instance``, as a loop gone round leaves them (tests.factories.long_history)."""
    return long_history(instance, runs * 2, step_name="check", per_round=2)


def with_tasks(instance, count: int) -> list[HumanTask]:
    step = instance.steps.order_by("id").first()
    return HumanTask.objects.bulk_create(
        [HumanTask(instance=instance, step=step, kind=TaskKind.APPROVAL, title=f"Round {n}") for n in range(count)]
    )


def walk(client, path: str, limit: int) -> list[dict]:
    """Every row of a paged sub-resource, following ``next`` to the end."""
    rows, url = [], f"{path}?limit={limit}"
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content[:300]
        rows += response.json()["results"]
        url = response.json()["next"]
    return rows


# --- the detail, bounded --------------------------------------------------------------------------------


def test_the_detail_lists_the_latest_runs_and_tasks_in_id_order_with_totals_and_links(api_as, roles):
    # given: a loop gone round past the bound, and more tasks than it lists
    instance = expense(roles)
    with_runs(instance, DETAIL_SHOWN + 30)
    with_tasks(instance, DETAIL_SHOWN + 5)
    run_ids = list(instance.steps.order_by("id").values_list("id", flat=True))
    task_ids = list(instance.tasks.order_by("id").values_list("id", flat=True))

    # when
    body = api_as(roles.staff).get(detail_path(instance)).json()

    # then: the latest of each by id, oldest of them first, how many there are, where the rest are
    assert [step["id"] for step in body["steps"]] == run_ids[-DETAIL_SHOWN:]
    assert body["steps_total"] == len(run_ids) == DETAIL_SHOWN + 31
    assert body["steps_url"] == steps_path(instance)
    assert [task["id"] for task in body["tasks"]] == task_ids[-DETAIL_SHOWN:]
    assert body["tasks_total"] == len(task_ids) == DETAIL_SHOWN + 6
    assert body["tasks_url"] == tasks_path(instance)


def test_within_the_bound_the_detail_keeps_its_shape_and_lists_everything(api_as, roles):
    # given
    instance = expense(roles)

    # when
    body = api_as(roles.staff).get(detail_path(instance)).json()

    # then: every field it had, each step with its attempts and error as before, and its own url
    assert {"id", "url", "state", "data", "data_digest", "steps", "tasks"} <= set(body)
    [step] = body["steps"]
    assert set(step) == {
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
        "error",
        "result",
    }
    assert step["name"] == "team_approval"
    assert step["url"] == f"/api/instances/{instance.pk}/steps/{step['id']}/"
    assert (body["steps_total"], body["tasks_total"]) == (1, 1)
    assert body["tasks"] == [
        {
            "id": instance.tasks.get().pk,
            "url": f"/api/tasks/{instance.tasks.get().pk}/",
            "kind": "approval",
            "title": instance.tasks.get().title,
            "state": "open",
        }
    ]


def test_an_operators_action_answers_the_bounded_detail(api_as, roles):
    # given
    instance = expense(roles)
    with_runs(instance, DETAIL_SHOWN + 1)

    # when
    response = api_as(roles.operator).post(f"/api/instances/{instance.pk}/pause/", {"reason": "long loop"})

    # then
    assert response.status_code == 200, response.content[:300]
    assert response.json()["state"] == "paused"
    assert len(response.json()["steps"]) == DETAIL_SHOWN
    assert response.json()["steps_total"] == DETAIL_SHOWN + 2


# --- statements -----------------------------------------------------------------------------------------


def test_the_detail_costs_the_same_statements_at_1_and_at_200_step_runs(api_as, roles, django_assert_num_queries):
    # given: one instance with its one run, one with 200 more (and past the task bound too)
    client = api_as(roles.operator)
    small, big = expense(roles), expense(roles)
    with_runs(big, 200)
    with_tasks(big, DETAIL_SHOWN + 10)
    client.get(detail_path(small))  # the token's last use is written once a minute: not in the counts below

    # then: the token with its user and permissions, the instance, the latest runs with their total, the latest
    # tasks with theirs
    with django_assert_num_queries(4):
        assert client.get(detail_path(small)).json()["steps_total"] == 1
    with django_assert_num_queries(4):
        assert client.get(detail_path(big)).json()["steps_total"] == 201


def test_a_page_of_steps_or_tasks_costs_three_statements_at_any_depth(api_as, roles, django_assert_num_queries):
    # given
    client = api_as(roles.operator)
    instance = expense(roles)
    with_runs(instance, 200)
    with_tasks(instance, 60)
    client.get(steps_path(instance))
    second = client.get(steps_path(instance), {"limit": 100}).json()["next"]

    # then: the token, the instance, the page (DRF's cursor reads one row past it to know there is a next)
    with django_assert_num_queries(3):
        assert len(client.get(steps_path(instance)).json()["results"]) == 25
    with django_assert_num_queries(3):
        assert len(client.get(second).json()["results"]) == 100
    with django_assert_num_queries(3):
        assert len(client.get(tasks_path(instance), {"limit": 100}).json()["results"]) == 61


# --- paging ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "rows"), [(steps_path, "steps"), (tasks_path, "tasks")])
def test_paging_walks_every_row_once_in_id_order_even_while_rows_are_added(api_as, roles, path, rows):
    # given
    client = api_as(roles.operator)
    instance = expense(roles)
    with_runs(instance, 70)
    with_tasks(instance, 70)
    before = list(getattr(instance, rows).order_by("id").values_list("id", flat=True))

    # when: a page, then a round of the loop adds rows, then the rest
    first = client.get(path(instance), {"limit": 30}).json()
    with_runs(instance, 3)
    with_tasks(instance, 3)
    seen = [row["id"] for row in first["results"]] + [row["id"] for row in walk_from(client, first["next"])]

    # then: nothing repeated or skipped; what was added comes at the end
    after = list(getattr(instance, rows).order_by("id").values_list("id", flat=True))
    assert seen == after
    assert seen[: len(before)] == before


def walk_from(client, url: str | None) -> list[dict]:
    rows = []
    while url:
        body = client.get(url).json()
        rows += body["results"]
        url = body["next"]
    return rows


def test_steps_pages_show_what_the_detail_shows_for_each_run(api_as, roles):
    # given
    client = api_as(roles.staff)
    instance = expense(roles)
    with_runs(instance, 10)

    # when
    detail = client.get(detail_path(instance)).json()["steps"]
    paged = walk(client, steps_path(instance), 4)

    # then
    assert paged == detail


def test_an_instance_without_steps_or_tasks_is_an_empty_page_and_zero_totals(api_as, roles):
    # given: an instance whose runs (and with them its task) are gone
    instance = expense(roles)
    StepRun.objects.filter(instance=instance).delete()
    client = api_as(roles.staff)

    # when
    detail = client.get(detail_path(instance)).json()
    steps = client.get(steps_path(instance)).json()
    tasks = client.get(tasks_path(instance)).json()

    # then
    assert (detail["steps"], detail["steps_total"], detail["tasks"], detail["tasks_total"]) == ([], 0, [], 0)
    assert steps == tasks == {"next": None, "previous": None, "results": []}


def cursor_at(position: int) -> str:
    """A cursor of the shape this API hands out (DRF's), placed at ``position``."""
    return base64.b64encode(f"p={position}".encode()).decode()


def test_a_page_past_the_end_is_empty_with_no_next(api_as, roles):
    # given
    client = api_as(roles.operator)
    instance = expense(roles)
    with_runs(instance, 5)
    last = instance.steps.order_by("id").last().pk

    # when: a cursor past the last run, and a limit past the count
    past = client.get(steps_path(instance), {"cursor": cursor_at(last + 1000)})
    whole = client.get(steps_path(instance), {"limit": 100})

    # then
    assert past.status_code == 200
    assert past.json()["results"] == []
    assert past.json()["next"] is None
    assert len(whole.json()["results"]) == 6
    assert whole.json()["next"] is None


@pytest.mark.parametrize("sub", ["steps", "tasks"])
@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": ""}, "limit"),
        ({"limit": "1\x00"}, "limit"),
        ({"cursor": "junk"}, "cursor"),
        ({"cursor": "cD1hYmM="}, "cursor"),  # p=abc: a cursor's shape, no id in it
        ({"cursor": "cD0lRDklQTElRDklQTI="}, "cursor"),  # p=%D9%A1%D9%A2: Arabic-Indic 12, read as 12 by \\d
        ({"limit": "\u0661"}, "limit"),  # Arabic-Indic 1
        ({"cursor": ""}, "cursor"),
        ({"page": "2"}, "page"),
        ({"offset": "50"}, "offset"),
        ({"state": "failed"}, "state"),
        ({"limit": ["10", "20"]}, "limit"),
    ],
)
def test_junk_page_parameters_are_a_problem_naming_them(api_as, roles, sub, params, field):
    # given
    instance = expense(roles)

    # when
    response = api_as(roles.operator).get(f"/api/instances/{instance.pk}/{sub}/", params)

    # then
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert field in response.json()["errors"], response.json()


def test_the_detail_still_takes_no_page_parameters(api_as, roles):
    # when
    response = api_as(roles.operator).get(detail_path(expense(roles)), {"limit": "10"})

    # then: the detail is answered whole (its tail), a limit there is refused, not ignored
    assert response.status_code == 400
    assert "limit" in response.json()["errors"]


# --- access ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["", "steps/", "tasks/"])
def test_who_may_not_see_the_instance_gets_the_details_404_on_each(api_as, roles, sub):
    # given: an order staff2 started, before any task of it reaches staff's team
    instance = instance_start("order_fulfilment", OrderInputFactory(), initiator=roles.staff2)

    # when
    foreign = api_as(roles.staff).get(f"/api/instances/{instance.pk}/{sub}")
    missing = api_as(roles.staff).get(f"/api/instances/{2**62}/{sub}")
    own = api_as(roles.staff2).get(f"/api/instances/{instance.pk}/{sub}")
    anonymous = api_as(None).get(f"/api/instances/{instance.pk}/{sub}")

    # then
    assert (foreign.status_code, missing.status_code, own.status_code, anonymous.status_code) == (404, 404, 200, 401)
    assert foreign["Content-Type"] == "application/problem+json"
    assert {**foreign.json(), "instance": ""} == {**missing.json(), "instance": ""}


ERROR = 'Traceback (most recent call last):\n  File "/srv/baton/flows/payouts.py", line 12, in pay\nValueError: boom'


def test_server_paths_in_step_errors_are_for_operators_only_on_each(api_as, roles):
    # given: a run whose error holds a traceback (and a NUL, as the engine stores one: clean_text)
    instance = expense(roles)
    StepRun.objects.filter(instance=instance).update(error=clean_text(ERROR + "\x00"), error_type="ValueError")

    # when
    seen = {
        who: (
            api_as(user).get(detail_path(instance)).json()["steps"][0]["error"],
            api_as(user).get(steps_path(instance)).json()["results"][0]["error"],
        )
        for who, user in (("operator", roles.operator), ("initiator", roles.staff))
    }

    # then
    assert seen["operator"] == (ERROR + "\\x00",) * 2
    assert seen["initiator"][0] == seen["initiator"][1]
    assert 'File "payouts.py", line 12' in seen["initiator"][0]
    assert "/srv/baton" not in seen["initiator"][0]


# --- edges ----------------------------------------------------------------------------------------------


def test_an_instance_whose_definition_is_gone_is_still_read_whole(api_as, roles):
    """The API reads no definition for an instance (the console's page says the definition is missing): its
    detail and its pages answer as for any other."""
    # given
    instance = expense(roles)
    with_runs(instance, 3)
    WorkflowInstance.objects.filter(pk=instance.pk).update(workflow_name="retired_flow", workflow_version=7)
    client = api_as(roles.staff)

    # when
    detail = client.get(detail_path(instance))
    steps = client.get(steps_path(instance))
    tasks = client.get(tasks_path(instance))

    # then
    assert (detail.status_code, steps.status_code, tasks.status_code) == (200, 200, 200)
    assert (detail.json()["workflow"], detail.json()["steps_total"]) == ("retired_flow", 4)
    assert len(steps.json()["results"]) == 4
    assert len(tasks.json()["results"]) == 1


ODD = {
    "bidi": "\u202eevil\u202c\ufeff",
    "emoji": "😀" * 50,
    "markup": "<script>alert(1)</script>",
    "escaped_nul": "\\u0000",
    "line_separators": "a\u2028b\u2029c\r\n",
    "deep": json.loads("[" * 100 + "]" * 100),
    "numbers": [0, -1, 2**53, 1.5, -0.25],
}


@pytest.mark.parametrize("result", [BIG, ODD], ids=["1 MB", "odd"])
def test_a_huge_or_odd_result_comes_back_as_stored(api_as, roles, result):
    # given
    instance = expense(roles)
    StepRun.objects.filter(instance=instance).update(result=result)
    client = api_as(roles.operator)

    # when
    detail = client.get(detail_path(instance))
    page = client.get(steps_path(instance), {"limit": 1})

    # then
    assert detail.json()["steps"][0]["result"] == result
    assert page.json()["results"][0]["result"] == result
