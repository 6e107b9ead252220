"""The API under /api/: the router's resources, the schema and its docs, and the API tokens page.

Another app extends the API with one line here: ``router.register(...)`` for its viewset, or a ``path(...)``
including its own urls module above the catch-all. The shared authentication, permissions, parser, problem
handler and schema come from the project's REST_FRAMEWORK settings (api/conf.py).
"""

from django.urls import include, path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from api import pages, problems, views

app_name = "api"

router = SimpleRouter(use_regex_path=False)
router.register("workflows", views.WorkflowViewSet, basename="workflow")
router.register("instances", views.InstanceViewSet, basename="instance")
router.register("tasks", views.TaskViewSet, basename="task")
router.register("signals", views.SignalViewSet, basename="signal")


class AnyPath:
    """Any characters, line breaks too: ``<path:...>`` is ``.+``, which stops at a line break, and such a path under
    /api/ got the site's HTML 404 instead of the catch-all's problem+json."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(AnyPath, "any")


urlpatterns = [
    path("", include(router.urls)),
    path("audit/events/", views.AuditEventsView.as_view(), name="audit-events"),
    path("audit/export.jsonl", views.AuditExportJsonlView.as_view(), name="audit-export-jsonl"),
    path("audit/export.csv", views.AuditExportCsvView.as_view(), name="audit-export-csv"),
    path("schema/", SpectacularAPIView.as_view(http_method_names=views.API_METHODS), name="schema"),
    path(
        "docs/",
        SpectacularSwaggerView.as_view(url_name="api:schema", http_method_names=views.API_METHODS),
        name="docs",
    ),
    path("tokens/", pages.tokens, name="tokens"),
    path("tokens/<int:token_id>/revoke/", pages.token_revoke_view, name="token_revoke"),
    # Last: whatever else is asked under /api/ is a problem+json 404 (keep new paths above this line).
    path("", problems.not_found),
    path("<any:rest>", problems.not_found, name="not_found"),
]
