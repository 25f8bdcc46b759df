"""Demo data: a few people who follow each other, a staff user, and one popular account.

Idempotent: users are found or made, tweets carry fixed client_ids (so posting them again
finds the same tweets), and accounts that exist are never changed (their passwords included). The tweets
skip admission control: seeding is not people posting, and must start even when the queue is
full (``WORKERS=0 FANOUT_QUEUE_CAP=3 make run``, or old jobs left in Redis by a previous run).
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand
from django.db import transaction

from timeline import lesson, services
from timeline.models import Follow

User = get_user_model()

DEMO_NAMESPACE = uuid.UUID("5b0c2b8e-6a52-4c41-9d56-0d1f3f5e1a10")
PEOPLE = {
    "alice": "alice-demo-pass",
    "bob": "bob-demo-pass",
    "carol": "carol-demo-pass",
    "dave": "dave-demo-pass",
}
STAFF = ("admin", "admin-demo-pass")
POPULAR = ("celebrity", "celebrity-demo-pass")
# Followed by more people than FANOUT_ON_READ_THRESHOLD (5,000): its tweets are merged into
# its followers' timelines on read, not fanned out on write (fanout.delivery).
MEGASTAR = ("megastar", "megastar-demo-pass")
FOLLOWS = [
    ("alice", "bob"),
    ("alice", "carol"),
    ("alice", "celebrity"),
    ("bob", "alice"),
    ("bob", "celebrity"),
    ("carol", "alice"),
    ("carol", "bob"),
    ("carol", "celebrity"),
    ("dave", "alice"),
    ("dave", "celebrity"),
    ("alice", "megastar"),
    ("bob", "megastar"),
]
TWEETS = {
    "alice": ["Hello, timeline!", "Queues turn spikes into waits; caps turn waits into answers."],
    "bob": ["Little's law: L = lambda x W. Measure two, get the third."],
    "carol": ["At-least-once plus idempotency is exactly-once where it matters."],
    "dave": ["Back pressure is a feature, not an error."],
    "celebrity": ["Thanks for following, all of you!"],
    "megastar": ["Hello to every one of you: written once, read by all."],
}


class Command(BaseCommand):
    help = "Create (or refresh) idempotent demo users, follows and tweets."

    def add_arguments(self, parser):
        parser.add_argument("--fans", type=int, default=1000, help="Followers of the popular account.")
        parser.add_argument("--stars-fans", type=int, default=6000, help="Followers of the megastar account.")
        parser.add_argument("--lesson-audience", type=int, default=5000, help="Followers of the lesson's account.")

    def handle(self, *args, fans: int, stars_fans: int, lesson_audience: int, **options):
        accounts = {**PEOPLE, POPULAR[0]: POPULAR[1], MEGASTAR[0]: MEGASTAR[1]}
        with transaction.atomic():
            users = {name: self._user(name, password) for name, password in accounts.items()}
            self._user(*STAFF, staff=True)
            for follower, followee in FOLLOWS:
                Follow.objects.get_or_create(follower=users[follower], followee=users[followee])
            self._fans(users[POPULAR[0]], fans, prefix="fan")
            self._fans(users[MEGASTAR[0]], stars_fans, prefix="starfan")
            # The lesson page's account: nobody logs in as it. Its audience is as large as fan-out
            # on write goes (FANOUT_ON_READ_THRESHOLD), so that delivering in the request shows.
            teacher = self._user(lesson.ACCOUNT, None)
            self._fans(teacher, lesson_audience, prefix="pupil")
        for name, bodies in TWEETS.items():
            for i, body in enumerate(bodies):
                client_id = uuid.uuid5(DEMO_NAMESPACE, f"{name}/{i}")
                services.tweet_create(author=users[name], body=body, client_id=client_id, admission_control=False)
        built = lesson.prepare_audience(teacher)

        # The line `make run` is up by: everything above exists now, so the first click works.
        url = f"http://127.0.0.1:{settings.PORT}/"
        self.stdout.write(self.style.SUCCESS(f"Ready on {url} with the demo data. Log in as:"))
        for name, password in [*PEOPLE.items(), POPULAR, MEGASTAR]:
            self.stdout.write(f"  {name:<10} {password}")
        self.stdout.write(f"  {STAFF[0]:<10} {STAFF[1]}   (staff: /admin/)")
        self.stdout.write(f"  {POPULAR[0]} has {fans} extra followers (fan0000...), to watch a large fan-out.")
        self.stdout.write(f"  {MEGASTAR[0]} has {stars_fans} (starfan0000...): merged on read, not fanned out.")
        self.stdout.write(
            f"  /lesson/ posts as @{lesson.ACCOUNT} to {lesson_audience} followers (pupil0000...; {built} timelines built now)."
        )

    def _user(self, name: str, password: str | None, staff: bool = False):
        # Made once with the demo password (None: it cannot log in); an account that exists is
        # left alone, so a password someone changed is never put back to the published one.
        user, created = User.objects.get_or_create(username=name)
        if created:
            user.set_password(password)
            user.is_staff = user.is_superuser = staff
            user.save()
        return user

    def _fans(self, popular, count: int, *, prefix: str) -> None:
        # Fans exist to be followers, made in bulk; they cannot log in, so no password is hashed.
        unusable = make_password(None)
        width = max(4, len(str(count - 1)))
        names = [f"{prefix}{i:0{width}d}" for i in range(count)]
        existing = set(User.objects.filter(username__in=names).values_list("username", flat=True))
        User.objects.bulk_create([User(username=n, password=unusable) for n in names if n not in existing])
        fan_ids = User.objects.filter(username__in=names).values_list("id", flat=True)
        Follow.objects.bulk_create(
            [Follow(follower_id=fan_id, followee=popular) for fan_id in fan_ids], ignore_conflicts=True
        )
