"""Throttles where abuse is cheap for the attacker and costly for us.

A failed login costs us a password hash (PBKDF2, tenths of a second of CPU) and the attacker a
request; a signup or a follow toggle costs a throwaway account nothing, and each account
multiplies the per-author tweet limit. Each throttle is a counter per key in one Redis window
(INCR, with the window's expiry set by the first hit), shared by every web process. Over the
limit the request answers 429 with Retry-After, before any hash is computed.

The per-account login limit is short on purpose: it stops guessing one password quickly, and
whoever trips it to keep the owner out can do so for at most one window at a time, while the
per-address limit, longer, stops one client from walking through many accounts.

Limits live in ``settings.THROTTLES`` as (count, window seconds); 0 turns one off.
"""

from __future__ import annotations

import hashlib

from django.conf import settings

from fanout.connection import get_redis

# KEYS[1]: the counter. ARGV: window seconds, increment (0 only reads).
# Returns {count after this hit, seconds left in the window}.
_HIT_SCRIPT = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[2]) > 0 then
  count = redis.call('INCRBY', KEYS[1], ARGV[2])
  if count == tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
end
return {count, redis.call('TTL', KEYS[1])}
"""


class Throttled(Exception):
    def __init__(self, what: str, retry_after: int) -> None:
        super().__init__(f"too many {what}")
        self.what, self.retry_after = what, max(retry_after, 1)


def _key(name: str, subject: str) -> str:
    # Hashed: a username or an address is not something to leave readable in Redis.
    return f"throttle:{name}:{hashlib.sha256(subject.encode()).hexdigest()[:32]}"


def _count(name: str, subject: str, *, add: int) -> None:
    limit, window = settings.THROTTLES[name]
    if limit <= 0:
        return
    script = get_redis().register_script(_HIT_SCRIPT)
    count, ttl = script(keys=[_key(name, subject)], args=[window, add])
    over = count > limit if add else count >= limit
    if over:
        raise Throttled(name.replace("_", " "), ttl if ttl > 0 else window)


def check_login(*, username: str, address: str) -> None:
    """Before hashing a password: refuse if this account or this address failed too often."""
    _count("login_failures_per_account", username.lower(), add=0)
    _count("login_failures_per_address", address, add=0)


def login_failed(*, username: str, address: str) -> None:
    for name, subject in (("login_failures_per_account", username.lower()), ("login_failures_per_address", address)):
        try:
            _count(name, subject, add=1)
        except Throttled:
            pass  # this failure is counted; the next attempt is the one refused


def signup(*, address: str) -> None:
    _count("signups_per_address", address, add=1)


def follow_toggle(*, user_id: int) -> None:
    _count("follow_toggles_per_user", str(user_id), add=1)


def client_address(request) -> str:
    """The client's address as daphne saw it (behind a proxy, run daphne with --proxy-headers)."""
    return request.META.get("REMOTE_ADDR") or "unknown"
