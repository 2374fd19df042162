"""`tagflow worker`: an RQ worker on the labelling and training queues."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, SimpleWorker
from rq.exceptions import DequeueTimeout, StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.worker import DequeueStrategy, WorkerStatus
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from service.config import Settings
from service.db import (
    configuration_refusal,
    init_db,
    is_conflict,
    is_outage,
    is_outage_to_wait_for,
    is_server_away,
    make_engine,
)
from service.logs import REPEAT_LOG_S, configure_logging, exception_line
from service.outbox import LABELING_QUEUE, TRAINING_QUEUE
from service.processes import die_with_parent, stop_signals_as_exit
from workers.context import JobContext, get_context, use_context
from workers.cpu_share import take_back_seat

log = logging.getLogger(__name__)


# How long one wait for a job blocks: a stop asked while idle takes effect within it.
POLL_S = 1
# While a job runs, its worker renews its claim on it every RENEW_S seconds; a claim not
# renewed for CLAIM_TTL_S marks a job whose worker died (kill -9, the OOM killer, a lost host),
# which the next maintenance, every MAINTENANCE_S and by any worker (the one started in its
# place too), retries or fails as RQ does for abandoned jobs. RQ's SimpleWorker claims a job
# once, for its whole timeout plus a minute, and maintains every 10 minutes: a killed worker's
# labelling job stayed "started", its review items in no queue, for 11-21 minutes, and a
# retraining for 31-41 (GET /jobs said "started" all along).
RENEW_S = 10
CLAIM_TTL_S = 45
MAINTENANCE_S = 30
# How long a Redis command may go unanswered (a connection, too) before the worker counts
# Redis as away: the longest command it sends is its wait for a job, POLL_S. RQ's own is that
# wait plus 10 s, 415 s, and none for a connection: a Redis that hung (stopped, its host cut
# off without a reset) held the worker silent that long, a stop asked meanwhile too (its
# handler writes to Redis), so `tagflow up` and compose's grace period waited for it.
REDIS_TIMEOUT_S = 10
# A worker started while its database server is away tries it again this often.
START_RETRY_S = 2.0


class DatabaseWatch:
    """Whether the worker may take a job: not while the database a job failed on is away.

    Every job needs the database. Taken during an outage, each failed at once and spent one
    of its retries (2, 10, 30, 120, 600 s apart), so an outage of 13 minutes or more put every
    labelling job in the failed registry, its review items and user reports out of the queue
    until someone requeued them. Now the first job that meets the outage spends one retry;
    the others wait in their queues, retries intact, until the database answers.
    """

    def __init__(self) -> None:
        self.down_since: float | None = None
        # The last probe error that was not an outage, as logged: logged again only when
        # it changes, not at every poll.
        self.refusal: str | None = None

    def failed(self, exc: BaseException | None) -> None:
        """Note a job's failure: an outage stops the taking of jobs, unless it was a conflict
        with another transaction (the prune's lock timeout, a deadlock): the database answers,
        and the worker said it was unavailable, then a second later that it answered again."""
        if self.down_since is None and exc is not None and is_conflict(exc):
            log.warning(
                "worker: a job lost to another transaction's lock (%s); the database answers, "
                "so jobs go on being taken",
                exception_line(exc),
            )
            return
        if self.down_since is None and exc is not None and configuration_refusal(exc):
            # Not called an outage: the check at the next poll names the refusal and stops
            # the worker (`answers`). Not from here: RQ has yet to schedule this job's retry.
            self.down_since = time.monotonic()
            return
        if self.down_since is None and exc is not None and is_outage(exc):
            self.down_since = time.monotonic()
            log.error(
                "worker: the database is unavailable (%s); no job is taken until it answers "
                "(jobs wait in their queues, their retries kept)",
                exception_line(exc),
            )

    def answers(self) -> bool:
        """True unless the database was found away and still is (asked once per call).

        Any error of the probe means it is still away: one that is not an outage (a file that
        is not a database, a server refusing the query) is logged, once while it lasts, and
        waited out like an outage. Raised, it reached RQ's loop, which ended the worker (exit
        0) and left the jobs waiting for nobody. A server refusing the connection for its
        configuration (no such database or role, failed authentication) ends the worker with
        exit 2 and a line saying so, as it would end a worker starting now: waiting, the
        worker looked alive (registered, idle) and did nothing, for good."""
        if self.down_since is None:
            return True
        engine = get_context().engine
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            if reason := configuration_refusal(exc):
                log.error(
                    "worker: the database at %s refused the connection: %s "
                    "(TAGFLOW_DATABASE_URL); stopping (exit 2), as waiting will not change that",
                    engine.url.render_as_string(hide_password=True),
                    reason,
                )
                raise SystemExit(2) from None
            if not is_outage(exc):
                self._refused(exc)
            return False
        log.info(
            "worker: the database answers again after %.0f s; taking jobs",
            time.monotonic() - self.down_since,
        )
        self.down_since = None
        self.refusal = None
        return True

    def _refused(self, exc: Exception) -> None:
        """Log a probe error that is not an outage, unless it is the one logged last."""
        refusal = exception_line(exc)
        if refusal != self.refusal:
            self.refusal = refusal
            log.error(
                "worker: the database refuses the worker's check (%s), which waiting alone may "
                "not cure; still no job is taken until it answers",
                refusal,
                exc_info=exc,
            )


class Worker(SimpleWorker):
    """RQ's SimpleWorker, stopped by SIGTERM/SIGINT only between jobs.

    RQ stops at once when its worker is not busy, and "not busy" includes the moment between
    popping a job off its queue and starting it: a job popped then was in no queue and no
    registry, gone without a trace (a QA pass lost a review request so when `tagflow up` was
    stopped right after its API handed the request over). Here a stop only sets the flag RQ
    checks between jobs, a popped job is always run first, and waiting for a job polls every
    `POLL_S` seconds, looking at the flag between waits, so that an idle worker still stops
    promptly, also while Redis is away (RQ's own wait retries a lost Redis without end).

    A job's claim is renewed while it runs (`RENEW_S`, `CLAIM_TTL_S`), so a job whose worker
    died is found within a minute or so, not after its timeout. After a job failed for want of
    the database, no job is taken until it answers (`DatabaseWatch`).
    """

    def __init__(
        self, *args: Any, claim_ttl_s: int = CLAIM_TTL_S, renew_s: float = RENEW_S, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.claim_ttl_s = claim_ttl_s
        self.renew_s = renew_s
        self.database = DatabaseWatch()
        self.redis_away_since: float | None = None  # when a poll first could not reach Redis
        self._redis_said_at = 0.0

    @property
    def connection_timeout(self) -> int:
        """The socket timeout RQ gives the worker's connection (`REDIS_TIMEOUT_S`)."""
        return REDIS_TIMEOUT_S

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """RQ's logging and handlers for a failed job, then a look at why it failed."""
        super().handle_exception(job, *exc_info)
        self.database.failed(exc_info[1] if len(exc_info) > 1 else None)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """How long a claim on a running job lasts unless renewed (RQ's SimpleWorker: the
        job's whole timeout plus a minute)."""
        return self.claim_ttl_s

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run `job` here, as SimpleWorker does, its claim renewed while it runs."""
        execution = self.prepare_execution(job)
        with self._claim_renewed(job, execution):
            self.perform_job(job, queue, execution)
        self.set_state(WorkerStatus.IDLE)

    @contextmanager
    def _claim_renewed(self, job: Job, execution: Execution) -> Iterator[None]:
        """Renew this worker's claim on `job` from a thread of its own while the block runs
        (the job runs on this one)."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.renew_s):
                try:
                    self.maintain_heartbeats(job, execution)
                except RedisError as exc:  # the job finds out itself; its claim may lapse
                    log.warning("could not renew the claim on job %s: %s", job.id, exc)

        thread = threading.Thread(target=renew, name=f"claim {job.id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _shutdown(self) -> None:
        """A warm stop, asked by a signal: noted, for the work loop to act on between jobs."""
        self._stop_requested = True
        try:
            self.set_shutdown_requested_date()  # for `rq info`; Redis may be the trouble
        except RedisError as exc:
            log.warning("stop requested; could not record it in Redis (%s)", exc)
        if self.scheduler:
            self.stop_scheduler()

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """The next job, waited for in polls of `POLL_S` (None after `max_idle_time`);
        StopRequested once a stop is asked. With no timeout (burst), RQ's own single look, once
        the database answers."""
        if timeout is None:
            self._wait_for_the_database()
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        self.set_state(WorkerStatus.IDLE)
        self.procline("Listening on " + ",".join(self.queue_names()))
        idle_since = time.monotonic()
        while not self._stop_requested:
            if max_idle_time is not None and time.monotonic() - idle_since >= max_idle_time:
                return None
            if result := self._poll():
                return result
        raise StopRequested

    def _wait_for_the_database(self) -> None:
        """Until the database answers, take no job (a burst worker's wait, which the polls
        make for a worker that waits for jobs): RQ's single look took every job of the
        queues in an outage, each failed at once and spent a retry. StopRequested once a stop
        is asked."""
        while not self.database.answers():
            if self._stop_requested:
                raise StopRequested
            self.heartbeat()  # registered while it waits, as a polling worker is
            if self.should_run_maintenance_tasks:
                self.run_maintenance_tasks()
            time.sleep(POLL_S)

    def _poll(self) -> tuple[Job, Queue] | None:
        """One wait of at most POLL_S for a job, as RQ's loop makes it (heartbeat, maintenance,
        pop); None when none came, Redis cannot be reached or the database is away (retried at
        the next poll)."""
        try:
            self.heartbeat()
            if self.should_run_maintenance_tasks:
                self.run_maintenance_tasks()
            if not self.database.answers():
                time.sleep(POLL_S)
                return None
            result = self.queue_class.dequeue_any(
                self._ordered_queues,
                POLL_S,
                connection=self.connection,
                job_class=self.job_class,
                serializer=self.serializer,
                death_penalty_class=self.death_penalty_class,
            )
        except DequeueTimeout:
            self._redis_answers()
            return None
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self._redis_unreachable(exc)
            time.sleep(POLL_S)
            return None
        self._redis_answers()
        if result is not None:
            job, queue = result
            self.reorder_queues(reference_queue=queue)
            job.redis_server_version = self.get_redis_server_version()
            log.info("worker %s: %s: %s", self.name, queue.name, job.id)
            self.heartbeat()
        return result

    def _redis_unreachable(self, exc: Exception) -> None:
        """Log a poll that could not reach Redis: the first, then one a minute. Each poll was
        a line, and RQ's pubsub thread added one every 2 s: 5,400 lines an hour of outage."""
        now = time.monotonic()
        if self.redis_away_since is None:
            self.redis_away_since = now
        elif now - self._redis_said_at < REPEAT_LOG_S:
            return
        log.error("worker: cannot reach Redis (%s); retrying every %d s", exc, POLL_S)
        self._redis_said_at = now

    def _redis_answers(self) -> None:
        if self.redis_away_since is not None:
            away_s = time.monotonic() - self.redis_away_since
            log.info("worker: Redis answers again after %.0f s", away_s)
            self.redis_away_since = None

    def _pubsub_exception_handler(self, exc: Exception, *args: Any) -> None:
        """RQ's pubsub thread (commands sent to this worker) retries a lost Redis every 2 s,
        each time with an ERROR line: the polls say it once a minute instead."""
        if isinstance(exc, RedisConnectionError):
            time.sleep(2.0)
            return
        super()._pubsub_exception_handler(exc, *args)


def wait_for_the_database(
    settings: Settings,
    *,
    retry_s: float = START_RETRY_S,
    who: str = "worker",
    before: str = "taking jobs",
) -> None:
    """Return once the database server answers (its schema upgraded), as a worker waits after a
    job failed for want of it; a SIGTERM or SIGINT meanwhile ends the process (exit 0).

    Started during an outage, the worker exited 2 ("cannot open the database") and left it to
    its supervisor to start it again and again (4 restarts in 25 s in a QA run; `tagflow up`
    backs off up to a minute, so the worker came back up to a minute after the database).
    Only an outage is waited for: any other error, a configuration refusal included (a wrong
    password, no such database: `configuration_refusal`), is left to the caller's check, which
    names it with exit code 2, and so is SQLite, whose outages at start are a path that cannot
    be opened (a configuration error) or a lock, which its busy timeout waits for already.
    Said once, then every REPEAT_LOG_S while it lasts, by `who` (`tagflow up` waits the same
    way, `before` starting anything)."""
    url = settings.resolved_database_url
    if make_url(url).get_backend_name() == "sqlite":
        return
    configure_logging(settings)
    started = time.monotonic()
    said_at: float | None = None
    with stop_signals_as_exit() as stop:
        while True:
            stop.check()  # a stop whose exception was lost (see StopRequest) ends the wait
            engine = make_engine(url)
            try:
                init_db(engine)
            except SQLAlchemyError as exc:
                if not is_outage_to_wait_for(exc):
                    return
                reason = exception_line(exc)
                now = time.monotonic()
                if said_at is None:
                    log.error(
                        "%s: the database is unavailable (%s); waiting for it before %s "
                        "(tried every %g s)",
                        who,
                        reason,
                        before,
                        retry_s,
                    )
                    said_at = now
                elif now - said_at >= REPEAT_LOG_S:
                    log.error(
                        "%s: still waiting for the database after %.0f s (%s)",
                        who,
                        now - started,
                        reason,
                    )
                    said_at = now
            else:
                if said_at is not None:
                    log.info(
                        "%s: the database answers after %.0f s; starting",
                        who,
                        time.monotonic() - started,
                    )
                return
            finally:
                engine.dispose()
            time.sleep(retry_s)


def context_once_the_database_answers(
    settings: Settings, *, wait: Callable[[Settings], None] = wait_for_the_database
) -> JobContext:
    """The worker's job context, its database upgraded; a PostgreSQL server found away here
    is waited for (`wait`), as at the start-up check, and the context built again once it
    answers. The server may go between that check and this: the worker exited 2 ("the
    database is unavailable ...; try again"), which `tagflow up` takes for a configuration
    error and stops on. Any other error, a configuration refusal included, is raised."""
    while True:
        try:
            return JobContext(settings)
        except SQLAlchemyError as exc:
            if not is_server_away(settings.resolved_database_url, exc):
                raise
            log.error(
                "worker: the database went away before the worker started (%s); waiting for it",
                exception_line(exc),
            )
        wait(settings)


def run(settings: Settings, *, burst: bool = False) -> None:
    """Work until stopped (or until the queues are empty, with `burst`).

    A SimpleWorker runs jobs in this process, so the encoder and database engine are loaded
    once rather than in a fresh fork per job; this one stops only between jobs (`Worker`).
    """
    configure_logging(settings)
    if not settings.redis_url:
        raise SystemExit("TAGFLOW_REDIS_URL is not set")
    # Before any job, and before RQ forks its scheduler, which inherits the niceness.
    take_back_seat(niceness=settings.worker_nice, threads=settings.worker_threads)
    use_context(context_once_the_database_answers(settings))
    # RQ forks its scheduler from this process (multiprocessing, fork): armed in the child, it
    # stops when this worker dies, even by SIGKILL, instead of running on under init holding
    # the scheduler lock (and the worker's stdout, so a reader of it never saw the end).
    os.register_at_fork(after_in_child=die_with_parent())
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=REDIS_TIMEOUT_S)
    queues = [Queue(name, connection=redis) for name in (LABELING_QUEUE, TRAINING_QUEUE)]
    try:
        worker = Worker(queues, connection=redis, maintenance_interval=MAINTENANCE_S)
        # The queues in turn, not labelling first: under a load whose review items the worker
        # could not keep up with (a QA run at ~370 req/s on two cores: 349 labelling jobs
        # queued), a retraining queued behind them had not started after 7 minutes. In turn,
        # a job of one queue waits for at most one job of the other.
        worker.work(burst=burst, with_scheduler=True, dequeue_strategy=DequeueStrategy.ROUND_ROBIN)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        # RQ retries while it waits for jobs; this is Redis gone (or hung) in the middle of a
        # job's bookkeeping (an outage, or `tagflow up` killed outright: its Redis stops with it).
        # RQ has logged the details; one line and a failure exit, for a supervisor to restart.
        log.error("worker stopped: lost its Redis connection (%s)", exc)
        raise SystemExit(1) from None
