"""The OpenAPI schema documents every status an operation may answer with, in problem+json (api/schema.py)."""

from __future__ import annotations

import pytest


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
