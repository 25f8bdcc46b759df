from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, register_converter

from timeline import api, views


class UsernameConverter:
    # Django's default usernames: letters, digits and @ . + - _
    regex = r"[\w.@+-]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(UsernameConverter, "username")

api_patterns = [
    path("auth/csrf", api.csrf, name="csrf"),
    path("auth/signup", api.signup, name="signup"),
    path("auth/login", api.login_view, name="login"),
    path("auth/logout", api.logout_view, name="logout"),
    path("tweets", api.tweets, name="tweets"),
    path("tweets/<int:tweet_id>", api.tweet_detail, name="tweet"),
    path("timeline/home", api.home_timeline, name="home-timeline"),
    path("users/<username:username>", api.user_detail, name="user"),
    path("users/<username:username>/tweets", api.user_tweets, name="user-tweets"),
    path("users/<username:username>/follow", api.follow, name="follow"),
    path("stats", api.stats, name="stats"),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("tweets/new", views.compose, name="compose"),
    path("u/<username:username>/", views.profile, name="profile"),
    path("u/<username:username>/follow", views.follow, name="follow"),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("signup/", views.signup, name="signup"),
    path("healthz", views.healthz, name="healthz"),
    path("ops/", views.ops, name="ops"),
    path("api/", include((api_patterns, "api"))),
    path("admin/rq/", include("django_rq.urls")),
    path("admin/", admin.site.urls),
]

# Redis or the database failing outside a view (in a middleware) still answers 503, not 500.
handler500 = "timeline.views.server_error"
