from django.contrib.auth.views import LogoutView
from django.urls import path

from orchestrator import observe_pages, views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", LogoutView.as_view(), name="logout"),
    path("instances/", views.instance_list, name="instance_list"),
    path("instances/<int:instance_id>/", views.instance_detail, name="instance_detail"),
    path("instances/<int:instance_id>/<str:operation>/", views.instance_operate, name="instance_operate"),
    path("workflows/", observe_pages.catalog, name="workflow_list"),
    path("workflows/<str:name>/", observe_pages.workflow_detail, name="workflow_detail"),
    path("dashboard/", observe_pages.dashboard, name="dashboard"),
    path("workflows/<str:name>/start/", views.workflow_start, name="workflow_start"),
]
