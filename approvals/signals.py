"""People change under a task: a deactivation, a group left or a user deleted re-checks their tasks at once.

The receivers call :func:`approvals.services.people.tasks_people_changed` inside the transaction of the change, so the
claims are released (and tasks left with nobody escalated) together with it; the sweep's
``tasks_release_unfit`` is the safety net for changes these signals never see (raw SQL).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Q
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete

from approvals.models import ACTIONABLE_TASK_STATES, HumanTask, TaskState
from approvals.services.people import RECHECK_LIMIT, short_of_people, tasks_people_changed, tasks_recheck
from orchestrator.accounts import current_actor, current_request_meta


def _recheck(user_ids: list[int], group_ids: list[int], reason: str) -> None:
    tasks_people_changed(
        user_ids, group_ids=group_ids, reason=reason, actor=current_actor(), request_meta=current_request_meta()
    )


def _user_saved(sender: Any, instance: Any, created: bool, raw: bool = False, **_: Any) -> None:
    # The stored row was read by orchestrator.accounts' pre_save receiver.
    stored = getattr(instance, "_baton_stored", None)
    if raw or created or not stored:
        return
    if stored["is_active"] and not instance.is_active:
        _recheck([instance.pk], [], "account deactivated")


def _hold_accounts(user_ids: Any) -> None:
    """Lock the accounts of people about to leave a group, before their memberships go: a task action of theirs
    under way (it holds its account FOR SHARE, ``approvals.services.tasks._hold_account``) commits first and this
    change's re-check sees it; one starting now waits for this change and reads the groups it leaves."""
    ids = sorted(user_ids)
    if ids:
        list(get_user_model().objects.select_for_update(no_key=True).filter(pk__in=ids).values_list("pk", flat=True))


def _groups_changed(sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **_: Any) -> None:
    if action == "pre_remove":
        _hold_accounts((pk_set or ()) if reverse else [instance.pk])
        return
    if action == "pre_clear":
        related = instance.user_set if reverse else instance.groups
        instance._baton_left = set(related.values_list("pk", flat=True))
        _hold_accounts(instance._baton_left if reverse else [instance.pk])
        return
    if action not in ("post_remove", "post_clear"):
        return
    left = set(pk_set or ()) if action == "post_remove" else getattr(instance, "_baton_left", set())
    if not left:
        return
    if reverse:  # group.user_set.remove(...)
        user_ids, group_ids = sorted(left), [instance.pk]
    else:  # user.groups.remove(...) / .set(...) / .clear()
        user_ids, group_ids = [instance.pk], sorted(left)
    names = ", ".join(Group.objects.filter(pk__in=group_ids).order_by("name").values_list("name", flat=True))
    _recheck(user_ids, group_ids, f"left group {names}")


def _group_deleting(sender: Any, instance: Group, **_: Any) -> None:
    # The group's candidate rows go with it (CASCADE): note its open tasks to re-check once it is gone, the claimed
    # ones apart (their assignee may have been a candidate through this group only).
    _hold_accounts(instance.user_set.values_list("pk", flat=True))
    found = HumanTask.objects.filter(candidates__group=instance, state__in=ACTIONABLE_TASK_STATES).order_by("pk")
    instance._baton_tasks = list(found.values_list("pk", "state")[:RECHECK_LIMIT])  # type: ignore[attr-defined]


def _group_deleted(sender: Any, instance: Group, **_: Any) -> None:

    found = getattr(instance, "_baton_tasks", [])
    # Only claims and the tasks now short of people are locked and re-checked: a busy group's deletion, with its
    # tasks' other candidates still able, cost a lock and a count per task (seven statements each).
    claimed = [pk for pk, state in found if state == TaskState.CLAIMED]
    task_ids = claimed + short_of_people([pk for pk, state in found if state != TaskState.CLAIMED])
    if task_ids:
        tasks_recheck(
            task_ids,
            reason=f"group {instance.name} deleted",
            actor=current_actor(),
            request_meta=current_request_meta(),
        )


def _user_deleting(sender: Any, instance: Any, **_: Any) -> None:

    # Their candidate rows and memberships go with them (CASCADE, no m2m signal): note the open tasks they could
    # act on, named or through a group, to re-check once they are gone. A claim they hold protects them (PROTECT).
    groups = get_user_model().groups.through.objects.filter(user_id=instance.pk).values("group_id")
    instance._baton_tasks = list(
        HumanTask.objects.filter(state__in=ACTIONABLE_TASK_STATES)
        .filter(Q(candidates__user_id=instance.pk) | Q(candidates__group_id__in=groups))
        .order_by("pk")
        .values_list("pk", flat=True)
        .distinct()[:RECHECK_LIMIT]
    )


def _user_deleted(sender: Any, instance: Any, **_: Any) -> None:
    task_ids = getattr(instance, "_baton_tasks", [])
    if task_ids:
        tasks_recheck(
            short_of_people(task_ids),
            reason=f"user {instance.get_username()} deleted",
            actor=current_actor(),
            request_meta=current_request_meta(),
        )


def connect() -> None:
    """Connect the receivers (ApprovalsConfig.ready)."""
    user_model = get_user_model()
    post_save.connect(_user_saved, sender=user_model, dispatch_uid="baton_approvals_user_saved")
    m2m_changed.connect(_groups_changed, sender=user_model.groups.through, dispatch_uid="baton_approvals_groups")
    pre_delete.connect(_group_deleting, sender=Group, dispatch_uid="baton_approvals_group_deleting")
    post_delete.connect(_group_deleted, sender=Group, dispatch_uid="baton_approvals_group_deleted")
    pre_delete.connect(_user_deleting, sender=user_model, dispatch_uid="baton_approvals_user_deleting")
    post_delete.connect(_user_deleted, sender=user_model, dispatch_uid="baton_approvals_user_deleted")
