"""Saved inbox views: created, re-shared and deleted with an audit event each (the ``saved_views`` chain).

A view shared with a group shows that group what its owner chose to filter, so who shared what with whom, and
when it stopped, is part of the record like any other change of what people see.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, User
from django.db import transaction

from approvals.models import SavedView
from orchestrator.accounts import current_request_meta
from orchestrator.audit import SAVED_VIEWS_CHAIN, Actor, append_standalone
from orchestrator.audit_actions import AuditAction


def _state(view: SavedView | None) -> dict[str, Any]:
    if view is None:
        return {}
    return {
        "name": view.name,
        "tab": view.tab,
        "params": view.params,
        "shared_with": view.shared_with.name if view.shared_with_id and view.shared_with else None,
    }


def saved_view_save(
    user: User, name: str, tab: str, params: dict[str, Any], group: Group | None
) -> tuple[SavedView, bool]:
    """Create ``user``'s view ``name`` or replace its filters and sharing; returns ``(view, created)``.

    Writes ``saved_view.created``, or ``saved_view.shared`` / ``saved_view.unshared`` / ``saved_view.changed``
    with the before and after in the payload; saving the same thing again writes nothing.
    """
    with transaction.atomic():
        # of=("self",): the shared group is read along, but only the view's row is locked.
        locked = SavedView.objects.select_for_update(of=("self",)).select_related("shared_with")
        before = locked.filter(owner=user, name=name)
        old = _state(before.first())
        view, created = SavedView.objects.update_or_create(
            owner=user, name=name, defaults={"tab": tab, "params": params, "shared_with": group}
        )
        new = _state(view)
        if created:
            action = AuditAction.SAVED_VIEW_CREATED
        elif old == new:
            return view, created
        elif old["shared_with"] != new["shared_with"]:
            action = AuditAction.SAVED_VIEW_SHARED if new["shared_with"] else AuditAction.SAVED_VIEW_UNSHARED
        else:
            action = AuditAction.SAVED_VIEW_CHANGED
        diff = {k: [old.get(k), new[k]] for k in new if old.get(k) != new[k]}
        append_standalone(
            SAVED_VIEWS_CHAIN,
            actor=Actor.of(user),
            action=action,
            subject_type="saved_view",
            subject_id=view.pk,
            payload={"owner": user.get_username(), "name": name, "before": old, "after": new, "changed": diff},
            request_meta=current_request_meta(),
        )
    return view, created


def saved_view_delete(user: User, view_id: int) -> bool:
    """Delete ``user``'s own view ``view_id`` and write ``saved_view.deleted``; False (nothing written) when it is
    not theirs or already gone."""
    with transaction.atomic():
        locked = SavedView.objects.select_for_update(of=("self",)).select_related("shared_with")
        view = locked.filter(pk=view_id, owner=user)
        found = view.first()
        if found is None:
            return False
        old = _state(found)
        found.delete()
        append_standalone(
            SAVED_VIEWS_CHAIN,
            actor=Actor.of(user),
            action=AuditAction.SAVED_VIEW_DELETED,
            subject_type="saved_view",
            subject_id=view_id,
            payload={"owner": user.get_username(), "name": old["name"], "before": old, "after": {}},
            request_meta=current_request_meta(),
        )
    return True
