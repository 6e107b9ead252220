"""orchestrator 0014: business keys stored before keys were normalised are rewritten in Unicode NFC, in batches,
on PostgreSQL (through Django's migration executor) and on SQLite (``manage.py migrate`` on a demo database).

A row whose rewrite would lose or merge anything is left as stored and named in the migration's output: a key
whose NFC form is longer than the column holds, and one whose NFC form another row already has under a unique
index (Baton's schema has none on the business key; a deployment may add its own).
"""

from __future__ import annotations

import importlib
import sqlite3
import unicodedata
from pathlib import Path

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from tests.demo.test_app import manage

BEFORE = ("orchestrator", "0013_actor_label_fits_a_long_username")
MIGRATION = ("orchestrator", "0014_business_keys_nfc")

NFD = "Cafe\u0301-1"  # e + a combining acute accent, as some keyboards and systems send it
NFC = unicodedata.normalize("NFC", NFD)  # é as one code point
TAKEN_NFD = "Cafe\u0301-2"
TAKEN_NFC = unicodedata.normalize("NFC", TAKEN_NFD)
# U+0958 (Devanagari qa) is excluded from composition: its NFC form is two code points, so 60 of them are 120.
TOO_LONG = "\u0958" * 60
UNCHANGED = ["ORD-7", "Cr\u00e8me-3", "", "\u00c5ngstr\u00f6m"]  # already NFC, or no key

# What each row is stored as before the migration, and what it holds after.
ROWS = [(NFD, NFC), (TAKEN_NFD, TAKEN_NFD), (TAKEN_NFC, TAKEN_NFC), (TOO_LONG, TOO_LONG)] + [
    (key, key) for key in UNCHANGED
]
# A deployment's own unique index on the key: the rewrite of TAKEN_NFD collides with TAKEN_NFC under it.
UNIQUE_INDEX = "test_instance_business_key_unique"
CREATE_UNIQUE_INDEX = (
    f"CREATE UNIQUE INDEX {UNIQUE_INDEX} ON orchestrator_workflowinstance (business_key) WHERE business_key <> ''"
)


def assert_reported(output: str, ids: dict[str, int]) -> None:
    """The output names each row left as stored, with why, and says how many were rewritten."""
    lines = output.splitlines()
    too_long = [line for line in lines if f"instance {ids[TOO_LONG]}:" in line]
    taken = [line for line in lines if f"instance {ids[TAKEN_NFD]}:" in line]
    assert len(too_long) == 1, output
    assert "120 characters" in too_long[0], output
    assert len(taken) == 1, output
    assert "unique" in taken[0], output
    assert ascii(TAKEN_NFD) in taken[0], output
    assert "1 business key rewritten in NFC, 2 left as stored" in output, output
    assert not [line for line in lines if any(f"instance {ids[key]}:" in line for key in [*UNCHANGED, NFD])]


@pytest.mark.django_db(transaction=True)
def test_postgresql_keys_are_rewritten_in_nfc_and_a_collision_is_left_and_named(capsys, monkeypatch):
    # given: the schema before the migration (migrated back through it), a deployment's unique index on the key,
    # and keys as they were stored
    executor = MigrationExecutor(connection)
    executor.migrate([BEFORE])
    Instance = executor.loader.project_state([BEFORE]).apps.get_model("orchestrator", "WorkflowInstance")
    ids = {
        stored: Instance.objects.create(workflow_name="order_fulfilment", workflow_version=1, business_key=stored).pk
        for stored, _ in ROWS
    }
    with connection.cursor() as cursor:
        cursor.execute(CREATE_UNIQUE_INDEX)
    capsys.readouterr()
    monkeypatch.setattr(importlib.import_module(f"{MIGRATION[0]}.migrations.{MIGRATION[1]}"), "BATCH", 3)
    try:
        # when, with batches smaller than the rows, so that several run
        executor = MigrationExecutor(connection)
        executor.migrate([MIGRATION])
        output = capsys.readouterr().out
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP INDEX IF EXISTS {UNIQUE_INDEX}")
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())

    # then
    after = dict(Instance.objects.filter(pk__in=ids.values()).values_list("pk", "business_key"))
    assert {stored: after[ids[stored]] for stored, _ in ROWS} == dict(ROWS)
    assert_reported(output, ids)


INSERT = (
    "INSERT INTO orchestrator_workflowinstance (workflow_name, workflow_version, state, title, business_key, data, "
    "input_hash, outcome, error, created_at, updated_at, audit_seq, audit_head) "
    "VALUES ('order_fulfilment', 1, 'running', '', ?, '{}', '', '', '', '2026-01-01', '2026-01-01', 0, '')"
)


def test_sqlite_keys_are_rewritten_in_nfc_and_a_collision_is_left_and_named(tmp_path: Path):
    # given: a demo database migrated to before the rewrite, its keys as they were stored, a unique index on them
    database = tmp_path / "baton.sqlite3"
    manage(database, "migrate", "orchestrator", BEFORE[1], "--noinput", demo_app="1")
    with sqlite3.connect(database) as conn:
        ids = {stored: conn.execute(INSERT, (stored,)).lastrowid for stored, _ in ROWS}
        conn.execute(CREATE_UNIQUE_INDEX)

    # when
    output = manage(database, "migrate", "--noinput", demo_app="1")

    # then
    with sqlite3.connect(database) as conn:
        after = dict(conn.execute("SELECT id, business_key FROM orchestrator_workflowinstance").fetchall())
    assert {stored: after[ids[stored]] for stored, _ in ROWS} == dict(ROWS)
    assert_reported(output, {key: int(pk or 0) for key, pk in ids.items()})
