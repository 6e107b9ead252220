"""Friendly error pages in every mode.

With DEBUG off, Django's own handlers render templates/404.html, 403.html, 400.html and 500.html. With DEBUG on
(the embedded demo, a developer's machine) Django shows its technical pages instead: a 404 lists the whole URL
conf and a 500 the settings and source, which is no page for a person trying the demo. This middleware puts the
friendly pages in their place under DEBUG too; the traceback of a 500 still goes to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse
from django.template import loader

logger = logging.getLogger("django.request")


def friendly_page(request: HttpRequest, status: int) -> HttpResponse:
    """templates/<status>.html as the response (500.html without the request: it must not fail again)."""
    template = loader.get_template(f"{status}.html")
    content = template.render({}) if status == 500 else template.render({}, request)
    return HttpResponse(content, status=status)


class FriendlyErrorPagesMiddleware:
    """Under DEBUG, replace Django's technical 404 and 500 pages with the friendly ones (no-op otherwise)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        # Under DEBUG every 404 (a URL no route matches, an Http404 raised by a view) is the technical page.
        if settings.DEBUG and response.status_code == 404 and "text/html" in response.get("Content-Type", ""):
            return friendly_page(request, 404)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not settings.DEBUG or isinstance(exception, Http404 | PermissionDenied):
            return None  # Django's handling is already friendly here (404 above, 403.html)
        if isinstance(exception, SuspiciousOperation):
            return friendly_page(request, 400)
        logger.exception("Internal Server Error: %s", request.path, extra={"status_code": 500, "request": request})
        return friendly_page(request, 500)
