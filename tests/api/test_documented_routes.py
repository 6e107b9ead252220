"""Every API path README and docs/ name resolves to a real route, not to the catch-all problem+json 404
(docs/architecture.md sent webhook receivers to `GET /api/audit/`, which does not exist)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.urls import resolve

from api import problems

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A path in backticks or after GET/POST: /api/... up to the query string; {placeholders} stand for an id or a name.
PATH = re.compile(r"(?:`|(?:GET|POST) )(/api/[A-Za-z0-9_{}./-]*)")


def documented_paths() -> list[tuple[str, str]]:
    found = set()
    for document in DOCUMENTS:
        # the access matrix's rows of the catch-all name unserved paths on purpose
        text = "\n".join(line for line in document.read_text().splitlines() if "<any:rest>" not in line)
        for path in PATH.findall(text):
            if path.endswith(".py") or path.rstrip("/") == "/api":
                continue  # a test file's name, or the API's root named as a prefix
            found.add((document.name, path))
    return sorted(found)


@pytest.mark.parametrize(("document", "path"), documented_paths())
def test_a_documented_api_path_is_a_route(document, path):
    # given: placeholders as a client fills them in
    concrete = re.sub(r"\{[a-z_]*(?:id|instance|task|token|step)[a-z_]*\}|\{(?:order|waiting|escalation)\}", "7", path)
    concrete = re.sub(r"\{name\}", "expense_approval", concrete)

    # when
    match = resolve(concrete)

    # then
    assert match.func is not problems.not_found, f"{document} names {path}, which no route serves"
