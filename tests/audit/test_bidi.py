"""The audit trail isolates every text a person or another system wrote (a reason, a user agent, a path, the data
of an event): a direction control in one cannot reorder, as drawn, the rest of the event's line
(orchestrator/bidi.py)."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from demo.data import grant_group_permissions
from orchestrator.dsl import Retry, StepContext, Task, Workflow
from orchestrator.models import AuditEvent
from orchestrator.services.instances import instance_start
from tests.bidi import ESCAPE, RLO, unisolated

pytestmark = pytest.mark.django_db

HOSTILE = f"ACME {ESCAPE}"


def pay(ctx: StepContext) -> dict:
    raise ConnectionError(f"payroll refused {ctx.data['customer']}")


def test_the_timeline_isolates_reasons_user_agents_paths_and_data(users, register_workflow, run_steps):
    """Given an instance started with the hostile text in its data, failed with it in its error, and retried by an
    operator whose reason and browser's user agent end in a stray pop and a right-to-left override, when an admin
    reads the audit trail, then each of those texts is in a <bdi> of its own: bare, the override reversed the
    rest of the event's line as drawn ('· from <address>', the quote's end, the details that follow)."""
    # given
    grant_group_permissions()
    register_workflow(Workflow("bidi_audit", 1, [Task("pay", pay, retry=Retry(max_attempts=1, backoff=0))]))
    instance = instance_start("bidi_audit", {"customer": HOSTILE}, initiator=users.staff)
    run_steps(advance=True)
    operator = Client()
    operator.force_login(users.operator)
    operator.post(
        reverse("console:instance_operate", args=[instance.pk, "retry"]),
        {"reason": f"payroll back {ESCAPE}"},
        HTTP_USER_AGENT=f"Mozilla {ESCAPE}",
    )
    assert AuditEvent.objects.filter(action="instance.retried").exists()
    admin = Client()
    admin.force_login(users.admin)

    # when
    responses = [admin.get(reverse("audit:timeline")), admin.get(reverse("audit:timeline"), {"instance": instance.pk})]

    # then
    for response in responses:
        page = response.content.decode()
        assert response.status_code == 200
        assert RLO in page
        assert unisolated(page) == []
