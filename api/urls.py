"""The API under /api/: the router's resources, the schema and its docs, and the API tokens page.

Other apps extend the API by registering a viewset on ``router`` (before this module's ``urlpatterns`` is read,
e.g. from their AppConfig.ready) or by adding their own paths next to these in their own urls module; the shared
authentication, permissions, problem handler and schema come from the project's REST_FRAMEWORK settings.
"""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from api import pages, problems, views

app_name = "api"

router = SimpleRouter(use_regex_path=False)
router.register("workflows", views.WorkflowViewSet, basename="workflow")
router.register("instances", views.InstanceViewSet, basename="instance")
router.register("tasks", views.TaskViewSet, basename="task")

urlpatterns = [
    path("", include(router.urls)),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("tokens/", pages.tokens, name="tokens"),
    path("tokens/<int:token_id>/revoke/", pages.token_revoke_view, name="token_revoke"),
    # Last: whatever else is asked under /api/ is a problem+json 404 (keep new paths above this line).
    path("", problems.not_found),
    path("<path:rest>", problems.not_found, name="not_found"),
]
