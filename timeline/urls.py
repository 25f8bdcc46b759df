from csp.decorators import csp_update
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, register_converter
from django.views.generic import RedirectView
from django_rq.stats_views import stats_json
from django_rq.urls import get_admin_urlpatterns

from timeline import api, validation, views
from timeline.forms import ThrottledAdminAuthenticationForm, ThrottledAuthenticationForm


class UsernameConverter:
    # What usernames may hold now (timeline.forms) and what older Django-style ones did: letters,
    # digits and @ . + - _, at most 150 characters (the column's size).
    regex = r"[\w.@+-]{1,150}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


class IdConverter:
    """A database id: 1 to 2**63 - 1. Anything else matches no URL (404) rather than reaching
    the database, which cannot compare a larger number (Django's ``int`` takes any length)."""

    regex = r"[0-9]{1,19}"

    def to_python(self, value: str) -> int:
        return validation.parse_int(value, low=1)  # ValueError: no match

    def to_url(self, value: int) -> str:
        return str(value)


# Change lists get the page's whole width (the fan-out list's columns were cut off beside it).
admin.site.enable_nav_sidebar = False
# The admin's login is throttled as every other login is (timeline.throttles).
admin.site.login_form = ThrottledAdminAuthenticationForm

register_converter(UsernameConverter, "username")
register_converter(IdConverter, "id")


def _rq_dashboard_patterns():
    """django-rq's dashboard, staff only, without its token-authenticated JSON views.

    Those compare a token from the URL with ``compare_digest``, which raises on non-ASCII text
    (a 500 from any URL), and we issue no RQ API token: staff see the same numbers here.
    Its pages use inline scripts, so on these staff-only pages the policy allows them.
    """
    allow_inline = csp_update({"script-src": ["'unsafe-inline'"]})
    return [
        *get_admin_urlpatterns(view_wrapper=lambda view: allow_inline(admin.site.admin_view(view))),
        path("stats.json", allow_inline(admin.site.admin_view(stats_json)), name="home_json"),
        # The dashboard links to its metrics when prometheus_client is installed: ours.
        path("metrics/", RedirectView.as_view(pattern_name="metrics"), name="metrics"),
    ]


api_patterns = [
    path("auth/csrf", api.csrf, name="csrf"),
    path("auth/signup", api.signup, name="signup"),
    path("auth/login", api.login_view, name="login"),
    path("auth/logout", api.logout_view, name="logout"),
    path("tweets", api.tweets, name="tweets"),
    path("tweets/scheduled", api.scheduled_tweets, name="scheduled-tweets"),
    path("tweets/<id:tweet_id>", api.tweet_detail, name="tweet"),
    path("timeline/home", api.home_timeline, name="home-timeline"),
    path("users/<username:username>", api.user_detail, name="user"),
    path("users/<username:username>/tweets", api.user_tweets, name="user-tweets"),
    path("users/<username:username>/follow", api.follow, name="follow"),
    path("stats", api.stats, name="stats"),
    path("ops/controls", api.ops_controls, name="ops-controls"),
    path("lesson/posts", api.lesson_posts, name="lesson-posts"),
    path("lesson/posts/<id:tweet_id>", api.lesson_post, name="lesson-post"),
    path("lesson/stats", api.lesson_stats, name="lesson-stats"),
    path("trends", api.trends_view, name="trends"),
    path("schema", api.schema, name="schema"),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("tweets/new", views.compose, name="compose"),
    path("tweets/<id:tweet_id>/delete", views.delete_tweet, name="delete-tweet"),
    path("u/<username:username>/", views.profile, name="profile"),
    path("u/<username:username>/follow", views.follow, name="follow"),
    path("t/<id:tweet_id>/", views.tweet_page, name="tweet"),
    path("tags/<str:tag>/", views.tag_page, name="tag"),
    path(
        "login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True, authentication_form=ThrottledAuthenticationForm),
        name="login",
    ),
    path("logout/", views.logout_view, name="logout"),
    path("signup/", views.signup, name="signup"),
    path("healthz", views.healthz, name="healthz"),
    path("metrics", views.metrics, name="metrics"),
    path("ops/", views.ops, name="ops"),
    path("lesson/", views.lesson_page, name="lesson"),
    path("api/", include((api_patterns, "api"))),
    path("admin/rq/", include((_rq_dashboard_patterns(), "django_rq"))),
    path("admin/", admin.site.urls),
]

# Redis or the database failing outside a view (in a middleware) still answers 503, not 500.
handler500 = "timeline.views.server_error"
handler404 = "timeline.api.not_found"
