"""The Django admin's pages for the engine's records: read-only, for everyone.

Instances, steps and tasks change only through their state machines (services that lock, check, audit); an admin
form that edited a state would bypass all of that. Audit events are append-only in the database itself; here no
one, superusers included, gets an add, change or delete button or URL for them.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from approvals.models import HumanTask
from audit.models import Verification
from audit.selectors import can_view_trail
from orchestrator.models import AuditEvent, StepRun, WorkflowInstance


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewing only: no add, change or delete, whatever the user's permissions; bulk actions off."""

    actions = None

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WorkflowInstance)
class WorkflowInstanceAdmin(ReadOnlyAdmin):
    list_display = ("id", "workflow_name", "workflow_version", "title", "state", "initiator", "created_at")
    list_filter = ("state", "workflow_name")
    search_fields = ("title", "business_key")
    date_hierarchy = "created_at"
    list_select_related = ("initiator",)
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkflowInstance]:
        # The list shows no data (megabytes per instance, in the end); one instance's page reads it when shown.
        return super().get_queryset(request).defer("data")


@admin.register(StepRun)
class StepRunAdmin(ReadOnlyAdmin):
    list_display = ("id", "instance_id", "name", "kind", "state", "attempt", "created_at")
    list_filter = ("state", "kind")
    search_fields = ("name",)
    raw_id_fields = ("instance",)
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[StepRun]:
        # The list shows no result (up to BATON_MAX_RESULT_BYTES each); one step's page reads it when shown.
        return super().get_queryset(request).defer("result")


@admin.register(HumanTask)
class HumanTaskAdmin(ReadOnlyAdmin):
    list_display = ("id", "instance_id", "title", "kind", "state", "assignee", "created_at")
    list_filter = ("state", "kind")
    list_select_related = ("assignee",)
    show_full_result_count = False


class TrailAdmin(ReadOnlyAdmin):
    """The whole trail, as on /audit/: only for holders of ``orchestrator.view_trail``. The model's own "view"
    permission is what an instance's page asks to show that instance's history (console/ops_views.py); here it
    would have opened every chain (other teams' instances, sign-ins with their addresses, exports)."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return can_view_trail(request.user)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return can_view_trail(request.user)


@admin.register(AuditEvent)
class AuditEventAdmin(TrailAdmin):
    list_display = ("id", "occurred_at", "chain", "seq", "actor_label", "action", "subject_type", "subject_id")
    list_filter = ("action",)
    search_fields = ("=chain", "=actor_label", "=request_id")
    # Counting millions of rows for the paginator is what makes an admin list slow: the pager shows no total.
    show_full_result_count = False
    ordering = ("-occurred_at", "-id")


@admin.register(Verification)
class VerificationAdmin(TrailAdmin):
    list_display = ("id", "state", "scheduled", "requested_by_label", "requested_at", "finished_at", "breaks_count")
