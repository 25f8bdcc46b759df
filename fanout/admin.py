from django.contrib import admin, messages
from django.db.models import F

from fanout.models import Fanout, Retraction
from fanout.relay import requeue


@admin.register(Fanout)
class FanoutAdmin(admin.ModelAdmin):
    list_display = [
        "tweet_id",
        "author",
        "state",
        "delivered",
        "recipients",
        "attempts",
        "enqueued_at",
        "wait",
        "duration",
        "finished_at",
        "next_attempt_at",
    ]
    list_filter = ["state", "created_at"]
    search_fields = ["tweet__author__username", "=tweet__id", "last_error"]
    list_select_related = ["tweet__author"]
    readonly_fields = [f.name for f in Fanout._meta.fields] + ["wait", "duration"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    actions = ["requeue"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(ordering="tweet__author__username")
    def author(self, fanout: Fanout) -> str:
        return fanout.tweet.author.username

    @admin.display(description="waited in queue")
    def wait(self, fanout: Fanout):
        if fanout.enqueued_at and fanout.started_at:
            return fanout.started_at - fanout.enqueued_at
        return None

    @admin.display(description="ran for", ordering=F("finished_at") - F("started_at"))
    def duration(self, fanout: Fanout):
        return fanout.duration

    @admin.action(description="Queue the fan-out again now (unless a worker is running it)")
    def requeue(self, request, queryset) -> None:
        count = 0
        for fanout in queryset.exclude(state=Fanout.State.DONE):
            # A running fan-out whose lease is live is left to its worker (requeue says no).
            count += requeue(fanout.tweet_id, seen_state=fanout.state, seen_enqueued_at=fanout.enqueued_at)
        self.message_user(request, f"Queued {count} fan-out(s) again.", messages.SUCCESS)


@admin.register(Retraction)
class RetractionAdmin(admin.ModelAdmin):
    """Deleted tweets and their removal from timelines: read only (the relay retries)."""

    list_display = ["tweet_id", "author", "created_at", "enqueued_at", "done_at", "attempts"]
    list_filter = [("done_at", admin.EmptyFieldListFilter), "created_at"]
    search_fields = ["author__username", "=tweet_id"]
    list_select_related = ["author"]
    readonly_fields = [f.name for f in Retraction._meta.fields]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
