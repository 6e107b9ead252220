"""Instances whose data runs to megabytes (each step's result may be up to BATON_MAX_RESULT_BYTES, and the results
add up) are listed without reading their data: a list shows titles and states, and reading every row's data made
one page of the API's instance list (40 instances of 1 MB) take 3 to 8 s and 125 MB of a web process, growing
with the data until the process runs out of memory. Only the pages and answers about one instance read its data.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from api.tokens import token_create
from approvals.models import HumanTask, TaskKind
from console import services as bulk_services
from console.selectors import InstanceFilter
from demo.data import grant_group_permissions
from orchestrator.models import StepRun, StepState, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import OrderInputFactory

pytestmark = pytest.mark.django_db

# What a statement that reads the instances' data (or a step's result) names.
DATA = '"orchestrator_workflowinstance"."data"'
RESULT = '"orchestrator_steprun"."result"'
# About 1 MB of JSON.
BIG = {"rows": [{"i": i, "text": "x" * 200} for i in range(4500)]}


@pytest.fixture
def heavy(users, run_steps):
    """Instances in every listed situation, each holding about 1 MB of data: waiting on an overdue approval,
    failed with an escalation, running a step past its timeout; a bulk dry run over them."""
    grant_group_permissions()
    waiting = instance_start("bench_approval", {"n": 1}, initiator=users.staff)
    run_steps(waiting)
    escalated = instance_start("order_fulfilment", OrderInputFactory(amount="5000.00"), initiator=users.staff)
    run_steps(escalated)
    stuck = instance_start("bench_chain", {}, initiator=users.staff)
    WorkflowInstance.objects.update(data=BIG)
    StepRun.objects.update(result=BIG)
    StepRun.objects.filter(instance=stuck).update(state=StepState.RUNNING, lease_expires_at=timezone.now())
    HumanTask.objects.update(due_at=timezone.now() - timedelta(hours=1))
    HumanTask.objects.filter(pk=HumanTask.objects.filter(instance=escalated).first().pk).update(
        kind=TaskKind.ESCALATION
    )
    job = bulk_services.bulk_dry_run(users.operator, "cancel", InstanceFilter())
    return job


def reads(client, path: str, **headers) -> list[str]:
    """The statements answering ``path`` that read instance data or step results."""
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path, **headers)
    assert response.status_code == 200, (path, response.status_code)
    return [q["sql"][:200] for q in captured.captured_queries if DATA in q["sql"] or RESULT in q["sql"]]


@pytest.mark.parametrize(
    "path",
    [
        "/api/instances/?limit=100",
        "/api/tasks/?scope=queue&limit=100",
        "/api/tasks/?scope=mine&limit=100",
        "/incidents/",
        "/instances/",
        "/audit/",
        "/admin/orchestrator/workflowinstance/",
        "/admin/orchestrator/steprun/",
        "/admin/approvals/humantask/",
        "/escalations/",
        "/inbox/",
        "/inbox/?tab=queue",
        "/inbox/?tab=done",
        "/notifications/",
    ],
)
def test_a_list_reads_no_instance_data(heavy, users, path):
    # given: an admin (sees every list), signed in and with a token
    client = Client()
    client.force_login(users.admin)
    secret = token_create(users.admin, "lists").secret
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"} if path.startswith("/api/") else {}

    # when / then
    assert reads(client, path, **headers) == []


def test_a_bulk_job_s_page_reads_no_instance_data(heavy, users):
    client = Client()
    client.force_login(users.operator)
    assert reads(client, f"/instances/bulk/{heavy.pk}/") == []


def test_one_task_s_answer_reads_no_instance_data(heavy, users):
    # given: the approval's candidate with a token
    task = HumanTask.objects.filter(kind=TaskKind.APPROVAL).first()
    secret = token_create(users.staff2, "one").secret

    # when / then: the task names its instance by id and title
    assert reads(Client(), f"/api/tasks/{task.pk}/", HTTP_AUTHORIZATION=f"Bearer {secret}") == []
