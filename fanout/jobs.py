"""RQ entry points. Each takes ids only (jobs are JSON-serialized) and makes one call."""

from fanout import delivery


def fanout_tweet(tweet_id: int) -> None:
    delivery.deliver_tweet(tweet_id=tweet_id)
