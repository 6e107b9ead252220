"""`make web` as production runs it: gunicorn's worker processes serving ``baton_site.wsgi`` on the test database.

A start through the API is answered by whichever process takes it; a token revoked, or a permission removed, in
another process counts at the next request in every one of them (nothing about a token is cached in a process).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission

from api.tokens import token_create, token_revoke
from orchestrator.audit import Actor
from orchestrator.models import WorkflowInstance
from tests.conftest import serve_make_web
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[int]:
    """``make web`` with two gunicorn processes on a free port (tests/conftest.py); yields the port."""
    with serve_make_web(tmp_path) as server:
        yield server.port


def start(port: int, secret: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"workflow": "bench_approval", "input": {"n": 1}})
    conn.request(
        "POST",
        "/api/instances/",
        body,
        {"Authorization": f"Bearer {secret}", "Content-Type": "application/json", "Host": "127.0.0.1"},
    )
    response = conn.getresponse()
    answer = response.status, json.loads(response.read() or b"{}")
    conn.close()
    return answer


def test_make_web_serves_starts_from_several_processes_and_a_revocation_counts_at_once(web):
    # given: a person allowed to start, with a token
    person = UserFactory(username="script-owner")
    person.user_permissions.add(Permission.objects.get(codename="add_workflowinstance"))
    made = token_create(person, "script")

    # when: starts on new connections (spread over gunicorn's processes)
    answers = [start(web, made.secret) for _ in range(6)]

    # then: each started an instance
    assert [status for status, _ in answers] == [201] * 6
    assert WorkflowInstance.objects.filter(initiator=person).count() == 6

    # when: the permission is removed, then the token revoked, in this process
    person.user_permissions.clear()
    refused = [start(web, made.secret)[0] for _ in range(4)]
    token_revoke(made.token.pk, owner=None, actor=Actor.system("test"))
    unknown = [start(web, made.secret)[0] for _ in range(4)]

    # then: every web process refuses at once
    assert refused == [403] * 4
    assert unknown == [401] * 4
    assert WorkflowInstance.objects.filter(initiator=person).count() == 6
