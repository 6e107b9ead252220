"""The operator console isolates every text a person or another system wrote (a title, a business key, an error, a
reason, a comment, a filter typed into a bulk action): a direction control in one cannot reorder, as drawn, what the
page writes after it (orchestrator/bidi.py). The staff pages were checked before (tests/approvals/test_views.py);
these never were, and showed each such text bare."""

from __future__ import annotations

import html
from typing import cast

import pytest
from django.test import Client
from django.urls import reverse

from approvals.models import HumanTask, TaskKind
from approvals.services.tasks import task_claim
from console.models import BulkJob
from orchestrator.bidi import balanced
from orchestrator.dsl import Retry, StepContext, Task, Workflow
from orchestrator.models import InstanceState, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.bidi import ESCAPE, RLO, unisolated
from tests.factories import OrderInputFactory

pytestmark = pytest.mark.django_db

# Each text ends in a stray pop and an override: the pop closed a bare <bdi>, the override then reversed the rest.
HOSTILE = f"ACME <b>bold</b> {ESCAPE}"


def pay(ctx: StepContext) -> dict:
    raise ConnectionError(f"payroll refused {ctx.data['customer']}")


@pytest.fixture
def failed(register_workflow, users, run_steps) -> WorkflowInstance:
    """A failed instance whose title, business key, data and error all hold the hostile text."""
    register_workflow(
        Workflow(
            "bidi_flow",
            1,
            [Task("pay", pay, retry=Retry(max_attempts=1, backoff=0))],
            title_template="Payout for {customer}",
        )
    )
    instance = instance_start("bidi_flow", {"customer": HOSTILE}, business_key=f"BK-1 {ESCAPE}", initiator=users.staff)
    run_steps(advance=True)
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    return instance


@pytest.fixture
def escalation(users, run_steps) -> HumanTask:
    """An order for the hostile customer whose refund failed every attempt: an escalation, held by an operator."""
    instance = instance_start(
        "order_fulfilment",
        cast(dict, OrderInputFactory(customer=HOSTILE, fail_shipping=True, fail_refund=4)),
        initiator=users.staff,
    )
    run_steps(instance, advance=True)
    task = HumanTask.objects.get(instance=instance, kind=TaskKind.ESCALATION)
    task_claim(task.pk, users.operator)
    return task


def signed_in(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def test_the_instance_list_page_and_incidents_isolate_what_people_and_systems_wrote(
    users, failed, escalation, run_steps
):
    """Given a failed instance and an escalation whose texts end in a stray pop and a right-to-left override, and an
    operator's retry with such a reason, when an operator reads the instance list, the instance page and Incidents,
    then each text is in a <bdi> of its own whose text cannot close it: bare, the override reversed the rest of
    the line as drawn (the row's '#id', 'started by', the history's state change, 'with operator')."""
    # given
    operator = signed_in(users.operator)
    retried = operator.post(
        reverse("console:instance_operate", args=[failed.pk, "retry"]), {"reason": f"payroll back {ESCAPE}"}
    )
    run_steps(advance=True)

    # when
    pages = {
        "list": operator.get(reverse("console:instance_list")),
        "search": operator.get(reverse("console:instance_list"), {"q": f"ACME {RLO}"}),
        "instance": operator.get(reverse("console:instance_detail", args=[failed.pk])),
        "escalated instance": operator.get(reverse("console:instance_detail", args=[escalation.instance_id])),
        "incidents": operator.get(reverse("console:incidents")),
    }

    # then
    assert retried.status_code == 302
    for name, response in pages.items():
        page = response.content.decode()
        assert response.status_code == 200, name
        assert RLO in page, name
        assert "<b>bold</b>" not in page, name  # escaped as ever
        assert unisolated(page) == [], name


def test_a_bulk_jobs_page_isolates_its_filter_reason_and_instances(users, failed):
    """Given a bulk retry dry run over a business key holding an override, confirmed with a reason holding one, when its
    page is read, then the filter's value, the reason and each instance's title are isolated."""
    # given
    operator = signed_in(users.operator)
    operator.post(reverse("console:bulk_dry_run"), {"action": "retry", "business_key": failed.business_key})
    job = BulkJob.objects.get()
    # The dry run's page first: a dry run has no reason yet.
    dry_run = operator.get(reverse("console:bulk_detail", args=[job.pk]))
    operator.post(reverse("console:bulk_confirm", args=[job.pk]), {"reason": f"all back {ESCAPE}"})

    # when
    started = operator.get(reverse("console:bulk_detail", args=[job.pk]))

    # then
    for response in (dry_run, started):
        page = response.content.decode()
        assert response.status_code == 200
        assert RLO in page
        assert unisolated(page) == []


def test_a_message_naming_an_instance_isolates_its_title(users, failed):
    """Given the failed instance, when an operator retries it, then the message naming it ("Retried: <title>.") has
    the title between FIRST STRONG ISOLATE and POP DIRECTIONAL ISOLATE, its stray pop dropped: bare, its override
    reversed the full stop and whatever the message said after the title."""
    # when
    response = signed_in(users.operator).post(
        reverse("console:instance_operate", args=[failed.pk, "retry"]), {"reason": "again"}, follow=True
    )

    # then
    page = html.unescape(response.content.decode())
    assert f"Retried: \u2068{balanced(failed.title)}\u2069." in page
