"""Answered predictions an API process holds and has not written yet, told to the other API
processes through Redis.

Each process writes its predictions behind (`service.prediction_log`), and another process
asked for one it cannot find (`GET /predictions/{id}`, `POST /feedback`) waits for it the flush
interval and `GRACE_S`, then answers 404, which a client takes as final. A process whose
writes are late (the database away, or the backlog of an outage being written) holds answered
predictions far longer: a QA chaos run's user report of a prediction answered 4 s before was
refused so, while the process that had answered it was still writing it. While it holds such
rows, a process now keeps an entry here saying since when, and the others answer an id made
since then that they cannot find with a 503 to retry. The entry lapses `TTL_S` after its last
renewal, so a process killed outright stops holding back 404s (its rows are lost then).

The entries are the fields of one Redis hash, each `<oldest> <lapses at>` (seconds since the
epoch), so a lookup reads them in one HGETALL however many keys Redis holds (a SCAN for keys of
their own walked every RQ job's too); a reader drops the fields that have lapsed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid

from redis import Redis
from redis.exceptions import RedisError

from service.logs import RepeatedFailures
from service.prediction_log import PredictionLog

log = logging.getLogger(__name__)
KEY = "tagflow:unwritten"
# How long past the flush interval a prediction another process answered is waited for (a
# flush behind a slow one, a busy database) before it is looked up here.
GRACE_S = 2.0
# Past the flush interval and this, a row still unwritten is announced: within the grace,
# with time left for the announcement's tick and its trip to Redis.
LATE_S = GRACE_S / 2
ANNOUNCE_EVERY_S = 0.25
TTL_S = 10
RENEW_S = 2.0


class Announcer:
    """One process's entry: set while its log holds late rows, renewed while it does,
    removed once they are written. Talks to Redis only when that changes or to renew."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.field = uuid.uuid4().hex
        self._said: float | None = None  # the oldest late row's time, as Redis has it
        self._renewed = 0.0
        self.failures = RepeatedFailures("announcing unwritten predictions to Redis", log)

    def due(self, oldest: float | None, *, now: float) -> bool:
        """Whether `update(oldest, now=now)` would ask Redis anything: the announce loop asks
        four times a second and nearly always has nothing to say, so it skips the hop to a
        thread then."""
        if oldest is None:
            return self._said is not None
        return oldest != self._said or now - self._renewed >= RENEW_S

    def update(self, oldest: float | None, *, now: float) -> bool:
        """`oldest`: when the oldest late row was made (None: no row is late); whether Redis
        was asked anything. Raises RedisError, leaving what Redis has unchanged, to be said
        at the next call."""
        if not self.due(oldest, now=now):
            return False
        if oldest is None:
            self.redis.hdel(KEY, self.field)
            self._said = None
            return True
        self.redis.hset(KEY, self.field, f"{oldest!r} {now + TTL_S!r}")
        self._said, self._renewed = oldest, now
        return True


def late_since(predictions: PredictionLog, *, now: float) -> float | None:
    """When the oldest row the log holds unwritten was made, if it is late (see `LATE_S`)."""
    oldest = predictions.unwritten_since()
    if oldest is None or now - oldest <= predictions.interval_s + LATE_S:
        return None
    return oldest


async def announce(predictions: PredictionLog, announcer: Announcer) -> None:
    """Keep this process's entry as its log's late rows are (a task for the app's life)."""
    while True:
        await asyncio.sleep(ANNOUNCE_EVERY_S)
        now = time.time()
        late = late_since(predictions, now=now)
        if announcer.due(late, now=now):
            await asyncio.to_thread(update_quietly, announcer, late)


def update_quietly(announcer: Announcer, oldest: float | None) -> None:
    """`Announcer.update`, a Redis outage logged once (the others then cannot read it either,
    and answer a 503 for an id they cannot find: see `held_since`)."""
    try:
        asked = announcer.update(oldest, now=time.time())
    except RedisError as exc:
        announcer.failures.failed(exc, now=time.monotonic())
        return
    if asked:  # a round that asked Redis nothing says nothing of it
        announcer.failures.succeeded()


def held_since(redis: Redis, *, now: float) -> float | None:
    """When the oldest prediction some API process holds late was made (None: none does),
    dropping the entries that have lapsed. Raises RedisError: then nobody can tell."""
    held: list[float] = []
    lapsed: list[bytes] = []
    for name, value in redis.hgetall(KEY).items():
        oldest, lapses = (float(part) for part in value.split())
        if lapses < now:
            lapsed.append(name)
        else:
            held.append(oldest)
    if lapsed:
        redis.hdel(KEY, *lapsed)
    return min(held, default=None)


def may_be_held(redis: Redis, *, made: float) -> bool:
    """Whether a prediction made at `made` (epoch seconds) may be among the rows some API
    process holds unwritten; True when Redis cannot tell."""
    try:
        since = held_since(redis, now=time.time())
    except RedisError:
        return True
    # Ids carry milliseconds: one made in the same millisecond as the oldest held counts.
    return since is not None and made >= math.floor(since * 1000) / 1000
