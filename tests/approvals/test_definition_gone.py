"""A task whose workflow definition is gone (its module not deployed) or was deployed again under the same version
without the task's node, or with another kind of node there: its page says it cannot be decided and why, and a
decision through the page or the API is refused with the reason and the comment kept, never a 500 and never a
decision recorded that nothing could follow."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from django import forms
from django.test import Client
from django.urls import reverse

from api.tokens import token_create
from approvals.models import HumanTask, TaskDecision, TaskState
from demo.data import grant_group_permissions
from orchestrator import registry
from orchestrator.dsl import FORM, Human, Task, Workflow
from orchestrator.models import InstanceState
from orchestrator.services.instances import instance_start

pytestmark = pytest.mark.django_db

NAME = "reshaped_review"


class ReviewForm(forms.Form):
    verdict = forms.CharField()


def review(name: str = "review") -> Human:
    return Human(name, kind_of_task=FORM, form=ReviewForm, candidate_groups=["managers"])


def noop(ctx):
    return {}


# How the definition the task's instance is pinned to changed after the task opened.
DEPLOYED_AGAIN: dict[str, Callable[[], Workflow | None]] = {
    "not deployed": lambda: None,
    "node renamed": lambda: Workflow(NAME, 1, [review("check")]),
    "node now a task": lambda: Workflow(NAME, 1, [Task("review", noop)]),
    "node now an approval": lambda: Workflow(NAME, 1, [Human("review", candidate_groups=["managers"])]),
}


@pytest.fixture(params=list(DEPLOYED_AGAIN))
def orphan(request, users) -> Iterator[HumanTask]:
    """An open form task of NAME v1 for the managers, started by the operator; then v1 deployed as the param says."""
    registry.register(Workflow(NAME, 1, [review()]))
    try:
        task = HumanTask.objects.get(instance=instance_start(NAME, {}, initiator=users.operator))
        registry.unregister(NAME, 1)
        again = DEPLOYED_AGAIN[request.param]()
        if again is not None:
            registry.register(again)
        yield task
    finally:
        if registry.is_registered(NAME, 1):
            registry.unregister(NAME, 1)


def login(user) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def test_the_task_page_says_it_cannot_be_decided_and_why(users, orphan):
    # when
    response = login(users.manager).get(reverse("approvals:task_detail", args=[orphan.pk]))

    # then
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="definition-missing"' in page
    assert "cannot be decided now" in page


def test_a_decision_from_the_page_is_refused_with_the_comment_kept(users, orphan):
    # when
    response = login(users.manager).post(
        reverse("approvals:task_decide", args=[orphan.pk]),
        {"decision": "submit", "comment": "checked against the ledger", "form-verdict": "fine"},
    )

    # then
    assert response.status_code == 409
    page = response.content.decode()
    assert "cannot be decided now" in page
    assert "checked against the ledger" in page
    orphan.refresh_from_db()
    assert orphan.state == TaskState.OPEN
    assert not TaskDecision.objects.filter(task=orphan).exists()
    assert orphan.instance.state == InstanceState.WAITING


def test_a_decision_through_the_api_is_a_409_problem(users, orphan):
    # given
    grant_group_permissions()
    secret = token_create(users.manager, "tests").secret

    # when
    response = Client(raise_request_exception=False).post(
        f"/api/tasks/{orphan.pk}/decide/",
        json.dumps({"decision": "submit", "data": {"verdict": "fine"}}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {secret}"},
    )

    # then
    assert response.status_code == 409
    assert response["Content-Type"].startswith("application/problem+json")
    assert "cannot be decided now" in response.json()["detail"]
    orphan.refresh_from_db()
    assert orphan.state == TaskState.OPEN
