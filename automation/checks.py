"""System checks of the schedules declared in code (``manage.py check``, and ``migrate`` before it migrates).

Warnings, not errors: an error stops ``migrate``, and with it the sync of every other declared schedule; the sync
leaves the declaration out and the schedules pages say so too (docs/architecture.md, "Scheduled starts")."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.db import DatabaseError

# The check id of each kind of declaration left out (automation.schedules.LEFT_OUT_KINDS); "not_synced" is not a
# fault of the declaration (before the first migrate every declaration is not synced yet): no check says it.
IDS = {
    "twice": "automation.W001",
    "clash": "automation.W002",
    "refused": "automation.W003",
    "old_version": "automation.W004",
}


def declared_schedules(app_configs: Any = None, databases: Any = None, **_kwargs: Any) -> list[checks.CheckMessage]:
    """A warning per declared schedule the sync leaves out. Without a database (``manage.py check``) only what the
    code alone says (a name declared by two workflows); with one (``migrate``, ``check --database default``) also a
    name an admin's schedule has and an input the start form refuses."""
    from automation.schedules import LeftOut, declared_left_out, declared_twice

    left: list[LeftOut] = []
    if databases:
        try:
            left = declared_left_out()
        except DatabaseError:
            left = []  # the table is not there yet (the first migrate): the code's own faults below
    if not left:
        left = declared_twice()
    return [
        checks.Warning(
            f"Schedule {item.name!r} declared in code ({', '.join(item.declared_by)}): {item.reason}",
            hint="The schedules list (/automation/) shows it under 'Declared in code, not running' until it is fixed.",
            id=IDS[item.kind],
        )
        for item in left
        if item.kind in IDS
    ]
