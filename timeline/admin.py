from django.contrib import admin

from fanout.models import Fanout
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
    list_display = ["id", "follower", "followee", "created_at"]
    search_fields = ["follower__username", "followee__username"]
    list_select_related = ["follower", "followee"]
    raw_id_fields = ["follower", "followee"]
    date_hierarchy = "created_at"
