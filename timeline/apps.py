from functools import partial

from django.apps import AppConfig
from django.db import transaction


def _user_saved(sender, instance, update_fields=None, **kwargs) -> None:
    from timeline import identity

    identity.forget(instance.pk)
    if update_fields is not None and set(update_fields) <= {"last_login"}:
        return  # every login saves this; nothing that authenticates a session changed
    transaction.on_commit(partial(identity.announce_change, instance.pk, identity.entry_for(instance)))


def _user_deleted(sender, instance, **kwargs) -> None:
    from timeline import identity

    identity.forget(instance.pk)
    transaction.on_commit(partial(identity.announce_change, instance.pk, identity.GONE))


def _session_deleted(sender, instance, **kwargs) -> None:
    from django.contrib.auth import SESSION_KEY

    from timeline import sessions

    user_id = instance.get_decoded().get(SESSION_KEY)
    transaction.on_commit(partial(sessions.ended, instance.session_key, int(user_id) if user_id else None))


def _drop_tweet(sender, instance, **kwargs) -> None:
    from timeline import tweet_cache

    tweet_cache.drop([instance.pk])


class TimelineConfig(AppConfig):
    name = "timeline"
    verbose_name = "Timeline"

    def ready(self) -> None:
        # Copies in Redis of rows we do not always write ourselves (a user changed in the admin,
        # tweets deleted with their author, sessions deleted in bulk) must go when the rows
        # change, and the sockets a session or a password authenticated must close with them.
        # Signals are the one hook that sees every such change, cascades and bulk deletes
        # included; they only drop the copies and tell the sockets.
        from django.contrib.auth import get_user_model
        from django.contrib.sessions.models import Session
        from django.db.models.signals import post_delete, post_save

        from timeline.models import Tweet

        post_save.connect(_user_saved, sender=get_user_model(), dispatch_uid="timeline.user_saved")
        post_delete.connect(_user_deleted, sender=get_user_model(), dispatch_uid="timeline.user_deleted")
        post_delete.connect(_session_deleted, sender=Session, dispatch_uid="timeline.session_deleted")
        post_delete.connect(_drop_tweet, sender=Tweet, dispatch_uid="timeline.drop_deleted_tweet")
