from django.urls import path

from approvals import views

app_name = "approvals"

urlpatterns = [
    path("inbox/", views.inbox, name="inbox"),
    path("inbox/claim/", views.tasks_claim_bulk, name="tasks_claim_bulk"),
    path("inbox/views/", views.saved_view_create, name="saved_view_create"),
    path("inbox/views/<int:view_id>/delete/", views.saved_view_delete, name="saved_view_delete"),
    path("escalations/", views.escalations, name="escalations"),
    path("notifications/", views.notifications, name="notifications"),
    path("tasks/<int:task_id>/", views.task_detail, name="task_detail"),
    path("tasks/<int:task_id>/claim/", views.task_claim, name="task_claim"),
    path("tasks/<int:task_id>/release/", views.task_release, name="task_release"),
    path("tasks/<int:task_id>/delegate/", views.task_delegate, name="task_delegate"),
    path("tasks/<int:task_id>/snooze/", views.task_snooze, name="task_snooze"),
    path("tasks/<int:task_id>/decide/", views.task_decide, name="task_decide"),
]
