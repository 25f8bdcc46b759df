"""Writes, and their side effects. Views and commands call these; nothing else writes."""

from __future__ import annotations

import logging
import re
import time
import unicodedata
import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.contrib.auth import authenticate, get_user_model, login, logout
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.http import HttpRequest
from django.utils import timezone
from django_rq import get_queue

from fanout import admission, delivery, prometheus, push, retraction, scheduled, timelines, trends
from fanout.connection import get_redis
from fanout.models import Fanout, Retraction, Schedule
from timeline import payloads, text, tweet_cache
from timeline.models import TWEET_MAX_LENGTH, Follow, Tweet, TweetTag
from timeline.validation import is_blank

User = get_user_model()
logger = logging.getLogger(__name__)


def normalize_body(body: str) -> str:
    """The body as stored: NFC-normalized (so length counts what a reader sees) and trimmed."""
    return unicodedata.normalize("NFC", body).strip()


def validate_tweet_body(body: str) -> str:
    body = normalize_body(body)
    if is_blank(body):  # empty, or only spaces and invisible characters
        raise ValidationError({"body": ValidationError("Write something first.", code="blank")})
    if len(body) > TWEET_MAX_LENGTH:
        message = f"A tweet is at most {TWEET_MAX_LENGTH} characters; this one has {len(body)}."
        raise ValidationError({"body": ValidationError(message, code="max_length")})
    return body


@dataclass(frozen=True)
class PostResult:
    tweet: Tweet
    created: bool


# Mastodon's rule: ASCII letters, digits and underscores, so a name cannot be made to look like
# another with a look-alike letter (Cyrillic "а" for "a") or be only dots.
USERNAME_PATTERN = re.compile(r"[A-Za-z0-9_]{1,30}")


def validate_username(username: str) -> None:
    if not USERNAME_PATTERN.fullmatch(username):
        message = "Use 1 to 30 letters (a to z), digits and underscores."
        raise ValidationError({"username": ValidationError(message, code="invalid")})
    # Unique whatever the case (a unique index on lower(username) closes the race).
    if User.objects.filter(username__iexact=username).exists():
        raise ValidationError({"username": ValidationError("That name is taken.", code="unique")})


def user_signup(*, username: str, password: str) -> AbstractBaseUser:
    """A new account. Every problem with the name and the password is reported at once."""
    errors: dict[str, list[ValidationError]] = {}
    user = User(username=username)
    try:
        validate_username(username)
        user.full_clean(exclude=["password"])
    except ValidationError as exc:
        errors.update(exc.error_dict)
    try:
        validate_password(password, user=user)
    except ValidationError as exc:
        errors["password"] = exc.error_list
    if errors:
        raise ValidationError(errors)
    user.set_password(password)
    user.save()
    return user


def user_login(request: HttpRequest, *, username: str, password: str) -> AbstractBaseUser | None:
    """Log in; None for a wrong name or password. Throttled (before any hash) if this client
    failed too often (the authentication backend applies timeline.throttles to every login).
    Logging in over another session ends that one, and its sockets (timeline.apps)."""
    user = authenticate(request, username=username, password=password)
    if user is None:
        return None
    login(request, user)
    return user


def user_logout(request: HttpRequest) -> None:
    """Log the request's session out. Its deletion closes the websockets opened with it
    (timeline.apps), as any other ending of a session does."""
    logout(request)


def tweet_create(
    *,
    author: AbstractBaseUser,
    body: str,
    client_id: uuid.UUID,
    admission_control: bool = True,
    charged_to: AbstractBaseUser | None = None,
    reserved: admission.Ticket | None = None,
) -> PostResult:
    """Post a tweet once per client_id.

    The tweet, its outbox row and (after the commit) the author's own timeline entry are
    written here, in the request; delivery to followers is queued to run in the background.
    Without ``admission_control`` (demo data, imports: not people posting) neither the queue
    cap nor the rate limit applies, and the fan-out joins the front of the queue. The rate
    limit is the author's, or ``charged_to``'s (the lesson page's visitor posting as its account).
    A queue slot already ``reserved`` for the post (timeline.limits.QueueAdmission) is used
    rather than asking for another.
    """
    author_id = (charged_to or author).pk
    admit = partial(admission.admit, author_id=author_id, reserved=reserved) if admission_control else None
    return _create(author, body, client_id, admit=admit, queued=True)


def tweet_create_fanned_out_now(
    *, author: AbstractBaseUser, body: str, client_id: uuid.UUID, charged_to: AbstractBaseUser
) -> PostResult:
    """Post a tweet and deliver it to every follower *in the request*, the way the queue is
    there to avoid (the lesson page shows both): the answer waits for the whole fan-out, and
    nothing bounds that work but the request itself. The rate limit is charged; the queue is
    not asked for a slot, since nothing goes on it.

    The same outbox row and the same delivery run as the worker's: if the run fails part way,
    its failure is recorded and the outbox relay queues the rest, so the tweet, accepted once
    committed, is still delivered.
    """
    admit = partial(admission.admit, author_id=charged_to.pk, reserve=False)
    result = _create(author, body, client_id, admit=admit, queued=False)
    if result.created:
        try:
            delivery.deliver_tweet(tweet_id=result.tweet.pk)
        except Exception:
            logger.exception("tweet %s: fan-out in the request failed; the outbox relay will retry it", result.tweet.pk)
        result.tweet.fanout.refresh_from_db()
    return result


def _create(author: AbstractBaseUser, body: str, client_id: uuid.UUID, *, admit, queued: bool) -> PostResult:
    body = validate_tweet_body(body)
    tweet = Tweet(author=author, body=body, client_id=client_id)
    # The database enforces the constraints (and a duplicate client_id is caught below), and the
    # author is the one making the request; checking them here too would cost a query each.
    tweet.full_clean(exclude=["author"], validate_unique=False, validate_constraints=False)
    # Back pressure before any write: over the queue cap this raises Overloaded and nothing
    # is made (see fanout.admission). The ticket holds a queue slot until the job is pushed.
    # A retry of a post that was made is answered with that post, not refused: it is looked
    # for when the post is refused, or when its insert meets the same client_id (which is
    # cheaper than a query before every post, for the retry that is rare).
    try:
        ticket = admit() if admit is not None else None
    except (admission.Overloaded, admission.RateLimited):
        if (existing := _tweet_by_client_id(author, client_id)) is not None:
            return PostResult(existing, created=False)
        raise
    try:
        with transaction.atomic():
            _insert_tweet(tweet, ticket, queued=queued)
    except IntegrityError:
        if ticket is not None:
            admission.release(ticket)
        # A retry of a post already made, or of one racing in from a concurrent retry.
        if (existing := _tweet_by_client_id(author, client_id)) is None:
            raise
        return PostResult(existing, created=False)
    except BaseException:
        if ticket is not None:
            admission.release(ticket)
        raise
    return PostResult(tweet, created=True)


def _insert_tweet(tweet: Tweet, ticket: admission.Ticket | None, *, queued: bool = True) -> None:
    """Insert a tweet, its outbox row and its tags, in the caller's transaction; after the
    commit, queue its fan-out (unless the caller delivers it) and put it in its author's timeline."""
    _commit_tweet_ids_in_order()
    tweet.save()
    fanout = Fanout.objects.create(tweet=tweet)
    if tags := text.tags(tweet.body):
        TweetTag.objects.bulk_create([TweetTag(tweet=tweet, tag=tag) for tag in tags])
    transaction.on_commit(partial(_after_tweet_commit, tweet, fanout, ticket, tags, queued=queued))


def _tweet_by_client_id(author: AbstractBaseUser, client_id: uuid.UUID) -> Tweet | None:
    return Tweet.objects.filter(author=author, client_id=client_id).select_related("author", "fanout").first()


# -- scheduled tweets (fanout.scheduled) ---------------------------------------------------------

SCHEDULE_MAX_AHEAD = timedelta(days=30)
SCHEDULED_MAX_PER_AUTHOR = 100  # waiting at once; a bound on what one account can leave queued up


def validate_publish_at(publish_at: datetime) -> datetime:
    if timezone.is_naive(publish_at):
        message = "Give the time zone too, such as 2026-12-01T09:30:00+01:00 or …Z for UTC."
        raise ValidationError({"publish_at": ValidationError(message, code="naive")})
    now = timezone.now()
    if publish_at <= now:
        raise ValidationError({"publish_at": ValidationError("That time has passed.", code="past")})
    if publish_at > now + SCHEDULE_MAX_AHEAD:
        message = f"Schedule at most {SCHEDULE_MAX_AHEAD.days} days ahead."
        raise ValidationError({"publish_at": ValidationError(message, code="too_far")})
    return publish_at


def tweet_schedule(*, author: AbstractBaseUser, body: str, client_id: uuid.UUID, publish_at: datetime) -> PostResult:
    """Store a tweet to be published at ``publish_at`` (fanout.scheduled), once per client_id.

    It counts against its author's rate limit now; the queue is asked for room when it is
    published. A retry finds what the first try made: the scheduled tweet, or once published,
    the tweet.
    """
    body = validate_tweet_body(body)
    publish_at = validate_publish_at(publish_at)
    if (existing := _scheduled_or_published(author, client_id)) is not None:
        return PostResult(existing, created=False)
    if Tweet.scheduled.filter(author=author).count() >= SCHEDULED_MAX_PER_AUTHOR:
        message = (
            f"You have {SCHEDULED_MAX_PER_AUTHOR} tweets scheduled already: cancel one, or wait for one to go out."
        )
        raise ValidationError({"publish_at": ValidationError(message, code="too_many")})
    tweet = Tweet(author=author, body=body, client_id=client_id, publish_at=publish_at)
    tweet.full_clean(exclude=["author"], validate_unique=False, validate_constraints=False)  # as in _create
    admission.admit(author_id=author.pk, reserve=False)  # RateLimited: 429
    try:
        with transaction.atomic():
            tweet.save()
            Schedule.objects.create(tweet=tweet, due_at=publish_at)
            transaction.on_commit(partial(_arm_schedule, tweet.pk, publish_at))
    except IntegrityError:  # a concurrent retry made it first
        if (existing := _scheduled_or_published(author, client_id)) is None:
            raise
        return PostResult(existing, created=False)
    return PostResult(tweet, created=True)


def _scheduled_or_published(author: AbstractBaseUser, client_id: uuid.UUID) -> Tweet | None:
    tweet = Tweet.all_objects.filter(author=author, client_id=client_id).select_related("author").first()
    if tweet is not None and tweet.publish_at is None:
        return _tweet_by_client_id(author, client_id)  # with its outbox row
    return tweet


def _arm_schedule(tweet_id: int, due_at: datetime) -> None:
    try:
        scheduled.arm(tweet_id, attempt=0, due_at=due_at)
    except Exception:
        logger.exception("scheduled tweet %s stored but not armed; the relay will see to it", tweet_id)


def tweet_publish_scheduled(tweet_id: int) -> Tweet | None:
    """Publish a scheduled tweet whose time has come (the job ``fanout.jobs.publish_scheduled``).

    The scheduled row is replaced by a new tweet, with the same author, body and client_id and
    the id and time of now, so that it lands on top of timelines and pages fill their gaps by
    id as ever; then it goes out like a post: a queue slot first, then the insert, then the
    fan-out. Over the cap it is put off (``fanout.scheduled.postpone``), never dropped. Returns
    the new tweet, or None if there was nothing to publish yet (cancelled, published by an
    earlier run, not due, put off).
    """
    schedule = Schedule.objects.select_related("tweet__author").filter(pk=tweet_id).first()
    if schedule is None:
        return None  # published already, or cancelled
    old = schedule.tweet
    early = (old.publish_at - timezone.now()).total_seconds()
    if early > scheduled.EARLY_BY_AT_MOST:
        return None  # not due (the relay arms another job when it is)
    if early > 0:  # RQ's scheduler keeps times in whole seconds: never before its time
        time.sleep(early)
    try:
        ticket = admission.admit(author_id=old.author_id, rate_limit=False)
    except admission.Overloaded as exc:
        scheduled.postpone(schedule, retry_after=exc.retry_after, reason=f"queue full ({exc.depth} waiting)")
        return None
    tweet = Tweet(author=old.author, body=old.body, client_id=old.client_id)
    try:
        with transaction.atomic():
            # The claim: of two runs at once, one deletes the row and the other finds it gone.
            if not Schedule.objects.filter(pk=tweet_id).delete()[0]:
                raise _NothingToPublish
            Tweet.scheduled.filter(pk=tweet_id).delete()
            _insert_tweet(tweet, ticket)
            transaction.on_commit(partial(_after_publish, tweet, old))
    except _NothingToPublish:
        admission.release(ticket)
        return None
    except BaseException:
        admission.release(ticket)
        raise
    return tweet


class _NothingToPublish(Exception):
    pass


def _after_publish(tweet: Tweet, old: Tweet) -> None:
    # The author's own pages get it live (nothing of theirs drew it: no tab posted it now).
    with suppress(Exception):
        prometheus.SCHEDULED_LATENESS.observe(max((tweet.created_at - old.publish_at).total_seconds(), 0.0))
    push.send([(tweet.author_id, push.tweet_new(payloads.tweet_payload(tweet)))])


class TweetNotFound(Exception):
    """No such tweet that this user may delete (it does not exist, or it is someone else's)."""


def tweet_delete(*, user: AbstractBaseUser, tweet_id: int, as_staff: bool = False) -> str:
    """Delete one's own tweet (staff, with ``as_staff``, anyone's): gone from the database at
    once, and from every timeline and open page it reached by a job (fanout.retraction). A
    scheduled tweet is cancelled instead: it never goes out. Returns "deleted" or "cancelled".

    Idempotent: deleting a tweet one deleted already does nothing. Raises TweetNotFound for a
    tweet that is not the user's, so that nobody learns whether someone else's exists.
    """
    try:
        with transaction.atomic():
            tweet = Tweet.all_objects.filter(pk=tweet_id).first()
            if tweet is not None and tweet.publish_at is not None:
                return _cancel_scheduled(tweet, user=user, as_staff=as_staff)
            if tweet is None:
                if as_staff or _deleted_by(user, tweet_id):
                    return "deleted"  # deleted (or cancelled) already
                raise TweetNotFound(tweet_id)
            if tweet.author_id != user.pk and not as_staff:
                raise TweetNotFound(tweet_id)
            Retraction.objects.create(tweet_id=tweet.pk, author_id=tweet.author_id)
            Tweet.objects.filter(pk=tweet.pk).delete()  # and its outbox row
            transaction.on_commit(partial(_after_tweet_delete, tweet.pk, tweet.author_id))
    except IntegrityError:
        # A concurrent delete of the same tweet committed first (PostgreSQL; SQLite's writes
        # take turns, so the second finds the tweet gone).
        if not (as_staff or _deleted_by(user, tweet_id)):
            raise
    return "deleted"


def _cancel_scheduled(tweet: Tweet, *, user: AbstractBaseUser, as_staff: bool) -> str:
    """Cancel a scheduled tweet: it never goes out. Its job, if it runs, finds nothing.

    A removal with nothing to remove (done at once) records it, so that cancelling again
    answers as deleting again does.
    """
    if tweet.author_id != user.pk and not as_staff:
        raise TweetNotFound(tweet.pk)
    attempts = Schedule.objects.filter(pk=tweet.pk).values_list("attempts", flat=True).first()
    Tweet.scheduled.filter(pk=tweet.pk).delete()  # and its Schedule row
    now = timezone.now()
    Retraction.objects.create(tweet_id=tweet.pk, author_id=tweet.author_id, enqueued_at=now, done_at=now)
    if attempts is not None:
        transaction.on_commit(partial(_disarm_quietly, tweet.pk, attempts))
    return "cancelled"


def _disarm_quietly(tweet_id: int, attempt: int) -> None:
    with suppress(Exception):
        scheduled.disarm(tweet_id, attempt=attempt)


def _deleted_by(user: AbstractBaseUser, tweet_id: int) -> bool:
    return Retraction.objects.filter(pk=tweet_id, author_id=user.pk).exists()


def _after_tweet_delete(tweet_id: int, author_id: int) -> None:
    # Committed: the tweet is gone whatever happens here. Its author's pages and timelines are
    # put right at once; the followers' by the job, which the relay queues again if this fails.
    with suppress(Exception):  # a cache entry filled by a read racing the commit
        tweet_cache.drop([tweet_id])
    try:
        timelines.retract(tweet_id=tweet_id, user_ids=[author_id], author_id=author_id)
        push.send([(author_id, push.tweet_deleted(tweet_id))])
    except Exception:
        logger.warning("deleted tweet %s: its author's timeline is left to the job", tweet_id, exc_info=True)
    try:
        retraction.enqueue(tweet_id)
    except Exception:
        logger.exception("deleted tweet %s: its removal not queued; the relay will see to it", tweet_id)


# Any 64-bit number, the same in every process: the key of PostgreSQL's advisory lock below.
TWEET_ORDER_LOCK = 0x7477656574  # "tweet"


def _commit_tweet_ids_in_order() -> None:
    """On PostgreSQL, hold posting's one lock until this transaction ends.

    Ids come from a sequence when the row is inserted, so without it a transaction that took a
    smaller id could commit after one that took a larger, and a page reading ``after=`` the
    larger would never see the smaller (see fanout.watermark). The lock is held for one insert
    and a commit, so posts still go at hundreds a second. SQLite writes one at a time anyway.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # Held by a session that died mid-post, the lock is freed only when the server ends
            # that session (settings: 30 s); meanwhile posting answers 503 after the connection's
            # lock_timeout (settings.DATABASE_WAIT_SECONDS), it does not hang. Posts queue for
            # this lock one after another, so the rest of the transaction waits at most what is
            # left of that bound, not the whole of it again: behind a locked table, every post
            # would otherwise wait out each one before it.
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s), set_config('lock_timeout', greatest(1, %s - 1000 * extract("
                "epoch FROM clock_timestamp() - statement_timestamp()))::int || 'ms', true)",
                [TWEET_ORDER_LOCK, settings.DATABASE_WAIT_SECONDS * 1000],
            )


def _after_tweet_commit(
    tweet: Tweet, fanout: Fanout, ticket: admission.Ticket | None, tags: list[str], *, queued: bool
) -> None:
    # The tweet is committed, so it is accepted whatever happens next: nothing here may turn
    # the answer into an error. If the enqueue fails, the outbox relay queues the fan-out that
    # is still pending; if the author's timeline cannot be written, it is dropped and rebuilt
    # from the database on read. The two steps are independent: neither failure skips the other.
    try:
        if queued:
            admission.enqueue_fanout(fanout, ticket=ticket)
    except Exception:
        logger.exception("tweet %s committed but maybe not queued; the outbox relay will see to it", tweet.pk)
    with suppress(Exception):  # a cache: a miss is filled on the first read
        tweet_cache.put([tweet])
    with suppress(Exception):  # a sample, not a record
        trends.count(tags)
    try:
        timelines.add(tweet_id=tweet.pk, user_ids=[tweet.author_id])
    except Exception:
        logger.exception("tweet %s not added to its author's timeline; dropping it to be rebuilt", tweet.pk)
        with suppress(Exception):
            timelines.invalidate([tweet.author_id])


def follow_create(*, follower: AbstractBaseUser, followee: AbstractBaseUser) -> Follow:
    if follower.pk == followee.pk:
        raise ValidationError("You cannot follow yourself.", code="self_follow")
    with transaction.atomic():
        follow, created = Follow.objects.get_or_create(follower=follower, followee=followee)
        if created:
            transaction.on_commit(partial(timelines.invalidate, [follower.pk]), robust=True)
    return follow


def follow_delete(*, follower: AbstractBaseUser, followee: AbstractBaseUser) -> bool:
    with transaction.atomic():
        deleted, _ = Follow.objects.filter(follower=follower, followee=followee).delete()
        if deleted:
            transaction.on_commit(partial(timelines.invalidate, [follower.pk]), robust=True)
    return bool(deleted)


def ops_controls(*, workers_paused: bool | None = None, cap=...) -> None:
    """Staff's levers (/ops/): pause or resume every fan-out worker, set the queue cap in force
    (None: back to FANOUT_QUEUE_CAP). Left as they are when not given."""
    from rq.suspension import resume, suspend

    redis = get_redis()
    if workers_paused is True:
        suspend(redis)
        wake = get_queue("default", connection=redis)
        for _ in range(admission.workers_listening()):
            wake.enqueue_call("fanout.jobs.wake", result_ttl=0, failure_ttl=60)
    elif workers_paused is False:
        resume(redis)
    if cap is not ...:
        admission.set_cap(cap)
