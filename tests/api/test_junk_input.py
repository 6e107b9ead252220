"""Junk the API may be sent: every answer is a 4xx problem+json naming what was wrong, never a 5xx, and nothing
is written."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from api.tokens import token_create
from orchestrator.models import AuditEvent, WorkflowInstance
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory

pytestmark = pytest.mark.django_db


MULTIPART = '--x\r\nContent-Disposition: form-data; name="workflow"\r\n\r\nexpense_approval\r\n--x--\r\n'


def nested(depth: int) -> str:
    return '{"workflow": "expense_approval", "input": {"x": ' + "[" * depth + "]" * depth + "}}"


@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        ('{"workflow": "expense_approval\\u0000"}', "application/json", 400),
        ('{"workflow": "expense_approval", "input": {"employee": "Sam\\u0000"}}', "application/json", 400),
        ('{"workflow": "expense_approval", "input": {"k\\u0000": 1}}', "application/json", 400),
        ('{"workflow": "expense_approval", "input": {"extra": 1e999}}', "application/json", 400),
        ('{"workflow": "expense_approval", "input": {"extra": NaN}}', "application/json", 400),
        ('{"workflow": "expense_approval", "input": {"n": ' + "9" * 5000 + "}}", "application/json", 400),
        (nested(40), "application/json", 400),
        (nested(100_000), "application/json", 400),
        ("not json at all", "application/json", 400),
        ("", "application/json", 400),
        ("   ", "application/json", 400),
        ("[1, 2, 3]", "application/json", 400),
        ('"a string"', "application/json", 400),
        ("null", "application/json", 400),
        (b"\xff\xfe\x00\x00", "application/json", 400),
        ('{"workflow": "expense_approval"}', "text/plain", 415),
        ("workflow=expense_approval", "application/x-www-form-urlencoded", 415),
        # a form upload's fields are not read as missing JSON fields ("workflow: required" though it was sent)
        (MULTIPART, "multipart/form-data; boundary=x", 415),
        ('{"workflow": "expense_approval"}', "application/xml", 415),
        ('{"workflow": "expense_approval"}', "application/json; charset=latin-1", 400),
        ('{"workflow": "expense_approval", "input": {"big": "' + "x" * 300_000 + '"}}', "application/json", 413),
    ],
    ids=lambda value: value if isinstance(value, int) else None,
)
def test_junk_bodies_get_a_problem_and_start_nothing(api_as, roles, raw, content_type, status):
    # when
    response = api_as(roles.staff).post("/api/instances/", raw=raw, content_type=content_type)

    # then
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    assert not WorkflowInstance.objects.exists()


@pytest.mark.parametrize(
    "path",
    [
        "/api/instances/?state=%00",
        "/api/instances/?workflow=" + "w" * 500,
        "/api/instances/?started_after=2026-13-45T99:99:99Z",
        "/api/instances/?started_after=99999-01-01T00:00:00Z",
        "/api/instances/?limit=-5&cursor=%FF%FE",
        "/api/instances/?cursor=" + "A" * 5000,
        "/api/instances/?version=99999999999999999999",
        "/api/tasks/?scope=everything",
        "/api/workflows/expense_approval/?version=abc",
        "/api/workflows/expense_approval/?version=99999999999999999999",
        "/api/workflows/%00/",
        # More fields than DATA_UPLOAD_MAX_NUMBER_FIELDS in a query string under QUERY_STRING_MAX bytes: Django's
        # TooManyFieldsSent, raised when DRF first reads the query (content negotiation).
        "/api/instances/?" + "&".join(["a"] * 1500),
        "/api/tasks/?" + "&".join(["a"] * 1500),
    ],
)
def test_junk_query_strings_are_4xx(api_as, roles, path):
    # when
    response = api_as(roles.operator).get(path)

    # then
    assert 400 <= response.status_code < 500, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("content_type", "named"),
    [
        # what a server hands on when the header is left out (curl -d sends a form's type instead)
        ("", "no Content-Type"),
        ("application/x-www-form-urlencoded", "'application/x-www-form-urlencoded'"),
        ("text/plain; charset=utf-8", "'text/plain; charset=utf-8'"),
    ],
)
def test_a_body_not_sent_as_json_is_a_415_saying_which_header_to_send(api_as, roles, content_type, named):
    """The 415 said 'Unsupported media type "" in request.': neither which header nor what it should say."""
    # given
    client = api_as(roles.staff)
    body = json.dumps({"workflow": "expense_approval", "input": ExpenseInputFactory()})

    # when
    response = client.client.generic("POST", "/api/instances/", body, content_type=content_type, headers=client.headers)

    # then
    assert response.status_code == 415, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert "Content-Type: application/json" in problem["detail"], problem
    assert named in problem["detail"], problem
    assert list(problem["errors"]) == ["Content-Type"], problem
    assert not WorkflowInstance.objects.exists()


def test_too_many_query_fields_on_a_write_is_a_problem_and_changes_nothing(api_as, roles):
    # given: a start whose query string carries more fields than Django parses (well under 4096 bytes)
    path = "/api/instances/?" + "&".join(["a"] * 1500)

    # when
    response = api_as(roles.staff).post(path, {"workflow": "expense_approval", "input": ExpenseInputFactory()})

    # then: the API's 400 problem naming the limit, not Django's HTML page; nothing started
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "too_many_fields"
    assert not WorkflowInstance.objects.exists()


def test_a_decision_on_an_impossible_task_id_is_404(api_as, roles):
    # when
    response = api_as(roles.manager).post("/api/tasks/99999999999999999999/decide/", {"decision": "approve"})

    # then
    assert response.status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        "/api/instances/%0A%C3%AD/skip/",  # a line break in the id: the catch-all's `<path:...>` did not match it
        "/api/instances/%0A/retry/",
        "/api/tasks/1%0D%0A/claim/",
        "/api/%0A",
        "/api/instances/%C3%AD/skip/",
    ],
)
def test_a_path_under_api_with_a_line_break_or_junk_is_a_problem_404(api_as, roles, path):
    """A path with a line break matched no route, not even the catch-all (a regex `.` stops at a line break), and
    got the site's HTML 404 page, the one answer under /api/ that was not problem+json."""
    # when
    response = api_as(roles.operator).post(path, {"reason": "x"})

    # then
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize(
    ("path", "slashed"),
    [
        ("/api/instances", "/api/instances/"),
        ("/api/instances/{pk}", "/api/instances/{pk}/"),
        ("/api/instances/{pk}/retry", "/api/instances/{pk}/retry/"),
        ("/api/audit/events", "/api/audit/events/"),
        ("/api/tokens", "/api/tokens/"),
    ],
)
def test_a_path_without_its_trailing_slash_is_a_problem_404_naming_the_slashed_one(
    api_as, roles, method, path, slashed
):
    """``/api/instances`` was answered "No API endpoint at this path", leaving the client to find the slash it had
    left out. Not a redirect: a client follows one with a GET, without the body it posted."""
    # given
    instance = instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)
    client = api_as(roles.operator)

    # when
    response = getattr(client, method)(path.format(pk=instance.pk))

    # then
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "not_found"
    assert f"{slashed.format(pk=instance.pk)} is one" in problem["detail"], problem


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("path", ["/api", "/api/instancez", "/api/instances/1/nothing"])
def test_a_path_that_is_no_endpoint_even_with_a_slash_suggests_none_and_api_alone_is_not_redirected(
    api_as, roles, method, path
):
    """``/api`` alone was redirected (301) to /api/, which a client follows with a GET: a POST's body was lost, to
    land on a 404 all the same."""
    # when
    response = getattr(api_as(roles.operator), method)(path)

    # then
    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["detail"] == "No API endpoint at this path: see /api/docs/ for the endpoints."


@pytest.mark.parametrize("host", ["", "evil.example", "bad host"])
@pytest.mark.parametrize(("method", "path"), [("get", "/api/instances/"), ("post", "/api/instances/")])
def test_a_host_header_the_site_does_not_answer_to_is_a_problem_400_under_api(host, method, path):
    """An empty or foreign Host header is refused by Django before any route (DisallowedHost), and its 400 was the
    site's HTML page under /api/ too (schemathesis's long run sent `Host:` empty)."""
    # when
    client = Client(HTTP_HOST=host)
    response = client.get(path) if method == "get" else client.post(path, "{}", content_type="application/json")

    # then
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "bad_request"


def test_a_foreign_host_header_on_a_page_is_the_sites_400_page():
    # when
    response = Client(HTTP_HOST="evil.example").get("/")

    # then
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")


def test_someone_elses_token_revoked_from_the_tokens_page_is_the_sites_404_page(roles):
    """The tokens page lives under /api/ but is a page for people: its 404 stays a page, not problem+json."""
    # given
    token = token_create(roles.staff, "script").token
    client = Client()
    client.force_login(roles.staff2)

    # when
    response = client.post(f"/api/tokens/{token.pk}/revoke/")

    # then
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ('{"workflow": "expense_approval", "workflow": "bench_approval", "input": %s}', "workflow"),
        ('{"workflow": "expense_approval", "input": %s, "input": {}}', "input"),
        # in the start form's input: which amount did the sender mean? A proxy reading the first saw another one
        ('{"workflow": "expense_approval", "input": {"amount": "1.00", "x": %s, "amount": "9000.00"}}', "amount"),
    ],
)
def test_a_key_given_twice_in_one_object_is_a_400_naming_it_and_starts_nothing(api_as, roles, raw, key):
    # given: JSON whose object repeats a key (legal to write, but parsers differ on which value wins)
    body = raw % json.dumps(ExpenseInputFactory())

    # when
    response = api_as(roles.staff).post("/api/instances/", raw=body)

    # then: refused naming the key, not the last value silently taken
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert f"'{key}' is given twice" in response.json()["detail"]
    assert not WorkflowInstance.objects.exists()


def test_json_sent_with_odd_but_valid_shapes_still_starts(api_as, roles):
    # given: numbers where the form takes text, unicode, a key order nobody expects
    body = {
        "input": {"description": "Zug nach Zürich 🚆", "category": "travel", "amount": 12.5, "employee": "Søren"},
        "workflow": "expense_approval",
    }

    # when
    response = api_as(roles.staff).post("/api/instances/", raw=json.dumps(body, ensure_ascii=False).encode())

    # then
    assert response.status_code == 201, response.json()
    detail = api_as(roles.operator).get(response["Location"]).json()
    assert detail["data"]["amount"] == "12.5"
    assert detail["data"]["description"] == "Zug nach Zürich 🚆"


def test_a_session_without_its_csrf_token_is_refused(roles):
    # given
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(roles.staff)
    instance = instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)

    # when
    read = client.get(f"/api/instances/{instance.pk}/")
    write = client.post(
        "/api/instances/",
        json.dumps({"workflow": "expense_approval", "input": ExpenseInputFactory()}),
        content_type="application/json",
    )

    # then
    assert read.status_code == 200
    assert write.status_code == 403
    assert "CSRF" in write.json()["detail"]
    assert WorkflowInstance.objects.count() == 1


def test_a_database_outage_is_a_503_problem_with_retry_after(api_as, roles, monkeypatch):
    # given: PostgreSQL refuses the start's connection (the edge: "too many clients", a restart)
    from django.db import OperationalError

    def refused(*args, **kwargs):
        raise OperationalError("connection failed: FATAL: sorry, too many clients already")

    monkeypatch.setattr("api.views.api_instance_start", refused)

    # when
    response = api_as(roles.staff).post("/api/instances/", {"workflow": "expense_approval", "input": {}})

    # then
    assert response.status_code == 503
    assert response["Content-Type"] == "application/problem+json"
    assert response["Retry-After"] == "5"
    assert response.json()["code"] == "unavailable"


SAM = "Sam \ud800"
DEEP: list = []
for _ in range(40):  # past the parser's DEPTH_MAX (32), well within Python's own recursion limit
    DEEP = [DEEP]  # the 33rd level, body.payload.x and 31 lists down, is named


@pytest.mark.parametrize(
    ("who", "path", "body"),
    [
        ("staff", "/api/instances/", {"workflow": "expense_approval", "input": {"employee": SAM}}),
        ("staff", "/api/instances/", {"workflow": "expense_approval", "input": {"note": "\udfff"}}),
        ("staff", "/api/instances/", {"workflow": "expense_approval", "input": {"\ud800": 1}}),
        ("staff", "/api/instances/", {"workflow": "expense_approval", "input": {"deep": [{"x": ["\ud83d"]}]}}),
        ("operator", "/api/instances/{pk}/skip/", {"reason": "stuck", "step": "\ud800"}),
        ("admin", "/api/instances/{pk}/signals/", {"event": "e", "signal_id": "s1", "payload": {"\ud800": "x"}}),
        ("staff2", "/api/tasks/{task}/decide/", {"decision": "approve", "data": {"x": "\ud800"}}),
    ],
)
def test_a_lone_surrogate_anywhere_in_a_body_is_a_400_problem_naming_where(api_as, roles, who, path, body):
    # given: valid JSON ("\ud800" is a legal escape) holding half a UTF-16 pair, which no UTF-8 text, so no
    # PostgreSQL text or jsonb column, can hold; a start's input otherwise valid
    instance = instance_start("expense_approval", ExpenseInputFactory(amount="70.00"), initiator=roles.staff)
    path = path.format(pk=instance.pk, task=instance.tasks.get().pk)
    if "input" in body:
        body = {**body, "input": {**ExpenseInputFactory(), **body["input"]}}
    before = WorkflowInstance.objects.count()

    # when
    response = api_as(getattr(roles, who)).post(path, raw=json.dumps(body))

    # then: refused as the body's fault, naming where, never a 500; nothing started
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert "surrogate" in response.json()["detail"]
    assert "body." in response.json()["detail"]
    assert WorkflowInstance.objects.count() == before


@pytest.mark.parametrize(
    ("who", "path", "body", "field"),
    [
        ("operator", "/api/instances/{pk}/pause/", {"reason": "stuck\x00"}, "reason"),
        ("staff", "/api/instances/", {"workflow": "expense_approval", "input": {"employee": SAM}}, "input.employee"),
        ("staff", "/api/instances/", {"workflow": "expense_approval", "input": {"\ud800": 1}}, "input"),
        (
            "staff",
            "/api/instances/",
            {"workflow": "expense_approval", "input": {"x": [[["\x00"]]]}},
            "input.x[0][0][0]",
        ),
        ("staff2", "/api/tasks/{task}/decide/", {"decision": "approve", "comment": "ok\x00"}, "comment"),
        ("staff2", "/api/tasks/{task}/delegate/", {"to_user": "staff\x00"}, "to_user"),
        (
            "admin",
            "/api/instances/{pk}/signals/",
            {"event": "e", "signal_id": "s", "payload": {"a": "\udfff"}},
            "payload.a",
        ),
        (
            "admin",
            "/api/instances/{pk}/signals/",
            {"event": "e", "signal_id": "s", "payload": {"x": DEEP}},
            "payload.x" + "[0]" * 31,
        ),
    ],
)
def test_a_value_no_column_can_hold_is_an_invalid_input_problem_whose_errors_name_the_field(
    api_as, roles, who, path, body, field
):
    """README: invalid input is a problem with ``errors`` naming each field. A NUL, a lone surrogate or nesting past
    the limit was refused by the body's parser, saying where only in the detail's prose (``body.input.employee``):
    a client mapping ``errors`` onto its own fields had nothing to show beside the one it sent wrong."""
    # given: a waiting expense (its task open)
    instance = instance_start("expense_approval", ExpenseInputFactory(amount="70.00"), initiator=roles.staff)
    path = path.format(pk=instance.pk, task=instance.tasks.get().pk)
    if "input" in body:
        body = {**body, "input": {**ExpenseInputFactory(), **body["input"]}}
    client = api_as(getattr(roles, who))  # its token's creation is an event of its own
    before = (WorkflowInstance.objects.count(), AuditEvent.objects.count())

    # when
    response = client.post(path, raw=json.dumps(body))

    # then: the field named where clients look for it, the detail still saying what to remove; nothing written
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert (problem["code"], problem["title"]) == ("invalid", "Invalid input"), problem
    assert list(problem["errors"]) == [field], problem
    assert f"body.{field}" in problem["detail"] or field == "input", problem
    assert (WorkflowInstance.objects.count(), AuditEvent.objects.count()) == before


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/instances/?limit=0", "limit"),
        ("/api/instances/?limit=-1", "limit"),
        ("/api/instances/?limit=ten", "limit"),
        ("/api/instances/?limit=1e309", "limit"),
        ("/api/instances/?limit=101", "limit"),
        ("/api/instances/?limit=99999999999999999999999", "limit"),
        ("/api/instances/?limit=", "limit"),
        ("/api/tasks/?limit=%00", "limit"),
        ("/api/tasks/?scope=queue&limit=0", "limit"),
        ("/api/instances/?state=running&state=failed", "state"),
        ("/api/instances/?limit=5&limit=50", "limit"),
        ("/api/tasks/?scope=mine&scope=queue", "scope"),
        ("/api/audit/events/?limit=50&limit=60", "limit"),
        ("/api/audit/events/?cursor=a&cursor=b", "cursor"),
        ("/api/audit/export.jsonl?instance=1&instance=2", "instance"),
        ("/api/workflows/expense_approval/?version=1&version=2", "version"),
    ],
)
def test_a_bad_or_repeated_query_parameter_is_a_400_naming_it(api_as, roles, path, field):
    # given: a page size that is not 1-100, or a one-value parameter given twice (which of the two the client
    # meant is a guess: the last would quietly answer a question it did not ask)

    # when
    response = api_as(roles.admin).get(path)

    # then
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert field in response.json()["errors"], response.json()


@pytest.mark.parametrize("fmt", ["json", ""])
def test_format_json_or_empty_is_the_answer_as_without_it(api_as, roles, fmt):
    # given
    instance = instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)
    client = api_as(roles.staff)

    # when
    listed = client.get(f"/api/instances/?format={fmt}")
    started = client.post(
        f"/api/instances/?format={fmt}", {"workflow": "expense_approval", "input": ExpenseInputFactory()}
    )

    # then
    assert listed.status_code == 200, listed.content[:300]
    assert listed["Content-Type"] == "application/json"
    assert [row["id"] for row in listed.json()["results"]] == [instance.pk]
    assert started.status_code == 201, started.content[:300]
    assert WorkflowInstance.objects.count() == 2


@pytest.mark.parametrize("fmt", ["xml", "yaml", "api", "csv"])
def test_an_unknown_format_parameter_is_a_406_problem_naming_the_formats_not_answered_as_json(api_as, roles, fmt):
    """``?format=xml`` was answered in JSON without a word: a client that asked for XML parsed JSON, or failed
    further on. ``format`` is a demand (``Accept`` a preference, still answered in JSON whatever it says)."""
    # given
    client = api_as(roles.staff)

    # when
    listed = client.get(f"/api/instances/?format={fmt}")
    started = client.post(
        f"/api/instances/?format={fmt}", {"workflow": "expense_approval", "input": ExpenseInputFactory()}
    )

    # then: refused before anything is done
    for response in (listed, started):
        assert response.status_code == 406, response.content[:300]
        assert response["Content-Type"] == "application/problem+json"
        problem = response.json()
        assert problem["code"] == "not_acceptable"
        assert problem["errors"]["format"] == ["This endpoint answers json: leave format out, or give one of those."]
    assert not WorkflowInstance.objects.exists()
    assert api_as(roles.staff).get("/api/instances/", headers={"Accept": "application/xml"}).status_code == 200


def test_the_schema_still_takes_its_own_formats_and_names_them_when_refusing(api_as, roles):
    client = api_as(roles.staff)
    assert client.get("/api/schema/?format=yaml").status_code == 200
    refused = client.get("/api/schema/?format=xml")
    assert refused.status_code == 406
    assert "yaml or json" in refused.json()["detail"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP"])
def test_a_compressed_body_is_a_415_problem_saying_the_encoding_is_not_supported(api_as, roles, encoding):
    """``Content-Encoding: gzip`` was a 400 "The body is not valid JSON: 'utf-8' codec can't decode byte 0x8b":
    true, but not why."""
    import gzip

    # given
    body = gzip.compress(json.dumps({"workflow": "expense_approval", "input": ExpenseInputFactory()}).encode())
    client = api_as(roles.staff)

    # when
    response = client.client.post(
        "/api/instances/",
        body,
        content_type="application/json",
        headers={**client.headers, "Content-Encoding": encoding},
    )

    # then
    assert response.status_code == 415, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "unsupported_content_encoding"
    assert list(problem["errors"]) == ["Content-Encoding"]
    assert "not supported" in problem["detail"]
    assert response["Accept-Encoding"] == "identity"
    assert not WorkflowInstance.objects.exists()


@pytest.mark.parametrize("encoding", ["identity", "Identity", "identity, identity", "identity,", " , identity"])
def test_content_encoding_identity_is_no_encoding(api_as, roles, encoding):
    """A list of codings that are all ``identity`` (RFC 9110's list syntax: empty members count for nothing) is
    no coding: ``identity, identity`` was a 415 "not supported", for a body sent exactly as asked."""
    # when
    client = api_as(roles.staff)
    response = client.post(
        "/api/instances/",
        {"workflow": "expense_approval", "input": ExpenseInputFactory()},
        **{"Content-Encoding": encoding},
    )

    # then
    assert response.status_code == 201, response.content[:300]


@pytest.mark.parametrize("encoding", ["identity, gzip", "gzip, identity", "identity;q=1"])
def test_a_list_of_codings_with_one_not_identity_is_a_415(api_as, roles, encoding):
    # when
    client = api_as(roles.staff)
    response = client.post(
        "/api/instances/", {"workflow": "expense_approval", "input": {}}, **{"Content-Encoding": encoding}
    )

    # then
    assert response.status_code == 415, response.content[:300]
    assert response.json()["code"] == "unsupported_content_encoding"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/schema/"),
        ("post", "/api/schema/?format=json"),
        ("post", "/api/docs/"),
    ],
)
def test_a_problem_is_json_whatever_the_endpoint_renders(api_as, roles, method, path):
    # given: the schema renders YAML by default and the docs HTML

    # when
    response = getattr(api_as(roles.staff).client, method)(path)

    # then: the problem is the API's, in JSON, as its Content-Type says
    assert 400 <= response.status_code < 500
    assert response["Content-Type"] == "application/problem+json"
    problem = json.loads(response.content)
    assert problem["status"] == response.status_code
    assert problem["title"]
    assert problem["detail"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("employee", {"name": "Sam"}),
        ("employee", ["Sam", "Alex"]),
        ("employee", True),
        ("description", {}),
        ("category", []),
    ],
)
def test_an_object_list_or_boolean_where_the_start_form_takes_one_value_is_a_400_naming_it(api_as, roles, field, value):
    # given: the start form's text field, which Django's forms would fill with str(value): "{'name': 'Sam'}"
    body = {"workflow": "expense_approval", "input": {**ExpenseInputFactory(), field: value}}

    # when
    response = api_as(roles.staff).post("/api/instances/", body)

    # then
    assert response.status_code == 400, response.content[:300]
    assert f"input.{field}" in response.json()["errors"], response.json()
    assert not WorkflowInstance.objects.exists()


def test_a_form_task_decision_with_an_object_for_a_text_field_is_a_400_naming_it(api_as, roles):
    # given: an "other" expense, team-approved: the managers' classification form is open
    from approvals.models import HumanTask, TaskState
    from approvals.services.base import APPROVE
    from approvals.services.tasks import task_decide

    instance = instance_start("expense_approval", ExpenseInputFactory(category="other"), initiator=roles.operator)
    task_decide(instance.tasks.get().pk, roles.staff, APPROVE)
    classify = HumanTask.objects.get(instance=instance, step__name="classify")
    from demo.workflows.expense_approval import ClassificationForm

    cost_centre = next(value for value, _ in ClassificationForm.base_fields["cost_centre"].choices if value)

    # when
    response = api_as(roles.manager).post(
        f"/api/tasks/{classify.pk}/decide/",
        {"decision": "submit", "data": {"cost_centre": cost_centre, "note": {"text": "see receipt"}}},
    )

    # then
    assert response.status_code == 400, response.content[:300]
    assert "data.note" in response.json()["errors"], response.json()
    assert HumanTask.objects.get(pk=classify.pk).state == TaskState.OPEN


def test_a_field_the_endpoint_does_not_take_is_a_400_naming_it_not_dropped(api_as, roles):
    """A typo in a field's name (``inputs``, ``businessKey``) was dropped without a word: the start went ahead
    without the business key the sender's signals then named, a decision without its comment."""
    # given: an expense waiting for its team approval
    instance = instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)
    task = instance.tasks.get()
    sent = [
        (
            roles.staff,
            "/api/instances/",
            {"workflow": "expense_approval", "input": ExpenseInputFactory(), "businessKey": "K-1"},
            "businessKey",
        ),
        (roles.staff2, f"/api/tasks/{task.pk}/decide/", {"decision": "approve", "coment": "fine"}, "coment"),
        (
            roles.operator,
            f"/api/instances/{instance.pk}/pause/",
            {"reason": "r", "untill": "2030-01-01T00:00:00Z"},
            "untill",
        ),
    ]
    for user, path, body, field in sent:
        # when
        response = api_as(user).post(path, body)

        # then
        assert response.status_code == 400, (path, response.content[:300])
        assert response["Content-Type"] == "application/problem+json"
        assert field in response.json()["errors"], response.json()
    assert WorkflowInstance.objects.count() == 1
    instance.refresh_from_db()
    task.refresh_from_db()
    assert (instance.state, task.state) == ("waiting", "open")


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/instances/?stat=failed", "stat"),
        ("/api/instances/?state=failed&businesskey=K-1", "businesskey"),
        ("/api/tasks/?scop=queue", "scop"),
        ("/api/workflows/expense_approval/?versoin=1", "versoin"),
        ("/api/audit/events/?acter=staff", "acter"),
        ("/api/audit/export.jsonl?sinse=2026-01-01T00:00:00Z", "sinse"),
        # an export is whole: a limit was ignored without a word
        ("/api/audit/export.csv?limit=10", "limit"),
    ],
)
def test_a_query_parameter_the_endpoint_does_not_take_is_a_400_naming_it(api_as, roles, path, field):
    """``?stat=failed`` (a typo) listed every instance, as if no filter had been asked for: a script working
    through "the failed ones" would have worked through all of them."""
    # given: one running instance, which no filter for failed ones lists
    instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)

    # when
    response = api_as(roles.admin).get(path)

    # then
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert field in response.json()["errors"], response.json()


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/instances/?business_key=", "business_key"),
        ("/api/instances/?state=failed&workflow=", "workflow"),
        ("/api/instances/?state=%20", "state"),
        ("/api/instances/?started_after=", "started_after"),
        ("/api/tasks/?scope=", "scope"),
        ("/api/audit/events/?actor=", "actor"),
        ("/api/audit/export.jsonl?instance=", "instance"),
        ("/api/workflows/expense_approval/?version=", "version"),
    ],
)
def test_a_filter_given_without_a_value_is_a_400_naming_it_not_no_filter(api_as, roles, path, field):
    """``?business_key=`` (a script's variable left empty) listed every instance, as if no filter had been asked
    for: a script working through "the instances of this key" would have worked through all. An empty ``limit``
    was refused already; an empty filter is no clearer about what was meant."""
    # given: one instance, with no business key
    instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)

    # when
    response = api_as(roles.admin).get(path)

    # then
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert list(response.json()["errors"]) == [field], response.json()


@pytest.mark.parametrize(
    ("path", "field"),
    [
        # the catalog is a list too: a filter it does not have answered the whole catalog
        ("/api/workflows/?name=no_such_flow", "name"),
        ("/api/workflows/?limit=1", "limit"),
        ("/api/workflows/?format=json&format=json", "format"),
        # one object: a parameter meant to narrow or shape it was ignored without a word
        ("/api/instances/{instance}/?state=failed", "state"),
        ("/api/tasks/{task}/?fields=id", "fields"),
        ("/api/instances/{instance}/?format=json&format=json", "format"),
    ],
)
def test_a_query_parameter_a_read_does_not_take_is_a_400_naming_it(api_as, roles, path, field):
    # given: a waiting expense and its task, which the manager sees
    instance = instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)
    path = path.format(instance=instance.pk, task=instance.tasks.get().pk)

    # when
    response = api_as(roles.manager).get(path)

    # then
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert list(response.json()["errors"]) == [field], response.json()


def test_the_reads_without_filters_still_take_format(api_as, roles):
    instance = instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)
    client = api_as(roles.manager)
    for path in (
        "/api/workflows/",
        "/api/workflows/?format=json",
        f"/api/instances/{instance.pk}/?format=json",
        f"/api/tasks/{instance.tasks.get().pk}/?format=json",
    ):
        assert client.get(path).status_code == 200, path


def test_the_page_parameters_and_format_are_taken_by_every_list(api_as, roles):
    instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)
    client = api_as(roles.admin)
    for path in (
        "/api/instances/?limit=5&format=json&state=waiting",
        "/api/tasks/?scope=queue&limit=5",
        "/api/audit/events/?limit=5&actor=staff",
        "/api/workflows/expense_approval/?version=1&format=json",
    ):
        assert client.get(path).status_code == 200, path


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/instances/{pk}/?included_data=all&included_data=all", "included_data"),
        ("/api/instances/{pk}/steps/?included_data=all&included_data=metadata", "included_data"),
        ("/api/instances/?state=running&state=failed", "state"),
        ("/api/audit/events/?since=2026-01-01T00:00:00Z&since=2026-01-02T00:00:00Z", "since"),
        ("/api/audit/export.csv?actor=a&actor=b", "actor"),
    ],
)
def test_a_parameter_given_twice_is_told_once_in_one_wording_whichever_it_is(api_as, roles, path, name):
    """``included_data`` twice was answered with its values ("One of: all, metadata") as if the value were wrong,
    and the trail's filters with the page's words ("From: given 2 times; pick one. Showing results without it.")
    under ``query``, for a request the API refuses."""
    # given
    instance = instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)

    # when
    response = api_as(roles.admin).get(path.format(pk=instance.pk))

    # then
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["errors"] == {name: ["Given 2 times: give it once."]}, problem
    assert problem["detail"] == f"{name}: given 2 times; give it once.", problem
