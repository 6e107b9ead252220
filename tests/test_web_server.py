"""`make web` as production runs it: gunicorn's worker processes serving ``baton_site.wsgi`` on the test database.

A start through the API is answered by whichever process takes it; a token revoked, or a permission removed, in
another process counts at the next request in every one of them (nothing about a token is cached in a process).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
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


def start(port: int, secret: str, workflow: str = "bench_approval", timeout: float = 30) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    body = json.dumps({"workflow": workflow, "input": {"n": 1} if workflow == "bench_approval" else {}})
    conn.request(
        "POST",
        "/api/instances/",
        body,
        {"Authorization": f"Bearer {secret}", "Content-Type": "application/json", "Host": "127.0.0.1"},
    )
    response = conn.getresponse()
    raw = response.read()
    answer = response.status, json.loads(raw) if raw.startswith(b"{") else {"body": raw[:300]}
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


@contextlib.contextmanager
def silent_redis() -> Iterator[str]:
    """A Redis address that accepts connections and never answers (a hung server, a network partition, a load
    balancer in front of a dead node): what a connection-refused test cannot show. Yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    finally:
        listener.close()
        for connection in held:
            connection.close()


@pytest.mark.worker
def test_a_start_while_redis_does_not_answer_is_answered_and_runs_once_redis_answers(tmp_path, celery_worker):
    """The web processes' Redis accepts connections and never answers. A start through the API commits, its
    dispatch and live event cannot be sent: the caller gets its 201 within seconds (not a 500 after the web
    timeout, with the instance started all the same), and the worker, on a Redis that answers, runs the instance
    to its end from the sweep's re-send."""
    # given: a person allowed to start, with a token; make web on a Redis that never answers
    person = UserFactory(username="script-owner")
    person.user_permissions.add(Permission.objects.get(codename="add_workflowinstance"))
    made = token_create(person, "script")
    with silent_redis() as url, serve_make_web(tmp_path, REDIS_URL=url, BATON_WEB_WORKERS="1") as server:
        # when
        began = time.monotonic()
        status, body = start(server.port, made.secret, "bench_chain", timeout=120)
        took = time.monotonic() - began

    # then: answered as a start, promptly
    assert (status, body.get("state")) == (201, "running"), body
    assert took < 20, f"the start took {took:.1f} s"
    # and the worker (its Redis answers) runs it to the end: nothing was lost
    instance = WorkflowInstance.objects.get(pk=body["id"])
    deadline = time.monotonic() + 60
    while instance.state != "completed" and time.monotonic() < deadline:
        time.sleep(0.2)
        instance.refresh_from_db()
    assert instance.state == "completed", celery_worker.log_tail()
