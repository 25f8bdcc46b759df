from django.contrib import admin

from fanout.models import Fanout
from timeline import services
from timeline.models import Follow, Tweet


class FanoutInline(admin.StackedInline):
    model = Fanout
    can_delete = False
    extra = 0
    readonly_fields = [
        "state",
        "recipients",
        "delivered",
        "attempts",
        "created_at",
        "enqueued_at",
        "started_at",
        "finished_at",
        "last_error",
    ]


@admin.register(Tweet)
class TweetAdmin(admin.ModelAdmin):
    list_display = ["id", "author", "short_body", "created_at", "fanout_state", "fanout_delivered"]
    list_filter = ["fanout__state", "created_at"]
    search_fields = ["body", "author__username", "=client_id"]
    list_select_related = ["author", "fanout"]
    raw_id_fields = ["author"]
    readonly_fields = ["client_id", "created_at"]
    date_hierarchy = "created_at"
    inlines = [FanoutInline]

    def has_add_permission(self, request) -> bool:
        # A tweet is posted by its author, through the app: it needs a client_id, an outbox
        # row and admission control, which a bare model form would skip.
        return False

    def delete_model(self, request, obj: Tweet) -> None:
        # Through the service: the tweet also leaves every timeline and open page it reached.
        services.tweet_delete(user=request.user, tweet_id=obj.pk, as_staff=True)

    def delete_queryset(self, request, queryset) -> None:
        for tweet_id in queryset.values_list("pk", flat=True):
            services.tweet_delete(user=request.user, tweet_id=tweet_id, as_staff=True)

    @admin.display(description="body")
    def short_body(self, tweet: Tweet) -> str:
        return tweet.body if len(tweet.body) <= 60 else tweet.body[:59] + "…"

    @admin.display(description="fan-out", ordering="fanout__state")
    def fanout_state(self, tweet: Tweet) -> str:
        return tweet.fanout.state

    @admin.display(description="delivered")
    def fanout_delivered(self, tweet: Tweet) -> str:
        return f"{tweet.fanout.delivered}/{tweet.fanout.recipients}"


@admin.register(Follow)
class FollowAdmin(admin.ModelAdmin):
    """Follows made and removed here go through the services, which refresh the home timeline."""

    list_display = ["id", "follower", "followee", "created_at"]
    fields = ["follower", "followee"]
    search_fields = ["follower__username", "followee__username"]
    list_select_related = ["follower", "followee"]
    raw_id_fields = ["follower", "followee"]
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request, obj=None):
        return ["follower", "followee", "created_at"] if obj is not None else []

    def save_model(self, request, obj: Follow, form, change: bool) -> None:
        if not change:
            obj.pk = services.follow_create(follower=obj.follower, followee=obj.followee).pk

    def delete_model(self, request, obj: Follow) -> None:
        services.follow_delete(follower=obj.follower, followee=obj.followee)

    def delete_queryset(self, request, queryset) -> None:
        for follow in queryset.select_related("follower", "followee"):
            self.delete_model(request, follow)
