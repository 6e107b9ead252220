"""The names live updates travel by, formatted in one place: the channel-layer groups a socket joins, the event
types and the refresh names a page listens for.

``static/baton/live.js`` mirrors what the browser needs of them (:data:`BROWSER`) between its ``live-names``
markers; ``tests/orchestrator/test_live_names.py`` holds the two equal, and checks that every
``baton:refresh-<name>`` a template listens for is one of these.
"""

from __future__ import annotations

# --- groups (server side: who hears an event) ----------------------------------------------------------------

# Everyone who may see every instance (the instance list follows states).
OPS_GROUP = "ops"


def user_group(user_id: int) -> str:
    """The group of one person's sockets."""
    return f"user.{user_id}"


def people_group(group_id: int) -> str:
    """The group of the sockets of the members of Django group ``group_id`` (a task's candidate group)."""
    return f"group.{group_id}"


def instance_group(instance_id: int) -> str:
    """The group of the pages showing instance ``instance_id`` (joined after the page's own access check)."""
    return f"instance.{instance_id}"


# --- refresh names (a page re-fetches on ``baton:refresh-<name>``) --------------------------------------------

REFRESH_PREFIX = "baton:refresh-"
INSTANCES = "instances"
INBOX = "inbox"
COUNTS = "counts"
NOTIFICATIONS = "notifications"
# The audit chains page: a verification job moved on.
AUDIT_VERIFICATION = "audit-verification"
INSTANCE_PREFIX = "instance-"
TASK_PREFIX = "task-"
BULK_PREFIX = "bulk-"


def instance_refresh(instance_id: int) -> str:
    """The refresh name of one instance's page."""
    return f"{INSTANCE_PREFIX}{instance_id}"


def task_refresh(task_id: int) -> str:
    """The refresh name of one task's page."""
    return f"{TASK_PREFIX}{task_id}"


def bulk_refresh(job_id: int) -> str:
    """The refresh name of one bulk job's page (its progress bar)."""
    return f"{BULK_PREFIX}{job_id}"


# --- event types -------------------------------------------------------------------------------------------

INSTANCE_CHANGED = "instance.changed"
NOTIFICATION = "notification"
NOTIFICATION_READ = "notification.read"
ACCESS_CHANGED = "access.changed"
# Task events after which the task leaves everyone else's list at once (the page removes its row).
TASK_GONE_EVENTS = ("task.claimed", "task.completed", "task.cancelled", "task.delegated")

# What live.js holds (its LIVE_NAMES object, between the markers): kept equal by a test.
BROWSER = {
    "refreshPrefix": REFRESH_PREFIX,
    "refresh": [INSTANCES, INBOX, COUNTS, NOTIFICATIONS, AUDIT_VERIFICATION],
    "refreshPrefixes": [INSTANCE_PREFIX, TASK_PREFIX, BULK_PREFIX],
    "taskGoneEvents": list(TASK_GONE_EVENTS),
}
