"""A web process trusts a database session a request used less than a second ago and checks one that sat idle
(orchestrator/middleware.py, DatabaseUnavailableMiddleware): a busy process pays no SELECT 1 per request, and a
dropped session costs at most one 503 either way."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from django.db import close_old_connections, connection
from django.test import Client

from orchestrator import middleware
from tests.api.conftest import ApiClient

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def receivers() -> Iterator[None]:
    """No memory of earlier tests' requests."""
    middleware._session_used.clear()
    yield
    middleware._session_used.clear()


@pytest.fixture
def signed_in(users) -> Client:
    client = Client()
    client.force_login(users.operator)
    return client


def drop_session_from_outside() -> None:
    """Terminate this process's PostgreSQL session, as a restart or a failover would."""
    pid = connection.connection.info.backend_pid
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"], autocommit=True
    ) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])


def request_boundary() -> None:
    """What a server does between two requests (request_started: Django's own receiver), then the first
    middleware."""
    close_old_connections()
    middleware.trust_recent_sessions(time.monotonic())


def test_a_session_used_a_moment_ago_is_trusted_without_a_check(receivers, signed_in):
    # given: a request has just used the session
    assert signed_in.get("/instances/").status_code == 200

    # when: the next request starts
    request_boundary()

    # then: its first statement will not be preceded by SELECT 1
    assert connection.health_check_done is True


def test_a_session_idle_longer_than_the_limit_is_checked(receivers, signed_in):
    # given: the last request used the session more than CHECK_AFTER_IDLE seconds ago
    assert signed_in.get("/instances/").status_code == 200
    middleware._session_used[connection.alias] -= middleware.CHECK_AFTER_IDLE + 0.5

    # when
    request_boundary()

    # then: Django's health check runs before the next statement
    assert connection.health_check_done is False


def test_a_session_dropped_right_after_use_costs_one_503_then_a_fresh_session(receivers, signed_in):
    # given: a busy process whose session PostgreSQL drops between two requests
    assert signed_in.get("/instances/").status_code == 200
    drop_session_from_outside()

    # when: requests go on, with a server's request boundaries
    statuses = []
    for _ in range(3):
        close_old_connections()
        statuses.append(signed_in.get("/instances/").status_code)

    # then: the trusted session fails one request (503, Retry-After), which closes it; the next one opens afresh
    assert statuses == [503, 200, 200]


def test_a_session_dropped_while_idle_is_caught_by_the_check(receivers, signed_in):
    # given: the session sat idle past the limit, then PostgreSQL dropped it
    assert signed_in.get("/instances/").status_code == 200
    middleware._session_used[connection.alias] -= middleware.CHECK_AFTER_IDLE + 0.5
    drop_session_from_outside()

    # when
    statuses = []
    for _ in range(2):
        close_old_connections()
        statuses.append(signed_in.get("/instances/").status_code)

    # then: the check replaced it before use: no request failed
    assert statuses == [200, 200]


def test_an_api_start_on_a_session_dropped_right_after_use_is_a_problem_503_and_starts_nothing(receivers, users):
    # given: a token client whose process has just used its session, which PostgreSQL then drops
    from django.contrib.auth.models import Permission

    from api.tokens import token_create
    from orchestrator.models import WorkflowInstance
    from tests.api.test_instances import START, expense

    users.staff.user_permissions.add(
        Permission.objects.get(content_type__app_label="orchestrator", codename="add_workflowinstance")
    )
    client = ApiClient(token_create(users.staff, "tests").secret)
    assert client.post(START, expense()).status_code == 201
    drop_session_from_outside()

    # when: the client sends its next start, then retries it
    close_old_connections()
    refused = client.post(START, expense(), **{"Idempotency-Key": "after-drop"})
    close_old_connections()
    retried = client.post(START, expense(), **{"Idempotency-Key": "after-drop"})

    # then: the first is the API's 503 (problem+json, Retry-After), the retry starts exactly one instance
    assert refused.status_code == 503
    assert refused["Content-Type"] == "application/problem+json"
    assert refused["Retry-After"]
    assert retried.status_code == 201
    assert WorkflowInstance.objects.count() == 2


def test_a_request_that_runs_no_statement_does_not_make_an_idle_session_trusted(receivers, signed_in):
    # given: the session sat idle past the limit, then PostgreSQL dropped it (a restart overnight)
    assert signed_in.get("/instances/").status_code == 200
    middleware._session_used[connection.alias] -= middleware.CHECK_AFTER_IDLE + 0.5
    drop_session_from_outside()

    # when: a request that touches no database (a refused long query string; a login page, a static file) comes
    # first, and a request that does comes less than a second after it
    close_old_connections()
    assert Client().get("/api/instances/?q=" + "a" * 5000).status_code == 414
    close_old_connections()
    status = signed_in.get("/instances/").status_code

    # then: the session was still checked before use (nothing proved it alive a moment ago): no request failed
    assert status == 200
