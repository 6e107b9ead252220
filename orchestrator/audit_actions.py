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
    # The console's actions on one instance (orchestrator/services/operations.py).
    INSTANCE_DATA_EDITED = "instance.data_edited"
    INSTANCE_COMPENSATION_REQUESTED = "instance.compensation_requested"
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
    # A signal delivered to an instance (orchestrator/services/signals.py).
    SIGNAL_RECEIVED = "signal.received"
    # A kept signal whose payload the node that came to consume it refused.
    SIGNAL_REJECTED = "signal.rejected"
    # The automation chain: schedules and their fires, webhook subscriptions (automation/).
    SCHEDULE_CREATED = "schedule.created"
    SCHEDULE_CHANGED = "schedule.changed"
    SCHEDULE_PAUSED = "schedule.paused"
    SCHEDULE_RESUMED = "schedule.resumed"
    SCHEDULE_RETIRED = "schedule.retired"
    SCHEDULE_FIRED = "schedule.fired"
    SCHEDULE_SKIPPED = "schedule.skipped"
    SCHEDULE_FAILED = "schedule.failed"
    WEBHOOK_SUBSCRIBED = "webhook.subscribed"
    WEBHOOK_PAUSED = "webhook.paused"
    WEBHOOK_RESUMED = "webhook.resumed"
    WEBHOOK_CHANGED = "webhook.changed"
    WEBHOOK_SECRET_ROLLED = "webhook.secret_rolled"  # noqa: S105 (an action's name, not a secret)
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
    # Bulk actions, one event each on the "operations" chain (console/services.py).
    BULK_STARTED = "bulk.started"
    BULK_FINISHED = "bulk.finished"
    BULK_STOPPED = "bulk.stopped"
    # The api_tokens chain: personal API tokens created and revoked (api/tokens.py).
    TOKEN_CREATED = "token.created"  # noqa: S105 (an action name, not a secret)
    TOKEN_REVOKED = "token.revoked"  # noqa: S105
    # The audit chain itself: where unkeyed (legacy) events end (migration 0007); a verification asked for.
    AUDIT_KEYED = "audit.keyed"
    AUDIT_VERIFICATION_REQUESTED = "audit.verification_requested"
    # The access chain: signing in and out, refusals, exports of the trail.
    ACCESS_SIGNED_IN = "access.signed_in"
    ACCESS_SIGNED_OUT = "access.signed_out"
    ACCESS_SIGN_IN_FAILED = "access.sign_in_failed"
    ACCESS_REFUSED = "access.refused"
    AUDIT_EXPORTED = "audit.exported"
    # Saved inbox views (the saved_views chain).
    SAVED_VIEW_CREATED = "saved_view.created"
    SAVED_VIEW_CHANGED = "saved_view.changed"
    SAVED_VIEW_SHARED = "saved_view.shared"
    SAVED_VIEW_UNSHARED = "saved_view.unshared"
    SAVED_VIEW_DELETED = "saved_view.deleted"
    # Workflow versions a deployment runs for the first time (the workflows chain).
    WORKFLOW_VERSION_SEEN = "workflow.version_seen"
