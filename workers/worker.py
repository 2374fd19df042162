"""`tagflow worker`: an RQ worker on the labelling and training queues."""

from __future__ import annotations

import logging

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested
from rq.job import Job

from service.config import Settings
from service.logs import configure_logging
from service.outbox import LABELING_QUEUE, TRAINING_QUEUE
from workers.context import JobContext, use_context

log = logging.getLogger(__name__)


# How long one wait for a job blocks: a stop asked while idle takes effect within it.
POLL_S = 1


class Worker(SimpleWorker):
    """RQ's SimpleWorker, stopped by SIGTERM/SIGINT only between jobs.

    RQ stops at once when its worker is not busy, and "not busy" includes the moment between
    popping a job off its queue and starting it: a job popped then was in no queue and no
    registry, gone without a trace (a QA pass lost a review request so when `tagflow up` was
    stopped right after its API handed the request over). Here a stop only sets the flag RQ
    checks between jobs, a popped job is always run first, and waiting for a job polls every
    `POLL_S` seconds so that an idle worker still stops promptly.
    """

    def _shutdown(self) -> None:
        self._stop_requested = True
        self.set_shutdown_requested_date()
        if self.scheduler:
            self.stop_scheduler()

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        if timeout is None or max_idle_time is not None:  # burst, or bounded: RQ's own way
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        while not self._stop_requested:
            # Bounded waits (max_idle_time: None once idle that long) instead of one long one.
            if result := super().dequeue_job_and_maintain_ttl(POLL_S, POLL_S):
                return result
        raise StopRequested


def run(settings: Settings, *, burst: bool = False) -> None:
    """Work until stopped (or until the queues are empty, with `burst`).

    A SimpleWorker runs jobs in this process, so the encoder and database engine are loaded
    once rather than in a fresh fork per job; this one stops only between jobs (`Worker`).
    """
    configure_logging(settings)
    if not settings.redis_url:
        raise SystemExit("TAGFLOW_REDIS_URL is not set")
    use_context(JobContext(settings))
    redis = Redis.from_url(settings.redis_url)
    queues = [Queue(name, connection=redis) for name in (LABELING_QUEUE, TRAINING_QUEUE)]
    try:
        Worker(queues, connection=redis).work(burst=burst, with_scheduler=True)
    except RedisConnectionError as exc:
        # RQ retries while it waits for jobs; this is Redis gone in the middle of a job's
        # bookkeeping (an outage, or `tagflow up` killed outright: its Redis stops with it).
        # RQ has logged the details; one line and a failure exit, for a supervisor to restart.
        log.error("worker stopped: lost its Redis connection (%s)", exc)
        raise SystemExit(1) from None
