"""The HTTP boundary of `make web` (gunicorn's sync workers), with raw requests against the real server.

- A body sent with ``Transfer-Encoding: chunked`` (no Content-Length) reaches Django whole (baton_site/wsgi.py):
  an API start and a form post act on what was sent; a body past the limits is refused as one that declared its
  length, never taken cut short or empty.
- A query string past Baton's limit answers 414, problem+json under /api/ (orchestrator/middleware.py); past
  gunicorn's own maximum, gunicorn answers (README, "Production", "Request limits").
- A worker stuck in a request is killed after ``BATON_WEB_TIMEOUT`` and replaced, while an audit export that
  streams for longer reports itself alive and ends whole (orchestrator/heartbeat.py); `make web`'s argv holds
  every setting README lists.
"""

from __future__ import annotations

import gzip
import http.client
import io
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Permission
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from api.models import ApiToken
from api.tokens import token_create
from baton_site.wsgi import read_chunked_body
from orchestrator.heartbeat import keep_alive
from orchestrator.middleware import QUERY_STRING_MAX
from orchestrator.models import AuditEvent, WorkflowInstance
from tests.conftest import WebServer, serve_make_web
from tests.factories import UserFactory

ROOT = Path(__file__).resolve().parent.parent
PROBLEM_JSON = "application/problem+json"


@pytest.fixture(scope="module")
def web(django_db_setup: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    """One `make web` for the module's requests (each test makes its own rows)."""
    with serve_make_web(tmp_path_factory.mktemp("web")) as server:
        yield server


def raw(port: int, head: str, chunks: list[bytes] | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:
    """Send ``head`` (request line and headers, CRLF-separated, without the blank line) and ``chunks`` framed as
    chunked transfer coding over a plain socket; return the status, the headers (lower-case names) and the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n\r\n")
        for chunk in chunks or []:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        if chunks is not None:
            sock.sendall(b"0\r\n\r\n")
        answer = b""
        while data := sock.recv(65536):
            answer += data
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers: dict = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    if headers.get("transfer-encoding") == ["chunked"]:
        body = dechunk(body)
    return int(lines[0].split()[1]), headers, body


def dechunk(framed: bytes) -> bytes:
    """A chunked response body without its framing."""
    out = b""
    while True:
        size_line, _, rest = framed.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out += rest[:size]
        framed = rest[size + 2 :]


def starter_token() -> str:
    person = UserFactory(username="chunked-starter")
    person.user_permissions.add(Permission.objects.get(codename="add_workflowinstance"))
    return token_create(person, "script").secret


# --- chunked request bodies ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_chunked_api_start_reads_the_whole_body(web):
    # given: a token allowed to start, and a start body sent in three chunks without Content-Length
    secret = starter_token()
    body = json.dumps({"workflow": "bench_approval", "input": {"n": 7}, "business_key": "chunked-7"}).encode()
    parts = [body[:10], body[10:25], body[25:]]

    # when
    status, _headers, answer = raw(
        web.port,
        "POST /api/instances/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {secret}\r\nTransfer-Encoding: chunked\r\nConnection: close",
        parts,
    )

    # then: started with what was sent
    assert status == 201, answer[:500]
    instance = WorkflowInstance.objects.get(business_key="chunked-7")
    assert instance.data["n"] == 7
    assert json.loads(answer)["id"] == instance.pk


@pytest.mark.django_db(transaction=True)
def test_a_chunked_api_body_past_the_limit_is_413_problem_json_and_starts_nothing(web):
    # given: a start body of 300 KiB (the API takes 256 KiB), chunked
    secret = starter_token()
    body = json.dumps({"workflow": "bench_approval", "input": {"pad": "x" * 300 * 1024}}).encode()

    # when
    status, headers, answer = raw(
        web.port,
        "POST /api/instances/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {secret}\r\nTransfer-Encoding: chunked\r\nConnection: close",
        [body[i : i + 65536] for i in range(0, len(body), 65536)],
    )

    # then: refused as too large, as problem+json, nothing started
    assert status == 413, answer[:500]
    assert headers["content-type"] == [PROBLEM_JSON]
    assert json.loads(answer)["code"] == "payload_too_large"
    assert not WorkflowInstance.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate,chunked", "GZIP , chunked", "compress, chunked"])
def test_an_api_body_with_another_transfer_coding_is_501_problem_json_and_starts_nothing(web, coding):
    # given: a start body declared as compressed before the chunking (gunicorn removes only the chunk framing)
    secret = starter_token()
    body = gzip.compress(json.dumps({"workflow": "bench_approval", "input": {"n": 1}}).encode())

    # when
    status, headers, answer = raw(
        web.port,
        "POST /api/instances/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {secret}\r\nTransfer-Encoding: {coding}\r\nConnection: close",
        [body],
    )

    # then: refused before anything reads it, in the API's format, nothing started
    assert status == 501, answer[:500]
    assert headers["content-type"] == [PROBLEM_JSON]
    assert json.loads(answer)["code"] == "transfer_coding"
    assert not WorkflowInstance.objects.exists()


def test_a_page_post_with_another_transfer_coding_is_a_501_page(web):
    # when: a form post compressed before the chunking
    status, headers, answer = raw(
        web.port,
        "POST /login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        "Transfer-Encoding: gzip, chunked\r\nConnection: close",
        [gzip.compress(b"username=a&password=b")],
    )

    # then: Baton's page, saying what to do
    assert status == 501
    assert headers["content-type"][0].startswith("text/html")
    assert b"encoding is not supported" in answer


@pytest.mark.django_db(transaction=True)
def test_a_chunked_form_post_signs_in_with_what_was_posted(web):
    # given: the sign-in page's CSRF cookie and token, and a person
    UserFactory(username="chunked-person", password="a-long-password-1")
    status, headers, page = raw(web.port, "GET /login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close")
    assert status == 200
    cookie = next(c.split(";")[0] for c in headers["set-cookie"] if c.startswith("csrftoken="))
    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1).decode()
    form = f"csrfmiddlewaretoken={token}&username=chunked-person&password=a-long-password-1".encode()

    # when: the form is posted chunked
    status, headers, answer = raw(
        web.port,
        "POST /login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Cookie: {cookie}\r\nTransfer-Encoding: chunked\r\nConnection: close",
        [form[:20], form[20:]],
    )

    # then: the CSRF token and the credentials were read: signed in (a session) and sent on
    assert status == 302, answer[:800]
    assert any(c.startswith("sessionid=") for c in headers["set-cookie"])


def test_a_chunked_body_past_the_upload_limit_is_read_no_further_and_declared_too_large():
    # given: a chunk-terminated input of 25 bytes, a limit of 10
    environ = {"wsgi.input_terminated": True, "wsgi.input": io.BytesIO(b"a" * 25)}

    # when
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=10):
        read_chunked_body(environ)

    # then: 11 bytes read, declared as 11, so Django and the API refuse it as too large (never 10 taken as all)
    assert environ["CONTENT_LENGTH"] == "11"
    assert environ["wsgi.input"].read() == b"a" * 11

    # and: an input a server does not terminate is left alone (reading it to its end could wait forever)
    untouched = {"wsgi.input": io.BytesIO(b"abc")}
    read_chunked_body(untouched)
    assert "CONTENT_LENGTH" not in untouched


# --- long request lines -----------------------------------------------------------------------------------


def test_an_api_query_past_batons_limit_is_414_problem_json(web):
    # given: a query string one byte past the limit (a request line well past gunicorn's default 4094)
    query = "status=" + "a" * (QUERY_STRING_MAX - len("status=") + 1)

    # when
    status, headers, answer = raw(web.port, f"GET /api/instances/?{query} HTTP/1.1\r\nHost: 127.0.0.1")

    # then
    assert status == 414
    assert headers["content-type"] == [PROBLEM_JSON]
    problem = json.loads(answer)
    assert problem["status"] == 414
    assert problem["code"] == "uri_too_long"
    assert problem["instance"] == "/api/instances/"


def test_an_api_query_at_batons_limit_is_answered_by_the_api(web):
    # given: a query string of exactly the limit
    query = "status=" + "a" * (QUERY_STRING_MAX - len("status="))

    # when: without a token
    status, headers, answer = raw(web.port, f"GET /api/instances/?{query} HTTP/1.1\r\nHost: 127.0.0.1")

    # then: the API itself answered (authentication), not a length check
    assert status == 401
    assert headers["content-type"] == [PROBLEM_JSON]
    assert json.loads(answer)["status"] == 401


def test_a_page_query_past_batons_limit_is_a_414_page(web):
    status, headers, answer = raw(web.port, f"GET /login/?next={'a' * 5000} HTTP/1.1\r\nHost: 127.0.0.1")

    assert status == 414
    assert headers["content-type"][0].startswith("text/html")
    assert b'data-error-page="414"' in answer


def test_a_request_line_past_gunicorns_maximum_gets_gunicorns_own_414(web):
    # given: a request line past 8190 bytes, the most gunicorn reads (README documents this answer)
    status, headers, answer = raw(web.port, f"GET /api/instances/?q={'a' * 8200} HTTP/1.1\r\nHost: 127.0.0.1")

    # then: gunicorn answers before Baton sees the request
    assert status == 414
    assert headers["content-type"][0].startswith("text/html")
    assert b"URI Too Long" in answer


# --- the worker timeout and `make web`'s settings ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_worker_stuck_in_a_request_is_replaced_after_the_timeout(tmp_path):
    # given: make web with a 3 s worker timeout, and a token whose table this test then locks
    secret = starter_token()
    with serve_make_web(tmp_path, BATON_WEB_TIMEOUT="3", BATON_WEB_WORKERS="1") as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(f"LOCK TABLE {ApiToken._meta.db_table} IN ACCESS EXCLUSIVE MODE")

            # when: a request waits on the lock for longer than the timeout
            began = time.monotonic()
            with _any_answer() as answered:
                conn.request("GET", "/api/instances/", headers={"Authorization": f"Bearer {secret}"})
                answered.status = conn.getresponse().status
            waited = time.monotonic() - began

        # then: the worker was killed within the timeout and a bit, and a new one serves the next request
        assert 3 <= waited < 20, waited
        assert answered.status != 200
        assert "WORKER TIMEOUT" in server.log()
        after = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        after.request("GET", "/api/instances/", headers={"Authorization": f"Bearer {secret}"})
        assert after.getresponse().status == 200


class _any_answer:
    """Context for a request that may end in a status or in a dropped connection; ``status`` is None for the
    latter."""

    status: int | None = None

    def __enter__(self) -> _any_answer:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        return exc is None or isinstance(exc, http.client.HTTPException | OSError)


def make_web_argv(**env: str) -> list[str]:
    """The gunicorn argv ``make web`` runs under ``env``, with the shell's expansions done."""
    done = subprocess.run(
        ["make", "-n", "web"], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    line = "bin/gunicorn" + done.stdout.split("bin/gunicorn", 1)[1].replace("\\\n", " ")
    shell = subprocess.run(["bash", "-c", f"echo {line}"], env={**os.environ, **env}, capture_output=True, text=True)
    return shell.stdout.split()


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_make_web_has_a_worker_timeout_request_limits_and_the_access_log_by_default():
    argv = make_web_argv(BATON_WEB_TIMEOUT="", BATON_WEB_GRACEFUL_TIMEOUT="")

    assert option(argv, "--timeout") == "60"
    assert option(argv, "--graceful-timeout") == "30"
    assert option(argv, "--limit-request-line") == "8190"
    assert option(argv, "--limit-request-field_size") == "8190"
    assert option(argv, "--worker-class") == "sync"
    assert option(argv, "--access-logfile") == "-"
    assert option(argv, "--config") == "python:baton_site.gunicorn_hooks"


def test_make_web_takes_its_timeouts_from_the_environment():
    argv = make_web_argv(BATON_WEB_TIMEOUT="120", BATON_WEB_GRACEFUL_TIMEOUT="45")

    assert option(argv, "--timeout") == "120"
    assert option(argv, "--graceful-timeout") == "45"


def test_every_make_web_setting_is_in_readmes_settings_table():
    # given: the BATON_ variables the web target reads
    makefile = (ROOT / "Makefile").read_text()
    target = makefile.split("\nweb: install", 1)[1].split("\n\n", 1)[0]
    used = set(re.findall(r"\$\$\{(BATON_[A-Z_]+)", target))
    readme = (ROOT / "README.md").read_text()

    # then: each has a row in the table of settings
    assert used >= {"BATON_WEB_TIMEOUT", "BATON_WEB_GRACEFUL_TIMEOUT", "BATON_WEB_WORKERS"}
    rows = [line for line in readme.splitlines() if line.startswith("| `BATON_")]
    assert {name for name in used if not any(f"`{name}`" in row for row in rows)} == set()


def test_keep_alive_reports_while_chunks_flow_and_passes_them_unchanged(monkeypatch):
    # given: a worker's report function, and chunks that take 1.2 s each
    reports: list[float] = []
    monkeypatch.setattr("orchestrator.heartbeat._notify", lambda: reports.append(time.monotonic()))
    clock = iter([0.0, 1.2, 2.4, 3.6])
    monkeypatch.setattr("orchestrator.heartbeat.time", SimpleNamespace(monotonic=lambda: next(clock)))

    # when
    out = list(keep_alive([b"a", b"b", b"c"]))

    # then: every chunk, and a report after each (each came more than REPORT_EVERY after the last)
    assert out == [b"a", b"b", b"c"]
    assert len(reports) == 3


@pytest.mark.django_db(transaction=True)
def test_an_audit_export_streaming_for_longer_than_the_worker_timeout_is_not_cut_off(tmp_path):
    # given: a trail of 20,000 events (some 12 MB of export, read at a pace that makes it last over 4 s), a person who
    # may export it, and make web with a 3 s worker timeout
    now = timezone.now()
    AuditEvent.objects.bulk_create(
        (
            AuditEvent(
                chain="heartbeat-test",
                seq=seq,
                prev_hash="",
                hash=f"{seq:064x}",
                occurred_at=now,
                actor_label="system",
                action="test.filler",
                subject_type="test",
                reason="x" * 200,
            )
            for seq in range(1, 20_001)
        ),
        batch_size=5000,
    )
    person = UserFactory(username="trail-keeper")
    person.user_permissions.add(Permission.objects.get(codename="view_trail"))
    secret = token_create(person, "export").secret

    with serve_make_web(tmp_path, BATON_WEB_TIMEOUT="3", BATON_WEB_WORKERS="1") as server:
        # A fresh worker's first request imports what it serves (DRF, the export): on a slow machine that alone
        # took past the timeout before the first chunk, which is not what this test is about. A HEAD warms it up.
        warm = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        warm.request("HEAD", "/api/audit/export.jsonl", headers={"Authorization": f"Bearer {secret}"})
        assert warm.getresponse().status == 200
        warm.close()

        # when: the whole trail is exported
        began = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        conn.request("GET", "/api/audit/export.jsonl", headers={"Authorization": f"Bearer {secret}"})
        response = conn.getresponse()
        body = b""
        with _any_answer():  # read at a steady pace (a client on a real network), never stalling the server long
            while piece := response.read(256 * 1024):
                body += piece
                time.sleep(0.1)
        took = time.monotonic() - began

        # then: it outlasted the timeout, was not killed, and ends with its end record (not cut off)
        assert response.status == 200
        assert "WORKER TIMEOUT" not in server.log(), f"killed after {took:.1f} s"
        lines = body.splitlines()
        assert len(lines) >= 20_002
        assert json.loads(lines[-1])["record"] == "end"
        assert took > 4, f"the export took only {took:.1f} s: too short to show anything"
