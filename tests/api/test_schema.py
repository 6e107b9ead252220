"""The OpenAPI schema documents every status an operation may answer with, in problem+json (api/schema.py)."""

from __future__ import annotations

import re

import pytest

EVENTS = "/api/audit/events/"


@pytest.fixture
def schema(api_as, roles):
    response = api_as(roles.admin).get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def test_every_operation_documents_the_common_problems_414_included(schema):
    """A query string past Baton's limit answers 414 before any view runs; the schema did not say so, and a client
    (schemathesis's long run) met a status it was not told of."""
    # given every operation of the schema
    operations = [
        (path, method, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]
    assert len(operations) > 20

    # then each documents the common problems, writes the write ones too, each as problem+json
    for path, method, op in operations:
        expected = {400, 401, 403, 404, 405, 414, 503} | ({409, 413, 415, 422} if method != "get" else set())
        for code in expected:
            response = op["responses"].get(str(code))
            assert response is not None, f"{method.upper()} {path} does not document {code}"
            assert "application/problem+json" in response["content"], f"{method.upper()} {path} {code}"


def test_the_audit_trails_times_are_documented_as_the_api_reads_them_with_their_offset(schema, api_as, roles):
    """The schema told an integrator that ``since``/``until`` without an offset are in the site's time zone (the
    page's rule); the API refuses such a time (400), as every other time it takes."""
    # given: what the schema says of since and until, in the trail and its exports
    said = {
        (path, parameter["name"]): (
            parameter.get("description", "") + " " + schema["paths"][path]["get"].get("description", "")
        )
        for path in ("/api/audit/events/", "/api/audit/export.jsonl", "/api/audit/export.csv")
        for parameter in schema["paths"][path]["get"]["parameters"]
        if parameter["name"] in ("since", "until")
    }
    assert len(said) == 6

    # then: an offset is asked for, nothing promises a naive time is read; and a naive time is refused indeed
    for where, text in said.items():
        assert "offset" in text, where
        assert "site's time zone" not in text, where
    response = api_as(roles.admin).get("/api/audit/events/?since=2026-11-01T09:00:00")
    assert response.status_code == 400
    assert "since" in response.json()["errors"]


def test_every_request_body_says_it_takes_only_its_own_fields(schema):
    """The views refuse a field a body does not take (a typo dropped without a word); the schema says so, so a
    client's generated code (and schemathesis) sends none."""
    requests = {name: c for name, c in schema["components"]["schemas"].items() if name.endswith("Request")}
    assert {"StartRequest", "SignalRequest", "DecideRequest", "SkipRequest"} <= set(requests)
    for name, component in requests.items():
        assert component.get("additionalProperties") is False, name
    # the free-form objects inside stay open: a start's input is the workflow's
    assert requests["StartRequest"]["properties"]["input"].get("additionalProperties", True) is not False


def test_the_interactive_docs_load_every_asset_from_this_site(client):
    """README, "The API": Swagger UI is served from this site, no CDN (a closed network, a strict CSP and privacy
    all need it): every script, style sheet and icon the page names is a static file Baton has."""
    from django.contrib.staticfiles import finders

    # when
    page = client.get("/api/docs/")
    html = page.content.decode()

    # then: nothing from elsewhere, and each asset is one of Baton's static files
    assets = re.findall(r"(?:src|href)=\"([^\"]+)\"", html)
    assert page.status_code == 200
    assert any(asset.endswith("swagger-ui-bundle.js") for asset in assets)  # the page names its assets at all
    assert re.findall(r"https?://", html) == []
    for asset in assets:
        assert asset.startswith("/static/"), asset
        assert finders.find(asset.removeprefix("/static/")), f"{asset} is not a static file"


def test_included_data_and_the_one_step_route_are_described(schema):
    """``included_data`` on the detail and the steps page (its values, its default), the step's own route, and the
    fields a metadata answer leaves out not required (else a client validating by the schema calls it wrong)."""
    # given
    paths, components = schema["paths"], schema["components"]["schemas"]

    # then: the parameter where it is taken, and only there
    for path in ("/api/instances/{id}/", "/api/instances/{id}/steps/"):
        [parameter] = [p for p in paths[path]["get"]["parameters"] if p["name"] == "included_data"]
        assert parameter["in"] == "query"
        assert parameter["schema"]["enum"] == ["all", "metadata"]
        assert parameter["schema"]["default"] == "all"
        assert "result" in parameter["description"]
    for path in ("/api/instances/{id}/tasks/", "/api/instances/{id}/steps/{step_id}/"):
        assert "included_data" not in {p["name"] for p in paths[path]["get"].get("parameters", [])}
    # the step alone: both path parameters, a Step, the detail's 404
    step = paths["/api/instances/{id}/steps/{step_id}/"]["get"]
    assert {p["name"] for p in step["parameters"] if p["in"] == "path"} == {"id", "step_id"}
    assert step["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Step"}
    assert "404" in step["responses"]
    # what metadata leaves out is optional; the rest of a step still required as before, url with it
    assert {"data", "data_digest"}.isdisjoint(components["InstanceDetail"]["required"])
    assert {"result", "error"}.isdisjoint(components["Step"]["required"])
    assert {"id", "url", "name", "kind"} <= set(components["Step"]["required"])
    assert {"steps", "steps_url"} <= set(components["InstanceDetail"]["required"])


def _parameter(schema, path, method, name):
    [parameter] = [p for p in schema["paths"][path][method].get("parameters", []) if p["name"] == name]
    return parameter


@pytest.mark.parametrize(
    "path", ["/api/instances/", "/api/tasks/", "/api/instances/{id}/steps/", "/api/instances/{id}/tasks/"]
)
def test_every_keyset_list_documents_its_limit_and_cursor_as_the_code_takes_them(schema, path):
    """The schema said ``limit`` is "an integer" and ``cursor`` "a string": 0, 101 and an empty cursor are 400s."""
    # when
    limit = _parameter(schema, path, "get", "limit")
    cursor = _parameter(schema, path, "get", "cursor")

    # then
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 25}
    assert cursor["schema"] == {"type": "string", "minLength": 1}
    trail = _parameter(schema, "/api/audit/events/", "get", "limit")
    assert (trail["schema"]["minimum"], trail["schema"]["maximum"]) == (1, 200)


def test_the_idempotency_key_and_the_workflow_version_are_documented_with_their_limits(schema):
    from api.services import KEY_MAX

    # when
    key = _parameter(schema, "/api/instances/", "post", "Idempotency-Key")
    version = _parameter(schema, "/api/workflows/{name}/", "get", "version")

    # then: the key's length and characters, the version's range, as the code refuses them
    assert key["in"] == "header"
    assert (key["schema"]["minLength"], key["schema"]["maxLength"]) == (1, KEY_MAX)
    assert re.fullmatch(key["schema"]["pattern"], "exp-2026-0042")
    assert not re.fullmatch(key["schema"]["pattern"], "a,b")
    assert not re.fullmatch(key["schema"]["pattern"], " a")
    assert version["schema"] == {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}


@pytest.mark.parametrize(
    "path", ["/api/instances/", "/api/tasks/", "/api/instances/{pk}/steps/", "/api/instances/{pk}/tasks/", EVENTS]
)
@pytest.mark.parametrize("name", ["cursor", "limit"])
def test_an_empty_cursor_or_limit_is_the_same_400_on_every_list(api_as, roles, path, name):
    """``cursor=`` was a 400 "not one this API gave out" on the instances, and the first page on the trail."""
    # given
    from orchestrator.services.instances import instance_start
    from tests.factories import ExpenseInputFactory

    instance = instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)

    # when
    response = api_as(roles.admin).get(f"{path.format(pk=instance.pk)}?{name}=")

    # then
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["errors"] == {name: ["Empty: give a value, or leave the parameter out."]}


@pytest.mark.parametrize("version", ["0", "2147483648", "x", "99999999999"])
def test_a_workflow_version_out_of_its_documented_range_is_a_400_naming_the_range(api_as, roles, version):
    # when
    response = api_as(roles.staff).get("/api/workflows/expense_approval/", {"version": version})

    # then
    assert response.status_code == 400
    assert response.json()["errors"] == {"version": ["A whole number from 1 to 2147483647."]}


def test_a_large_version_within_the_range_is_a_404_not_a_400(api_as, roles):
    assert api_as(roles.staff).get("/api/workflows/expense_approval/", {"version": "2147483647"}).status_code == 404


@pytest.mark.parametrize(
    ("component", "optional"),
    [
        ("Instance", set()),
        ("InstanceDetail", {"data", "data_digest"}),  # left out with included_data=metadata
        ("Step", {"error", "result"}),  # likewise
        ("TaskSummary", set()),
        ("Task", set()),
        ("TaskDetail", set()),
        ("ReceivedSignal", set()),
    ],
)
def test_every_key_an_answer_always_has_is_required_in_the_schema(schema, component, optional):
    """An instance's ``state`` and ``title``, a task's ``state``, a step's ``attempt``: keys every answer holds were
    not in ``required`` (model fields with a default), so a client generated from the schema typed them optional
    and made its callers check for a ``state`` that is always there."""
    # given
    body = schema["components"]["schemas"][component]

    # when
    not_required = set(body["properties"]) - set(body.get("required", []))

    # then: only what an answer may leave out is optional
    assert not_required == optional
