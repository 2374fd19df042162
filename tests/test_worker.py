"""`tagflow worker`: stopped between jobs only, and as a process against a Redis that goes
away while it runs a job."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import typer
from redis import Redis
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from service.cli.common import preflight_or_exit
from service.config import Settings
from service.crud.predictions import save_predictions
from service.db import make_engine
from service.entities import PredictionStatus
from service.entities.review import ReviewTask
from service.outbox import LABELING_QUEUE, REVIEW_RETRY, TRAINING_QUEUE, relay
from service.redis_server import EmbeddedRedis
from service.retention import PRUNE_JOB
from tests.conftest import MISCONFIGURED_POSTGRES, POSTGRES_URL, ROOT, make_prediction
from tests.freezable_proxy import FreezableProxy
from tests.held_job import HELD_JOB
from tests.postgres_away import DatabaseComesBack, refused_postgres_url
from tests.waiting import wait_until
from workers.context import JobContext, use_context
from workers.worker import (
    CLAIM_TTL_S,
    POLL_S,
    REDIS_TIMEOUT_S,
    Worker,
    context_once_the_database_answers,
)


@pytest.fixture
def restored_signals() -> Iterator[None]:
    """The worker installs its SIGINT/SIGTERM handlers in this (pytest's) process."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def watchdog(restored_signals: None) -> Iterator[None]:
    """A worker that does not stop is stopped cold after 30 s (two signals: RQ takes a second
    one as "now"), so that the test fails instead of hanging the suite."""

    def force() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1.5)  # RQ ignores a second signal within a second of the first
        os.kill(os.getpid(), signal.SIGTERM)

    timer = threading.Timer(30, force)
    timer.start()
    yield
    timer.cancel()


class _StoppedAfterPop(Worker):
    """The worker, sent SIGTERM between popping a job and starting it, where a stop of
    `tagflow up` can land."""

    def reorder_queues(self, reference_queue: Queue) -> None:  # called right after the pop
        os.kill(os.getpid(), signal.SIGTERM)
        super().reorder_queues(reference_queue)


def _wait_until_idle(url: str, worker: subprocess.Popen[str]) -> None:
    """Until the worker waits for jobs: in the polls that retry a lost Redis. Registered is
    not enough: RQ's own loop (its suspension check) still runs once after that, and a Redis
    lost there ends the worker ("lost its Redis connection", exit 1), which made a test flaky."""
    connection = Redis.from_url(url)
    deadline = time.monotonic() + 60
    while b"idle" not in [connection.hget(k, "state") for k in connection.keys("rq:worker:*")]:
        assert time.monotonic() < deadline and worker.poll() is None, "never started"
        time.sleep(0.1)
    connection.close()


def start_worker(cli_env: dict[str, str], *, redis_url: str) -> subprocess.Popen[str]:
    """`tagflow worker` as its own process on `redis_url`, its output on one pipe."""
    env = {**os.environ, **cli_env, "HF_HUB_OFFLINE": "1", "TAGFLOW_REDIS_URL": redis_url}
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_stop_between_popping_a_job_and_starting_it_runs_the_job_first(
    redis_conn: Redis, watchdog: None
) -> None:
    """RQ's own worker stopped there at once: the job was in no queue and no registry, lost."""
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    job = queue.enqueue("time.sleep", 0)
    _StoppedAfterPop([queue], connection=redis_conn).work()  # not burst: only a stop ends it
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert len(queue) == 0


def test_an_idle_worker_still_stops_promptly(redis_conn: Redis, watchdog: None) -> None:
    """Waiting for a job polls every POLL_S seconds instead of blocking for RQ's 405 s."""
    worker = Worker([Queue(LABELING_QUEUE, connection=redis_conn)], connection=redis_conn)
    signalled: list[float] = []

    def stop_once_idle() -> None:
        # Once it waits for jobs: a SIGTERM before work() installed its handler would end
        # pytest itself (a fixed 0.5 s was a guess at how long that takes).
        wait_until(
            lambda: redis_conn.hget(worker.key, "state") == b"idle", what="the worker to wait"
        )
        signalled.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_once_idle, daemon=True).start()
    worker.work()
    assert signalled and time.monotonic() - signalled[0] < POLL_S + 10
    idle = Worker([Queue(LABELING_QUEUE, connection=redis_conn)], connection=redis_conn)
    started = time.monotonic()
    assert idle.work(max_idle_time=2) is False  # idle that long: it ends, as RQ's does
    assert 2 <= time.monotonic() - started < 2 + POLL_S + 10


def test_a_worker_stops_on_sigterm_while_redis_is_away(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """RQ's own wait retries a lost Redis without end and never looks at a stop: a worker
    whose Redis had gone (`tagflow up` killed outright) ran on. Now it stops within a poll."""
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    worker = start_worker(cli_env, redis_url=url)
    try:
        _wait_until_idle(url, worker)
        output = _read_into(worker)
        server.stop()
        _wait_for(output, "cannot reach Redis", worker, within_s=60)  # it is retrying Redis now
        worker.terminate()
        worker.wait(timeout=30)
    finally:
        server.stop()
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    text = "".join(output)
    assert worker.returncode in (0, 1), text[-3000:]
    assert "╭" not in text  # no rich traceback box from the CLI


def test_a_redis_outage_is_a_line_a_minute_in_the_workers_log(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """An idle worker whose Redis had stopped logged `cannot reach Redis` at every poll (each
    second), and RQ's pubsub thread `could not connect to Redis instance` every 2 s: 5,400
    ERROR lines an hour. Now a line when it starts (then one a minute), one when it ends."""
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    worker = start_worker(cli_env, redis_url=url)
    output = _read_into(worker)
    try:
        _wait_until_idle(url, worker)
        server.stop()
        _wait_for(output, "cannot reach Redis", worker, within_s=60)
        time.sleep(5)  # five polls and two of the pubsub thread's retries, all failing
        away = "".join(output)
        assert away.count("cannot reach Redis") == 1, away[-3000:]
        assert "could not connect to Redis instance" not in away, away[-3000:]
        back = EmbeddedRedis(tmp_path / "redis", port=server.port)
        back.password = server.password
        back.start()
        try:
            _wait_for(output, "worker: Redis answers again after", worker, within_s=60)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            back.stop()
    finally:
        server.stop()
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_a_worker_stops_on_sigterm_while_redis_hangs(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """A Redis that hangs (stopped, its host cut off without a reset) answered nothing and
    refused nothing: the worker waited in silence, RQ's socket timeout being 415 s, and a
    SIGTERM waited too (its handler writes to Redis), while `tagflow up` and compose's grace
    period waited for the worker. Each command now gives up after REDIS_TIMEOUT_S."""
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    assert server.process is not None
    worker = start_worker(cli_env, redis_url=url)
    try:
        _wait_until_idle(url, worker)
        server.process.send_signal(signal.SIGSTOP)  # hung: connections open, no answer
        time.sleep(2 * POLL_S)
        worker.terminate()
        stopping = time.monotonic()
        output, _ = worker.communicate(timeout=5 * REDIS_TIMEOUT_S + 60)
        took = time.monotonic() - stopping
    finally:
        server.process.send_signal(signal.SIGCONT)
        server.stop()
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode in (0, 1), output[-3000:]
    # About 2 * REDIS_TIMEOUT_S here (the stop's write to Redis, then the blocked poll); the
    # bound leaves a busy machine room, and RQ's own socket timeout (415 s) stays far past it.
    assert took < 5 * REDIS_TIMEOUT_S, output[-3000:]
    assert "cannot reach Redis" in output
    assert "╭" not in output  # no rich traceback box from the CLI


def test_a_worker_that_loses_redis_mid_job_stops_with_one_line(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Redis gone in the middle of a job (an outage, or `tagflow up` killed outright): RQ
    logs what it lost; the worker ends with one line and exit 1 for a supervisor to restart,
    not with the CLI's page-long traceback."""
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    worker: subprocess.Popen[str] | None = None
    try:
        release = tmp_path / "release"
        job = Queue(LABELING_QUEUE, connection=Redis.from_url(url)).enqueue(HELD_JOB, str(release))
        worker = start_worker(cli_env, redis_url=url)
        _wait_started(job, worker)
        server.stop()  # while the job runs: it cannot have ended yet, however slow the machine
        release.touch()
        output, _ = worker.communicate(timeout=60)
    finally:
        server.stop()
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 1, output[-3000:]
    assert "worker stopped: lost its Redis connection" in output
    assert "Traceback (most recent call last)" not in output.split("worker stopped:")[-1]
    assert "╭" not in output  # no rich traceback box from the CLI


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_worker_stopped_during_a_job_finishes_it_and_exits_0(
    stop: signal.Signals,
    cli_env: dict[str, str],
    test_redis_url: str,
    redis_conn: Redis,
    tmp_path: Path,
) -> None:
    """`tagflow worker` as a supervisor stops it: the job it runs is finished, and the stop is
    a clean one (exit 0), which systemd, Docker or Kubernetes do not report as a failure."""
    release = tmp_path / "release"
    job = Queue(LABELING_QUEUE, connection=redis_conn).enqueue(HELD_JOB, str(release))
    worker = start_worker(cli_env, redis_url=test_redis_url)
    try:
        _wait_started(job, worker)
        worker.send_signal(stop)
        # The stop heard (recorded on the worker's key) while the job still runs, held until
        # released: a job of a few seconds could end first and the test pass untested.
        wait_until(
            lambda: (
                any(
                    redis_conn.hexists(key, "shutdown_requested_date")
                    for key in redis_conn.smembers("rq:workers")
                )
                or worker.poll() is not None
            ),
            what="the worker to hear the stop",
        )
        assert worker.poll() is None, "the worker left its job to run unfinished"
        assert job.get_status(refresh=True) == JobStatus.STARTED
        release.touch()
        output, _ = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, output[-3000:]
    assert job.get_status(refresh=True) == JobStatus.FINISHED


def _wait_started(job: Job, worker: subprocess.Popen[str]) -> None:
    """Until `worker` has started `job` (AssertionError if it exits first or never does)."""
    deadline = time.monotonic() + 60
    while job.get_status(refresh=True) != JobStatus.STARTED:
        assert time.monotonic() < deadline and worker.poll() is None, "the job never started"
        time.sleep(0.05)


def test_a_killed_workers_job_is_retried_within_a_claim(
    cli_env: dict[str, str], test_redis_url: str, redis_conn: Redis
) -> None:
    """A worker killed outright (kill -9, the OOM killer) in the middle of a job: the next
    worker's maintenance retries the job once its claim lapses (CLAIM_TTL_S), not once its
    whole timeout has passed (RQ's SimpleWorker: 11 minutes for a labelling job, 31 for a
    retraining, the job "started" all along)."""
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    job = queue.enqueue("time.sleep", 60, retry=Retry(max=1), job_timeout=600)
    worker = start_worker(cli_env, redis_url=test_redis_url)
    try:
        _wait_started(job, worker)
        forked = psutil.Process(worker.pid).children()  # RQ's scheduler
    finally:
        worker.kill()
        worker.communicate(timeout=30)
    # The scheduler dies with its worker, not left running under init with the lock.
    assert forked, "the worker started no scheduler"
    _, alive = psutil.wait_procs(forked, timeout=10)
    assert not alive, f"left running after the worker was killed: {alive}"
    # What the next worker's maintenance sees once the claim has lapsed.
    StartedJobRegistry(queue=queue).cleanup(timestamp=time.time() + CLAIM_TTL_S + 1)
    assert job.get_status(refresh=True) in (JobStatus.QUEUED, JobStatus.SCHEDULED)
    job.refresh()
    assert job.retries_left == 0


def test_a_running_job_keeps_its_claim_past_its_ttl(
    redis_conn: Redis, restored_signals: None, tmp_path: Path
) -> None:
    """Its worker renews the claim while the job runs: maintenance (here, of the same Redis,
    from another thread) never takes a job from a live worker, however long it runs."""
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    release = tmp_path / "release"
    job = queue.enqueue(HELD_JOB, str(release), retry=Retry(max=1))
    worker = Worker([queue], connection=redis_conn, claim_ttl_s=2, renew_s=0.5)
    seen: list[JobStatus | None] = []

    def maintain_later() -> None:
        try:
            wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED, what="the job")
            time.sleep(3)  # the job has run past its first claim's 2 s (held until released)
            StartedJobRegistry(queue=queue).cleanup()
            seen.append(job.get_status(refresh=True))
        finally:
            release.touch()

    checker = threading.Thread(target=maintain_later)
    checker.start()
    worker.work(burst=True)
    checker.join()
    assert seen == [JobStatus.STARTED]
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert job.retries_left == 1  # never retried


def test_jobs_wait_with_their_retries_while_the_database_is_away(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    redis_conn: Redis,
    caplog: pytest.LogCaptureFixture,
    watchdog: None,
) -> None:
    """Taken during an outage, every labelling job failed at once and spent a retry: an outage
    of 13 minutes put them all in the failed registry. Now the first spends one, and the worker
    takes no other until the database answers."""
    caplog.set_level(logging.INFO, logger="workers.worker")
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    with Session(engine) as session:
        for title in ("Unsure first", "Unsure second"):  # one job each
            save_predictions(
                session, predictions=[make_prediction(title, status=PredictionStatus.REVIEW)]
            )
            assert relay(session, queue=queue) == 1
    first, second = queue.get_jobs()
    context = JobContext(make_settings(database_url=database_url))
    up = context.engine
    context.engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/test")  # refused
    use_context(context)
    try:
        worker = Worker([queue], connection=redis_conn)
        worker.work(max_idle_time=2)  # takes the first, then waits: no job until it answers
        first.refresh()
        second.refresh()
        assert first.get_status() == JobStatus.SCHEDULED
        assert first.retries_left == REVIEW_RETRY.max - 1
        assert second.get_status() == JobStatus.QUEUED
        assert second.retries_left == REVIEW_RETRY.max and queue.job_ids == [second.id]
        assert "no job is taken until it answers" in caplog.text

        context.engine.dispose()
        context.engine = up  # the database is back
        worker.work(max_idle_time=2)
    finally:
        use_context(None)
        up.dispose()
    assert second.get_status(refresh=True) == JobStatus.FINISHED
    assert "the database answers again" in caplog.text
    with Session(engine) as session:
        assert [t.title for t in session.exec(select(ReviewTask))] == ["Unsure second"]


def test_a_burst_worker_waits_for_the_database_too(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    redis_conn: Redis,
    caplog: pytest.LogCaptureFixture,
    watchdog: None,
) -> None:
    """`tagflow worker --burst` took RQ's own single look for each job, with no look at the
    database: in an outage it took every job, each failed at once and spent a retry. Now it
    waits for the database as the worker that polls does, then empties its queues."""
    caplog.set_level(logging.INFO, logger="workers.worker")
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    with Session(engine) as session:
        for title in ("Unsure first", "Unsure second"):  # one job each
            save_predictions(
                session, predictions=[make_prediction(title, status=PredictionStatus.REVIEW)]
            )
            assert relay(session, queue=queue) == 1
    first, second = queue.get_jobs()
    context = JobContext(make_settings(database_url=database_url))
    up = context.engine
    down = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/test")  # refused
    context.engine = down
    use_context(context)

    back_at: list[float] = []

    def back() -> None:
        # The database answers again a few seconds after the first job met the outage (seen,
        # not guessed: on a busy machine the worker may take that long to take it at all).
        wait_until(lambda: first.get_status(refresh=True) == JobStatus.SCHEDULED, what="it")
        time.sleep(3)  # the worker waits through a few probes, the second job in its queue
        back_at.append(time.monotonic())
        context.engine = up

    restorer = threading.Thread(target=back, daemon=True)
    restorer.start()
    try:
        Worker([queue], connection=redis_conn).work(burst=True)
        ended_at = time.monotonic()
    finally:
        restorer.join(timeout=60)
        use_context(None)
        down.dispose()
        up.dispose()
    first.refresh()
    assert first.get_status() == JobStatus.SCHEDULED  # the one that met the outage
    assert first.retries_left == REVIEW_RETRY.max - 1
    assert second.get_status(refresh=True) == JobStatus.FINISHED, "taken in the outage"
    second.refresh()
    assert second.retries_left == REVIEW_RETRY.max
    assert back_at and ended_at > back_at[0]  # it waited instead of ending with jobs left
    assert "the database answers again" in caplog.text
    with Session(engine) as session:
        assert [t.title for t in session.exec(select(ReviewTask))] == ["Unsure second"]


def test_a_probe_error_that_is_no_outage_keeps_the_worker_waiting(
    make_settings: Callable[..., Settings],
    sqlite_engine: Engine,
    tmp_path: Path,
    redis_conn: Redis,
    caplog: pytest.LogCaptureFixture,
    watchdog: None,
) -> None:
    """The database found away, the worker's probe met an error that is not an outage (here
    a file that is not a database, as a botched restore leaves): raised into RQ's loop, it
    ended the worker ("found an unhandled exception, quitting", exit 0, so a supervisor that
    restarts on failure left it stopped, and the jobs waited for nobody). Now it is logged
    once and the worker goes on waiting, then takes the jobs once the database answers."""
    caplog.set_level(logging.INFO)
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    with Session(sqlite_engine) as session:
        for title in ("Unsure first", "Unsure second"):  # one job each
            save_predictions(
                session, predictions=[make_prediction(title, status=PredictionStatus.REVIEW)]
            )
            assert relay(session, queue=queue) == 1
    first, second = queue.get_jobs()
    context = JobContext(make_settings(database_url=str(sqlite_engine.url)))
    up = context.engine
    refused = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/test")
    garbage = tmp_path / "restored.db"
    garbage.write_bytes(b"not a database, " * 512)
    broken = make_engine(f"sqlite:///{garbage}")
    context.engine = refused  # the first job meets an outage
    use_context(context)

    def refusals() -> list[logging.LogRecord]:
        return [r for r in list(caplog.records) if "file is not a database" in r.getMessage()]

    def swap() -> None:
        # Each swap once the worker is seen at the step before, not after a guessed time.
        wait_until(lambda: first.get_status(refresh=True) == JobStatus.SCHEDULED, what="it")
        context.engine = broken
        wait_until(refusals, what="the probe to meet the broken file")
        time.sleep(3)  # a few more probes meet it: logged once, not at each
        context.engine = up

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    try:
        Worker([queue], connection=redis_conn).work(max_jobs=2)  # the failed one, then one more
    finally:
        swapper.join(timeout=60)
        use_context(None)
        for each in (refused, broken, up):
            each.dispose()
    assert first.get_status(refresh=True) == JobStatus.SCHEDULED
    assert second.get_status(refresh=True) == JobStatus.FINISHED, "the worker stopped"
    assert "found an unhandled exception" not in caplog.text
    assert len(refusals()) == 1, "logged once, not at every poll"
    assert "the database answers again" in caplog.text


def _wait_for(
    output: list[str], text: str, worker: subprocess.Popen[str], *, within_s: float
) -> None:
    """Until `text` is in the worker's output (read on a thread into `output`)."""
    deadline = time.monotonic() + within_s
    while not any(text in line for line in output):
        assert time.monotonic() < deadline, "".join(output)[-3000:]
        assert worker.poll() is None, "".join(output)[-3000:]
        time.sleep(0.1)


def _read_into(worker: subprocess.Popen[str]) -> list[str]:
    output: list[str] = []
    assert worker.stdout is not None
    threading.Thread(target=lambda: output.extend(worker.stdout), daemon=True).start()  # type: ignore[arg-type]
    return output


def test_a_worker_started_while_the_database_is_down_waits_and_stops_on_sigterm(
    cli_env: dict[str, str], test_redis_url: str
) -> None:
    """Started while its PostgreSQL refused connections, `tagflow worker` exited 2 ("cannot
    open the database") for its supervisor to start it again and again. Now it says so once
    and waits, and a SIGTERM meanwhile stops it (exit 0)."""
    url, _ = refused_postgres_url()
    worker = start_worker({**cli_env, "TAGFLOW_DATABASE_URL": url}, redis_url=test_redis_url)
    output = _read_into(worker)
    try:
        _wait_for(output, "waiting for it before taking jobs", worker, within_s=60)
        time.sleep(3)  # a retry or two: still waiting, said once
        assert worker.poll() is None, "".join(output)[-3000:]
        worker.terminate()
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    text = "".join(output)
    assert worker.returncode == 0, text[-3000:]
    assert "cannot open the database" not in text
    assert text.count("the database is unavailable") == 1, text[-3000:]


def test_a_worker_started_while_the_database_is_down_starts_once_it_answers(
    cli_env: dict[str, str], test_redis_url: str, redis_conn: Redis
) -> None:
    """The database comes up (here: a proxy to the test PostgreSQL starts listening on the
    refused port): the worker starts and waits for jobs, without a restart."""
    url, port = refused_postgres_url()
    worker = start_worker({**cli_env, "TAGFLOW_DATABASE_URL": url}, redis_url=test_redis_url)
    output = _read_into(worker)
    proxy: FreezableProxy | None = None
    try:
        _wait_for(output, "waiting for it before taking jobs", worker, within_s=60)
        target = make_url(POSTGRES_URL)
        proxy = FreezableProxy(target.host or "127.0.0.1", target.port or 5432, listen_on=port)
        _wait_for(output, "the database answers after", worker, within_s=30)
        deadline = time.monotonic() + 60
        while b"idle" not in [redis_conn.hget(k, "state") for k in redis_conn.keys("rq:worker:*")]:
            assert time.monotonic() < deadline and worker.poll() is None, "".join(output)[-3000:]
            time.sleep(0.1)
        worker.terminate()
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if proxy is not None:
            proxy.close()
    assert worker.returncode == 0, "".join(output)[-3000:]


def test_a_database_gone_between_the_workers_wait_and_its_check_is_waited_for_again(
    make_settings: Callable[..., Settings],
) -> None:
    """The worker's start-up check connected once its wait returned: a server gone in between
    was "cannot open the database", exit 2, which `tagflow up` takes for a configuration
    error and stops on. Now it waits again, and the check passes once the server is back."""
    url, port = refused_postgres_url()
    wait = DatabaseComesBack(port, after=1)
    try:
        preflight_or_exit(make_settings(database_url=url), action="work", before_database=wait)
    finally:
        wait.close()
    assert wait.calls == 2 and wait.proxy is not None


@pytest.mark.parametrize(("url", "reason"), MISCONFIGURED_POSTGRES)
def test_a_configuration_refusal_at_the_workers_check_is_still_exit_2(
    make_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
    url: str,
    reason: str,
) -> None:
    """Waiting again is for an outage only: a refusal no wait cures stays one line, exit 2."""
    wait = DatabaseComesBack(1, after=1)
    with pytest.raises(typer.Exit) as exited:
        preflight_or_exit(make_settings(database_url=url), action="work", before_database=wait)
    assert exited.value.exit_code == 2 and wait.calls == 1
    assert f"refused the connection: {reason}" in capsys.readouterr().err


def test_a_database_gone_when_the_worker_builds_its_context_is_waited_for(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """After its check, the worker upgrades the database again as it builds its job context:
    a server gone by then was "the database is unavailable ...; try again", exit 2, which
    `tagflow up` stops on. Now it waits for the server, then builds the context."""
    caplog.set_level(logging.ERROR, logger="workers.worker")
    url, port = refused_postgres_url()
    wait = DatabaseComesBack(port, after=0)
    try:
        context = context_once_the_database_answers(make_settings(database_url=url), wait=wait)
        try:
            with context.engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar() == 1
        finally:
            context.engine.dispose()
    finally:
        wait.close()
    assert wait.calls == 1
    said = [r.getMessage() for r in caplog.records if r.name == "workers.worker"]
    assert len(said) == 1 and "the database went away before the worker started" in said[0]


@pytest.mark.parametrize(("url", "reason"), MISCONFIGURED_POSTGRES)
def test_a_configuration_refusal_when_the_worker_builds_its_context_is_raised(
    make_settings: Callable[..., Settings], url: str, reason: str
) -> None:
    """Not waited for: raised, for the command's line and exit code 2."""
    wait = DatabaseComesBack(1, after=1)
    with pytest.raises(OperationalError, match=reason):
        context_once_the_database_answers(make_settings(database_url=url), wait=wait)
    assert wait.calls == 0


@pytest.mark.parametrize(("url", "reason"), MISCONFIGURED_POSTGRES)
def test_a_worker_started_on_a_misconfigured_database_exits_2_at_once(
    cli_env: dict[str, str], test_redis_url: str, url: str, reason: str
) -> None:
    """A database or role that does not exist reaches psycopg as an OperationalError without
    SQLSTATE, as a refused port does: the worker took it for an outage and waited for good,
    saying `the database is unavailable` once a minute. Now one line naming the database (no
    password) and the server's reason, exit 2, as a bad setting is."""
    worker = start_worker({**cli_env, "TAGFLOW_DATABASE_URL": url}, redis_url=test_redis_url)
    try:
        output, _ = worker.communicate(timeout=30)  # a waiting worker never ends by itself
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 2, output[-3000:]
    shown = make_url(url).render_as_string(hide_password=True)
    assert f"the database at {shown} refused the connection: {reason}" in output, output
    assert "s3cret-pw" not in output
    assert "unavailable" not in output and "waiting" not in output, output[-3000:]


@pytest.mark.parametrize(("url", "reason"), MISCONFIGURED_POSTGRES)
def test_a_running_worker_whose_database_refuses_it_for_good_exits_2(
    make_settings: Callable[..., Settings],
    sqlite_engine: Engine,
    redis_conn: Redis,
    caplog: pytest.LogCaptureFixture,
    watchdog: None,
    url: str,
    reason: str,
) -> None:
    """The database dropped, or the role, under a running worker: the first job to meet it
    spends one retry as in an outage, and the worker's check then stops it with exit 2 and a
    line saying why (it waited without end, registered and idle, doing nothing), the other
    jobs left in their queue with their retries for a worker that can use the database."""
    caplog.set_level(logging.INFO)
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    with Session(sqlite_engine) as session:
        for title in ("Unsure first", "Unsure second"):  # one job each
            save_predictions(
                session, predictions=[make_prediction(title, status=PredictionStatus.REVIEW)]
            )
            assert relay(session, queue=queue) == 1
    first, second = queue.get_jobs()
    context = JobContext(make_settings(database_url=str(sqlite_engine.url)))
    up = context.engine
    refusing = make_engine(url)
    context.engine = refusing
    use_context(context)
    worker = Worker([queue], connection=redis_conn)
    try:
        with pytest.raises(SystemExit) as stopped:
            worker.work(max_idle_time=10)  # no job, no refusal: ends in 10 s, and fails below
    finally:
        use_context(None)
        refusing.dispose()
        up.dispose()
    assert stopped.value.code == 2
    assert first.get_status(refresh=True) == JobStatus.SCHEDULED
    first.refresh()
    assert first.retries_left == REVIEW_RETRY.max - 1
    assert second.get_status(refresh=True) == JobStatus.QUEUED
    second.refresh()
    assert second.retries_left == REVIEW_RETRY.max and queue.job_ids == [second.id]
    shown = make_url(url).render_as_string(hide_password=True)
    said = caplog.text
    assert f"the database at {shown} refused the connection: {reason}" in said, said[-3000:]
    assert "s3cret-pw" not in said
    # The job's own line says so too (it said "the database is unavailable").
    assert f"retried later: the database refused the connection ({reason})" in said, said[-3000:]
    assert "unavailable" not in said, said[-3000:]
    assert redis_conn.hexists(worker.key, "death"), "RQ's teardown: the worker is unregistered"


def test_a_prune_that_meets_a_held_lock_is_not_called_a_database_outage(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    redis_conn: Redis,
    caplog: pytest.LogCaptureFixture,
    watchdog: None,
) -> None:
    """The prune gives up a lock another transaction holds after its lock timeout (PostgreSQL's
    55P03), which counts as an outage for whoever retries it; the worker then logged "the
    database is unavailable ... no job is taken until it answers" and, a second later, "the
    database answers again after 1 s", of a database that never stopped answering. Now it
    says what happened and goes on taking jobs."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's lock_timeout")
    caplog.set_level(logging.INFO)
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    job = queue.enqueue(PRUNE_JOB, 30)
    context = JobContext(make_settings(database_url=database_url))
    use_context(context)
    holder = engine.connect()
    try:
        holder.exec_driver_sql("LOCK TABLE prediction IN ACCESS EXCLUSIVE MODE")
        worker = Worker([queue], connection=redis_conn)
        worker.work(burst=True)
    finally:
        holder.rollback()
        holder.close()
        use_context(None)
        context.engine.dispose()
    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert worker.database.down_since is None  # jobs go on being taken
    said = caplog.text
    assert "was not released within" in said  # retention's own line
    assert "the database is unavailable" not in said, said[-3000:]
    assert "the database answers again" not in said
    assert "lost to another transaction's lock" in said


def test_a_retraining_waits_for_one_labelling_job_not_the_whole_backlog(
    cli_env: dict[str, str], test_redis_url: str, redis_conn: Redis
) -> None:
    """`tagflow worker` took its queues in order, labelling first: with a backlog of review
    items it could not keep up with (a QA run at ~370 req/s: 349 labelling jobs queued), a
    retraining queued behind them had not started after 7 minutes. It takes them in turn."""
    labeling = Queue(LABELING_QUEUE, connection=redis_conn)
    backlog = [labeling.enqueue("time.sleep", 0.01) for _ in range(4)]
    retraining = Queue(TRAINING_QUEUE, connection=redis_conn).enqueue("time.sleep", 0.01)
    env = {**os.environ, **cli_env, "HF_HUB_OFFLINE": "1", "TAGFLOW_REDIS_URL": test_redis_url}
    worker = subprocess.run(
        [sys.executable, "-m", "service.cli", "worker", "--burst"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    jobs = [*backlog, retraining]
    for job in jobs:
        job.refresh()  # its started_at, as the worker recorded it
        assert job.get_status() == JobStatus.FINISHED, worker.stderr[-3000:]
    in_order = sorted(jobs, key=lambda job: job.started_at)
    assert in_order.index(retraining) == 1, [job.origin for job in in_order]
