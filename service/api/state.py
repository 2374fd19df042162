"""Process-wide resources, created once in the app's lifespan and shared through typed state."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from redis import Redis
from rq import Queue
from sqlalchemy.engine import Engine

from service.api_keys import KeyRing
from service.config import Settings
from service.dead_letters import WaitingCount
from service.logs import RepeatedFailures
from service.metrics import Metrics
from service.ml.registry import ArtifactStamp
from service.ml.serving import MicroBatcher, Predictor
from service.outbox import relay_failures
from service.prediction_log import PredictionLog
from service.tags import TagSet
from service.unwritten import Announcer


def readiness_failures() -> RepeatedFailures:
    """How /readyz's database check has been failing: a load balancer probes every second or
    so, and an outage logged a warning at each probe; now a line when it starts, one a minute
    saying how many probes failed, and one when the database answers again (in the route's
    logger)."""
    logger = logging.getLogger("service.api.routes.health")
    return RepeatedFailures("database check for /readyz", logger, level=logging.WARNING)


def _nothing() -> None:
    """The outbox relay's wake-up before the lifespan has started the relay task."""


@dataclass
class Queues:
    """The RQ queues the API enqueues to."""

    labeling: Queue
    training: Queue

    def items(self) -> list[tuple[str, Queue]]:
        return [(q.name, q) for q in (self.labeling, self.training)]


def scrape_failures(what: str, *, level: int) -> RepeatedFailures:
    """How a read of /metrics' state (the database's, Redis's) has been failing: Prometheus
    scrapes every 15 s or so, and an outage logged at each scrape (a database outage a
    traceback of about 120 lines); now a line when it starts, one a minute, and one when it
    answers again (in the telemetry logger)."""
    return RepeatedFailures(what, logging.getLogger("service.api.telemetry"), level=level)


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    tags: TagSet
    predictor: Predictor
    batcher: MicroBatcher
    log: PredictionLog
    redis: Redis
    queues: Queues
    metrics: Metrics
    dead_letters: WaitingCount
    keys: KeyRing
    # This process's entry in Redis while its log holds predictions late (service.unwritten).
    unwritten: Announcer
    # Wakes the outbox relay task (service.api.main), from any thread, once rows wait in the
    # outbox: a log flush wrote predictions sent to review, or a report was stored.
    wake_relay: Callable[[], None] = _nothing
    # Why the registry's production version is not served (its artifact refused at load);
    # emptied once it, or a later production version, serves.
    model_errors: list[str] = field(default_factory=list)
    # The production version `model_errors` are about: a refusal of a version production has
    # moved on from is not why production is not served.
    refused_version: str | None = None
    model_refusals: int = 0  # versions refused at load since start
    # Candidates refused as the shadow model, with their artifact file's stamp then: each is
    # logged once, not every watch tick, and tried again only once the file has changed.
    shadow_refused: dict[str, ArtifactStamp] = field(default_factory=dict)
    # Shadow scorings that raised since start (logged each; production answers are unaffected).
    shadow_errors: int = 0
    # When the watch loop next judges the served cut by the audit (time.monotonic()).
    next_recalibration: float = 0.0
    # When the watch loop next looks for outbox jobs that Redis lost (time.monotonic()).
    next_redelivery_check: float = 0.0
    # When it next looks for admin jobs (retraining, comparison) that Redis lost.
    next_job_check: float = 0.0
    # Strong references to fire-and-forget tasks (shadow scoring), so they are not collected.
    background: set[asyncio.Task[None]] = field(default_factory=set)
    # One relay at a time: SQLite ignores FOR UPDATE SKIP LOCKED, and the relay runs both
    # after each log flush and from the watch loop.
    outbox_lock: threading.Lock = field(default_factory=threading.Lock)
    # One registry-read-and-swap at a time (lifecycle.sync_production: the watch loop and the
    # admin routes); held while a version loads, never on the predict path.
    production_lock: threading.Lock = field(default_factory=threading.Lock)
    # How that relay has been failing (a Redis outage: logged once, not at every try).
    outbox_failures: RepeatedFailures = field(default_factory=relay_failures)
    # How /readyz's database check has been failing (logged once, not at every probe).
    readiness_failures: RepeatedFailures = field(default_factory=readiness_failures)
    # How /metrics' reads of the database and of Redis have been failing (the same way).
    scrape_database_failures: RepeatedFailures = field(
        default_factory=lambda: scrape_failures("/metrics: database read", level=logging.ERROR)
    )
    scrape_redis_failures: RepeatedFailures = field(
        default_factory=lambda: scrape_failures("/metrics: Redis read", level=logging.WARNING)
    )
