"""orchestrator.rows: the hot path's hand-built SQL must store and load exactly what the ORM would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from approvals.models import Notification
from orchestrator import rows
from orchestrator.models import AuditEvent, StepRun, WorkflowInstance

pytestmark = pytest.mark.django_db

AWKWARD = {
    "text": "quote ' double \" backslash \\ percent %s %(x)s",
    "unicode": "Zoë · 東京 · 🚚",
    "nested": {"list": [1, 2.5, None, True, {"deep": []}], "empty": {}},
    "number": 12345678901234,
}


def test_an_inserted_row_reads_back_equal_through_the_orm_and_through_rows():
    """Every field kind the engine writes (text, JSON, times with microseconds, NULLs, FKs) survives the trip."""
    # given
    when = datetime(2026, 11, 27, 7, 35, 1, 500608, tzinfo=UTC)
    instance = WorkflowInstance(
        workflow_name="bench_approval", workflow_version=1, title=AWKWARD["text"], data=AWKWARD, paused_until=when
    )

    # when
    rows.insert(instance)

    # then
    stored = WorkflowInstance.objects.get(pk=instance.pk)
    assert (stored.title, stored.data, stored.paused_until, stored.finished_at) == (
        AWKWARD["text"],
        AWKWARD,
        when,
        None,
    )
    assert stored.idempotency_key is None
    loaded = rows.get(WorkflowInstance, instance.pk)
    assert loaded is not None
    assert {f.attname: getattr(loaded, f.attname) for f in WorkflowInstance._meta.concrete_fields} == {
        f.attname: getattr(stored, f.attname) for f in WorkflowInstance._meta.concrete_fields
    }
    assert not loaded._state.adding


def test_a_guarded_update_writes_only_while_its_guard_holds():
    """update(..., where=...) is the engine's fence: a row that moved on is left alone and the caller told."""
    # given
    instance = WorkflowInstance.objects.create(workflow_name="bench_approval", workflow_version=1)
    step = StepRun.objects.create(instance=instance, name="prepare", kind="task", state="running", attempt=2)
    step.error = "late"

    # when
    stale = rows.update(step, ["error"], where="state = %s AND attempt = %s", params=["running", 1])
    current = rows.update(step, ["error"], where="state = %s AND attempt = %s", params=["running", 2])

    # then
    assert (stale, current) == (False, True)
    assert StepRun.objects.get(pk=step.pk).error == "late"


def test_rows_inserted_first_land_with_the_update_in_one_statement(django_assert_num_queries, users):
    """A unit's audit events and notifications are written with its instance update, in one round trip."""
    # given
    instance = WorkflowInstance.objects.create(workflow_name="bench_approval", workflow_version=1)
    now = datetime.now(UTC)
    events = [
        AuditEvent(
            chain=f"test:{instance.pk}",
            seq=seq,
            hash=f"{seq:064d}",
            occurred_at=now + timedelta(microseconds=seq),
            actor_label="system:test",
            action="test.event",
            instance=instance,
            subject_type="instance",
            subject_id=instance.pk,
            payload=AWKWARD,
        )
        for seq in (1, 2, 3)
    ]
    bell = Notification(user=users.staff, kind="test", message="hello", instance_id=instance.pk)
    instance.audit_seq = 3

    # when
    with django_assert_num_queries(1):
        rows.update(instance, ["audit_seq"], insert_first=[*events, bell])

    # then
    stored = list(AuditEvent.objects.filter(chain=f"test:{instance.pk}").order_by("seq"))
    assert [(e.seq, e.payload, e.occurred_at) for e in stored] == [(e.seq, e.payload, e.occurred_at) for e in events]
    assert Notification.objects.filter(user=users.staff, kind="test").count() == 1
    assert WorkflowInstance.objects.get(pk=instance.pk).audit_seq == 3


def _prepared_statements() -> list[str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def test_hot_path_statements_are_prepared_once_per_session():
    """PostgreSQL parses and plans a hot-path statement once per session, then only binds and runs it."""
    # given
    instance = WorkflowInstance.objects.create(workflow_name="bench_approval", workflow_version=1)

    # when the same read runs twice
    first = rows.select(
        [(WorkflowInstance, "i")], "FROM orchestrator_workflowinstance i WHERE i.id = %s", [instance.pk]
    )
    again = rows.select(
        [(WorkflowInstance, "i")], "FROM orchestrator_workflowinstance i WHERE i.id = %s", [instance.pk]
    )

    # then it was prepared, once, with its parameter bound on the server
    assert first[0][0].pk == again[0][0].pk == instance.pk
    prepared = [s for s in _prepared_statements() if "FROM orchestrator_workflowinstance i WHERE i.id = $1" in s]
    assert len(prepared) == 1


def test_a_prepared_statement_shows_in_django_s_query_log_with_its_values():
    """DEBUG's query log and CaptureQueriesContext (the query-count pins) see prepared statements as text."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    # given
    instance = WorkflowInstance.objects.create(workflow_name="bench_approval", workflow_version=1)

    # when
    with CaptureQueriesContext(connection) as captured:
        rows.get(WorkflowInstance, instance.pk)

    # then
    assert len(captured.captured_queries) == 1
    assert captured.captured_queries[0]["sql"].endswith(f'WHERE t."id" = {instance.pk}')


def test_prepared_statements_can_be_turned_off(settings):
    """Behind a proxy that cannot carry prepared statements, BATON_PREPARED_STATEMENTS=0 binds on the client."""
    # given
    settings.BATON_PREPARED_STATEMENTS = False
    instance = WorkflowInstance.objects.create(workflow_name="bench_approval", workflow_version=1)

    # when
    found = rows.select(
        [(WorkflowInstance, "i")], "FROM orchestrator_workflowinstance i WHERE i.id = %s AND i.id > 0", [instance.pk]
    )

    # then
    assert found[0][0].pk == instance.pk
    assert not [s for s in _prepared_statements() if "i.id > 0" in s]
