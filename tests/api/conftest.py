"""Fixtures of the API tests: a client per person, signed in with a real API token (Authorization: Bearer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from api.tokens import token_create
from demo.data import grant_group_permissions
from orchestrator.models import InstanceState
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory


class ApiClient:
    """Django's test client speaking JSON with a Bearer token; every call returns the response."""

    def __init__(self, secret: str | None) -> None:
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {secret}"} if secret else {}

    def get(self, path: str, params: dict[str, Any] | None = None, **headers: str) -> Any:
        return self.client.get(path, params or {}, headers={**self.headers, **headers})

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        raw: bytes | str | None = None,
        content_type: str = "application/json",
        **headers: str,
    ) -> Any:
        import json

        data = raw if raw is not None else json.dumps(body if body is not None else {})
        return self.client.post(path, data, content_type=content_type, headers={**self.headers, **headers})


@pytest.fixture
def roles(users: Any) -> Any:
    """The demo's groups get the demo's permissions (the ``users`` fixture makes bare groups)."""
    grant_group_permissions()
    return users


@pytest.fixture
def api_as(roles: Any) -> Callable[[User | None], ApiClient]:
    """``api_as(user)``: a client authenticated with a fresh token of ``user``; ``api_as(None)``: anonymous."""

    def make(user: User | None) -> ApiClient:
        return ApiClient(token_create(user, "tests").secret if user is not None else None)

    return make


@pytest.fixture
def failed(api_as, roles, run_steps):
    """An expense by staff, approved by staff2 through the API, whose payout then failed every attempt (the
    demo's ``fail_payout``): a failed instance for the operator's retry and skip."""
    instance = instance_start(
        "expense_approval", {**ExpenseInputFactory(amount="40.00"), "fail_payout": 3}, initiator=roles.staff
    )
    task = instance.tasks.get()
    assert api_as(roles.staff2).post(f"/api/tasks/{task.pk}/decide/", {"decision": "approve"}).status_code == 200
    run_steps(instance, advance=True)
    instance.refresh_from_db()
    assert instance.state == InstanceState.FAILED
    return instance
