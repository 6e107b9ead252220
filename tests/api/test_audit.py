"""The audit trail through the API: the admin timeline's filters (its own form), keyset pages, and the page's
signed exports, which verify offline; admins only, as the /audit/ pages."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from django.core.management import call_command

from orchestrator.audit import ACCESS_CHAIN
from orchestrator.models import AuditEvent
from orchestrator.services.instances import instance_start
from tests.factories import ExpenseInputFactory

pytestmark = pytest.mark.django_db

EVENTS = "/api/audit/events/"


@pytest.fixture
def started(roles):
    """Three expenses started by staff: each writes its own events into the trail."""
    return [instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff) for _ in range(3)]


def test_the_admin_reads_one_instances_events_in_the_trails_own_words(api_as, roles, started):
    # when
    response = api_as(roles.admin).get(EVENTS, {"instance": started[1].pk})

    # then: the instance's events, newest first, each as the export writes it (with its place in its chain)
    assert response.status_code == 200, response.content
    body = response.json()
    expected = list(AuditEvent.objects.filter(instance=started[1]).order_by("-occurred_at", "-id"))
    assert [e["id"] for e in body["results"]] == [e.pk for e in expected]
    first = body["results"][-1]
    assert (first["action"], first["instance_id"], first["actor_label"]) == (
        "instance.started",
        started[1].pk,
        "user:staff",
    )
    assert {"chain", "seq", "hash", "prev_hash", "occurred_at", "payload", "request_meta"} <= set(first)
    assert body["next"] is None


@pytest.mark.parametrize(
    ("params", "check"),
    [
        ({"action": "instance.started"}, lambda e: e["action"] == "instance.started"),
        ({"action": "task."}, lambda e: e["action"].startswith("task.")),
        ({"actor": "staff"}, lambda e: e["actor_label"] == "user:staff"),
        ({"workflow": "expense_approval"}, lambda e: e["instance_id"] is not None),
    ],
)
def test_the_timeline_filters_narrow_the_events(api_as, roles, started, params, check):
    response = api_as(roles.admin).get(EVENTS, {**params, "limit": 200})

    assert response.status_code == 200
    results = response.json()["results"]
    assert results
    assert all(check(event) for event in results)


def test_the_cursor_walks_every_event_once_even_while_new_ones_come(api_as, roles, started):
    # given
    client = api_as(roles.admin)
    expected = list(
        AuditEvent.objects.filter(instance__in=started).order_by("-occurred_at", "-id").values_list("pk", flat=True)
    )
    seen: list[int] = []

    # when: two at a time, with a new instance started between pages
    page = client.get(EVENTS, {"workflow": "expense_approval", "limit": 2}).json()
    while True:
        seen.extend(e["id"] for e in page["results"])
        instance_start("expense_approval", ExpenseInputFactory(), initiator=roles.staff)
        if not page["next"]:
            break
        page = client.get(page["next"]).json()

    # then: the events that were there, in order, none twice (the newer ones belong to the first page's side)
    assert seen == expected


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"instance": "abc"}, "instance"),
        ({"instance": "0"}, "instance"),
        ({"subject_id": "-1"}, "subject_id"),
        ({"actor": "a b"}, "actor"),
        ({"action": "x" * 61}, "action"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-02T00:00Z", "until": "2026-01-01T00:00Z"}, "until"),
        ({"since": "2026-11-30T00:00:00"}, "since"),  # naive: the API wants the offset, as its other times
        ({"until": "2026-11-30 09:00"}, "until"),
        ({"q": "a\x00b"}, "q"),
        ({"request_id": "<script>"}, "request_id"),
        ({"actor": ["a", "b"]}, "actor"),
        ({"cursor": "garbage"}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "ten"}, "limit"),
    ],
)
def test_a_bad_filter_is_a_400_problem_naming_it(api_as, roles, started, params, field):
    response = api_as(roles.admin).get(EVENTS, params)

    assert response.status_code == 400, response.content
    assert response["Content-Type"] == "application/problem+json"
    assert field in response.json()["errors"], response.json()


@pytest.mark.parametrize("path", [EVENTS, "/api/audit/export.jsonl", "/api/audit/export.csv"])
def test_only_admins_read_the_trail(api_as, roles, started, path):
    answers = {
        role: api_as(getattr(roles, role) if role != "anonymous" else None).get(path).status_code
        for role in ("anonymous", "staff", "manager", "operator", "admin")
    }

    assert answers == {"anonymous": 401, "staff": 403, "manager": 403, "operator": 403, "admin": 200}


def verify(path: Path) -> str:
    out = io.StringIO()
    call_command("baton_verify_audit", file=str(path), stdout=out, stderr=io.StringIO())
    return out.getvalue()


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_an_api_export_verifies_offline_and_is_recorded(api_as, roles, started, tmp_path, kind):
    # given
    expected = AuditEvent.objects.filter(instance=started[0]).count()

    # when
    response = api_as(roles.admin).get(f"/api/audit/export.{kind}", {"instance": started[0].pk})
    path = tmp_path / f"export.{kind}"
    path.write_bytes(b"".join(response.streaming_content))

    # then: the page's own signed format, every line verifying; the export is on the access chain once
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/x-ndjson" if kind == "jsonl" else "text/csv")
    assert "attachment" in response["Content-Disposition"]
    out = verify(path)
    assert f"{expected} events" in out
    assert "every line verifies" in out
    exported = AuditEvent.objects.filter(chain=ACCESS_CHAIN, action="audit.exported")
    assert [(e.actor_label, e.payload["format"], e.payload["filters"]) for e in exported] == [
        ("user:admin", kind, {"instance": str(started[0].pk)})
    ]
    if kind == "jsonl":
        header = json.loads(path.read_text().splitlines()[0])
        assert (header["record"], header["generated_by"]) == ("export", "admin")


def test_a_bad_export_filter_is_a_problem_and_exports_nothing(api_as, roles, started):
    response = api_as(roles.admin).get("/api/audit/export.jsonl", {"since": "soon"})

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert "since" in response.json()["errors"]
    assert not AuditEvent.objects.filter(action="audit.exported").exists()


@pytest.mark.parametrize("path", ["/api/audit/export.jsonl", "/api/audit/export.csv"])
def test_a_head_request_for_an_export_records_no_export(api_as, roles, started, path):
    # given: an export is recorded on the access chain as it is handed out; a HEAD hands nothing out
    client = api_as(roles.admin)
    before = AuditEvent.objects.filter(action="audit.exported").count()

    # when
    head = client.client.head(path, headers=client.headers)

    # then
    assert head.status_code == 200
    assert AuditEvent.objects.filter(action="audit.exported").count() == before
