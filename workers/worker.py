"""`tagflow worker`: an RQ worker on the labelling and training queues."""

from __future__ import annotations

from redis import Redis
from rq import Queue, SimpleWorker

from service.config import Settings
from service.logs import configure_logging
from service.outbox import LABELING_QUEUE, TRAINING_QUEUE
from workers.context import JobContext, use_context


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
    SimpleWorker(queues, connection=redis).work(burst=burst, with_scheduler=True)
