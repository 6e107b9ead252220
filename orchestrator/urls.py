from django.contrib import admin
from django.urls import include, path

from orchestrator import observe_views

urlpatterns = [
    path("admin/", admin.site.urls),
    # For machines: Prometheus and load balancers (orchestrator/observe_views.py).
    path("metrics", observe_views.metrics_view, name="metrics"),
    path("health/live", observe_views.health_live, name="health_live"),
    path("health/ready", observe_views.health_ready, name="health_ready"),
    path("", include("approvals.urls")),
    path("", include("orchestrator.web_urls")),
]
