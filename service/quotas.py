"""Per-key quotas on what a key may send in a minute, counted in Redis so every API process
shares the count.

A quota bounds what one key can pile on people: each user report becomes review work, and a
single client key can send reports under any number of reporter names.
"""

from __future__ import annotations

from redis import Redis

WINDOW_S = 60


def take(redis: Redis, *, action: str, key_id: str, limit: int, now: float) -> int | None:
    """Count one `action` by the key `key_id` in the current minute: None while the count is
    within `limit` (0: no quota, and no count), else the seconds until the next minute, when
    it may send again. Raises RedisError when Redis cannot count."""
    if limit <= 0:
        return None
    window = int(now // WINDOW_S)
    name = f"tagflow:quota:{action}:{key_id}:{window}"
    with redis.pipeline() as pipe:
        count, _ = pipe.incr(name).expire(name, 2 * WINDOW_S).execute()
    if int(count) <= limit:
        return None
    return max(1, int((window + 1) * WINDOW_S - now + 0.999))


def give_back(redis: Redis, *, action: str, key_id: str, now: float) -> None:
    """Undo one `take` made at `now` (same minute: the count it added to), for an action that
    turned out to need none. Raises RedisError when Redis cannot count."""
    name = f"tagflow:quota:{action}:{key_id}:{int(now // WINDOW_S)}"
    with redis.pipeline() as pipe:
        # A count that expired meanwhile comes back at -1, in a minute no take reads again.
        pipe.decr(name).expire(name, 2 * WINDOW_S).execute()
