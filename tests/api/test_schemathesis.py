"""schemathesis over the API's own OpenAPI schema, once per role: generated requests (valid and invalid) against
every operation must get no 5xx, only documented status codes and content types, and bodies that match the
schema.

``make test`` runs a short pass (``BATON_SCHEMATHESIS_EXAMPLES``, default 6 examples per operation and role);
``make schemathesis`` a long one. The app is called in-process over WSGI, inside the test's transaction, on a
world with real instances and tasks so that some generated ids exist.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis import checks

from api.tokens import token_create
from baton_site.settings import env_bool, env_int
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory, OrderInputFactory, UserFactory

# Read as the settings read theirs (README's table): junk stops the run naming the variable.
EXAMPLES = env_int("BATON_SCHEMATHESIS_EXAMPLES", 6, minimum=1, maximum=100_000)
RANDOM = env_bool("BATON_SCHEMATHESIS_RANDOM")
ROLES = ("anonymous", "outsider", "staff", "manager", "operator", "admin")
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


@pytest.fixture
def keep_connection():
    """Django's WSGI handler closes the database connection after each request (``close_old_connections``),
    which would end the test's transaction; Django's own test client disconnects it the same way."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def world(roles, keep_connection):
    """A token per role (``outsider``: signed in, no group) and instances and tasks to find."""
    outsider = UserFactory(username="outsider")
    people = {
        "outsider": outsider,
        "staff": roles.staff,
        "manager": roles.manager,
        "operator": roles.operator,
        "admin": roles.admin,
    }
    headers = {"anonymous": {}}
    for role, user in people.items():
        headers[role] = {"Authorization": f"Bearer {token_create(user, 'schemathesis').secret}"}
    for _ in range(3):
        instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff2)
        instance_start("order_fulfilment", OrderInputFactory(amount="5000.00"), initiator=roles.staff)
    return headers


# Loaded at collection through the app itself (the schema view reads no database).
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", WSGIHandler())


@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_keeps_its_schema_for_every_role(case, world):
    """Each generated request, sent as every role in turn: no 5xx, and each answer is what the schema says."""
    for role in ROLES:
        try:
            case.call_and_validate(headers=world[role], checks=CHECKS)
        except Exception as exc:
            exc.add_note(f"(sent as {role})")
            raise
