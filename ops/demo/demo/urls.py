from django.contrib.auth import views as auth_views
from django.urls import include, path

from demo import views

urlpatterns = [
    path("", views.index, name="index"),
    path("jquery/", views.jquery_page, name="jquery"),
    path("send/", views.send, name="send"),
    path("presence/", views.presence_now, name="presence"),
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="demo/login.html", redirect_authenticated_user=True
        ),
        name="login",
    ),
    path("visitor/", views.new_visitor, name="new_visitor"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Edges POST subscribes and unsubscribes here (PUSH_SERVER's passthrough).
    path("passthrough", include("pushserver.urls")),
]
