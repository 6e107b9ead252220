"""Demo users and instances of every demo workflow in every interesting state.

The instances are made by the real engine: started through ``instance_start``, their steps run in-process
through ``step_execute`` (the same code a worker runs), decisions taken through ``task_decide``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import Group, Permission, User
from django.db import transaction
from django.test.utils import override_settings
from django.utils import timezone

from approvals.models import HumanTask
from approvals.services.tasks import task_decide
from orchestrator.models import DISPATCHABLE_STEP_STATES, StepRun, WorkflowInstance
from orchestrator.services.instances import instance_start
from orchestrator.services.steps import step_execute

DEMO_PASSWORD = "demo"  # noqa: S105 - demo only, printed by `make demo`
DEMO_USERS = [
    ("staff", "approvers' team: approves expenses"),
    ("staff2", "approvers' team: approves expenses"),
    ("manager", "managers: approves large orders and expenses"),
    ("operator", "operators: retries and fixes failed instances"),
    ("admin", "administrator: everything, including the audit trail"),
]
GROUPS = {
    "approvers": ["add_workflowinstance"],
    "managers": ["add_workflowinstance", "view_workflowinstance"],
    "operators": ["add_workflowinstance", "view_workflowinstance", "operate_workflowinstance", "deliver_signal"],
}
MEMBERS = {"staff": ["approvers"], "staff2": ["approvers"], "manager": ["managers"], "operator": ["operators"]}


def grant_group_permissions() -> None:
    """The demo's groups (created when missing) with exactly their engine permissions (``GROUPS``): approvers
    start, managers also view, operators also operate and deliver signals. Raises nothing of its own."""
    for group_name, codenames in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=group_name)
        group.permissions.set(Permission.objects.filter(content_type__app_label="orchestrator", codename__in=codenames))


def ensure_roles() -> dict[str, User]:
    """Groups with their permissions (:func:`grant_group_permissions`) and the five demo users (password
    ``demo``)."""
    grant_group_permissions()
    users = {}
    for username, _role in DEMO_USERS:
        user, created = User.objects.get_or_create(
            username=username,
            defaults={"email": f"{username}@example.com", "first_name": username.capitalize()},
        )
        if created:
            user.set_password(DEMO_PASSWORD)
            if username == "admin":
                user.is_staff = user.is_superuser = True
            user.save()
        for member_of in MEMBERS.get(username, []):
            user.groups.add(Group.objects.get(name=member_of))
        users[username] = user
    return users


def run_until_quiet(instance_ids: list[int], *, max_wait: float = 3.0, timeout: float = 30.0) -> None:
    """Run due steps of these instances in-process until none is due within ``max_wait`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = timezone.now()
        steps = list(
            StepRun.objects.filter(instance_id__in=instance_ids, state__in=DISPATCHABLE_STEP_STATES)
            .exclude(kind="timer")
            .order_by("due_at")
            .values_list("pk", "due_at")
        )
        if not steps:
            return
        step_id, due_at = steps[0]
        wait = (due_at - now).total_seconds() if due_at else 0
        if wait > max_wait:
            return
        if wait > 0:
            time.sleep(wait)
        step_execute(step_id)


def _decide(instance: WorkflowInstance, user: User, decision: str, comment: str = "") -> None:
    task = HumanTask.objects.filter(instance=instance, state__in=["open", "claimed", "escalated"]).first()
    if task is not None:
        task_decide(task.pk, user, decision, comment=comment)


def load_demo(log: Callable[[str], Any] = print) -> bool:
    """Create the demo data unless it is there already; True if it was created now."""
    # The console mail backend would print every notice the history generates; the bell keeps them anyway.
    with override_settings(EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend"):
        return _load_demo(log)


def _load_demo(log: Callable[[str], Any]) -> bool:
    users = ensure_roles()
    if WorkflowInstance.objects.filter(idempotency_key__startswith="demo-").exists():
        return False

    def start(key: str, workflow: str, data: dict[str, Any], by: str) -> WorkflowInstance:
        return instance_start(workflow, data, initiator=users[by], idempotency_key=f"demo-{key}")

    # Orders come in from the shop's side (staff2 places them), so the operators who must finish a failed
    # refund, and the managers who approve large orders, are never the instance's initiator (four-eyes).
    def order(key: str, number: str, customer: str, amount: str, by: str = "staff2", **switches: Any):
        data = {"order_id": number, "customer": customer, "email": "buyer@example.com", "amount": amount, "items": 2}
        return start(key, "order_fulfilment", {**data, **switches}, by)

    def expense(key: str, employee: str, amount: str, category: str, text: str, by: str, **switches: Any):
        data = {"employee": employee, "amount": amount, "category": category, "description": text}
        return start(key, "expense_approval", {**data, **switches}, by)

    log("Loading demo data (runs the real engine; about 15 seconds)...")
    with transaction.atomic():
        made = {
            "completed_order": order("o1", "SO-1001", "Acme Ltd", "249.00"),
            "waiting_order": order("o2", "SO-1002", "Globex", "1850.00"),
            "retried_order": order("o3", "SO-1003", "Initech", "2400.00", fail_payment=2),
            "compensated_order": order("o4", "SO-1004", "Umbrella", "120.00", fail_shipping=True),
            "escalated_order": order("o5", "SO-1005", "Hooli", "75.50", fail_shipping=True, fail_refund=True),
            "running_order": order("o6", "SO-1006", "Stark Industries", "310.00", fail_notify=7),
            "expense_for_team": expense("e1", "Manager", "84.20", "meals", "Team lunch with a client", "manager"),
            "expense_by_staff": expense("e2", "Staff", "912.00", "travel", "Train to the Lyon trade fair", "staff"),
            "expense_done": expense("e3", "Staff Two", "45.00", "equipment", "USB-C adapter", "staff2"),
            "expense_failed": expense(
                "e4", "Admin", "1200.00", "equipment", "Laptop for the new analyst", "admin", fail_payout=3
            ),
            "expense_rejected": expense("e5", "Staff Two", "300.00", "other", "Gym membership", "staff2"),
            "expense_to_classify": expense("e6", "Staff Two", "640.00", "other", "Conference booth deposit", "staff2"),
            "expense_taxi": expense("e7", "Operator", "38.60", "travel", "Night taxi to the data centre", "operator"),
            "expense_monitor": expense("e8", "Admin", "329.00", "equipment", "Second monitor for on-call", "admin"),
            "expense_dinner": expense("e9", "Manager", "212.40", "meals", "Dinner with the Globex buyers", "manager"),
            "expense_course": expense(
                "e10", "Operator", "1450.00", "other", "PostgreSQL administration course", "operator"
            ),
        }
    ids = [i.pk for i in made.values()]
    run_until_quiet(ids)
    _decide(made["completed_order"], users["manager"], "approve")
    _decide(made["expense_done"], users["staff"], "approve")
    _decide(made["expense_failed"], users["staff"], "approve", "Budgeted in Q3")
    _decide(made["expense_failed"], users["manager"], "approve", "OK")
    _decide(made["expense_rejected"], users["staff"], "reject", "Not a business expense")
    _decide(made["expense_to_classify"], users["staff"], "approve", "Booth for the spring fair")
    run_until_quiet(ids)
    for name, instance in made.items():
        instance.refresh_from_db()
        log(f"  {name:<20} {instance.title:<48} {instance.state}")
    return True
