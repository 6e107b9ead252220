from django.urls import path

from automation import views

app_name = "automation"

urlpatterns = [
    path("", views.schedule_list, name="schedule_list"),
    path("schedules/new/", views.schedule_new, name="schedule_new"),
    path("schedules/<int:schedule_id>/", views.schedule_detail, name="schedule_detail"),
    path("schedules/<int:schedule_id>/edit/", views.schedule_edit, name="schedule_edit"),
    path("schedules/<int:schedule_id>/toggle/", views.schedule_toggle, name="schedule_toggle"),
    path("webhooks/", views.webhook_list, name="webhook_list"),
    path("webhooks/new/", views.webhook_new, name="webhook_new"),
    path("webhooks/<int:webhook_id>/", views.webhook_detail, name="webhook_detail"),
    path("webhooks/<int:webhook_id>/edit/", views.webhook_edit, name="webhook_edit"),
    path("webhooks/<int:webhook_id>/roll-secret/", views.webhook_roll_secret, name="webhook_roll_secret"),
    path("webhooks/<int:webhook_id>/toggle/", views.webhook_toggle, name="webhook_toggle"),
]
