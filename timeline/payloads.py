"""The one place that turns tweets, users and fan-outs into JSON-ready dicts.

The HTTP API and the websocket events both use these, so a client sees one shape everywhere.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser

from fanout.models import Fanout
from timeline import text
from timeline.models import Tweet


def _iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def user_payload(user: AbstractBaseUser) -> dict[str, Any]:
    return {"id": user.pk, "username": user.get_username()}


def tweet_payload(tweet: Tweet) -> dict[str, Any]:
    payload = {
        "id": tweet.pk,
        "author": user_payload(tweet.author),
        "body": tweet.body,
        # The body split into text, mentions, tags and links (timeline.text), for the page to
        # build the same elements as the server-rendered page, with no HTML parsed.
        "parts": text.tokenize(tweet.body),
        "created_at": _iso(tweet.created_at),
        "client_id": str(tweet.client_id),
    }
    if tweet.publish_at is not None:  # scheduled: to be published then, as a new tweet
        payload["publish_at"] = _iso(tweet.publish_at)
    return payload


def fanout_payload(fanout: Fanout) -> dict[str, Any]:
    return {
        "state": fanout.state,
        "recipients": fanout.recipients,
        "delivered": fanout.delivered,
        "enqueued_at": _iso(fanout.enqueued_at),
        "finished_at": _iso(fanout.finished_at),
        "mode": fanout.mode,
        "live": fanout.live,
    }
