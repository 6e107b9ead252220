"""The operator's pages; every path is as it was before the pages had their own app."""

from django.urls import path

from console import ops_views, views, views_observe

app_name = "console"

urlpatterns = [
    path("", views.home, name="home"),
    path("incidents/", ops_views.incidents, name="incidents"),
    path("incidents/escalations/<int:task_id>/", ops_views.escalation_answer, name="escalation_answer"),
    path("instances/", ops_views.instance_list, name="instance_list"),
    path("instances/bulk/", ops_views.bulk_dry_run, name="bulk_dry_run"),
    path("instances/bulk/<int:job_id>/", ops_views.bulk_detail, name="bulk_detail"),
    path("instances/bulk/<int:job_id>/confirm/", ops_views.bulk_confirm, name="bulk_confirm"),
    path("instances/bulk/<int:job_id>/stop/", ops_views.bulk_stop, name="bulk_stop"),
    path("instances/<int:instance_id>/", ops_views.instance_detail, name="instance_detail"),
    path("instances/<int:instance_id>/<str:operation>/", ops_views.instance_action, name="instance_operate"),
    path("workflows/", views_observe.catalog, name="workflow_list"),
    path("workflows/<str:name>/", views_observe.workflow_detail, name="workflow_detail"),
    path("workflows/<str:name>/start/", views.workflow_start, name="workflow_start"),
    path("dashboard/", views_observe.dashboard, name="dashboard"),
]
