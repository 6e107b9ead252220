"""The API's endpoints. Thin: read through the selectors the pages use, write through one service call, and let
``api.problems`` turn every refusal into problem+json. The role and object checks are the pages' own
(docs/access-matrix.md): an object the caller may not see is 404, an action their role may not take 403.

Another app adds endpoints by writing a DRF view (authentication, permissions, parsers, errors and schema come
with the project's settings) with ``http_method_names = API_METHODS``, and registering it on ``api.urls.router``.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import UTC
from typing import Any
from urllib.parse import urlencode

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import DateTimeField, Serializer
from rest_framework.serializers import ValidationError as SerializerValidationError
from rest_framework.views import APIView

from api import serializers as s
from api.permissions import has_model_perm
from api.problems import Problem, errors_summary, flatten
from api.services import KEY_MAX, api_instance_start, body_hash
from approvals import selectors as task_selectors
from approvals.models import HumanTask, TaskKind
from approvals.services import tasks as task_services
from audit import selectors as audit_selectors
from audit.exports import event_record
from audit.forms import AuditFilterForm
from audit.views import export_response
from orchestrator import registry, selectors
from orchestrator.accounts import hidden_404, request_meta
from orchestrator.audit import Actor
from orchestrator.inputs import bound_form, business_key_forms
from orchestrator.models import StepKind, StepState, WorkflowInstance
from orchestrator.records import RecordsRefused
from orchestrator.services import instances as instance_services
from orchestrator.services import operations
from orchestrator.services import signals as signal_services

IDEMPOTENCY_HEADER = "Idempotency-Key"
DELIVER_SIGNAL = "orchestrator.deliver_signal"
# Visible ASCII without spaces at either end: what an HTTP header can carry unchanged. \Z, not $: $ also matches
# before a final line break, which let "key\n" through as a key of its own.
KEY_PATTERN = re.compile(r"^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?\Z")
# The key's rule as the schema says it: KEY_PATTERN without the comma (an ECMA regex, where "$" ends the text).
KEY_SCHEMA_PATTERN = r"^[\x21-\x2b\x2d-\x7e](?:[\x20-\x2b\x2d-\x7e]*[\x21-\x2b\x2d-\x7e])?$"
# What a key may be, as the 400 and the API's description say it (a comma is refused on its own, first).
KEY_RULE = f"1-{KEY_MAX} visible ASCII characters but a comma, with no space at either end."


# The methods an API view may answer. Not OPTIONS: it answers 405 (``api.conf``: the schema documents the API), and
# DRF's ``Allow`` header, on every answer and on that 405 too, named it as long as the view had its handler: a client
# reading ``Allow`` to learn what it may send was told of a method that is refused. Every API view takes this.
API_METHODS = ["get", "post", "head"]


class Cursor(CursorPagination):
    """Keyset pagination, newest first (``id`` is unique and grows with time, so a page never repeats or skips a
    row while others are added). ``cursor`` is opaque; ``limit`` is 1-100 (default 25), anything else a 400
    naming it."""

    ordering = "-id"
    page_size = 25
    page_size_query_param = "limit"
    max_page_size = 100
    invalid_cursor_message = "The cursor is not one this API gave out: start again without it."

    def get_page_size(self, request: Request) -> int:
        """``limit`` as given, 1-``max_page_size``; absent, ``page_size``. DRF reads junk, zero or a negative as
        "the default" and a larger number as the maximum: a script asking for something else than it gets is
        told, as the audit trail's ``limit`` tells it."""
        text = request.query_params.get(self.page_size_query_param)
        if text is None:
            return self.page_size
        if not re.fullmatch(r"[0-9]{1,3}", text) or not 1 <= int(text) <= self.max_page_size:
            message = f"A whole number from 1 to {self.max_page_size}."
            raise Problem(
                400,
                f"{self.page_size_query_param}: {message.lower()}",
                code="invalid",
                title="Invalid input",
                errors={self.page_size_query_param: [message]},
            )
        return int(text)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        """``cursor`` and ``limit`` as the code takes them: the schema said "an integer" and "a string", and a client
        (or schemathesis) sending ``limit=0`` or ``cursor=`` met a 400 it was not told of."""
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": self.max_page_size,
                    "default": self.page_size,
                }
                parameter["description"] = f"How many per page: 1-{self.max_page_size} (default {self.page_size})."
            elif parameter["name"] == self.cursor_query_param:
                parameter["schema"] = {"type": "string", "minLength": 1}
                parameter["description"] = (
                    "Where the page starts: the opaque cursor of a `next` or `previous` link. Left out, the first "
                    "page; given empty, a 400."
                )
        return parameters

    def decode_cursor(self, request: Request) -> Any:
        cursor = super().decode_cursor(request)
        if cursor is None:
            return None
        # Every cursor this API hands out holds an id position. DRF takes any position as given (one that is not
        # an id would fail in the database: a 500) and reads garbage as "the first page".
        if not re.fullmatch(r"[0-9]{1,18}", str(cursor.position)):  # not \d: that takes any Unicode digit
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


class IdCursor(Cursor):
    """:class:`Cursor` oldest first: an instance's step runs and tasks in the order they were made, so a run added
    while a client pages lands on a later page, never shifts an earlier one."""

    ordering = "id"


# What every GET of a list may carry besides its filters: the page (``cursor``, ``limit``) and DRF's ``format``.
PAGE_PARAMS = frozenset({"cursor", "limit", "format"})


def single_valued(
    request: Request, checked: Collection[str] = (), known: Collection[str] | None = None, *, paged: bool = True
) -> Any:
    """The request's query parameters, each given at most once: every parameter of this API takes one value, and
    of ``?state=running&state=failed`` which one the client meant is a guess (the last, as ``get`` takes it,
    would quietly answer a question it did not ask). Raises Problem 400 naming each repeated parameter, except
    those in ``checked`` (a form that refuses their repeats itself, with its own message).

    With ``known`` (the endpoint's filters), a parameter that is neither one of them nor of :data:`PAGE_PARAMS` is
    a 400 naming it too: ``?stat=failed`` (a typo) listed every instance, as if no filter had been asked for, and
    a script working through "the failed ones" would have worked through all. Not ``paged`` (an export, the
    catalog, one object: each answered whole), ``cursor`` and ``limit`` are refused too: an export's ``limit=10``
    would have been ignored. Every GET of the API reads its query string through here. One of ``known`` given
    empty is a 400 naming it too: no filter, to the serializers and forms behind, it answered everything; and so
    is an empty ``cursor`` or ``limit`` of a ``paged`` list."""
    params = request.query_params
    if known is not None:
        extra = PAGE_PARAMS if paged else frozenset({"format"})
        unknown = [name[:100] for name in params if name not in known and name not in extra]
        if unknown:
            also = "; and cursor, limit" if paged else "; answered whole: no cursor or limit"
            message = (
                f"Not a parameter of this endpoint (its filters: {', '.join(known)}{also})."
                if known
                else "Not a parameter of this endpoint: it has no filters"
                + ("; only cursor, limit." if paged else ", and is answered whole: no cursor or limit.")
            )
            raise Problem(
                400,
                f"Unknown parameter{'s' if len(unknown) > 1 else ''}: {', '.join(unknown[:20])}. {message}"[:1000],
                code="invalid",
                title="Invalid input",
                errors={name: [message] for name in unknown[:20]},
            )
    repeated = {name[:100]: len(values) for name, values in params.lists() if len(values) > 1 and name not in checked}
    if repeated:
        raise repeated_problem(repeated)
    # A filter given without a value (``?business_key=``, a script's variable left empty) is no filter to DRF and to
    # the timeline's form, and answered everything: refused. So are an empty ``cursor`` and ``limit`` of every list,
    # one rule for all (an empty cursor was a 400 "not one this API gave out" on the instances and the first page
    # on the trail).
    paging = PAGE_PARAMS - {"format"} if paged else frozenset()
    empty = [
        name[:100]
        for name, value in params.items()
        if known is not None and (name in known or name in paging) and not value.strip()
    ]
    if empty:
        message = "Empty: give a value, or leave the parameter out."
        detail = " ".join(f"{name}: empty; give a value or leave it out." for name in empty)
        raise Problem(
            400, detail[:1000], code="invalid", title="Invalid input", errors={name: [message] for name in empty}
        )
    return params


def repeated_problem(repeated: dict[str, int]) -> Problem:
    """The 400 for query parameters given more than once (``{name: how many times}``): one wording for every
    parameter of the API, whatever else it would have said of the value (``included_data``, the trail's filters
    too)."""
    errors = {name: [f"Given {count} times: give it once."] for name, count in repeated.items()}
    detail = " ".join(f"{name}: given {count} times; give it once." for name, count in repeated.items())
    return Problem(400, detail[:1000], code="invalid", title="Invalid input", errors=errors)


# What ``included_data`` takes, as the 400 and the schema say it.
INCLUDED_DATA_RULE = (
    "One of: all (the default: everything), metadata (without the instance's data and data_digest and the steps' "
    "result and error)."
)
INCLUDED_DATA_PARAMETER = OpenApiParameter(
    s.INCLUDED_DATA,
    OpenApiTypes.STR,
    enum=list(s.INCLUDED_DATA_CHOICES),
    default="all",
    description=(
        "`metadata` leaves the large data out, and PostgreSQL does not read it: the instance's `data` and "
        "`data_digest` (on the detail) and each step's `result` and `error` (its traceback; `error_type` stays). "
        "Fetch one step whole at its `url`. `all` (the default) answers every field. Anything else is a 400 "
        "naming the values; the parameter given twice, a 400 as any parameter given twice."
    ),
)


def metadata_only(request: Request) -> bool:
    """Whether the request asks for ``included_data=metadata`` (absent: ``all``, False). Read before
    :func:`single_valued` so that a refusal of its value, empty too, names the values it takes.

    Raises Problem 400 naming ``included_data``: given more than once, as any parameter given more than once
    (:func:`repeated_problem`); anything but ``all`` or ``metadata``, with its values (the value is not echoed:
    it may be megabytes or hold a NUL)."""
    values = request.query_params.getlist(s.INCLUDED_DATA)
    if not values:
        return False
    if len(values) > 1:
        raise repeated_problem({s.INCLUDED_DATA: len(values)})
    if values[0] in s.INCLUDED_DATA_CHOICES:
        return values[0] == "metadata"
    raise Problem(
        400,
        f"{s.INCLUDED_DATA}: not a value it takes. {INCLUDED_DATA_RULE}",
        code="invalid",
        title="Invalid input",
        errors={s.INCLUDED_DATA: [INCLUDED_DATA_RULE]},
    )


def _valid(
    serializer_class: type, data: Any, *, body: bool = True, context: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``data`` checked by ``serializer_class`` (with ``context``): its validated data, or a 400 naming each bad
    field.

    A request body (``body``) may hold only the serializer's fields: DRF drops any other, so a typo in a name
    (``businessKey``, ``coment``) started an instance without its business key or decided without the comment,
    and the sender was never told. A query string may carry others (``cursor``, ``limit``, ``format``)."""
    serializer = serializer_class(data=data, context=context or {})
    if body and isinstance(data, dict):
        unknown = [str(name)[:100] for name in data if name not in serializer.fields]
        if unknown:
            known = ", ".join(serializer.fields)
            message = f"Not a field of this request (its fields: {known})."
            errors = {name: [message] for name in unknown[:20]}
            raise Problem(
                400,
                f"Unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown[:20])}. {message}"[:1000],
                code="invalid",
                title="Invalid input",
                errors=errors,
            )
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


# --- workflows ------------------------------------------------------------------------------------------

# The largest version a workflow may be asked for, as a start's ``version`` takes it (a PostgreSQL integer).
VERSION_MAX = 2**31 - 1


@extend_schema_view(
    list=extend_schema(summary="The workflow catalog (latest versions)", responses=s.WorkflowSerializer(many=True)),
    retrieve=extend_schema(
        summary="One workflow: versions, steps and the input its start takes",
        parameters=[
            OpenApiParameter(
                "version",
                {"type": "integer", "minimum": 1, "maximum": VERSION_MAX},
                description="A version other than the latest (one of its `versions`); left out, the latest. A "
                "version it does not have is a 404.",
            )
        ],
        responses=s.WorkflowSerializer,
    ),
)
class WorkflowViewSet(viewsets.ViewSet):
    """The catalog, readable by everyone signed in (as the catalog page is)."""

    http_method_names = API_METHODS

    lookup_field = "name"
    lookup_value_converter = "str"

    def list(self, request: Request) -> Response:
        single_valued(request, known=(), paged=False)
        return Response(s.WorkflowSerializer(registry.latest_all(), many=True).data)

    def retrieve(self, request: Request, name: str) -> Response:
        version = single_valued(request, known=("version",), paged=False).get("version")
        if version is not None and not (re.fullmatch(r"[1-9][0-9]{0,9}", version) and int(version) <= VERSION_MAX):
            message = f"A whole number from 1 to {VERSION_MAX}."
            raise Problem(
                400, f"version: {message.lower()}", code="invalid", title="Invalid input", errors={"version": [message]}
            )
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
    retrieve=extend_schema(
        summary="One instance with its latest steps (attempts, errors) and tasks",
        description=(
            f"The instance with its data, its latest {s.DETAIL_SHOWN} step runs and latest {s.DETAIL_SHOWN} tasks "
            "(by id, listed oldest first), `steps_total` and `tasks_total` (how many it has) and `steps_url` and "
            "`tasks_url`, where every one is paged (an instance that looped or retried has runs without bound). "
            "Server paths in step errors for operators only. With `included_data=metadata`, without the data and "
            "the steps' results and errors (each step's `url` has it whole), and `steps_url` asks for metadata too."
        ),
        parameters=[INCLUDED_DATA_PARAMETER],
    ),
)
class InstanceViewSet(viewsets.GenericViewSet):
    """Instances: operators and managers see every one, anyone else those they started or have a task of."""

    http_method_names = API_METHODS

    serializer_class = s.InstanceSerializer
    pagination_class = Cursor
    lookup_value_converter = "int"

    def get_queryset(self) -> QuerySet[WorkflowInstance]:
        return selectors.instances_for_user(self.request.user).order_by("-id")

    def _instance(self, pk: int, *, with_data: bool = True) -> WorkflowInstance:
        """Instance ``pk`` if the caller may see it (``with_data``: read with its data, else without it, as
        ``selectors.instance_for_user``); else the 404 recorded as a hidden refusal (``hidden_404``)."""
        instance = selectors.instance_for_user(self.request.user, pk, with_data=with_data)
        if instance is None:
            raise hidden_404(self.request, "instance", WorkflowInstance, pk, "No such instance.")
        return instance

    def list(self, request: Request) -> Response:
        known = s.InstanceFilterSerializer._declared_fields
        filters = _valid(s.InstanceFilterSerializer, single_valued(request, known=known), body=False)
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
            qs = qs.filter(business_key__in=business_key_forms(filters["business_key"]))
        # The list shows no data: reading it cost each row its whole business data (megabytes each, in the end).
        page = self.paginate_queryset(qs.defer("data"))
        return self.get_paginated_response(s.InstanceSerializer(page, many=True).data)

    def retrieve(self, request: Request, pk: int) -> Response:
        """The detail; ``included_data=metadata`` without the data and the steps' payloads, none of them read."""
        metadata = metadata_only(request)
        single_valued(request, checked=(s.INCLUDED_DATA,), known=(s.INCLUDED_DATA,), paged=False)
        return self._detail(self._instance(pk, with_data=not metadata), metadata=metadata)

    def _shown(self, *, metadata: bool = False) -> dict[str, Any]:
        """The serializers' context for steps: server paths in step errors for operators only, as on the page;
        ``metadata``: the payloads left out (the rows were read without them)."""
        return {"show_paths": selectors.can_operate(self.request.user), "metadata_only": metadata}

    def _detail(self, instance: WorkflowInstance, *, metadata: bool = False) -> Response:
        """``instance`` (as read, with its initiator) with its latest step runs and tasks and how many it has of
        each: a constant number of statements whatever its history (tests/api/test_instance_steps.py). With
        ``metadata``, ``instance`` was read without its data, and the steps are read without their payloads."""
        steps, steps_total = selectors.latest_steps_of(instance.pk, s.DETAIL_SHOWN, payloads=not metadata)
        tasks, tasks_total = task_selectors.latest_tasks_of(instance.pk, s.DETAIL_SHOWN)
        context = {
            **self._shown(metadata=metadata),
            "steps": steps,
            "steps_total": steps_total,
            "tasks": tasks,
            "tasks_total": tasks_total,
        }
        return Response(s.InstanceDetailSerializer(instance, context=context).data)

    def _fresh_detail(self, pk: int) -> Response:
        """The detail as an operator's action left the instance: read again (the service changed it), without the
        visibility check the action passed (a cancel ends the tasks through which some see the instance)."""
        return self._detail(selectors.instance_read(pk))

    @extend_schema(
        summary="Every step run of an instance, in id order, in pages",
        description=(
            "The instance's step runs as its detail lists them (state, attempts, the last error, the result; "
            "server paths in tracebacks for operators only), oldest first: the detail holds only the latest "
            f"{s.DETAIL_SHOWN}. Keyset pages (`next` / `previous` links with an opaque `cursor`, `limit` 1-100, "
            "default 25): a page never repeats or skips a run, and runs made while a client pages come on later "
            "pages; `next` and `previous` keep `included_data`. The same access as the detail (not yours to see: "
            "404)."
        ),
        parameters=[INCLUDED_DATA_PARAMETER],
        responses={200: s.StepSerializer(many=True)},
    )
    @action(detail=True, methods=["get"], pagination_class=IdCursor)
    def steps(self, request: Request, pk: int) -> Response:
        """A page of the instance's step runs, oldest first (``included_data=metadata``: without their payloads,
        not read); 404 unseen (audited as the detail's), 400 naming an unknown or repeated parameter, a bad
        ``included_data``, ``limit`` or ``cursor``."""
        metadata = metadata_only(request)
        single_valued(request, checked=(s.INCLUDED_DATA,), known=(s.INCLUDED_DATA,))
        # Read without its data: the page shows none of it.
        instance = self._instance(pk, with_data=False)
        page = self.paginate_queryset(selectors.step_runs_of(instance.pk, payloads=not metadata))
        context = self._shown(metadata=metadata)
        return self.get_paginated_response(s.StepSerializer(page, many=True, context=context).data)

    @extend_schema(
        summary="One step run of an instance, whole",
        description=(
            "The step run as the steps page lists it, with its `result` and `error` always in full (what "
            "`included_data=metadata` leaves out of the detail and the pages; each step there has this `url`). "
            "Server paths in its traceback for operators only. The same access as the detail (not yours to see: "
            "404, as for a missing instance); a step id that is not one of this instance's runs is 404 too."
        ),
        responses={200: s.StepSerializer},
    )
    @action(detail=True, methods=["get"], url_path="steps/<int:step_id>", url_name="step", pagination_class=None)
    def step(self, request: Request, pk: int, step_id: int) -> Response:
        """Step run ``step_id`` of instance ``pk``, whole; 404 for an instance the caller may not see (audited as
        the detail's) or a run that is not the instance's (not audited: it names no object of theirs), 400 naming
        any query parameter but ``format``."""
        single_valued(request, known=(), paged=False)
        instance = self._instance(pk, with_data=False)
        step = selectors.step_run_of(instance.pk, step_id)
        if step is None:
            raise Http404("No such step run in this instance.")
        return Response(s.StepSerializer(step, context=self._shown()).data)

    @extend_schema(
        summary="Every task of an instance, in id order, in pages",
        description=(
            "The instance's tasks in short, as its detail lists them (each `url` is the task, which keeps its own "
            f"rule of who may read it), oldest first: the detail holds only the latest {s.DETAIL_SHOWN}. Keyset "
            "pages as for steps. The same access as the detail (not yours to see: 404)."
        ),
        responses={200: s.TaskSummarySerializer(many=True)},
    )
    @action(detail=True, methods=["get"], pagination_class=IdCursor)
    def tasks(self, request: Request, pk: int) -> Response:
        """A page of the instance's task summaries, oldest first; refusals as :meth:`steps`."""
        single_valued(request, known=())
        instance = self._instance(pk, with_data=False)
        page = self.paginate_queryset(task_selectors.task_summaries_of(instance.pk))
        return self.get_paginated_response(s.TaskSummarySerializer(page, many=True).data)

    @extend_schema(
        summary="Start an instance",
        description=(
            "Starts the workflow's latest version (or `version`) with `input`, validated by the workflow's start "
            "form (see `start_input` of the workflow). With an `Idempotency-Key` header the start happens at most "
            "once per key and client: the same key and body answer 200 with the first instance, the same key "
            "with another body 422, a duplicate still in flight the same instance (or 409 if it cannot be read "
            "yet). An input key naming a human step or a Signal wait of the workflow is refused, 422 "
            "`sets_records` naming `input.<key>`: the engine records who approved and a wait's timeout there."
        ),
        request=s.StartSerializer,
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                {"type": "string", "minLength": 1, "maxLength": KEY_MAX, "pattern": KEY_SCHEMA_PATTERN},
                OpenApiParameter.HEADER,
                description=(
                    f"{KEY_RULE[:-1]}, unique per start (a UUID is a good key). Send it once: two "
                    f"{IDEMPOTENCY_HEADER} headers arrive joined by a comma, which is refused (400)."
                ),
            )
        ],
        responses={201: s.InstanceSerializer, 200: s.InstanceSerializer},
    )
    def create(self, request: Request) -> Response:
        if not has_model_perm(request.user, "orchestrator.add_workflowinstance"):
            raise Problem(403, "Your role may not start workflows.", code="forbidden")
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is not None and "," in key:
            # Two Idempotency-Key lines reach the view joined ("a,b": gunicorn, as HTTP allows for a list), and that
            # made-up key matched neither: a retry sending "a" alone started again. The key is one string (the IETF
            # httpapi idempotency-key draft: a single sf-string), so a comma is refused whichever way it came.
            raise Problem(
                400,
                f"Send one {IDEMPOTENCY_HEADER} header, with a key that holds no comma: two {IDEMPOTENCY_HEADER} "
                "headers arrive joined by a comma, as one key neither of them is.",
                code="invalid",
                title="Invalid input",
                errors={IDEMPOTENCY_HEADER: [f"One header, one key: {KEY_RULE}"]},
            )
        if key is not None and (len(key) > KEY_MAX or not KEY_PATTERN.match(key)):
            raise Problem(
                400,
                f"{IDEMPOTENCY_HEADER}: {KEY_RULE}",
                code="invalid",
                title="Invalid input",
                errors={IDEMPOTENCY_HEADER: [KEY_RULE]},
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
        # The access check only: the service reads the instance again under its lock, and the answer is read fresh.
        instance = self._instance(pk, with_data=False)
        if not selectors.can_operate(request.user):
            raise Problem(403, "Only operators may retry, pause, resume or cancel instances.", code="forbidden")
        body = _valid(serializer_class, request.data)
        call(instance.pk, Actor.of(request.user), body, request_meta(request._request))
        return self._fresh_detail(instance.pk)

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
            _pause,
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
        summary="Cancel an instance for good, with or without undoing what it did",
        description=(
            "Without `compensate` (or false) the instance ends `cancelled` as it is: open steps skipped, open tasks "
            "cancelled. With `compensate: true` (the console's Cancel with compensation) it is undone first, its "
            "succeeded steps' compensations run latest first, and it ends `compensated`; 409 when its undoing has "
            "begun already or its definition is gone."
        ),
        request=s.CancelSerializer,
        responses={200: s.InstanceDetailSerializer, **OPERATOR_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: int) -> Response:
        return self._operate(request, pk, s.CancelSerializer, _cancel)

    @extend_schema(
        summary="Skip a failed instance's dead step with the output it would have returned",
        description=(
            "The console's Skip: the instance must be failed with exactly one dead automated task or timer step "
            "(its id or its name in `step`). The step ends skipped with `output` as its result, `output` joins the "
            "instance data, and the instance runs on from the node after the step. Audited with the reason. An "
            "output key naming a human step or a Signal wait of the workflow is refused, 422 `sets_records` naming "
            "`output.<key>`: the engine records who approved and a wait's timeout there."
        ),
        request=s.SkipSerializer,
        responses={200: s.InstanceDetailSerializer, **OPERATOR_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def skip(self, request: Request, pk: int) -> Response:
        """404 unseen, 403 not an operator, 400 naming ``step``/``output``/``reason``, 409 what the service refuses
        (``instance_step_skip``: not failed, saga begun, not its one dead task or timer step), 422 an output that
        sets the engine's records (``records.RecordsRefused``); else the instance."""
        instance = self._instance(pk, with_data=False)
        if not selectors.can_operate(request.user):
            raise Problem(403, "Only operators may skip a step.", code="forbidden")
        body = _valid(s.SkipSerializer, request.data)
        step_id = _step_id(instance, body["step"])
        try:
            operations.instance_step_skip(
                instance.pk,
                step_id,
                body["output"],
                actor=Actor.of(request.user),
                reason=body["reason"],
                request_meta=request_meta(request._request),
            )
        except RecordsRefused:
            raise  # 422 naming output.<key> (problems.to_problem), not the 400 of an output that cannot be stored
        except ValidationError as exc:  # the reason passed the serializer: what is left is the output
            messages = list(exc.messages)
            raise Problem(
                400, " ".join(messages), code="invalid", title="Invalid input", errors={"output": messages}
            ) from None
        return self._fresh_detail(instance.pk)

    @extend_schema(
        summary="Deliver a signal (an outside event) to the instance",
        description=(
            "The event joins the instance at its Signal node: the payload is validated by the waiting node's form "
            "or schema and merged into the instance data, and the instance goes on. A signal that arrives before "
            "the instance reaches a node waiting for its event (or while it is paused) is kept (`state: kept`) if "
            "at least one node for the event accepts its payload (else 422), and consumed when the instance gets "
            "there: the node that consumes it checks it again, and if that node refuses it the signal becomes "
            "`state: rejected` (with `rejection`: the node, the step and the errors) and the wait goes on waiting "
            "for a new signal. If what follows the wait raises (the workflow's own code, e.g. a decision reading "
            "data the payload lacks), the signal is still accepted (`state: consumed`): the wait dies naming the "
            "error and the instance fails, for an operator to retry once the definition is fixed. "
            "`signal_id` makes a repeat harmless: the same id with the same event and payload answers 200 with the "
            "signal as it is now (header `Idempotent-Replayed: true`) and changes nothing; with another event or "
            "payload it is 409. Needs the `orchestrator.deliver_signal` permission and to see the instance; the "
            "person who started the instance may not signal it (four-eyes)."
        ),
        request=s.SignalSerializer,
        responses={
            201: s.ReceivedSignalSerializer,
            200: s.ReceivedSignalSerializer,
            403: OpenApiResponse(description="No deliver_signal permission, or you started this instance."),
            404: OpenApiResponse(description="No such instance, or not yours to see."),
            409: OpenApiResponse(
                description="The instance has ended or is compensating, its workflow's definition is not deployed, the "
                "signal id was used with another body, or a signal to be kept finds the instance keeping 1000 signals "
                "not yet taken."
            ),
            422: OpenApiResponse(
                description="The workflow never waits for the event (`invalid_signal`), or the payload does not fit "
                "(its node's form or schema refuses it: `invalid_signal`), or it sets a key where the workflow records "
                "a human step or a wait, as sent or as cleaned (`sets_records`, naming `payload.<key>`)."
            ),
        },
    )
    @action(detail=True, methods=["post"], url_path="signals")
    def signals(self, request: Request, pk: int) -> Response:
        """404 unseen, 403 without ``deliver_signal``, 400 a malformed body; then what ``_deliver`` answers."""
        instance = self._instance(pk, with_data=False)
        if not request.user.has_perm(DELIVER_SIGNAL):
            raise Problem(403, "Your role may not deliver signals.", code="forbidden")
        body = _valid(s.SignalSerializer, request.data)
        return _deliver(request, instance.pk, body)


def _cancel(instance_id: int, actor: Actor, body: dict[str, Any], meta: dict[str, Any]) -> None:
    """The cancel the body asks for: the services' own, with compensation (as the console's "Cancel with
    compensation") or without."""
    if body["compensate"]:
        operations.instance_compensate(instance_id, actor=actor, reason=body["reason"], cancel=True, request_meta=meta)
    else:
        instance_services.instance_cancel(instance_id, actor=actor, reason=body["reason"], request_meta=meta)


def _pause(instance_id: int, actor: Actor, body: dict[str, Any], meta: dict[str, Any]) -> None:
    """The console's pause: an end no further than ``operations.pause_horizon()`` ahead (the service's
    ValidationError, a 400 naming ``until``, or ``reason`` for the service's own check of it)."""
    try:
        operations.instance_pause_until(
            instance_id, actor=actor, reason=body["reason"], until=body.get("until"), request_meta=meta
        )
    except ValidationError as exc:
        messages = list(exc.messages)
        if not all(m.startswith(PAUSE_LABEL) for m in messages):
            raise Problem(
                400, " ".join(messages), code="invalid", title="Invalid input", errors={"reason": messages}
            ) from None
        # The service words its refusal for the console's page, under its label "Resume at"; the API names the
        # field as sent (README, "The API"), so the label gives way to ``until``, as every other field's 400 reads.
        # Raised as a serializer's refusal, so the answer is worded as every other field's (api.problems).
        raise SerializerValidationError({"until": [_sentence(m.removeprefix(PAUSE_LABEL)) for m in messages]}) from None


# The label of the console's pause field, which the pause service's messages start with.
PAUSE_LABEL = "Resume at:"


def _sentence(text: str) -> str:
    """``text`` without its leading space, starting with a capital, as a field's message does."""
    text = text.strip()
    return text[:1].upper() + text[1:]


def _step_id(instance: WorkflowInstance, ref: int | str) -> int:
    """The id of the step ``ref`` names in ``instance``: an id as given (the service checks it is this instance's
    dead step), a name as its dead forward step (else its latest step of that name, which the service refuses
    with the reason). A name no step has is a 400 naming ``step``."""
    if isinstance(ref, int):
        return ref
    steps = list(
        instance.steps.filter(name=ref).exclude(kind=StepKind.COMPENSATION).order_by("-id").values_list("pk", "state")
    )
    if not steps:
        raise Problem(
            400,
            f"step: instance {instance.pk} has no step named {ref[:100]!r}.",
            code="invalid",
            title="Invalid input",
            errors={"step": [f"No step named {ref[:100]!r} in this instance."]},
        )
    return next((pk for pk, state in steps if state == StepState.DEAD), steps[0][0])


def _deliver(request: Request, instance_id: int, body: dict[str, Any]) -> Response:
    """Deliver ``body``'s signal to ``instance_id`` through the service (which audits it); 201 for a new signal,
    200 for a repeat of its id."""
    delivery = signal_services.signal_deliver(
        event=body["event"],
        signal_id=body["signal_id"],
        payload=body["payload"],
        actor=Actor.of(request.user),
        instance_id=instance_id,
        request_meta=request_meta(request._request),
    )
    repeat = delivery.outcome == "repeat"
    response = Response(
        s.ReceivedSignalSerializer(delivery.signal).data,
        status=status.HTTP_200_OK if repeat else status.HTTP_201_CREATED,
    )
    if repeat:
        response["Idempotent-Replayed"] = "true"
    return response


@extend_schema_view(
    create=extend_schema(
        summary="Deliver a signal to the open instance with a business key",
        description=(
            "As `POST /api/instances/{id}/signals/`, addressed by `business_key` (and `workflow` when several "
            "workflows share keys): it must name exactly one open instance (several: 409, name the instance by "
            "its id)."
        ),
        request=s.SignalByKeySerializer,
        responses={
            201: s.ReceivedSignalSerializer,
            200: s.ReceivedSignalSerializer,
            403: OpenApiResponse(
                description="No deliver_signal permission, a role that does not see every instance, or you started "
                "the instance."
            ),
            404: OpenApiResponse(description="No open instance with this key (and no earlier signal with this id)."),
            409: OpenApiResponse(
                description="Several open instances have the key, the instance ended, or the id "
                "was used with another body."
            ),
            422: OpenApiResponse(
                description="The workflow never waits for the event, or the payload does not fit (`invalid_signal`), "
                "or it sets a key where the workflow records a human step or a wait (`sets_records`)."
            ),
        },
    )
)
class SignalViewSet(viewsets.ViewSet):
    """Signals addressed by business key (by id: ``POST /api/instances/{id}/signals/``)."""

    http_method_names = API_METHODS

    def create(self, request: Request) -> Response:
        """403 without ``deliver_signal``, 400 a malformed body, 404/409 a key of no or several open instances (or
        none the caller sees: 404); then what ``_deliver`` answers."""
        # The role first, and by key only for a caller who sees every instance: a business key names no object the
        # caller has shown they may see, so anyone else would learn from a 404 or a "several open instances" 409
        # which keys (order numbers) exist. Whoever may see only some instances names one by its id.
        if not request.user.has_perm(DELIVER_SIGNAL):
            raise Problem(403, "Your role may not deliver signals.", code="forbidden")
        if not selectors.can_view_all_instances(request.user):
            raise Problem(
                403,
                "Signals by business key need a role that sees every instance (view_workflowinstance); "
                "name the instance by its id instead.",
                code="forbidden",
            )
        body = _valid(s.SignalByKeySerializer, request.data)
        instance_id = signal_services.signal_target(
            None, body["business_key"], body.get("workflow"), signal_id=body["signal_id"]
        )
        return _deliver(request, instance_id, body)


# --- tasks ----------------------------------------------------------------------------------------------

TASK_ERRORS = {
    400: OpenApiResponse(description="Invalid input."),
    403: OpenApiResponse(description="Not yours to act on (four-eyes, not a candidate, not the assignee)."),
    404: OpenApiResponse(description="No such task, or not yours to see."),
    409: OpenApiResponse(description="Someone else claimed or decided it first, or it is no longer open."),
}
# A delegation's 409 also covers a task that changed hands since the caller saw its holder (``expected_holder``).
DELEGATE_ERRORS = {
    **TASK_ERRORS,
    409: OpenApiResponse(
        description="It is no longer open, or it changed hands since the caller saw its holder (`expected_holder`; "
        "code `holder_changed`, the detail names who holds it now and how they got it)."
    ),
}


def _task_rows(qs: QuerySet[Any]) -> QuerySet[Any]:
    """Tasks as the API shows them, with their instance's id and title and their assignee: the instance's data is
    not read (a task names its instance, and the data of each can run to megabytes)."""
    return qs.select_related("instance", "assignee").defer("instance__data")


@extend_schema_view(
    list=extend_schema(summary="My tasks, or my team's queue", parameters=[s.TaskFilterSerializer]),
    retrieve=extend_schema(summary="One task", responses={200: s.TaskDetailSerializer}),
)
class TaskViewSet(viewsets.GenericViewSet):
    """Tasks: ``scope=mine`` (assigned to me) or ``scope=queue`` (open tasks I may claim); the actions are the
    inbox's, with its rules (four-eyes, candidates, managers) enforced by the services."""

    http_method_names = API_METHODS

    serializer_class = s.TaskSerializer
    pagination_class = Cursor
    lookup_value_converter = "int"

    def get_queryset(self) -> QuerySet[Any]:
        return task_selectors.visible_tasks(self.request.user)

    def list(self, request: Request) -> Response:
        params = single_valued(request, known=("scope",))
        scope = _valid(s.TaskFilterSerializer, params, body=False)["scope"]
        user = request.user
        qs = task_selectors.my_tasks(user) if scope == "mine" else task_selectors.team_queue(user)
        page = self.paginate_queryset(_task_rows(qs).order_by("-id"))
        return self.get_paginated_response(s.TaskSerializer(page, many=True).data)

    def _task(self, pk: int) -> Any:
        task = _task_rows(self.get_queryset()).defer("step__result").filter(pk=pk).first()
        if task is None:
            raise hidden_404(self.request, "task", HumanTask, pk, "No such task.")
        return task

    def retrieve(self, request: Request, pk: int) -> Response:
        single_valued(request, known=(), paged=False)
        return Response(s.TaskDetailSerializer(self._task(pk)).data)

    def _answer(self, pk: int) -> Response:
        # Read without the visibility filter: the service just let this user act on it (a delegation may have
        # handed it beyond what they see).

        return Response(s.TaskSerializer(_task_rows(HumanTask.objects.all()).get(pk=pk)).data)

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
        task = self._task(pk)  # 404 before any check of the body: an unseen task is not there
        body = _valid(s.DecideSerializer, request.data, context={"task": task})
        if body["data"] and task.kind != TaskKind.FORM:
            # Only a form task's fields join the instance data: for an approval or an escalation the service reads
            # no data, and what a client sent there (an amount it meant to set) was dropped without a word.
            message = f"This task is an {task.kind}: it takes no data (only a form task's fields are sent in data)."
            raise Problem(400, message, code="invalid", title="Invalid input", errors={"data": [message]})
        task_services.task_decide(
            pk,
            request.user,
            body["decision"],
            comment=body["comment"],
            data=body["data"],
            seen=body["seen"] or None,
            request_meta=request_meta(request._request),
        )
        return self._answer(pk)

    @extend_schema(
        summary="Hand a task to another candidate",
        request=s.DelegateSerializer,
        responses={200: s.TaskSerializer, **DELEGATE_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def delegate(self, request: Request, pk: int) -> Response:
        self._task(pk)
        body = _valid(s.DelegateSerializer, request.data)
        task_services.task_delegate(
            pk,
            request.user,
            body["to_user"],
            note=body["note"],
            seen_holder=body.get("expected_holder"),
            request_meta=request_meta(request._request),
        )
        return self._answer(pk)


# --- audit ----------------------------------------------------------------------------------------------

# A time as the API's serializers write it (api/middleware.py): UTC, with Z.
UTC_TIME = DateTimeField(default_timezone=UTC).to_representation
AUDIT_PAGE_DEFAULT = 50
AUDIT_PAGE_MAX = 200


class TrailTimes(Serializer):
    """The trail's ``since`` and ``until`` as the API reads every time: with their offset, a day that does not exist
    said so, each message naming the parameter (the timeline's form says "From" and "Until", the page's labels, and
    reads a time without an offset in the person's zone: a script's clock is not Baton's)."""

    since = s.AwareDateTimeField(required=False)
    until = s.AwareDateTimeField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        since, until = attrs.get("since"), attrs.get("until")
        if since is not None and until is not None and since >= until:
            raise SerializerValidationError({"until": ["Must be later than since."]})
        return attrs


def _trail_filters(request: Request, *, paged: bool = True) -> audit_selectors.AuditFilters:
    """The admins' trail: 403 for anyone else (as the /audit/ pages); the query's filters through the timeline's
    own form, a bad one a 400 naming it."""
    if not audit_selectors.can_view_trail(request.user):
        raise Problem(403, "The audit trail is for auditors and administrators.", code="forbidden")
    # A filter given twice is refused here, as any parameter of the API (the form would name ``query`` and say, as
    # on the page, that it shows the results without it).
    params = single_valued(request, known=AuditFilterForm.base_fields, paged=paged)
    # Read as JSON is (bound_form): an Arabic-Indic ``instance`` or ``instance=1_0`` is no id here, as a number so
    # written in a body is none (the page's own form, typed by a person, reads them as Django does).
    form = bound_form(AuditFilterForm, params.dict())
    # The times first, as the API reads them (TrailTimes); the form's own errors after.
    times = TrailTimes(data={name: request.query_params[name] for name in ("since", "until") if name in params})
    if not times.is_valid() or not form.is_valid():
        errors = flatten(times.errors) or {
            ("query" if k == "__all__" else k): [str(m) for m in v] for k, v in form.errors.items()
        }
        raise Problem(
            400, f"Check the filters: {errors_summary(errors)}", code="invalid", title="Invalid input", errors=errors
        )
    return form.filters()


class AuditEventsView(APIView):
    """The audit trail with the admin timeline's filters, newest first, in keyset pages."""

    http_method_names = API_METHODS

    @extend_schema(
        operation_id="audit_events_list",
        summary="Audit events, newest first, with the timeline's filters",
        description=(
            "The filters of the admins' timeline (`/audit/`), checked by its form; `since`/`until` carry their "
            "offset, as every time of this API (the page reads a time without one in the person's zone; a script's "
            "clock is not Baton's). Follow `next` for older events (the cursor is opaque; a damaged "
            "one is 400). Admins only (`orchestrator.view_trail`)."
        ),
        parameters=[s.AuditPageQuerySerializer],
        responses={200: s.AuditPageSerializer},
    )
    def get(self, request: Request) -> Response:
        """A page of ``limit`` events (1-200, default 50) older than ``cursor``; 400 naming a bad filter, limit or
        cursor; 403 for anyone but admins."""
        filters = _trail_filters(request)
        limit_text = request.query_params.get("limit", str(AUDIT_PAGE_DEFAULT))
        if not re.fullmatch(r"[0-9]{1,3}", limit_text) or not 1 <= int(limit_text) <= AUDIT_PAGE_MAX:
            raise Problem(
                400,
                f"limit: a whole number from 1 to {AUDIT_PAGE_MAX}.",
                code="invalid",
                title="Invalid input",
                errors={"limit": [f"1-{AUDIT_PAGE_MAX}."]},
            )
        cursor = request.query_params.get("cursor", "")[:300]
        events = audit_selectors.audit_events_filtered(filters)
        page = audit_selectors.keyset_page(events, after=cursor, size=int(limit_text))
        if page.errors:
            raise Problem(
                400,
                "The cursor is not one this API gave out: start again without it.",
                code="invalid_cursor",
                errors={"cursor": ["Invalid."]},
            )
        next_url = None
        if page.older:
            params = {**filters.as_params(), "cursor": page.older, "limit": limit_text}
            next_url = request.build_absolute_uri(request.path) + "?" + urlencode(params)
        # The export's record, its time written as every time of the API (``Z``; the record's text is ``+00:00``).
        results = [
            {"id": event.pk, **event_record(event), "occurred_at": UTC_TIME(event.occurred_at)} for event in page.events
        ]
        return Response({"next": next_url, "results": results})


class _AuditExportView(APIView):
    http_method_names = API_METHODS
    kind = ""

    def get(self, request: Request) -> HttpResponseBase:
        """The page's streamed export as ``kind``; 400 naming a bad filter, 403 for anyone but admins."""
        return export_response(request._request, self.kind, _trail_filters(request, paged=False))


def _export_schema(kind: str, media_type: str) -> Any:
    return extend_schema(
        operation_id=f"audit_export_{kind}",
        summary=f"Export the audit events as {kind.upper()}, streamed and signed",
        description=(
            "The timeline's filters; the events oldest first, each line MAC-chained from the export record to the "
            "end record, exactly as the audit page's export (check a file with "
            "`manage.py baton_verify_audit --file`). The export is itself recorded. Admins only."
        ),
        parameters=[s.AuditFilterSerializer],
        responses={(200, media_type): OpenApiResponse(response=OpenApiTypes.STR, description="The export file.")},
    )


class AuditExportJsonlView(_AuditExportView):
    """``/api/audit/export.jsonl``."""

    kind = "jsonl"

    @_export_schema("jsonl", "application/x-ndjson")
    def get(self, request: Request) -> HttpResponseBase:
        return super().get(request)


class AuditExportCsvView(_AuditExportView):
    """``/api/audit/export.csv``."""

    kind = "csv"

    @_export_schema("csv", "text/csv")
    def get(self, request: Request) -> HttpResponseBase:
        return super().get(request)
