from django.urls import path

from audit import views

app_name = "audit"

urlpatterns = [
    path("", views.timeline, name="timeline"),
    path("export/<str:kind>/", views.export, name="export"),
    path("chains/", views.chains, name="chains"),
    path("chains/verify/", views.verification_start, name="verification_start"),
    path("chains/verification/", views.verification_progress, name="verification_progress"),
]
