"""Error pages: a database outage answers 503 and heals by itself, and every mode shows friendly pages.

- ``DatabaseUnavailableMiddleware``: a request whose database work fails because the database cannot be reached
  (refused, restarting, a session it dropped) gets a short "try again in a moment" page with status 503 and
  ``Retry-After``, instead of a 500 that tells monitors and people that Baton itself is broken. Django closes the
  failed session when the request ends (``close_old_connections``, the session saw an error) and checks a kept one
  before the next request uses it (``CONN_HEALTH_CHECKS``) when it sat idle for :data:`CHECK_AFTER_IDLE` seconds
  or more, so the next request after the database is back works without a restart. A session a statement
  succeeded on less than that ago (a request that ran none proves nothing) is trusted without the check's
  ``SELECT 1`` (one of a start's eight round trips through the API, and the one that does no work), as the
  Celery worker trusts its own (baton_site/celery.py): a busy process pays no check, and a session PostgreSQL
  dropped in between (a restart, a failover) fails that one request with this 503, which
  closes it, so the next request opens a fresh one.
- ``FriendlyErrorPagesMiddleware``: with DEBUG off, Django's own handlers render templates/404.html, 403.html,
  400.html and 500.html. With DEBUG on (the embedded demo, a developer's machine) Django shows its technical pages
  instead: a 404 lists the whole URL conf and a 500 the settings and source, which is no page for a person trying
  the demo. This middleware puts the friendly pages in their place under DEBUG too; the traceback of a 500 still
  goes to the log.
- ``QueryLengthMiddleware``: a query string past ``QUERY_STRING_MAX`` bytes answers 414, as problem+json under
  /api/ and as a page elsewhere, instead of gunicorn's own HTML 414 (README, "Production", "Request limits").
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.core.signals import got_request_exception
from django.db import InterfaceError, OperationalError, connections
from django.dispatch import receiver
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.template import loader
from django.template.loader import render_to_string

logger = logging.getLogger(__name__)
request_logger = logging.getLogger("django.request")

# Seconds a client is asked to wait: about what a PostgreSQL restart or failover takes.
RETRY_AFTER = 10
UNREACHABLE = (OperationalError, InterfaceError)
FORM_CONTENT_TYPES = {"application/x-www-form-urlencoded", "multipart/form-data"}
# The longest query string Baton takes, in bytes as sent (percent-encoded). gunicorn reads request lines of up to
# 8190 bytes (`make web`, its most) so that the requests between this limit and its own get Baton's answer; 4 KiB
# is what gunicorn's default line limit (4094) let through before, and more than any filter of the pages or the API
# needs.
QUERY_STRING_MAX = 4096
PROBLEM_JSON = "application/problem+json"


def unavailable() -> HttpResponse:
    """The 503 page: rendered without a request, so without context processors that would query the database."""
    response = HttpResponse(render_to_string("503.html", {"retry_after": RETRY_AFTER}), status=503)
    response["Retry-After"] = str(RETRY_AFTER)
    response["Cache-Control"] = "no-store"
    return response


@receiver(got_request_exception, dispatch_uid="baton-database-unreachable")
def _note_unreachable(sender: object, request: HttpRequest | None = None, **_kwargs: Any) -> None:
    # Sent while Django handles an exception raised in any middleware or view; the exception is the current one.
    if request is not None and isinstance(sys.exc_info()[1], UNREACHABLE):
        request._baton_database_unreachable = True  # type: ignore[attr-defined]


# A database session a statement succeeded on less than this many seconds ago is not health-checked before the next
# request uses it.
CHECK_AFTER_IDLE = 1.0
_session_used: dict[str, float] = {}


def _stamp_use(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
    """An execute wrapper (Django's ``execute_wrappers``): run the statement, then note when it succeeded on its
    session. Only a statement that succeeded proves the session alive: a request that ran none (a login page, a
    static file, a refused query string) must not renew the trust, or a session PostgreSQL dropped while idle would
    be used unchecked after it and fail a request."""
    result = execute(sql, params, many, context)
    _session_used[context["connection"].alias] = time.monotonic()
    return result


def trust_recent_sessions(now: float) -> None:
    """Mark each open session a statement succeeded on less than ``CHECK_AFTER_IDLE`` seconds before ``now``
    (monotonic seconds) as checked, and have every initialised session note its statements' success from now on
    (:func:`_stamp_use`, placed first so that a ``connection.execute_wrapper`` block around a request still removes
    its own wrapper). Runs after ``request_started`` (Django's ``close_old_connections``, which resets the mark and
    has already checked or closed a session that saw errors)."""
    for conn in connections.all(initialized_only=True):
        if _stamp_use not in conn.execute_wrappers:
            conn.execute_wrappers.insert(0, _stamp_use)
        if (
            conn.connection is not None
            and not conn.errors_occurred
            and now - _session_used.get(conn.alias, float("-inf")) < CHECK_AFTER_IDLE
        ):
            conn.health_check_done = True  # type: ignore[attr-defined]  # Django sets it; the stubs lack it


class DatabaseUnavailableMiddleware:
    """Turns a request that failed on an unreachable database into :func:`unavailable`. First in MIDDLEWARE, so it
    also sees the 500 Django made of an error raised in another middleware (a session being read or saved); and
    skips the health check of a session a statement succeeded on a moment ago (:func:`trust_recent_sessions`)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        trust_recent_sessions(time.monotonic())
        response = self.get_response(request)
        if response.status_code == 500 and getattr(request, "_baton_database_unreachable", False):
            return unavailable()
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """A view's error: answered here, before Django's debug page or handler500 sees it."""
        if isinstance(exception, UNREACHABLE):
            logger.warning("database unreachable for %s %s: %s", request.method, request.path, exception)
            return unavailable()
        return None


LINE_BREAK = re.compile(r"\r\n?")


class TypedLineBreaksMiddleware:
    """Posted text with its line breaks as typed: CR LF and a lone CR become LF in every posted form value.

    Browsers send a textarea's line breaks as CR LF (HTML's form submission rule), while its ``maxlength``,
    the page's counter (static/baton/forms.js) and the person count each break once; a form's ``max_length``
    counted two, so text the page showed at exactly the limit was refused, and stored text mixed both kinds.
    One place for every form, a team's workflow start forms included."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view_func: Callable[..., Any], *_args: Any) -> HttpResponse | None:
        """Before the CSRF check reads the form. Not for the API's views (DRF's, which carry ``cls``): they read
        JSON only, and a form upload's body read here left DRF nothing to refuse (it hands a consumed multipart
        body over as no data), so an upload's fields were answered as missing (400) instead of 415 "not JSON"."""
        if getattr(view_func, "cls", None) is not None:
            return None
        if request.method == "POST" and request.content_type in FORM_CONTENT_TYPES:
            try:
                posted = request.POST
            except RequestDataTooBig as exc:
                # The first read of the form, so the refusal of a body past DATA_UPLOAD_MAX_MEMORY_SIZE is raised
                # here, where the handler's 400 (or, under DEBUG, its debug page) would say nothing of it.
                logging.getLogger("django.security.RequestDataTooBig").warning("%s", exc)
                return too_large_page(request)
            if any("\r" in value for _key, values in posted.lists() for value in values):
                typed = posted.copy()
                for key, values in posted.lists():
                    typed.setlist(key, [LINE_BREAK.sub("\n", value) for value in values])
                typed._mutable = False
                request.POST = typed  # type: ignore[assignment]  # made immutable above
        return None


class QueryLengthMiddleware:
    """A query string longer than :data:`QUERY_STRING_MAX` bytes: 414 URI Too Long, before anything reads it. Under
    /api/ as problem+json (the API's error format, api/problems.py), elsewhere the friendly 414 page. Placed right
    after SecurityMiddleware, so the answer carries its headers; costs one length per request."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if len(request.META.get("QUERY_STRING", "")) > QUERY_STRING_MAX:
            return uri_too_long(request)
        return self.get_response(request)


def uri_too_long(request: HttpRequest) -> HttpResponse:
    """The 414 answer for ``request``: problem+json under /api/, else templates/414.html. Nothing was read or
    changed, so the answer says to shorten the query and send it again."""
    logger.info(
        "query string of %d bytes refused for %s %s",
        len(request.META.get("QUERY_STRING", "")),
        request.method,
        request.path,
    )
    if request.path_info.startswith("/api/"):
        body = {
            "type": "about:blank",
            "title": "URI Too Long",
            "status": 414,
            "detail": f"The query string is longer than {QUERY_STRING_MAX} bytes: send fewer or shorter parameters.",
            "code": "uri_too_long",
            "instance": request.path,
        }
        return JsonResponse(body, status=414, content_type=PROBLEM_JSON)
    _read_session(request)
    return HttpResponse(loader.get_template("414.html").render({}, request), status=414)


def _read_session(request: HttpRequest) -> None:
    """Give ``request``, answered before the session and authentication middlewares ran, its session and user, so
    that the page is drawn for who is signed in: without them a signed-in person's page showed the navigation and
    the "Sign in" button of a stranger. Read only (nothing is saved), and only for this rare page. Raises nothing:
    a session that cannot be read leaves the page as a stranger's."""
    try:
        engine = import_module(settings.SESSION_ENGINE)
        request.session = engine.SessionStore(request.COOKIES.get(settings.SESSION_COOKIE_NAME))
        request.user = get_user(request)
    except Exception:  # the 414 page must be answered whatever the session store does
        logger.warning("the session of a 414 page could not be read", exc_info=True)


def wants_json(request: HttpRequest) -> bool:
    """Whether ``request`` prefers JSON to HTML (``Accept: application/json``, as scripts and API clients send);
    a browser's Accept, ``*/*`` or none prefer HTML. Raises nothing."""
    preferred = request.get_preferred_type(["text/html", "application/json", PROBLEM_JSON])
    return preferred in ("application/json", PROBLEM_JSON)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """``CSRF_FAILURE_VIEW``: a form whose token no longer matches (signed out or in again in another tab, a page
    left open for days) gets templates/403_csrf.html saying to reload, instead of Django's bare technical page.
    ``reason`` is Django's wording for the log; the person gets words and a way on. Status 403, as Django's. Under
    /api/ (the tokens page: the API's own views check CSRF themselves) a client that wants JSON gets problem+json."""
    logger.info("form refused (CSRF) for %s %s: %s", request.method, request.path, reason)
    if request.path_info.startswith("/api/") and wants_json(request):
        body = {
            "type": "about:blank",
            "title": "Forbidden",
            "status": 403,
            "detail": "The form's CSRF token is missing or no longer matches: load the page again and send it from "
            "there.",
            "code": "csrf_failed",
            "instance": request.path,
        }
        return JsonResponse(body, status=403, content_type=PROBLEM_JSON)
    return HttpResponse(loader.get_template("403_csrf.html").render({}, request), status=403)


def friendly_page(request: HttpRequest, status: int) -> HttpResponse:
    """templates/<status>.html as the response (500.html without the request: it must not fail again)."""
    template = loader.get_template(f"{status}.html")
    content = template.render({}) if status == 500 else template.render({}, request)
    return HttpResponse(content, status=status)


# DATA_UPLOAD_MAX_MEMORY_SIZE when it is None (no limit), for the wording: Django's default.
UPLOAD_DEFAULT = 2_621_440


def too_large_page(request: HttpRequest) -> HttpResponse:
    """413 with templates/413.html: a form's body was past ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (Django's
    ``RequestDataTooBig``), refused before any view, so its text never reaches a page that could keep it. The page
    says what was too large, that nothing was saved and how to go back to the text. Raises nothing."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE or UPLOAD_DEFAULT
    content = loader.get_template("413.html").render({"limit": f"{limit:,}"}, request)
    return HttpResponse(content, status=413)


class FriendlyErrorPagesMiddleware:
    """Under DEBUG, replace Django's technical 404 and 500 pages with the friendly ones; in every mode, Django's
    empty 405 page (``require_POST``) with templates/405.html."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        html = "text/html" in response.get("Content-Type", "")
        # Under DEBUG every 404 (a URL no route matches, an Http404 raised by a view) is the technical page.
        if settings.DEBUG and response.status_code == 404 and html:
            return friendly_page(request, 404)
        # An action's address opened as a page: most often a click on Claim or Retry after the session ended,
        # whose sign-in then followed ?next= to the button's address with a GET. Django answers an empty body, a
        # blank page. The API's 405 is problem+json and keeps it; streamed responses have no content to look at.
        if response.status_code == 405 and html and not response.streaming and not response.content:
            friendly = friendly_page(request, 405)
            friendly["Allow"] = response.get("Allow", "")
            return friendly
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        """Under DEBUG, a view's error answered with the friendly page; an unreachable database is left to
        :class:`DatabaseUnavailableMiddleware` (outermost, 503), 404 and 403 to Django (already friendly)."""
        if not settings.DEBUG or isinstance(exception, Http404 | PermissionDenied | OperationalError | InterfaceError):
            return None
        if isinstance(exception, RequestDataTooBig):
            return too_large_page(request)
        if isinstance(exception, SuspiciousOperation):
            return friendly_page(request, 400)
        request_logger.exception(
            "Internal Server Error: %s", request.path, extra={"status_code": 500, "request": request}
        )
        return friendly_page(request, 500)
