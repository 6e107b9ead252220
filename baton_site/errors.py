"""The site's error views (``handler400`` ... ``handler500`` in baton_site/urls.py): under /api/ the API's own
problem+json, elsewhere Django's views with the site's templates (templates/400.html ...).

They answer what Django raises before any route or DRF view runs, where the API's exception handler never sees
it: a request whose Host header is empty or not in ``BATON_ALLOWED_HOSTS`` (``DisallowedHost``, 400), or a
middleware's refusal. A script reading the API then always gets the body the schema promises."""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.views import defaults

from api.problems import NOT_FOUND_DETAIL, problem_response
from orchestrator.middleware import too_large_page

CODES = {400: "bad_request", 403: "permission_denied", 404: "not_found", 500: "server_error"}
DETAILS = {
    400: "The request could not be read (a Host header this site does not answer to, or a malformed request).",
    403: "You may not do this.",
    404: NOT_FOUND_DETAIL,
    500: "Baton failed to answer this request; it is logged. Try again, or tell the operators.",
}


# Pages for people under /api/ (a person's own API tokens, api/pages.py): their errors are pages too.
API_PAGES = ("/api/tokens/",)


def _is_api(request: HttpRequest) -> bool:
    # path_info, not build_absolute_uri or get_host: the Host may be what was refused.
    path = request.path_info
    return path.startswith("/api/") and not path.startswith(API_PAGES)


def _problem(request: HttpRequest, status: int) -> HttpResponse:
    return problem_response(request, status, DETAILS[status], CODES[status])


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """400: problem+json under /api/, else templates/400.html. A body past ``DATA_UPLOAD_MAX_MEMORY_SIZE``
    (``RequestDataTooBig``, raised while the CSRF check reads a form, before any view) is 413 instead, saying so:
    the generic "could not be understood" told a person whose typed text was too long nothing they could act on.
    Raises nothing."""
    if isinstance(exception, RequestDataTooBig):
        return _too_large(request)
    return _problem(request, 400) if _is_api(request) else defaults.bad_request(request, exception)


def _too_large(request: HttpRequest) -> HttpResponse:
    """413 for a body past the request limit: problem+json under /api/ (as the API's own parsers answer it), else
    templates/413.html with the limit (``orchestrator.middleware.too_large_page``)."""
    if _is_api(request):
        return problem_response(request, 413, "The request body is too large.", "payload_too_large")
    return too_large_page(request)


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    """403: problem+json under /api/, else templates/403.html. Raises nothing."""
    return _problem(request, 403) if _is_api(request) else defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """404: problem+json under /api/, else templates/404.html. Raises nothing."""
    return _problem(request, 404) if _is_api(request) else defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """500: problem+json under /api/, else templates/500.html (rendered without the request, which may be what
    failed). Raises nothing."""
    return _problem(request, 500) if _is_api(request) else defaults.server_error(request)
