"""The least-privileged application role: runs the engine, appends audit events, and cannot rewrite them.

A real login role is created in the test database for each run (a unique name: the server is shared), given the
GRANTs of ``baton_audit_grants``, and used both as Django's connection and as a raw psycopg session. Its refusals
come from missing privileges and ownership, not from the append-only trigger (which lets TRUNCATE through in
``test_*`` databases): each assertion checks PostgreSQL's privilege error.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from orchestrator.audit import ACCOUNTS_CHAIN, Actor, append_standalone, verify_trail
from orchestrator.management.commands.baton_audit_grants import grant_statements
from orchestrator.models import AuditEvent, InstanceState
from orchestrator.services.instances import instance_start
from tests.factories import OrderInputFactory

pytestmark = pytest.mark.django_db(transaction=True)

DENIED = "permission denied for table orchestrator_auditevent"  # not the trigger's "append-only: ... refused"
# PostgreSQL says "table" for ALTER and DROP TABLE, "relation" for DROP TRIGGER.
NOT_OWNER = r"must be owner of (table|relation) orchestrator_auditevent"


@pytest.fixture
def app_role() -> Iterator[str]:
    """A fresh LOGIN role with the application's grants; dropped with everything granted to it afterwards."""
    role = f"baton_app_{uuid.uuid4().hex[:12]}"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        call_command("baton_audit_grants", role, "--apply")
        yield role
    finally:
        connection.close()  # a session borrowed by the role in the test is given back first
        with connection.cursor() as cursor:
            cursor.execute(f'DROP OWNED BY "{role}"')
            cursor.execute(f'DROP ROLE "{role}"')


@pytest.fixture
def as_role(app_role: str) -> Iterator[psycopg.Connection]:
    """A raw autocommit session as the application role on the test database."""
    db = connection.settings_dict
    with psycopg.connect(
        dbname=db["NAME"], user=app_role, host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, autocommit=True
    ) as session:
        yield session


@pytest.fixture
def django_as_role(app_role: str) -> Iterator[None]:
    """Django's own connection logs in as the application role for the test's body, then as the owner again."""
    connection.close()
    owner = connection.settings_dict["USER"]
    connection.settings_dict["USER"] = app_role
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["USER"] = owner


def test_the_application_role_runs_the_engine_and_appends_audit_events(django_as_role, run_steps):
    """Given Django connected as the application role, an order starts, runs to completion, account events are
    appended to their standalone chain, and the whole trail verifies: its normal writes need nothing more."""
    # given
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user")
        assert cursor.fetchone()[0].startswith("baton_app_")

    # when
    instance = instance_start("order_fulfilment", OrderInputFactory())
    run_steps(instance, advance=True)
    append_standalone(ACCOUNTS_CHAIN, actor=Actor.system("t"), action="user.changed", subject_type="user", subject_id=1)

    # then
    instance.refresh_from_db()
    assert instance.state == InstanceState.COMPLETED
    assert AuditEvent.objects.filter(instance=instance).count() == instance.audit_seq > 5
    assert verify_trail().breaks == []


@pytest.mark.parametrize(
    ("statement", "refusal"),
    [
        pytest.param("UPDATE orchestrator_auditevent SET reason = 'x'", DENIED, id="update"),
        pytest.param("DELETE FROM orchestrator_auditevent", DENIED, id="delete"),
        pytest.param("TRUNCATE orchestrator_auditevent", DENIED, id="truncate"),
        pytest.param("ALTER TABLE orchestrator_auditevent ADD COLUMN note text", NOT_OWNER, id="alter-table"),
        pytest.param("ALTER TABLE orchestrator_auditevent DISABLE TRIGGER USER", NOT_OWNER, id="disable-triggers"),
        pytest.param(
            "ALTER TABLE orchestrator_auditevent DISABLE TRIGGER baton_audit_no_update", NOT_OWNER, id="disable-one"
        ),
        pytest.param("DROP TRIGGER baton_audit_no_update ON orchestrator_auditevent", NOT_OWNER, id="drop-trigger"),
        pytest.param("DROP TRIGGER baton_audit_no_truncate ON orchestrator_auditevent", NOT_OWNER, id="drop-trunc"),
        pytest.param("DROP TABLE orchestrator_auditevent", NOT_OWNER, id="drop-table"),
        pytest.param(
            "SET session_replication_role = replica",
            'permission denied to set parameter "session_replication_role"',
            id="replica-mode",
        ),
    ],
)
def test_the_application_role_cannot_rewrite_the_audit_table(as_role, run_steps, statement, refusal):
    """Given audit events in the table, each way of rewriting them is refused to the application role by
    PostgreSQL's privileges (not by the trigger), and the events stay as they were."""
    # given
    instance = instance_start("order_fulfilment", OrderInputFactory())
    run_steps(instance)
    before = list(AuditEvent.objects.order_by("pk").values())
    with as_role.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM orchestrator_auditevent")
        assert cursor.fetchone()[0] == len(before) > 0

    # when
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused, as_role.cursor() as cursor:
        cursor.execute(statement)

    # then
    assert re.search(refusal, str(refused.value)), refused.value
    assert list(AuditEvent.objects.order_by("pk").values()) == before


def test_the_grants_are_printed_for_review(app_role, capsys):
    """Without --apply the command prints the statements: INSERT and SELECT only on the audit table."""
    # when
    call_command("baton_audit_grants", app_role)

    # then
    out = capsys.readouterr().out
    assert f'GRANT SELECT, INSERT ON TABLE "orchestrator_auditevent" TO "{app_role}";' in out
    assert f'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE "orchestrator_workflowinstance" TO "{app_role}";' in out
    assert "TRUNCATE" not in out.replace(f'REVOKE ALL ON TABLE "orchestrator_auditevent" FROM "{app_role}"', "")
    assert out.count(";") == len(grant_statements(app_role))


def test_a_role_name_that_is_not_an_identifier_is_refused():
    """The role name is put into SQL: anything but a plain identifier is refused before any statement runs."""
    with pytest.raises(Exception, match="not a plain PostgreSQL role name"):
        call_command("baton_audit_grants", 'x"; DROP TABLE orchestrator_auditevent; --')


@pytest.fixture
def bare_role() -> Iterator[str]:
    """A fresh LOGIN role with no grants yet; dropped afterwards."""
    role = f"baton_app_{uuid.uuid4().hex[:12]}"
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        yield role
    finally:
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute(f'DROP OWNED BY "{role}"')
            cursor.execute(f'DROP ROLE "{role}"')


def test_the_grants_run_twice_give_the_same_rights(bare_role):
    """Applying the grants again (after every migrate) changes nothing and still passes its own check."""
    # when
    call_command("baton_audit_grants", bare_role, "--apply")
    call_command("baton_audit_grants", bare_role, "--apply")

    # then
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT has_table_privilege(%s, 'orchestrator_auditevent', 'INSERT'), "
            "has_table_privilege(%s, 'orchestrator_auditevent', 'UPDATE')",
            [bare_role, bare_role],
        )
        assert cursor.fetchone() == (True, False)


@pytest.mark.parametrize("how", ["member-of-the-owner", "member-of-a-group-with-update"])
def test_a_role_that_inherits_rights_on_the_audit_table_is_not_reported_as_least_privileged(bare_role, how):
    """The REVOKE only takes back what was granted to the role itself: a role that is a member of the tables'
    owner, or of a group allowed to UPDATE the audit table, keeps those rights. --apply says so and fails, naming
    what the role can still do, instead of reporting success."""
    # given
    group = f"{bare_role}_grp"
    with connection.cursor() as cursor:
        if how == "member-of-the-owner":
            cursor.execute(f'GRANT "{connection.settings_dict["USER"]}" TO "{bare_role}"')
        else:
            cursor.execute(f'CREATE ROLE "{group}" NOLOGIN')
            cursor.execute(f'GRANT UPDATE, DELETE ON orchestrator_auditevent TO "{group}"')
            cursor.execute(f'GRANT "{group}" TO "{bare_role}"')
    try:
        # when
        with pytest.raises(CommandError) as failure:
            call_command("baton_audit_grants", bare_role, "--apply")

        # then
        message = str(failure.value)
        assert f"{bare_role} can still UPDATE, DELETE" in message
        if how == "member-of-the-owner":
            assert "owner" in message
    finally:
        if how != "member-of-the-owner":
            connection.close()
            with connection.cursor() as cursor:
                cursor.execute(f'DROP OWNED BY "{group}"')
                cursor.execute(f'DROP ROLE "{group}"')
