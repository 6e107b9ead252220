"""Make the audit table append-only in the database itself, so no code path (or psql session) can rewrite it."""

from django.db import migrations

PG_FORWARD = r"""
CREATE OR REPLACE FUNCTION baton_audit_refuse() RETURNS trigger AS $$
BEGIN
    -- A throw-away test database (Django names them test_*) may be emptied between tests; nothing else may.
    IF TG_OP = 'TRUNCATE' AND current_database() LIKE 'test\_%' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'orchestrator_auditevent is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER baton_audit_no_update BEFORE UPDATE OR DELETE ON orchestrator_auditevent
    FOR EACH ROW EXECUTE FUNCTION baton_audit_refuse();
CREATE TRIGGER baton_audit_no_truncate BEFORE TRUNCATE ON orchestrator_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION baton_audit_refuse();
"""
PG_BACKWARD = """
DROP TRIGGER IF EXISTS baton_audit_no_update ON orchestrator_auditevent;
DROP TRIGGER IF EXISTS baton_audit_no_truncate ON orchestrator_auditevent;
DROP FUNCTION IF EXISTS baton_audit_refuse();
"""
SQLITE_FORWARD = [
    "CREATE TRIGGER baton_audit_no_update BEFORE UPDATE ON orchestrator_auditevent "
    "BEGIN SELECT RAISE(ABORT, 'orchestrator_auditevent is append-only: UPDATE refused'); END;",
    "CREATE TRIGGER baton_audit_no_delete BEFORE DELETE ON orchestrator_auditevent "
    "BEGIN SELECT RAISE(ABORT, 'orchestrator_auditevent is append-only: DELETE refused'); END;",
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS baton_audit_no_update;",
    "DROP TRIGGER IF EXISTS baton_audit_no_delete;",
]


def forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_FORWARD, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_FORWARD:
            schema_editor.execute(statement)


def backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_BACKWARD, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_BACKWARD:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("orchestrator", "0001_initial")]

    operations = [migrations.RunPython(forward, backward)]
