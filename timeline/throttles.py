"""Throttles where abuse is cheap for the attacker and costly for us.

A failed login costs us a password hash (PBKDF2, tenths of a second of CPU) and the attacker a
request; a signup or a follow toggle costs a throwaway account nothing, and each account
multiplies the per-author tweet limit. Each throttle is a counter per key in one Redis window
(INCR, with the window's expiry set by the first hit), shared by every web process. Over the
limit the request answers 429 with Retry-After (the window's time left), before any hash is
computed.

Failed logins are counted three ways, so that guessing is slow and the owner is never locked
out for long:

- per account *and* client: a client that keeps failing on one account is refused;
- per client: one client walking through many accounts is refused;
- per account, from anywhere: past its limit the account is under attack, and from then on a
  client that has failed on it even once is refused, while a client that has not failed on it
  (its owner, logging in from their own address) is let through. An attacker with many
  addresses gets one guess per address per window; the owner, if they mistyped during the
  attack, waits out their own window (``login_failures_per_account_and_address``'s, a minute)
  and no more, however long the attack goes on, since refused tries count nothing.

Every login form goes through the authentication backend (timeline.identity), which applies
these: the API's, the login page's and the admin's.

A client is an address as the big services group them: an IPv4 address is one client, an IPv6
one is its /64 (what one household or host is given), and every loopback address is the one
machine it is.

Limits live in ``settings.THROTTLES`` as (count, window seconds); 0 turns one off.
"""

from __future__ import annotations

import hashlib
import ipaddress

from django.conf import settings

from fanout.connection import get_redis

# KEYS[1]: the counter. ARGV: window seconds. Returns {count after this hit, seconds left}.
_HIT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('TTL', KEYS[1])}
"""

# KEYS: failures per account and client, per client, per account. ARGV: their limits (0: off).
# Returns {0, 0} to go ahead, or {1, seconds} refused until then.
_LOGIN_CHECK_SCRIPT = """
local pair = tonumber(redis.call('GET', KEYS[1]) or '0')
local function refuse(key) return {1, math.max(redis.call('TTL', key), 1)} end
if tonumber(ARGV[1]) > 0 and pair >= tonumber(ARGV[1]) then return refuse(KEYS[1]) end
local client = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) > 0 and client >= tonumber(ARGV[2]) then return refuse(KEYS[2]) end
local account = tonumber(redis.call('GET', KEYS[3]) or '0')
if tonumber(ARGV[3]) > 0 and account >= tonumber(ARGV[3]) and pair > 0 then return refuse(KEYS[1]) end
return {0, 0}
"""

PAIR, CLIENT, ACCOUNT = (
    "login_failures_per_account_and_address",
    "login_failures_per_address",
    "login_failures_per_account",
)


class Throttled(Exception):
    def __init__(self, what: str, retry_after: int) -> None:
        super().__init__(f"too many {what}")
        self.what, self.retry_after = what, max(retry_after, 1)


def _key(name: str, subject: str) -> str:
    # Hashed: a username or an address is not something to leave readable in Redis.
    return f"throttle:{name}:{hashlib.sha256(subject.encode()).hexdigest()[:32]}"


def client_group(address: str) -> str:
    """The client an address stands for: itself (IPv4), its /64 (IPv6), or "loopback"."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # "unknown", or a unix socket's name
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return "loopback"
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _login_keys(username: str, address: str) -> list[str]:
    account, client = username.lower(), client_group(address)
    return [_key(PAIR, f"{account}\n{client}"), _key(CLIENT, client), _key(ACCOUNT, account)]


def check_login(*, username: str, address: str) -> None:
    """Before hashing a password: refuse (Throttled) if this client failed too often, on this
    account or on any, or failed at all on an account under attack."""
    limits = [settings.THROTTLES[name][0] for name in (PAIR, CLIENT, ACCOUNT)]
    if not any(limits):
        return
    refused, retry_after = get_redis().register_script(_LOGIN_CHECK_SCRIPT)(
        keys=_login_keys(username, address), args=limits
    )
    if refused:
        raise Throttled("failed logins", int(retry_after))


def login_failed(*, username: str, address: str) -> None:
    hit = get_redis().register_script(_HIT_SCRIPT)
    for name, key in zip((PAIR, CLIENT, ACCOUNT), _login_keys(username, address), strict=True):
        limit, window = settings.THROTTLES[name]
        if limit > 0:
            hit(keys=[key], args=[window])


def _count(name: str, subject: str) -> None:
    limit, window = settings.THROTTLES[name]
    if limit <= 0:
        return
    count, ttl = get_redis().register_script(_HIT_SCRIPT)(keys=[_key(name, subject)], args=[window])
    if count > limit:
        raise Throttled(name.replace("_", " "), ttl if ttl > 0 else window)


def signup(*, address: str) -> None:
    _count("signups_per_address", client_group(address))


def follow_toggle(*, user_id: int) -> None:
    _count("follow_toggles_per_user", str(user_id))


def client_address(request) -> str:
    """The client's address as daphne saw it (behind a proxy, run daphne with --proxy-headers)."""
    return request.META.get("REMOTE_ADDR") or "unknown"
