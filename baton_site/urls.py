"""The site's URLs: the admin, sign-in and sign-out, then each app's own ``urls.py`` under its namespace
(``approvals:inbox``, ``console:instance_detail``). Paths are shared by no two apps, so each is mounted at the root."""

from django.contrib import admin
from django.contrib.auth.views import LogoutView
from django.urls import include, path

from console.views import LoginView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("api.urls")),
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", LogoutView.as_view(), name="logout"),
    path("", include("approvals.urls")),
    path("", include("console.urls")),
]
