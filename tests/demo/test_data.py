"""The demo data: every state it promises, and every demo login able to do what the README says it does."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User

from approvals.models import HumanTask, TaskKind
from approvals.services.base import is_candidate
from demo.data import GROUPS, ensure_roles, load_demo
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


def readme_roles_code() -> str:
    """The Python of README's "First start" `manage.py shell -c "..."` line."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("<!-- production-roles", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return block.split('shell -c "', 1)[1].rsplit('"', 1)[0]


def test_the_readme_production_roles_are_the_demo_roles_that_the_engine_checks():
    """A production database has no demo app, so README gives the two roles by hand: they must be the demo's
    (the access matrix proves what those can do), and a member must hold the permissions the pages check."""
    # given: nobody has made any group yet (a fresh production database)
    Group.objects.filter(name__in=["managers", "operators"]).delete()

    # when: the README's line runs
    exec(readme_roles_code(), {})  # noqa: S102 (the README's own text, the point of the test)

    # then
    for name in ("managers", "operators"):
        codenames = set(Group.objects.get(name=name).permissions.values_list("codename", flat=True))
        assert codenames == set(GROUPS[name]), name
    operator = User.objects.create_user("ops-reader")
    operator.groups.add(Group.objects.get(name="operators"))
    operator = User.objects.get(pk=operator.pk)  # a fresh permission cache
    assert operator.has_perm("orchestrator.operate_workflowinstance")
    assert operator.has_perm("orchestrator.deliver_signal")
