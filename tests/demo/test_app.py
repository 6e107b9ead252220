"""The demo is an app of its own: production leaves it out (no demo table, no demo workflows), demo mode and
``BATON_DEMO_APP=1`` put it in, and a database migrated before the move keeps its ledger when it migrates on.

Each case runs ``manage.py`` in a fresh interpreter on a SQLite file of its own: which apps are installed is
decided when settings load, so it cannot change inside this test process.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEDGER_COLUMNS = "service, operation, idempotency_key, amount, reference, calls, created_at"
OLD_ROW = ("payments", "charge", "order-7-charge", "12.50", "PAY-0123456789", 2, "2026-01-02 03:04:05.000006")


def manage(database: Path, *args: str, demo_app: str) -> str:
    """``manage.py args`` in demo mode on ``database`` with ``BATON_DEMO_APP=demo_app``; its stdout."""
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "baton_site.settings",
        "BATON_MODE": "demo",
        "BATON_SQLITE_PATH": str(database),
        "BATON_DEMO_APP": demo_app,
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def tables(database: Path) -> set[str]:
    with sqlite3.connect(database) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


CATALOG = "from orchestrator import registry; import json; print(json.dumps([w.name for w in registry.latest_all()]))"


@pytest.mark.parametrize(
    ("demo_app", "kept", "catalog"),
    [("0", None, []), ("1", [OLD_ROW], ["expense_approval", "order_fulfilment"])],
)
def test_a_database_from_before_the_move_migrates_forward_with_or_without_the_demo(tmp_path, demo_app, kept, catalog):
    """With the demo app the old engine-owned ledger's rows move to the demo's table (``created_at`` as it was)
    and the demo workflows are listed; without it the old table goes, no demo table is made and the catalog
    has no demo workflow."""
    # given: a database as it was before the ledger moved, with one entry in the old table
    database = tmp_path / "baton.sqlite3"
    manage(database, "migrate", "orchestrator", "0007", "--noinput", demo_app="1")
    with sqlite3.connect(database) as conn:
        conn.execute(f"INSERT INTO orchestrator_demoledger ({LEDGER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", OLD_ROW)  # noqa: S608

    # when
    manage(database, "migrate", "--noinput", demo_app=demo_app)
    found = json.loads(manage(database, "shell", "-c", CATALOG, demo_app=demo_app).strip().splitlines()[-1])

    # then
    assert "orchestrator_demoledger" not in tables(database)
    assert found == catalog
    if kept is None:
        assert not {name for name in tables(database) if name.startswith("demo_")}
        return
    with sqlite3.connect(database) as conn:
        rows = conn.execute(f"SELECT {LEDGER_COLUMNS} FROM demo_demoledger").fetchall()  # noqa: S608
    assert [(*row[:3], Decimal(str(row[3])), *row[4:]) for row in rows] == [
        (*row[:3], Decimal(row[3]), *row[4:]) for row in kept
    ]
