from django.apps import AppConfig


def _forget_user(sender, instance, **kwargs) -> None:
    from timeline import identity

    identity.forget(instance.pk)


def _drop_tweet(sender, instance, **kwargs) -> None:
    from timeline import tweet_cache

    tweet_cache.drop([instance.pk])


class TimelineConfig(AppConfig):
    name = "timeline"
    verbose_name = "Timeline"

    def ready(self) -> None:
        # Copies in Redis of rows we do not always write ourselves (a user changed in the admin,
        # tweets deleted with their author) must go when the rows change. Signals are the one
        # hook that sees every such change, cascades included; they only drop the copies.
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_delete, post_save

        from timeline.models import Tweet

        post_save.connect(_forget_user, sender=get_user_model(), dispatch_uid="timeline.forget_user_saved")
        post_delete.connect(_forget_user, sender=get_user_model(), dispatch_uid="timeline.forget_user_deleted")
        post_delete.connect(_drop_tweet, sender=Tweet, dispatch_uid="timeline.drop_deleted_tweet")
