"""The API's endpoints. Thin: read through the selectors the pages use, write through one service call, and let
``api.problems`` turn every refusal into problem+json. The role and object checks are the pages' own
(docs/access-matrix.md): an object the caller may not see is 404, an action their role may not take 403.

Another app adds endpoints by writing a view on ``ApiView``/``ApiViewSet`` (authentication, permissions,
parsers, errors and schema come with it) and registering it on ``api.urls.router``.
"""

from __future__ import annotations

import re
from typing import Any

from django.db.models import Prefetch, QuerySet
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response

from api import serializers as s
from api.permissions import has_model_perm
from api.problems import Problem
from api.services import KEY_MAX, api_instance_start, body_hash
from approvals import selectors as task_selectors
from approvals.services import tasks as task_services
from orchestrator import registry, selectors
from orchestrator.accounts import request_meta
from orchestrator.audit import Actor
from orchestrator.models import StepRun, WorkflowInstance
from orchestrator.services import instances as instance_services

IDEMPOTENCY_HEADER = "Idempotency-Key"
# Visible ASCII without spaces at either end: what an HTTP header can carry unchanged.
KEY_PATTERN = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$")


class Cursor(CursorPagination):
    """Keyset pagination, newest first (``id`` is unique and grows with time, so a page never repeats or skips a
    row while others are added). ``cursor`` is opaque; ``limit`` is 1-100 (default 25)."""

    ordering = "-id"
    page_size = 25
    page_size_query_param = "limit"
    max_page_size = 100
    invalid_cursor_message = "The cursor is not one this API gave out: start again without it."

    def decode_cursor(self, request: Request) -> Any:
        cursor = super().decode_cursor(request)
        if cursor is None:
            return None
        # Every cursor this API hands out holds an id position. DRF takes any position as given (one that is not
        # an id would fail in the database: a 500) and reads garbage as "the first page".
        if not re.fullmatch(r"\d{1,18}", str(cursor.position)):
            raise Problem(400, self.invalid_cursor_message, code="invalid_cursor", errors={"cursor": ["Invalid."]})
        return cursor

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> Any:
        from rest_framework.exceptions import NotFound

        try:
            return super().paginate_queryset(queryset, request, view)
        except NotFound:  # DRF answers a bad cursor with 404; it is the request that is wrong
            raise Problem(
                400, self.invalid_cursor_message, code="invalid_cursor", errors={"cursor": ["Invalid."]}
            ) from None


def _valid(serializer_class: type, data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


# --- workflows ------------------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(summary="The workflow catalog (latest versions)", responses=s.WorkflowSerializer(many=True)),
    retrieve=extend_schema(
        summary="One workflow: versions, steps and the input its start takes",
        parameters=[OpenApiParameter("version", int, description="A version other than the latest.")],
        responses=s.WorkflowSerializer,
    ),
)
class WorkflowViewSet(viewsets.ViewSet):
    """The catalog, readable by everyone signed in (as the catalog page is)."""

    lookup_field = "name"
    lookup_value_converter = "str"

    def list(self, request: Request) -> Response:
        return Response(s.WorkflowSerializer(registry.latest_all(), many=True).data)

    def retrieve(self, request: Request, name: str) -> Response:
        version = request.query_params.get("version")
        if version is not None and not re.fullmatch(r"[1-9]\d{0,8}", version):
            raise Problem(400, "version: a positive whole number.", code="invalid", errors={"version": ["Invalid."]})
        try:
            workflow = registry.get(name, int(version) if version else None)
        except registry.UnknownWorkflow:
            raise Http404 from None
        return Response(s.WorkflowSerializer(workflow).data)


# --- instances ------------------------------------------------------------------------------------------

OPERATOR_ERRORS = {
    400: OpenApiResponse(description="Invalid input (a reason missing or too long, a time out of range)."),
    403: OpenApiResponse(description="Your role may not operate instances."),
    404: OpenApiResponse(description="No such instance, or not yours to see."),
    409: OpenApiResponse(description="The instance's state does not allow this."),
}


@extend_schema_view(
    list=extend_schema(
        summary="Instances you may see, newest first, with the console's filters",
        parameters=[s.InstanceFilterSerializer],
    ),
    retrieve=extend_schema(summary="One instance with its steps (attempts, errors) and tasks"),
)
class InstanceViewSet(viewsets.GenericViewSet):
    """Instances: operators and managers see every one, anyone else those they started or have a task of."""

    serializer_class = s.InstanceSerializer
    pagination_class = Cursor
    lookup_value_converter = "int"

    def get_queryset(self) -> QuerySet[WorkflowInstance]:
        return selectors.instances_for_user(self.request.user).order_by("-id")

    def _instance(self, pk: int) -> WorkflowInstance:
        instance = selectors.instance_for_user(self.request.user, pk)
        if instance is None:
            raise Http404
        return instance

    def list(self, request: Request) -> Response:
        filters = _valid(s.InstanceFilterSerializer, request.query_params)
        qs = self.get_queryset()
        if "workflow" in filters:
            qs = qs.filter(workflow_name=filters["workflow"])
        if "version" in filters:
            qs = qs.filter(workflow_version=filters["version"])
        if "state" in filters:
            qs = qs.filter(state=filters["state"])
        if "started_after" in filters:
            qs = qs.filter(created_at__gte=filters["started_after"])
        if "started_before" in filters:
            qs = qs.filter(created_at__lt=filters["started_before"])
        if "business_key" in filters:
            qs = qs.filter(business_key=filters["business_key"])
        page = self.paginate_queryset(qs)
        return self.get_paginated_response(s.InstanceSerializer(page, many=True).data)

    def retrieve(self, request: Request, pk: int) -> Response:
        instance = self._detail(self._instance(pk).pk)
        return Response(s.InstanceDetailSerializer(instance).data)

    def _detail(self, pk: int) -> WorkflowInstance:
        from approvals.models import HumanTask

        return (
            WorkflowInstance.objects.select_related("initiator")
            .prefetch_related(
                Prefetch("steps", queryset=StepRun.objects.order_by("id")),
                Prefetch("tasks", queryset=HumanTask.objects.order_by("id")),
            )
            .get(pk=pk)
        )

    @extend_schema(
        summary="Start an instance",
        description=(
            "Starts the workflow's latest version (or `version`) with `input`, validated by the workflow's start "
            "form (see `start_input` of the workflow). With an `Idempotency-Key` header the start happens at most "
            "once per key and client: the same key and body answer 200 with the first instance, the same key "
            "with another body 422, a duplicate still in flight the same instance (or 409 if it cannot be read "
            "yet)."
        ),
        request=s.StartSerializer,
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description=f"1-{KEY_MAX} visible ASCII characters, unique per start (a UUID is a good key).",
            )
        ],
        responses={201: s.InstanceSerializer, 200: s.InstanceSerializer},
    )
    def create(self, request: Request) -> Response:
        if not has_model_perm(request.user, "orchestrator.add_workflowinstance"):
            raise Problem(403, "Your role may not start workflows.", code="forbidden")
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is not None and (len(key) > KEY_MAX or not KEY_PATTERN.match(key)):
            raise Problem(
                400,
                f"{IDEMPOTENCY_HEADER}: 1-{KEY_MAX} visible ASCII characters.",
                code="invalid",
                title="Invalid input",
                errors={IDEMPOTENCY_HEADER: [f"1-{KEY_MAX} visible ASCII characters."]},
            )
        body = request.data if isinstance(request.data, dict) else None
        if body is None:
            raise Problem(
                400, "Send a JSON object.", code="invalid", title="Invalid input", errors={"body": ["Not an object."]}
            )
        start = _valid(s.StartSerializer, body)
        try:
            registry.get(start["workflow"], start.get("version"))
        except registry.UnknownWorkflow:
            errors = {
                "workflow": [f"No workflow {start['workflow'][:100]!r} (version {start.get('version', 'latest')})."]
            }
            raise Problem(400, errors["workflow"][0], code="invalid", title="Invalid input", errors=errors) from None
        started = api_instance_start(
            request.user,
            start["workflow"],
            start["input"],
            version=start.get("version"),
            business_key=start["business_key"],
            key=key,
            request_hash=body_hash(body),
            request_meta=request_meta(request._request),
        )
        # The instance as the start left it (no second read: a client follows ``url`` for steps and tasks).
        data = s.InstanceSerializer(started.instance).data
        response = Response(data, status=status.HTTP_201_CREATED if started.created else status.HTTP_200_OK)
        response["Location"] = data["url"]
        if not started.created:
            response["Idempotent-Replayed"] = "true"
        return response

    def _operate(self, request: Request, pk: int, serializer_class: type, call: Any) -> Response:
        instance = self._instance(pk)
        if not selectors.can_operate(request.user):
            raise Problem(403, "Only operators may retry, pause, resume or cancel instances.", code="forbidden")
        body = _valid(serializer_class, request.data)
        call(instance.pk, Actor.of(request.user), body, request_meta(request._request))
        return Response(s.InstanceDetailSerializer(self._detail(instance.pk)).data)

    @extend_schema(
        summary="Retry a failed instance",
        request=s.ReasonSerializer,
        responses={200: s.InstanceDetailSerializer, **OPERATOR_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: int) -> Response:
        return self._operate(
            request,
            pk,
            s.ReasonSerializer,
            lambda i, actor, b, meta: instance_services.instance_retry(
                i, actor=actor, reason=b["reason"], request_meta=meta
            ),
        )

    @extend_schema(
        summary="Pause an instance (optionally until a time)",
        request=s.PauseSerializer,
        responses={200: s.InstanceDetailSerializer, **OPERATOR_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: int) -> Response:
        return self._operate(
            request,
            pk,
            s.PauseSerializer,
            lambda i, actor, b, meta: instance_services.instance_pause(
                i, actor=actor, reason=b["reason"], until=b.get("until"), request_meta=meta
            ),
        )

    @extend_schema(
        summary="Resume a paused instance",
        request=s.ReasonSerializer,
        responses={200: s.InstanceDetailSerializer, **OPERATOR_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: int) -> Response:
        return self._operate(
            request,
            pk,
            s.ReasonSerializer,
            lambda i, actor, b, meta: instance_services.instance_resume(
                i, actor=actor, reason=b["reason"], request_meta=meta
            ),
        )

    @extend_schema(
        summary="Cancel an instance for good",
        request=s.ReasonSerializer,
        responses={200: s.InstanceDetailSerializer, **OPERATOR_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: int) -> Response:
        return self._operate(
            request,
            pk,
            s.ReasonSerializer,
            lambda i, actor, b, meta: instance_services.instance_cancel(
                i, actor=actor, reason=b["reason"], request_meta=meta
            ),
        )


# --- tasks ----------------------------------------------------------------------------------------------

TASK_ERRORS = {
    400: OpenApiResponse(description="Invalid input."),
    403: OpenApiResponse(description="Not yours to act on (four-eyes, not a candidate, not the assignee)."),
    404: OpenApiResponse(description="No such task, or not yours to see."),
    409: OpenApiResponse(description="Someone else claimed or decided it first, or it is no longer open."),
}


@extend_schema_view(
    list=extend_schema(summary="My tasks, or my team's queue", parameters=[s.TaskFilterSerializer]),
    retrieve=extend_schema(summary="One task"),
)
class TaskViewSet(viewsets.GenericViewSet):
    """Tasks: ``scope=mine`` (assigned to me) or ``scope=queue`` (open tasks I may claim); the actions are the
    inbox's, with its rules (four-eyes, candidates, managers) enforced by the services."""

    serializer_class = s.TaskSerializer
    pagination_class = Cursor
    lookup_value_converter = "int"

    def get_queryset(self) -> QuerySet[Any]:
        return task_selectors.visible_tasks(self.request.user)

    def list(self, request: Request) -> Response:
        scope = _valid(s.TaskFilterSerializer, request.query_params)["scope"]
        user = request.user
        qs = task_selectors.my_tasks(user) if scope == "mine" else task_selectors.team_queue(user)
        page = self.paginate_queryset(qs.select_related("instance", "assignee").order_by("-id"))
        return self.get_paginated_response(s.TaskSerializer(page, many=True).data)

    def _task(self, pk: int) -> Any:
        task = self.get_queryset().select_related("instance", "assignee").filter(pk=pk).first()
        if task is None:
            raise Http404
        return task

    def retrieve(self, request: Request, pk: int) -> Response:
        return Response(s.TaskSerializer(self._task(pk)).data)

    def _answer(self, pk: int) -> Response:
        # Read without the visibility filter: the service just let this user act on it (a delegation may have
        # handed it beyond what they see).
        from approvals.models import HumanTask

        return Response(s.TaskSerializer(HumanTask.objects.select_related("instance", "assignee").get(pk=pk)).data)

    @extend_schema(summary="Claim an open task", request=None, responses={200: s.TaskSerializer, **TASK_ERRORS})
    @action(detail=True, methods=["post"])
    def claim(self, request: Request, pk: int) -> Response:
        task_services.task_claim(pk, request.user, request_meta=request_meta(request._request))
        return self._answer(pk)

    @extend_schema(
        summary="Give a claimed task back to the queue", request=None, responses={200: s.TaskSerializer, **TASK_ERRORS}
    )
    @action(detail=True, methods=["post"])
    def release(self, request: Request, pk: int) -> Response:
        task_services.task_release(pk, request.user, request_meta=request_meta(request._request))
        return self._answer(pk)

    @extend_schema(
        summary="Decide a task, with a comment",
        request=s.DecideSerializer,
        responses={200: s.TaskSerializer, **TASK_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def decide(self, request: Request, pk: int) -> Response:
        self._task(pk)  # 404 before any check of the body: an unseen task is not there
        body = _valid(s.DecideSerializer, request.data)
        task_services.task_decide(
            pk,
            request.user,
            body["decision"],
            comment=body["comment"],
            data=body["data"],
            request_meta=request_meta(request._request),
        )
        return self._answer(pk)

    @extend_schema(
        summary="Hand a task to another candidate",
        request=s.DelegateSerializer,
        responses={200: s.TaskSerializer, **TASK_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def delegate(self, request: Request, pk: int) -> Response:
        self._task(pk)
        body = _valid(s.DelegateSerializer, request.data)
        task_services.task_delegate(
            pk, request.user, body["to_user"], note=body["note"], request_meta=request_meta(request._request)
        )
        return self._answer(pk)
