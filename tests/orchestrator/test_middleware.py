"""Pages during a database outage answer 503 with Retry-After, and work again by themselves once it is back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from django.db import close_old_connections, connection
from django.test import Client

from orchestrator.middleware import RETRY_AFTER
from tests.ports import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def dead_port() -> int:
    """A local port nothing listens on, and nobody else will be handed while the test runs (tests/ports.py)."""
    return free_port()


@pytest.fixture
def signed_in(users) -> Client:
    client = Client()
    client.force_login(users.operator)
    return client


@contextmanager
def unreachable_database() -> Iterator[None]:
    """Point the default database at a port where nothing listens, as during a PostgreSQL restart."""
    real_port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = str(dead_port())
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["PORT"] = real_port


def assert_unavailable(response) -> None:
    assert response.status_code == 503
    assert response["Retry-After"] == str(RETRY_AFTER)
    assert b"back in a moment" in response.content


@pytest.mark.parametrize("path", ["/instances/", "/inbox/", "/", "/login/"])
def test_a_page_answers_503_with_retry_after_while_the_database_is_unreachable(signed_in, path):
    """It answered 500 (or Django's debug page) for as long as the outage lasted."""
    # when
    with unreachable_database():
        response = signed_in.get(path)

    # then
    assert_unavailable(response)


def test_a_post_during_the_outage_gets_503_too(signed_in, users):
    with unreachable_database():
        response = signed_in.post("/login/", {"username": users.staff.username, "password": "demo"})

    assert_unavailable(response)


def test_the_pages_work_again_by_themselves_once_the_database_is_back(signed_in):
    # given: an outage seen by one request
    with unreachable_database():
        assert_unavailable(signed_in.get("/instances/"))

    # when: the database is back; nothing is restarted
    response = signed_in.get("/instances/")

    # then
    assert response.status_code == 200


def test_a_session_the_database_dropped_costs_at_most_one_503(signed_in):
    """PostgreSQL restarted or killed the web process's session: the next request boundary replaces it."""
    # given: the process's session is terminated from outside
    assert signed_in.get("/instances/").status_code == 200
    pid = connection.connection.info.backend_pid
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"], autocommit=True
    ) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])

    # when: requests go on, with the request boundaries a server gives them (the test client leaves them out)
    statuses = []
    for _ in range(3):
        close_old_connections()
        statuses.append(signed_in.get("/instances/").status_code)

    # then
    assert statuses in ([200, 200, 200], [503, 200, 200])


def test_an_error_raised_in_another_middleware_is_answered_503_too():
    """Django turns an exception in an inner middleware (a session being saved) into a 500 before the outer
    middleware sees it; the 500 made of an unreachable database becomes the 503 page."""
    # given: an inner layer that fails on the database, wrapped by Django as it wraps every middleware
    from django.core.handlers.exception import convert_exception_to_response
    from django.db import OperationalError
    from django.test import RequestFactory

    from orchestrator.middleware import DatabaseUnavailableMiddleware

    def session_save(_request):
        raise OperationalError("connection failed: Connection refused")

    outer = DatabaseUnavailableMiddleware(convert_exception_to_response(session_save))

    # when
    response = outer(RequestFactory().get("/instances/"))

    # then
    assert_unavailable(response)


def test_other_errors_stay_errors():
    from django.core.handlers.exception import convert_exception_to_response
    from django.test import RequestFactory

    from orchestrator.middleware import DatabaseUnavailableMiddleware

    def broken(_request):
        raise ValueError("a bug, not an outage")

    response = DatabaseUnavailableMiddleware(convert_exception_to_response(broken))(RequestFactory().get("/"))

    assert response.status_code == 500
