"""The operator's pages; every path is as it was before the pages had their own app."""

from django.urls import path

from console import views

app_name = "console"

urlpatterns = [
    path("", views.home, name="home"),
    path("instances/", views.instance_list, name="instance_list"),
    path("instances/<int:instance_id>/", views.instance_detail, name="instance_detail"),
    path("instances/<int:instance_id>/<str:operation>/", views.instance_operate, name="instance_operate"),
    path("workflows/", views.workflow_list, name="workflow_list"),
    path("workflows/<str:name>/start/", views.workflow_start, name="workflow_start"),
]
