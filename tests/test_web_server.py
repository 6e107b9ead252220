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
from demo.data import grant_group_permissions
from orchestrator import registry
from orchestrator.audit import Actor
from orchestrator.models import WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.api.signal_flows import API_PAYMENT
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


def test_two_idempotency_key_headers_are_refused_as_one_key_of_both_and_start_nothing(web):
    """gunicorn joins two header lines of one name into one value ("first,second"), as HTTP allows for a list: the
    start went ahead under that made-up key, so a retry sending either key alone started a second instance. The
    key is one string (the IETF httpapi idempotency-key draft), and the answer says to send one header."""
    # given: a person allowed to start, with a token
    person = UserFactory(username="two-keys")
    person.user_permissions.add(Permission.objects.get(codename="add_workflowinstance"))
    made = token_create(person, "script")

    # when: a start sends the header twice, as a client library that adds its own key to the caller's might
    conn = http.client.HTTPConnection("127.0.0.1", web, timeout=30)
    body = json.dumps({"workflow": "bench_approval", "input": {"n": 1}}).encode()
    conn.putrequest("POST", "/api/instances/", skip_host=True)
    for name, value in (
        ("Host", "127.0.0.1"),
        ("Authorization", f"Bearer {made.secret}"),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Idempotency-Key", "first"),
        ("Idempotency-Key", "second"),
    ):
        conn.putheader(name, value)
    conn.endheaders(body)
    response = conn.getresponse()
    status, kind, problem = response.status, response.getheader("Content-Type"), json.loads(response.read())
    conn.close()

    # then: a problem saying to send one header, and nothing started
    assert (status, kind) == (400, "application/problem+json")
    assert problem["detail"].startswith("Send one Idempotency-Key header")
    assert not WorkflowInstance.objects.filter(initiator=person).exists()


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


def post(port: int, path: str, secret: str, body: dict) -> tuple[int, dict, float]:
    """POST ``body`` as JSON with a token; the status, the answer and the seconds it took."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    began = time.monotonic()
    conn.request(
        "POST",
        path,
        json.dumps(body),
        {"Authorization": f"Bearer {secret}", "Content-Type": "application/json", "Host": "127.0.0.1"},
    )
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    return response.status, json.loads(raw) if raw.startswith(b"{") else {"body": raw[:300]}, time.monotonic() - began


def wait_state(instance_id: int, state: str, worker) -> None:
    instance = WorkflowInstance.objects.get(pk=instance_id)
    deadline = time.monotonic() + 60
    while instance.state != state and time.monotonic() < deadline:
        time.sleep(0.2)
        instance.refresh_from_db()
    assert instance.state == state, worker.log_tail()


@pytest.mark.worker
def test_a_start_and_a_signal_while_redis_does_not_answer_are_answered_and_run_once_redis_answers(
    tmp_path, celery_worker, users, register_workflow
):
    """The web processes' Redis accepts connections and never answers (a hung server, a partition). A start and a
    signal through the API commit, and their dispatches and live events cannot be sent: each caller gets its answer
    within seconds (it was a 500 after the web timeout, for work that was committed all the same), and the worker,
    on a Redis that answers, runs both instances on to their end from the sweep's re-send."""
    # given: an operator with a token; an order waiting for its payment (the worker ran its first step)
    grant_group_permissions()
    # Registered for this test (an import-time registration is undone by any earlier test that unregisters it).
    if not registry.is_registered(API_PAYMENT.name, API_PAYMENT.version):
        register_workflow(API_PAYMENT)
    secret = token_create(users.operator, "script").secret
    waiting = instance_start("api_payment", {"order": "SO-1"}, initiator=users.staff)
    wait_state(waiting.pk, "waiting", celery_worker)
    modules = "demo.workflows.bench,tests.api.signal_flows"
    with (
        silent_redis() as url,
        serve_make_web(tmp_path, REDIS_URL=url, BATON_WEB_WORKERS="1", BATON_WORKFLOW_MODULES=modules) as server,
    ):
        # when
        started = post(server.port, "/api/instances/", secret, {"workflow": "bench_chain", "input": {}})
        signalled = post(
            server.port,
            f"/api/instances/{waiting.pk}/signals/",
            secret,
            {"event": "payment.confirmed", "signal_id": "pay-1", "payload": {"paid_amount": "9.00", "reference": "R"}},
        )

    # then: each answered as it would be with Redis up, promptly
    assert (started[0], started[1].get("state")) == (201, "running"), started
    assert (signalled[0], signalled[1].get("state")) == (201, "consumed"), signalled
    assert started[2] < 20, started[2]
    assert signalled[2] < 20, signalled[2]
    # and the worker (its Redis answers) runs both to the end: nothing was lost
    wait_state(started[1]["id"], "completed", celery_worker)
    wait_state(waiting.pk, "completed", celery_worker)
