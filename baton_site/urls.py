"""The site's URLs: the admin, sign-in and sign-out, then each app's own ``urls.py`` under its namespace
(``approvals:inbox``, ``console:instance_detail``). Paths are shared by no two apps, so each is mounted at the root."""

from django.contrib import admin
from django.contrib.auth.views import LogoutView
from django.urls import include, path

from api.problems import not_found as api_not_found
from baton_site import endpoints
from console.views import LoginView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("automation/", include("automation.urls")),
    path("audit/", include("audit.urls")),
    path("api/", include("api.urls")),
    # Without its slash: the API's 404, for every method (CommonMiddleware's redirect turned a POST into a GET).
    path("api", api_not_found),
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", LogoutView.as_view(), name="logout"),
    # For machines: Prometheus and load balancers (baton_site/endpoints.py).
    path("metrics", endpoints.metrics_view, name="metrics"),
    path("health/live", endpoints.health_live, name="health_live"),
    path("health/ready", endpoints.health_ready, name="health_ready"),
    path("", include("approvals.urls")),
    path("", include("console.urls")),
]

# Errors raised before any view (a refused Host header, a middleware's refusal): problem+json under /api/.
handler400 = "baton_site.errors.bad_request"
handler403 = "baton_site.errors.permission_denied"
handler404 = "baton_site.errors.page_not_found"
handler500 = "baton_site.errors.server_error"
