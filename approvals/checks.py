"""System checks of the workflows' escalation ladders (``manage.py check --database default``, and ``migrate``).

A rung that hands a task to a group (``Reassign(group=...)``, ``Escalate(group=...)``) names it by name, and a group
renamed or deleted since is not there when the rung fires: the sweep then gives the task to managers and operators,
titled with the missing name (approvals/services/deadlines.py). This check says so before a task gets there. A
warning, not an error: an error would stop ``migrate``, and a group is created by an admin, not by the code."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.db import DatabaseError

MISSING_RUNG_GROUP = "approvals.W001"


def ladder_groups(app_configs: Any = None, databases: Any = None, **_kwargs: Any) -> list[checks.CheckMessage]:
    """A warning per escalation rung of a registered definition (every version: instances still run old ones)
    whose group does not exist. Needs the database (``databases`` holds an alias: ``check --database default``,
    ``migrate``); without it, or before the auth tables exist, nothing is said. Returns the warnings; raises
    nothing."""
    if not databases:
        return []
    from django.contrib.auth.models import Group

    from orchestrator import registry
    from orchestrator.dsl import Escalate, Human, Reassign

    rungs = [
        (workflow, node, number, rung.group)
        for workflow in registry.all_definitions()
        for node in workflow.nodes.values()
        if isinstance(node, Human)
        for number, rung in enumerate(node.escalation, start=1)
        if isinstance(rung, Reassign) or (isinstance(rung, Escalate) and not rung.fail_instance)
    ]
    if not rungs:
        return []
    try:
        known = set(Group.objects.filter(name__in={group for *_, group in rungs}).values_list("name", flat=True))
    except DatabaseError:
        return []  # the auth tables are not there yet (the first migrate)
    return [
        checks.Warning(
            f"{workflow.name} v{workflow.version}, step {node.name!r}: escalation rung {number} names group "
            f"{group!r}, which does not exist.",
            hint=(
                "Create the group (or rename it back), or change the rung. Until then that rung gives the task to "
                "managers and operators, titled with the missing name."
            ),
            id=MISSING_RUNG_GROUP,
        )
        for workflow, node, number, group in rungs
        if group not in known
    ]
