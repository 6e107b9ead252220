"""The demo data: every state it promises, and every demo login able to do what the README says it does."""

from __future__ import annotations

import pytest

from approvals.models import HumanTask, TaskKind
from approvals.services.base import is_candidate
from demo.data import ensure_roles, load_demo
from orchestrator.models import WorkflowInstance

pytestmark = pytest.mark.django_db


def test_the_demo_operator_can_finish_the_failed_refund_and_the_manager_approve_the_large_order():
    """The escalated order (the refund failed) waits for an operator, and the large order for a manager: neither
    demo login started those orders, so four-eyes leaves each of them able to act (no 'nobody can act')."""
    # given
    users = ensure_roles()

    # when
    load_demo(log=lambda _line: None)

    # then
    escalated = WorkflowInstance.objects.get(data__order_id="SO-1005")
    escalation = HumanTask.objects.get(instance=escalated, kind=TaskKind.ESCALATION, state__in=["open", "escalated"])
    assert not escalation.title.startswith("Nobody")
    assert escalated.initiator != users["operator"]
    assert is_candidate(users["operator"], escalation)
    large = WorkflowInstance.objects.get(data__order_id="SO-1002")
    approval = HumanTask.objects.get(instance=large, state="open")
    assert large.initiator != users["manager"]
    assert is_candidate(users["manager"], approval)
