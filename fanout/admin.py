from django.contrib import admin, messages
from django.db.models import F

from fanout.models import Fanout, Retraction, Schedule
from fanout.relay import requeue
from timeline import services


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


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    """Scheduled tweets waiting to go out. Deleting one cancels it, through the same service as
    its author's Cancel."""

    list_display = ["tweet_id", "author", "short_body", "publish_at", "due_at", "attempts", "last_error"]
    search_fields = ["tweet__author__username", "=tweet__id"]
    list_select_related = ["tweet__author"]
    readonly_fields = ["tweet", "due_at", "attempts", "last_error"]
    ordering = ["due_at"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def delete_model(self, request, obj: Schedule) -> None:
        services.tweet_delete(user=request.user, tweet_id=obj.pk, as_staff=True)

    def delete_queryset(self, request, queryset) -> None:
        for tweet_id in queryset.values_list("pk", flat=True):
            self.delete_model(request, Schedule(pk=tweet_id))

    @admin.display(description="author", ordering="tweet__author__username")
    def author(self, schedule: Schedule) -> str:
        return schedule.tweet.author.get_username()

    @admin.display(description="body")
    def short_body(self, schedule: Schedule) -> str:
        body = schedule.tweet.body
        return body if len(body) <= 60 else body[:59] + "…"

    @admin.display(description="publish at", ordering="tweet__publish_at")
    def publish_at(self, schedule: Schedule):
        return schedule.tweet.publish_at
