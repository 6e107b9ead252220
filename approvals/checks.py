"""System checks of the workflows' escalation ladders (``manage.py check --database default``, and ``migrate``).

A rung that hands a task to a group (``Reassign(group=...)``, ``Escalate(group=...)``) names it by name, and a group
renamed or deleted since is not there when the rung fires: the sweep then gives the task to managers and operators,
titled with the missing name (approvals/services/deadlines.py). A group that exists but has no active member gets
the same fallback when the rung fires, titled "Group X has no active member who may act". This check says both
before a task gets there (``approvals.W001``, ``approvals.W002``). Warnings, not errors: an error would stop
``migrate``, and a group is created and filled by an admin, not by the code. Whether the group's only member is an
instance's initiator (four-eyes bars them) depends on the instance, so only the rung, when it fires, can tell."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.db import DatabaseError

MISSING_RUNG_GROUP = "approvals.W001"
EMPTY_RUNG_GROUP = "approvals.W002"


def ladder_groups(app_configs: Any = None, databases: Any = None, **_kwargs: Any) -> list[checks.CheckMessage]:
    """A warning per escalation rung of a registered definition (every version: instances still run old ones)
    whose group does not exist (W001) or has no active member (W002). Needs the database (``databases`` holds an
    alias: ``check --database default``, ``migrate``); without it, or before the auth tables exist, nothing is
    said. Returns the warnings; raises nothing."""
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
        named = Group.objects.filter(name__in={group for *_, group in rungs})
        known = set(named.values_list("name", flat=True))
        staffed = set(named.filter(user__is_active=True).values_list("name", flat=True).distinct())
    except DatabaseError:
        return []  # the auth tables are not there yet (the first migrate)
    missing: list[checks.CheckMessage] = [
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
    empty: list[checks.CheckMessage] = [
        checks.Warning(
            f"{workflow.name} v{workflow.version}, step {node.name!r}: escalation rung {number} names group "
            f"{group!r}, which has no active member.",
            hint=(
                "Add someone to the group (or reactivate a member), or change the rung. Until then that rung gives "
                'the task to managers and operators, titled "Group ... has no active member who may act".'
            ),
            id=EMPTY_RUNG_GROUP,
        )
        for workflow, node, number, group in rungs
        if group in known and group not in staffed
    ]
    return missing + empty
