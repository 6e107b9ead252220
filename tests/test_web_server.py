"""`make web` as production runs it: gunicorn's worker processes serving ``baton_site.wsgi`` on the test database.

A start through the API is answered by whichever process takes it; a token revoked, or a permission removed, in
another process counts at the next request in every one of them (nothing about a token is cached in a process).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission

from api.tokens import token_create, token_revoke
from orchestrator.audit import Actor
from orchestrator.models import WorkflowInstance
from tests.conftest import _database_url
from tests.factories import UserFactory

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db(transaction=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def web(tmp_path: Path) -> Iterator[int]:
    """``make web`` with two gunicorn processes on a free port; yields the port, stops the whole group after."""
    port = _free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "BATON_CHANNEL_PREFIX": settings.BATON_CHANNEL_PREFIX,
        "BATON_PORT": str(port),
        "BATON_WEB_WORKERS": "2",
    }
    log = tmp_path / "web.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "web"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail(f"make web did not listen within 90 s:\n{log.read_text()[-3000:]}")
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


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
