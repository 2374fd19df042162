"""`tagflow worker`: an RQ worker on the labelling and training queues."""

from __future__ import annotations

import logging

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue, SimpleWorker

from service.config import Settings
from service.logs import configure_logging
from service.outbox import LABELING_QUEUE, TRAINING_QUEUE
from workers.context import JobContext, use_context

log = logging.getLogger(__name__)


def run(settings: Settings, *, burst: bool = False) -> None:
    """Work until stopped (or until the queues are empty, with `burst`).

    A SimpleWorker runs jobs in this process, so the encoder and database engine are loaded
    once rather than in a fresh fork per job.
    """
    configure_logging(settings)
    if not settings.redis_url:
        raise SystemExit("TAGFLOW_REDIS_URL is not set")
    use_context(JobContext(settings))
    redis = Redis.from_url(settings.redis_url)
    queues = [Queue(name, connection=redis) for name in (LABELING_QUEUE, TRAINING_QUEUE)]
    try:
        SimpleWorker(queues, connection=redis).work(burst=burst, with_scheduler=True)
    except RedisConnectionError as exc:
        # RQ retries while it waits for jobs; this is Redis gone in the middle of a job's
        # bookkeeping (an outage, or `tagflow up` killed outright: its Redis stops with it).
        # RQ has logged the details; one line and a failure exit, for a supervisor to restart.
        log.error("worker stopped: lost its Redis connection (%s)", exc)
        raise SystemExit(1) from None
