"""Print (or apply) the GRANTs that make a PostgreSQL role Baton's least-privileged application role."""

from __future__ import annotations

import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connection, transaction

from orchestrator.models import AuditEvent

# Tables the application only reads: their rows are written by ``migrate``, which runs as the owner.
READ_ONLY = {"django_migrations"}


def grant_statements(role: str) -> list[str]:
    """The SQL that gives ``role`` normal rights on every table of Baton's schema except the audit table, where it
    may only INSERT and SELECT (README, "Production"). Run as the tables' owner after every ``migrate`` that adds
    tables. Raises ``CommandError`` for a role name that is not a plain identifier.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", role):
        raise CommandError(f"{role!r} is not a plain PostgreSQL role name (letters, digits, '_')")
    quote = connection.ops.quote_name
    audit = AuditEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_database(), current_schema()")
        database, schema = cursor.fetchone()
        tables = connection.introspection.table_names(cursor)
    statements = [
        f"GRANT CONNECT ON DATABASE {quote(database)} TO {quote(role)}",
        f"GRANT USAGE ON SCHEMA {quote(schema)} TO {quote(role)}",
    ]
    for table in sorted(tables):
        if table == audit:
            # Append-only by privilege, not only by trigger: no UPDATE, DELETE or TRUNCATE to bypass, and as a
            # non-owner the role cannot ALTER the table, disable or drop its triggers.
            statements.append(f"REVOKE ALL ON TABLE {quote(table)} FROM {quote(role)}")
            statements.append(f"GRANT SELECT, INSERT ON TABLE {quote(table)} TO {quote(role)}")
        elif table in READ_ONLY:
            statements.append(f"GRANT SELECT ON TABLE {quote(table)} TO {quote(role)}")
        else:
            statements.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {quote(table)} TO {quote(role)}")
    statements.append(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {quote(schema)} TO {quote(role)}")
    return statements


# What the application role must not be able to do to the audit table (in role_problems' query, in this order).
FORBIDDEN = ("UPDATE", "DELETE", "TRUNCATE", "TRIGGER")


def role_problems(role: str) -> list[str]:
    """What ``role`` can still do to the audit table after the GRANTs: privileges it inherits (a REVOKE takes back
    only what was granted to the role itself, not what a group it belongs to holds), membership of the table's
    owner (which may ALTER the table and disable its triggers) and superuser. Empty when it is least-privileged.
    ``role`` must already be checked by :func:`grant_statements`.
    """
    audit = AuditEvent._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT has_table_privilege(%(role)s, c.oid, 'UPDATE'), has_table_privilege(%(role)s, c.oid, 'DELETE'), "
            "has_table_privilege(%(role)s, c.oid, 'TRUNCATE'), has_table_privilege(%(role)s, c.oid, 'TRIGGER'), "
            "c.relowner::regrole::text, pg_has_role(%(role)s, c.relowner, 'MEMBER'), r.rolsuper "
            "FROM pg_class c, pg_roles r WHERE c.oid = %(table)s::regclass AND r.rolname = %(role)s",
            {"role": role, "table": audit},
        )
        row = cursor.fetchone()
    if row is None:
        return [f"role {role} does not exist"]
    *allowed, owner, owns, superuser = row
    problems = []
    if superuser:
        problems.append(f"{role} is a superuser")
    if owns:
        problems.append(f"{role} is, or is a member of, the table's owner {owner}")
    can = [privilege for privilege, held in zip(FORBIDDEN, allowed, strict=True) if held]
    if can:
        problems.append(f"{role} can still {', '.join(can)} on {audit}")
    return problems


class Command(BaseCommand):
    help = (
        "Print the GRANTs for Baton's application role ROLE (INSERT and SELECT only on the audit table, normal "
        "rights elsewhere); --apply runs them and then checks that the role cannot rewrite the audit table by any "
        "other path (inherited rights, the owner's membership, superuser). Run as the owner of the tables, after "
        "migrate."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("role", help="the existing login role the web, worker and beat processes use")
        parser.add_argument("--apply", action="store_true", help="run the statements instead of printing them")

    def handle(self, *args: Any, **options: Any) -> None:
        if connection.vendor != "postgresql":
            raise CommandError("roles and grants need PostgreSQL")
        statements = grant_statements(options["role"])
        if not options["apply"]:
            self.stdout.write(";\n".join(statements) + ";")
            return
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [options["role"]])
            exists = cursor.fetchone() is not None
        if not exists:
            raise CommandError(
                f"role {options['role']} does not exist: create it first, as a superuser "
                f"(CREATE ROLE {options['role']} LOGIN PASSWORD '...'; README, \"Audit trail\"), then run this again."
            )
        current = ""
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                for statement in statements:
                    current = statement
                    cursor.execute(statement)
        except DatabaseError as error:
            # Typically run as a role that does not own the tables: nothing was applied (one transaction).
            raise CommandError(
                f"nothing applied: {current} failed: {str(error).strip()}. Run this as the owner of the tables."
            ) from None
        problems = role_problems(options["role"])
        if problems:
            raise CommandError(
                f"{len(statements)} statements applied, but the role is not least-privileged: "
                + "; ".join(problems)
                + ". Remove its membership of those roles (or its superuser flag) and run this again."
            )
        self.stdout.write(self.style.SUCCESS(f"{len(statements)} statements applied for role {options['role']}"))
