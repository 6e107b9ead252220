"""The instance page against an unbounded history: it lists the latest events and step runs, counts the rest, and
its SQL does not grow with the history (console.ops_views.EVENTS_SHOWN, STEPS_SHOWN)."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from console.ops_views import EVENTS_SHOWN, STEPS_SHOWN
from orchestrator.dsl import StepContext, Task, Workflow
from orchestrator.models import InstanceState, StepState, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import long_history

pytestmark = pytest.mark.django_db


def noop(ctx: StepContext) -> dict:
    return {}


@pytest.fixture
def flow(register_workflow):
    return register_workflow(Workflow("loop_flow", 1, [Task("check", noop), Task("tell", noop)]))


def looped(users, events: int):
    instance = instance_start("loop_flow", {"n": events}, initiator=users.staff)
    steps = long_history(instance, events, step_name="check")
    return instance, steps


def page_of(client, user, instance) -> tuple[str, int]:
    client.force_login(user)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("console:instance_detail", args=[instance.pk]))
        statements = len(queries)
    assert response.status_code == 200
    return response.content.decode(), statements


def history_seqs(page: str) -> list[int]:
    table = page[page.index('class="table table-sm small mb-0 history"') :]
    return [int(n) for n in re.findall(r'<tr><td class="d-none d-md-table-cell">(\d+)</td>', table)]


def test_a_history_past_what_the_page_lists_shows_the_latest_and_counts_the_rest(client, users, flow):
    # given: a loop that went round past both bounds
    instance, _ = looped(users, (max(EVENTS_SHOWN, STEPS_SHOWN) + 40) * 5)
    total = instance.audit_events.count()

    # when
    page, _ = page_of(client, users.operator, instance)

    # then: the latest events, oldest of them first, and how many there are
    assert history_seqs(page) == list(range(total - EVENTS_SHOWN + 1, total + 1))
    assert f"The latest {EVENTS_SHOWN} of {total} events shown." in page
    assert f"Audit trail, {total} events" in page
    # the operator has no trail permission: told so, no dead link
    assert "?instance=" not in page
    assert "which needs the trail permission" in page
    # the latest step runs, each with its attempt
    shown = [int(n) for n in re.findall(r'data-step="(\d+)"', page)]
    runs = instance.steps.count()
    assert shown == [s.pk for s in instance.steps.order_by("id")][-STEPS_SHOWN:]
    assert f"The latest {STEPS_SHOWN} of {runs} step runs shown" in page
    assert page.count('class="attempt-succeeded"') == STEPS_SHOWN


def test_who_may_read_the_trail_is_linked_to_every_event_of_the_instance(client, users, flow):
    # given
    instance, _ = looped(users, EVENTS_SHOWN * 2)
    users.operator.user_permissions.add(Permission.objects.get(codename="view_trail"))

    # when
    page, _ = page_of(client, users.operator, instance)

    # then
    link = reverse("audit:timeline") + f"?instance={instance.pk}"
    assert f'<a href="{link}">Every event of this instance on the audit trail</a>' in page
    assert client.get(link).status_code == 200


def test_an_ordinary_history_is_listed_whole_without_a_count_line(client, users, flow):
    # given
    instance, _ = looped(users, 20)

    # when
    page, _ = page_of(client, users.operator, instance)

    # then
    assert history_seqs(page) == list(range(1, instance.audit_events.count() + 1))
    assert "events shown" not in page
    assert "step runs shown" not in page


def test_the_pages_sql_does_not_grow_with_the_history(client, users, flow):
    # given: the same flow with a short history, one past the page's bounds and one five times longer
    small, _ = looped(users, 20)
    big, _ = looped(users, max(EVENTS_SHOWN, STEPS_SHOWN) * 10)
    bigger, _ = looped(users, max(EVENTS_SHOWN, STEPS_SHOWN) * 50)
    page_of(client, users.operator, small)  # warm-up: the session, the permission caches

    # when
    _, few = page_of(client, users.operator, small)
    _, past = page_of(client, users.operator, big)
    client.force_login(users.operator)
    with CaptureQueriesContext(connection) as queries:
        client.get(reverse("console:instance_detail", args=[bigger.pk]))
    many = [q["sql"] for q in queries.captured_queries]

    # then: past the bounds, four more (the events' and the step runs' totals, the shown steps' attempts, each
    # step's latest state for the diagram), and nothing more however long the history
    assert past == few + 4
    assert len(many) == past
    # and no statement reads the whole history: each is a tail, a count or the shown steps' own events
    events = [sql for sql in many if 'FROM "orchestrator_auditevent"' in sql]
    assert len(events) == 3
    assert all("LIMIT" in sql or "COUNT(" in sql or '"subject_id" IN' in sql for sql in events), events


def test_past_the_bounds_the_diagram_plan_and_skip_still_see_every_run(client, users, register_workflow):
    # given: a compensable step whose runs are mostly past what the page reads, and one dead run at the end
    register_workflow(Workflow("undo_loop", 1, [Task("check", noop, compensate=noop), Task("tell", noop)]))
    instance = instance_start("undo_loop", {}, initiator=users.staff)
    long_history(instance, (STEPS_SHOWN + 10) * 5, step_name="check")
    WorkflowInstance.objects.filter(pk=instance.pk).update(state=InstanceState.FAILED)
    instance.steps.filter(pk=instance.steps.latest("id").pk).update(state=StepState.DEAD, error="boom")

    # when
    page, _ = page_of(client, users.operator, instance)

    # then: every run that took effect is in the undo plan, the one dead run is offered to skip
    assert page.count('data-plan="to undo"') == instance.steps.filter(state=StepState.SUCCEEDED).count()
    assert page.count('data-plan="to undo"') > STEPS_SHOWN
    assert "Skip check" in page
