"""Site-level endpoints for machines: ``/metrics`` (Prometheus, token), ``/health/live`` and ``/health/ready``.

No session and no page around them: a scraper or a load balancer calls them. They answer GET and HEAD only.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from orchestrator import health, metrics


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus exposition, for ``Authorization: Bearer <BATON_METRICS_TOKEN>``. Without the setting the
    endpoint does not exist (404); a missing or wrong token is 401 with ``WWW-Authenticate: Bearer``."""
    if not settings.BATON_METRICS_TOKEN:
        return HttpResponse("Not found.\n", status=404, content_type="text/plain; charset=utf-8")
    if not metrics.token_ok(request.headers.get("Authorization", "")):
        response = HttpResponse(
            "A bearer token is required (BATON_METRICS_TOKEN).\n", status=401, content_type="text/plain; charset=utf-8"
        )
        response["WWW-Authenticate"] = 'Bearer realm="baton-metrics"'
        return response
    return HttpResponse(metrics.render(), content_type=metrics.CONTENT_TYPE)


@never_cache
@require_safe
def health_live(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers requests (nothing else is checked, so a database outage never restarts it)."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def health_ready(request: HttpRequest) -> HttpResponse:
    """Readiness: 200 when the database, the broker, the channel layer answer and the sweep ran recently; else 503
    with ``Retry-After`` naming what is not ready. The body lists each check (no host names or addresses)."""
    checks = health.readiness()
    ready = all(check.ok for check in checks)
    response = JsonResponse(
        {
            "status": "ready" if ready else "not ready",
            "checks": {c.name: {"ok": c.ok, "detail": c.detail, "ms": c.ms} for c in checks},
        },
        status=200 if ready else 503,
    )
    if not ready:
        response["Retry-After"] = "5"
    return response
