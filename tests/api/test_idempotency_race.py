"""Five concurrent duplicate starts with one Idempotency-Key give one instance: real threads, each with its own
PostgreSQL connection, racing through the whole API (authentication, the start, the key's unique constraint)."""

from __future__ import annotations

import pytest

from api.models import IdempotencyKey
from api.tokens import token_create
from orchestrator.models import StepRun, WorkflowInstance
from tests.api.conftest import ApiClient
from tests.concurrency import race
from tests.factories import ExpenseInputFactory


@pytest.mark.django_db(transaction=True)
def test_five_concurrent_duplicate_starts_give_one_instance(roles):
    # given
    secret = token_create(roles.staff, "racer").secret
    body = {"workflow": "expense_approval", "input": ExpenseInputFactory()}

    def start() -> tuple[int, int | None]:
        response = ApiClient(secret).post("/api/instances/", body, **{"Idempotency-Key": "race-1"})
        return response.status_code, response.json().get("id")

    # when
    results = race(*[start] * 5)

    # then
    assert not [r for r in results if isinstance(r, Exception)], results
    statuses = sorted(status for status, _ in results)
    ids = {instance_id for status, instance_id in results if status in (200, 201)}
    assert statuses.count(201) == 1, results
    assert set(statuses) <= {200, 201, 409}, results
    assert len(ids) == 1
    assert WorkflowInstance.objects.count() == 1
    assert StepRun.objects.count() == 1  # the losers' starts were rolled back whole
    assert IdempotencyKey.objects.get().instance_id == ids.pop()


@pytest.mark.django_db(transaction=True)
def test_concurrent_starts_with_one_key_and_different_bodies_start_one_and_refuse_the_rest(roles):
    # given
    secret = token_create(roles.staff, "racer").secret

    def start(amount: str):
        def go() -> int:
            body = {"workflow": "expense_approval", "input": ExpenseInputFactory(amount=amount)}
            return ApiClient(secret).post("/api/instances/", body, **{"Idempotency-Key": "race-2"}).status_code

        return go

    # when
    results = race(*(start(f"{10 + n}.00") for n in range(5)))

    # then
    assert sorted(results) == [201, 422, 422, 422, 422], results
    assert WorkflowInstance.objects.count() == 1
