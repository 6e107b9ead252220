"""Every error of the API as ``application/problem+json`` (RFC 9457): ``type``, ``title``, ``status``, ``detail``,
and for validation errors ``errors``, a map from the field (dotted for nested input, ``input.amount``,
``data.cost_centre``) to its messages. Domain errors of the services map to the status the pages use: a foreign
object 404, a forbidden action 403, an action the state does not allow 409, bad input 400, an idempotency key
reused with another body 422, data
that sets the engine's own records (``orchestrator.records``) 422 ``sets_records``.

Views raise; ``problem_handler`` (DRF's ``EXCEPTION_HANDLER``) answers. A new endpoint (another app's, on top of
this one) gets the same answers by raising the same exceptions, or an ``APIException`` of its own.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from api.authentication import other_scheme
from approvals.models import HumanTask
from approvals.services import base as task_rules
from orchestrator import registry
from orchestrator.accounts import hidden_404
from orchestrator.records import RecordsRefused
from orchestrator.services import instances as instance_services
from orchestrator.services import operations
from orchestrator.services import signals as signal_services

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Problem(exceptions.APIException):
    """An API error with its own status, title, machine-readable ``code`` and optional per-field ``errors``."""

    def __init__(
        self,
        status_code: int,
        detail: str,
        *,
        code: str,
        title: str = "",
        errors: dict[str, list[str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail, code)
        self.status_code = status_code
        self.title = title or HTTPStatus(status_code).phrase
        self.problem_code = code
        self.errors = errors or {}
        self.headers = headers or {}


def conflict(detail: str, code: str = "conflict") -> Problem:
    return Problem(409, detail, code=code, title="Not possible in the current state")


def flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested validation detail as ``{"field.sub": ["message", ...]}``; messages for the whole body
    (``non_field_errors``) under the prefix itself, or ``body`` at the top."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = prefix if key in ("non_field_errors", "__all__") else f"{prefix}.{key}" if prefix else str(key)
            for field, messages in flatten(value, name).items():
                out.setdefault(field, []).extend(messages)
    elif isinstance(detail, list):
        for index, value in enumerate(detail):
            inner = prefix if not isinstance(value, dict | list) else f"{prefix}[{index}]"
            for field, messages in flatten(value, inner).items():
                out.setdefault(field, []).extend(messages)
    else:
        out.setdefault(prefix or "body", []).append(str(detail))
    return out


def errors_summary(errors: dict[str, list[str]]) -> str:
    """The ``detail`` of a validation error: each field and its messages, at most 1000 characters. A message that
    names its field already (``started_after: enter a date between ...``, a check shared with the pages, where no
    field stands beside it) is not prefixed twice."""
    return " ".join(
        " ".join(message if message.startswith(f"{field}: ") else f"{field}: {message}" for message in messages)
        for field, messages in errors.items()
    )[:1000]


def to_problem(exc: Exception) -> Problem | exceptions.APIException | None:
    """The API error for ``exc``; None for an exception nobody expected (left to Django: logged, 500)."""
    from api.parsers import InvalidValue
    from api.services import IdempotencyKeyBusy, IdempotencyKeyReused

    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, IdempotencyKeyReused):
        return Problem(422, str(exc), code="idempotency_key_reused", title="Idempotency-Key reused")
    if isinstance(exc, IdempotencyKeyBusy):
        return Problem(
            409, str(exc), code="idempotency_key_busy", title="Request in flight", headers={"Retry-After": "1"}
        )
    if isinstance(exc, exceptions.ValidationError):
        errors = flatten(exc.detail)
        return Problem(
            400, f"Check the fields: {errors_summary(errors)}", code="invalid", title="Invalid input", errors=errors
        )
    if isinstance(exc, InvalidValue):
        return Problem(400, str(exc.detail), code="invalid", title="Invalid input", errors={exc.field: [exc.message]})
    if isinstance(exc, exceptions.APIException):
        return exc
    if isinstance(exc, Http404 | task_rules.TaskNotFound | registry.UnknownWorkflow):
        text = str(exc) if isinstance(exc, task_rules.TaskNotFound) else "Not found, or not yours to see."
        return Problem(404, text, code="not_found")
    if isinstance(exc, DjangoPermissionDenied):
        return Problem(403, str(exc) or "Your role may not do this.", code="forbidden")
    if isinstance(exc, task_rules.TaskForbidden):
        return Problem(403, str(exc), code="forbidden")
    if isinstance(exc, task_rules.HolderChanged):
        # The field whose expectation failed carries who holds the task now, for a client to show or compare.
        now = f"{exc.holder} holds this task now." if exc.holder else "Nobody holds this task now."
        # The service's message is the page's ("What you wrote is kept": the form stays filled in); a client is told
        # what to do instead.
        detail = (
            f"This task changed hands after you read it ({exc.how}): nothing was changed. Read the task again and "
            "decide again whether to hand it on and to whom, sending its holder as you read it then as "
            "expected_holder."
            if exc.how
            else str(exc)
        )
        return Problem(
            409, detail, code="holder_changed", title="The task changed hands", errors={"expected_holder": [now]}
        )
    if isinstance(exc, task_rules.TaskConflict):
        return conflict(str(exc))
    if isinstance(exc, task_rules.FormInvalid):
        # A form task's fields, named by their place in the request body (``data.cost_centre``), as a start's
        # input is (``input.amount``).
        errors = {f"data.{k}" if k != "__all__" else "data": list(map(str, v)) for k, v in exc.errors.items()}
        return Problem(
            400, f"Check the fields: {errors_summary(errors)}", code="invalid", title="Invalid input", errors=errors
        )
    if isinstance(exc, task_rules.TaskInvalid):
        errors = {key: list(map(str, value)) for key, value in (exc.errors or {}).items()}
        return Problem(400, str(exc), code="invalid", title="Invalid input", errors=errors)
    if isinstance(exc, operations.OwnInstance):  # a NotAllowed, but not the state's: the initiator's (four-eyes)
        return Problem(403, str(exc), code="forbidden")
    if isinstance(exc, instance_services.NotAllowed):
        return conflict(str(exc), "not_allowed")
    if isinstance(exc, instance_services.InvalidInput):
        errors = {f"input.{k}" if k != "__all__" else "input": v for k, v in exc.errors.items()}
        if isinstance(exc, instance_services.InputSetsRecords):
            return _records_problem(f"The input may not set the workflow's own records: {', '.join(exc.keys)}.", errors)
        return Problem(
            400, f"Check the fields: {errors_summary(errors)}", code="invalid", title="Invalid input", errors=errors
        )
    if isinstance(exc, signal_services.SignalError):
        return _signal_problem(exc)
    if isinstance(exc, OperationalError | InterfaceError):
        # The database is unreachable (restarting, out of connections): the client may retry shortly.
        logger.warning("API request failed on the database: %s", str(exc)[:300])
        return Problem(
            503,
            "The database is unreachable for a moment; nothing was changed. Retry shortly.",
            code="unavailable",
            headers={"Retry-After": "5"},
        )
    if isinstance(exc, SuspiciousOperation):
        return _suspicious_problem(exc)
    if isinstance(exc, RecordsRefused):
        return _records_problem(str(exc.message), exc.errors)
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "error_dict"):
            errors = {k if k != "__all__" else "body": v for k, v in exc.message_dict.items()}
        else:
            errors = {"body": list(exc.messages)}
        return Problem(400, " ".join(exc.messages), code="invalid", title="Invalid input", errors=errors)
    return None


def _suspicious_problem(exc: SuspiciousOperation) -> Problem:
    """A request Django itself refuses while DRF reads it (its ``SuspiciousOperation`` kinds): more query or form
    fields than ``DATA_UPLOAD_MAX_NUMBER_FIELDS`` (a query string well under the 414 limit holds 2000 of them), a
    body past ``DATA_UPLOAD_MAX_MEMORY_SIZE``, anything else of the kind. Django would answer each with its HTML
    400 page; the API answers problem+json like every other refusal. Logged as Django logs it (``django.security``),
    at warning: the client's fault, not Baton's."""
    logging.getLogger(f"django.security.{type(exc).__name__}").warning("%s", exc)
    if isinstance(exc, RequestDataTooBig):
        return Problem(413, "The request body is too large.", code="payload_too_large")
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return Problem(
            400, f"The request has more than {limit} query or form fields: send fewer.", code="too_many_fields"
        )
    return Problem(400, "The request could not be understood.", code="bad_request")


def _records_problem(detail: str, errors: dict[str, list[str]]) -> Problem:
    """Data that sets a key where the engine records what a node did (``orchestrator.records``: a human step's
    decision, a wait's timeout), by whichever way in (a start's ``input``, a skip's ``output``, a signal's
    ``payload``): 422 ``sets_records``, each key named (``input.manager_approval``). The body was well formed;
    what it asks is not the sender's to say, so not a 400 the sender fixes by the form's rules."""
    return Problem(422, detail, code="sets_records", title="Sets the workflow's own records", errors=errors)


def _signal_problem(exc: signal_services.SignalError) -> Problem:
    """A refused delivery: unknown instance 404, the initiator 403, an ended instance or a reused signal id 409,
    an event the workflow never waits for or a payload its node refuses 422 (the body was well formed; its
    content does not fit the workflow), each naming its field."""
    errors = {key: [str(m) for m in messages] for key, messages in exc.errors.items()}
    if isinstance(exc, signal_services.SignalNotFound):
        return Problem(404, str(exc), code="not_found")
    if isinstance(exc, signal_services.SignalForbidden):
        return Problem(403, str(exc), code="forbidden")
    if isinstance(exc, signal_services.SignalConflict):
        return Problem(409, str(exc), code="conflict", title="Not possible in the current state", errors=errors)
    if isinstance(exc, signal_services.SignalSetsRecords):
        return _records_problem(str(exc), errors)
    return Problem(422, str(exc), code="invalid_signal", title="Signal not accepted", errors=errors)


def problem_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: the problem+json response for ``exc``, or None to let Django answer (500)."""
    problem = to_problem(exc)
    if problem is None:
        return None
    pk = context.get("kwargs", {}).get("pk")
    if isinstance(exc, task_rules.TaskNotFound) and isinstance(pk, int) and context.get("request") is not None:
        # A task action the service refused as "not found": the same 404, recorded when the task exists but is
        # not the caller's to see (orchestrator.accounts.hidden_refused).
        hidden_404(context["request"], "task", HumanTask, pk, str(exc))
    status_code = problem.status_code
    headers: dict[str, str] = {}
    if isinstance(problem, Problem):
        title, code, errors = problem.title, problem.problem_code, problem.errors
        headers.update(problem.headers)
        detail = str(problem.detail)
    else:
        title = HTTPStatus(status_code).phrase
        codes = problem.get_codes()
        code = codes if isinstance(codes, str) else "error"
        errors = {}
        detail = (
            str(problem.detail)
            if not isinstance(problem.detail, dict | list)
            else errors_summary(flatten(problem.detail))
        )
        if isinstance(problem, exceptions.NotAuthenticated) and context.get("request") is not None:
            # "Authentication credentials were not provided." to a client that sent Token <x>: say which scheme.
            wrong = other_scheme(context["request"])
            if wrong:
                detail, errors = wrong, {"Authorization": [wrong]}
        auth_header = getattr(problem, "auth_header", None)
        if auth_header:
            headers["WWW-Authenticate"] = auth_header
        wait = getattr(problem, "wait", None)
        if wait:
            headers["Retry-After"] = str(int(wait))
    request = context.get("request")
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status_code,
        "detail": detail,
        "code": code,
    }
    if request is not None:
        body["instance"] = request.path
    if errors:
        body["errors"] = errors
    if status_code == status.HTTP_401_UNAUTHORIZED and "WWW-Authenticate" not in headers:
        headers["WWW-Authenticate"] = 'Bearer realm="api"'
    if request is not None:
        # Rendered as JSON whatever the view renders (the schema YAML, the docs HTML): DRF renders an error with
        # the renderer it negotiated for the answer, which under a problem+json Content-Type would be YAML or text.
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = PROBLEM_JSON
    return Response(body, status=status_code, headers=headers, content_type=PROBLEM_JSON)


NOT_FOUND_DETAIL = "No API endpoint at this path: see /api/docs/ for the endpoints."


def problem_response(request: HttpRequest, status_code: int, detail: str, code: str) -> JsonResponse:
    """A problem+json answer built outside DRF (no view, no negotiation): ``status_code`` an HTTP status, ``detail``
    the sentence for people, ``code`` the machine-readable one. The same body ``problem_handler`` gives, without
    ``errors``. Raises ``ValueError`` for a status HTTP does not define."""
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status_code).phrase,
        "status": status_code,
        "detail": detail,
        "code": code,
        "instance": request.path,
    }
    return JsonResponse(body, status=status_code, content_type=PROBLEM_JSON)


@csrf_exempt
def not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """Any path under /api/ that no endpoint matches (an id that is not a number, a typo, a missing slash), and
    ``/api`` itself: a problem+json 404 for every method, instead of a page of HTML (or, for a POST without its
    slash, the error Django raises under DEBUG, or a redirect that turns it into a GET). A path that names an
    endpoint once its trailing slash is added says so, with that path: no redirect, which a client would follow
    with a GET and without its body. Nothing is read or written, so it needs no authentication."""
    slashed = _slashed(request)
    if slashed:
        detail = (
            f"No API endpoint at this path; {slashed[:300]} is one: every path of the API ends with a slash "
            "(see /api/docs/)."
        )
        return problem_response(request, 404, detail, "not_found")
    return problem_response(request, 404, NOT_FOUND_DETAIL, "not_found")


def _slashed(request: HttpRequest) -> str | None:
    """``request``'s path with a slash added, when that names an endpoint (any view but :func:`not_found`);
    else None. Raises nothing."""
    path = request.path_info
    if path.endswith("/"):
        return None
    try:
        match = resolve(f"{path}/")
    except Resolver404:
        return None
    return None if match.func is not_found else f"{request.path}/"


class LenientNegotiation(DefaultContentNegotiation):
    """Answer in JSON whatever the Accept header says (a 406 helps no script: ``Accept`` is a preference, often a
    library's default); ``?format=`` still picks the schema's YAML or JSON, and is a demand: a format the endpoint
    does not have is a 406 naming the ones it has (DRF's own answer was a 404; this class answered JSON anyway)."""

    def select_renderer(self, request: Any, renderers: list[Any], format_suffix: str | None = None) -> Any:
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except exceptions.NotAcceptable:
            return renderers[0], renderers[0].media_type
        except (exceptions.NotFound, Http404):  # an unknown ?format= (DRF raises Django's Http404 for it)
            given = str(format_suffix or request.query_params.get(self.settings.URL_FORMAT_OVERRIDE, ""))
            formats = list(dict.fromkeys(renderer.format for renderer in renderers))
            message = f"This endpoint answers {' or '.join(formats)}: leave format out, or give one of those."
            raise Problem(
                406,
                f"format: {given[:40]!r} is not a format of this endpoint. {message}",
                code="not_acceptable",
                errors={"format": [message]},
            ) from None

    def select_parser(self, request: Any, parsers: list[Any]) -> Any:
        """The parser for the body's Content-Type; none (not JSON, or the header left out) is a 415 saying which
        header to send. DRF's own said 'Unsupported media type "" in request.' for a missing header. A body with
        a ``Content-Encoding`` (gzip) is a 415 too (RFC 9110, 15.5.16, with ``Accept-Encoding``): Baton does not
        decode one, and the JSON parser's 400 ("not valid JSON: can't decode byte 0x8b") hid why."""
        encoding = request.META.get("HTTP_CONTENT_ENCODING", "").strip()
        # A list (RFC 9110, 5.6.1: empty members count for nothing) of codings all "identity" is no coding at all.
        codings = {member.strip().lower() for member in encoding.split(",")} - {""}
        if codings - {"identity"}:
            message = "Send the body uncompressed, without a Content-Encoding header"
            raise Problem(
                415,
                f"The body's Content-Encoding ({encoding[:40]!r}) is not supported. {message}.",
                code="unsupported_content_encoding",
                errors={"Content-Encoding": [f"{message}."]},
                headers={"Accept-Encoding": "identity"},
            )
        parser = super().select_parser(request, parsers)
        if parser is None:
            given = request.content_type
            sent = f"this request's is {given[:100]!r}" if given else "this request has no Content-Type"
            message = "Send the body as JSON with the header Content-Type: application/json"
            raise Problem(
                415, f"{message}; {sent}.", code="unsupported_media_type", errors={"Content-Type": [f"{message}."]}
            )
        return parser
