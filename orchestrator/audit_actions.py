"""Every audit action Baton writes, by name (the stored value is the string, so existing chains still verify).

Writers pass one of these by keyword (``unit.audit(..., action=AuditAction.STEP_STARTED)``); pages, filters
and tests compare with them. A new kind of event gets its member here first.
"""

from enum import StrEnum


class AuditAction(StrEnum):
    # An instance's life.
    INSTANCE_STARTED = "instance.started"
    INSTANCE_RUNNING = "instance.running"
    INSTANCE_WAITING = "instance.waiting"
    INSTANCE_PAUSED = "instance.paused"
    INSTANCE_RESUMED = "instance.resumed"
    INSTANCE_RETRIED = "instance.retried"
    INSTANCE_COMPLETED = "instance.completed"
    INSTANCE_FAILED = "instance.failed"
    INSTANCE_CANCELLED = "instance.cancelled"
    INSTANCE_COMPENSATING = "instance.compensating"
    INSTANCE_COMPENSATED = "instance.compensated"
    # Its steps.
    STEP_SCHEDULED = "step.scheduled"
    STEP_STARTED = "step.started"
    STEP_SUCCEEDED = "step.succeeded"
    STEP_FAILED = "step.failed"
    STEP_DEAD = "step.dead"
    STEP_SKIPPED = "step.skipped"
    STEP_DECIDED = "step.decided"
    STEP_COMPENSATED = "step.compensated"
    COMPENSATION_SCHEDULED = "compensation.scheduled"
    COMPENSATION_WAITING = "compensation.waiting"
    # A due item of the sweep that raised (docs/architecture.md, "One broken instance never stops the others").
    SWEEP_FAILED = "sweep.failed"
    # People's tasks.
    TASK_OPENED = "task.opened"
    TASK_CLAIMED = "task.claimed"
    TASK_RELEASED = "task.released"
    TASK_DELEGATED = "task.delegated"
    TASK_SNOOZED = "task.snoozed"
    TASK_APPROVED = "task.approved"
    TASK_COMPLETED = "task.completed"
    TASK_REMINDED = "task.reminded"
    TASK_REASSIGNED = "task.reassigned"
    TASK_ESCALATED = "task.escalated"
    TASK_EXPIRED = "task.expired"
    TASK_CANCELLED = "task.cancelled"
    # The accounts chain.
    USER_CREATED = "user.created"
    USER_RENAMED = "user.renamed"
    USER_PASSWORD_CHANGED = "user.password_changed"  # noqa: S105 (an action name, not a password)
    USER_ACTIVATED = "user.activated"
    USER_DEACTIVATED = "user.deactivated"
    USER_STAFF_GRANTED = "user.staff_granted"
    USER_STAFF_REVOKED = "user.staff_revoked"
    USER_SUPERUSER_GRANTED = "user.superuser_granted"
    USER_SUPERUSER_REVOKED = "user.superuser_revoked"
    USER_DELETED = "user.deleted"
    USER_GROUPS_ADDED = "user.groups_added"
    USER_GROUPS_REMOVED = "user.groups_removed"
    USER_PERMISSIONS_ADDED = "user.permissions_added"
    USER_PERMISSIONS_REMOVED = "user.permissions_removed"
    GROUP_CREATED = "group.created"
    GROUP_DELETED = "group.deleted"
    GROUP_PERMISSIONS_ADDED = "group.permissions_added"
    GROUP_PERMISSIONS_REMOVED = "group.permissions_removed"
    # The api_tokens chain: personal API tokens created and revoked (api/tokens.py).
    TOKEN_CREATED = "token.created"  # noqa: S105 (an action name, not a secret)
    TOKEN_REVOKED = "token.revoked"  # noqa: S105
    # The audit chain itself: where unkeyed (legacy) events end (migration 0007).
    AUDIT_KEYED = "audit.keyed"
