"""Queueing a background job and reading its state, on the real Redis with a real RQ worker,
and its record in the database, which outlives a Redis restart.

The jobs here are standard-library functions, queued by dotted name as the API queues
`workers.*`: what is under test is the queueing and the state, not a job's work.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import Job
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from service.config import Settings
from service.entities import JobRecord
from service.entities.common import utcnow
from service.errors import NotFoundError, UnavailableError
from service.jobs import (
    MAX_SENDS,
    RESULT_TTL_S,
    STILL_RUNNING_S,
    JobListed,
    JobState,
    enqueue_job,
    error_line,
    job_ended,
    job_public,
    job_started,
    list_jobs,
    redeliver_lost_jobs,
)
from service.ml.training import TrainResult
from service.redis_server import EmbeddedRedis
from service.retention import PRUNE_KEY, maybe_enqueue_prune
from tests.conftest import auth, sqlite_app
from tests.test_outbox import restart_losing_everything
from workers.worker import Worker


def work(queue: Queue) -> None:
    Worker([queue], connection=queue.connection).work(burst=True)


def enqueue(engine: Engine, queue: Queue, func: str, *args: str, retries: int = 0) -> str:
    with Session(engine) as session:
        return enqueue_job(
            session, queue=queue, func=func, args=args, description=func, retries=retries
        )


def state(engine: Engine, conn: redis.Redis, job_id: str) -> tuple[JobState, object, str | None]:
    with Session(engine) as session:
        job = job_public(session, connection=conn, job_id=job_id)
    return job.status, job.result, job.error


def redeliver(engine: Engine, queue: Queue) -> int:
    with Session(engine) as session:
        return redeliver_lost_jobs(session, queue=queue)


def test_a_queued_job_then_its_result(sqlite_engine: Engine, redis_conn: redis.Redis) -> None:
    queue = Queue("jobs-test", connection=redis_conn)
    job_id = enqueue(sqlite_engine, queue, "posixpath.basename", "/data/seed.csv")
    assert state(sqlite_engine, redis_conn, job_id) == (JobState.QUEUED, None, None)
    job = Job.fetch(job_id, connection=redis_conn)
    assert job.description == "posixpath.basename" and job.result_ttl == RESULT_TTL_S
    with Session(sqlite_engine) as session:
        record = session.get(JobRecord, job_id)
        assert record is not None and record.args == ["/data/seed.csv"] and record.sends == 1

    work(queue)
    assert state(sqlite_engine, redis_conn, job_id) == (JobState.FINISHED, "seed.csv", None)


def test_a_job_redis_lost_is_queued_again_from_its_record(
    engine: Engine, own_redis: EmbeddedRedis
) -> None:
    """The machine's Redis keeps nothing on disk: a retraining queued by an admin and lost in
    a restart before a worker took it was gone (GET /jobs/{id}: 404) and never ran."""
    conn = redis.Redis.from_url(own_redis.url)
    queue = Queue("jobs-test", connection=conn)
    lost = enqueue(engine, queue, "posixpath.basename", "/data/lost.csv", retries=2)
    restart_losing_everything(own_redis)
    conn = redis.Redis.from_url(own_redis.url)
    queue = Queue("jobs-test", connection=conn)
    assert state(engine, conn, lost) == (JobState.QUEUED, None, None)  # from its record

    assert redeliver(engine, queue) == 1
    assert redeliver(engine, queue) == 0  # Redis has it again: not queued twice
    assert queue.job_ids == [lost]
    assert Job.fetch(lost, connection=conn).retries_left == 2
    work(queue)
    assert state(engine, conn, lost) == (JobState.FINISHED, "lost.csv", None)
    assert redeliver(engine, queue) == 0  # the end RQ recorded goes to the record too
    restart_losing_everything(own_redis)
    conn = redis.Redis.from_url(own_redis.url)
    assert state(engine, conn, lost) == (JobState.FINISHED, "lost.csv", None)
    assert redeliver(engine, Queue("jobs-test", connection=conn)) == 0
    with Session(engine) as session:
        record = session.get(JobRecord, lost)
        assert record is not None and record.sends == 2 and record.ended_at is not None
    conn.close()


def test_a_result_is_recorded_as_json_both_databases_store(
    engine: Engine, redis_conn: redis.Redis
) -> None:
    """PostgreSQL's json refuses NaN, which a metric of an empty set is: the worker's record
    of the job's end failed, and the job stayed `started` in its record."""
    job_id = enqueue(engine, Queue("jobs-test", connection=redis_conn), "posixpath.basename", "a")
    with Session(engine) as session:
        job_ended(session, job_id=job_id, result={"precision": float("nan"), "n": 0})
    assert state(engine, redis_conn, job_id) == (
        JobState.FINISHED,
        {"precision": None, "n": 0},
        None,
    )


def test_a_started_job_redis_lost_is_queued_again_once_it_cannot_still_run(
    sqlite_engine: Engine, own_redis: EmbeddedRedis
) -> None:
    """A worker that lost Redis in the middle of a job goes on running it; queued again at
    once, it would run twice (two candidates from one retraining)."""
    conn = redis.Redis.from_url(own_redis.url)
    job_id = enqueue(
        sqlite_engine, Queue("jobs-test", connection=conn), "posixpath.basename", "/d/run.csv"
    )
    with Session(sqlite_engine) as session:
        job_started(session, job_id=job_id)
    restart_losing_everything(own_redis)
    conn = redis.Redis.from_url(own_redis.url)
    queue = Queue("jobs-test", connection=conn)
    assert state(sqlite_engine, conn, job_id) == (JobState.STARTED, None, None)
    assert redeliver(sqlite_engine, queue) == 0 and queue.count == 0
    with Session(sqlite_engine) as session:
        record = session.get(JobRecord, job_id)
        assert record is not None
        record.started_at = utcnow() - timedelta(seconds=STILL_RUNNING_S + 1)
        session.add(record)
        session.commit()
    assert redeliver(sqlite_engine, queue) == 1
    assert state(sqlite_engine, conn, job_id) == (JobState.QUEUED, None, None)
    work(queue)
    assert state(sqlite_engine, conn, job_id) == (JobState.FINISHED, "run.csv", None)
    conn.close()


def test_a_job_redis_loses_again_and_again_is_sent_at_most_max_sends_times(
    sqlite_engine: Engine, own_redis: EmbeddedRedis
) -> None:
    """A job whose every run takes its worker and Redis down (the machine out of memory) was
    sent again after each loss, without end: after MAX_SENDS sends it is recorded as failed,
    with an error that says why, and not sent again."""
    conn = redis.Redis.from_url(own_redis.url)
    queue = Queue("jobs-test", connection=conn)
    job_id = enqueue(sqlite_engine, queue, "posixpath.basename", "/d/oom.csv", retries=2)
    sends = 1
    while True:
        with Session(sqlite_engine) as session:  # a worker took it, and died with Redis
            record = job_started(session, job_id=job_id)
            assert record is not None
            record.started_at = utcnow() - timedelta(seconds=STILL_RUNNING_S + 1)
            session.add(record)
            session.commit()
        conn.flushdb()  # our own Redis, lost with everything in it
        if redeliver(sqlite_engine, queue) == 0:
            break
        sends += 1
        assert queue.job_ids == [job_id] and sends <= MAX_SENDS
    assert sends == MAX_SENDS and queue.count == 0
    status, result, error = state(sqlite_engine, conn, job_id)
    assert (status, result) == (JobState.FAILED, None)
    assert error is not None and error.startswith(f"Redis lost this job {MAX_SENDS} times")
    assert redeliver(sqlite_engine, queue) == 0 and queue.count == 0  # failed: left alone
    conn.close()


def test_a_failed_job_reports_the_last_line_of_its_error(
    sqlite_engine: Engine, redis_conn: redis.Redis
) -> None:
    queue = Queue("jobs-test", connection=redis_conn)
    job_id = enqueue(sqlite_engine, queue, "math.sqrt", "nine")
    work(queue)
    with Session(sqlite_engine) as session:
        failed = job_public(session, connection=redis_conn, job_id=job_id)
    assert failed.status is JobState.FAILED and failed.result is None
    assert failed.error is not None and failed.error.startswith("TypeError:")
    assert "\n" not in failed.error


def test_the_error_line_is_the_exceptions_own() -> None:
    """A database error's traceback ends with its SQL and a documentation link, which is what
    a failed retraining reported while the database was down."""
    engine = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/test", connect_args={"connect_timeout": 2}
    )
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError:
        exc_info = traceback.format_exc()
    finally:
        engine.dispose()
    assert exc_info.strip().splitlines()[-1].startswith("(Background on this error at")
    line = error_line(exc_info)
    assert line.startswith("sqlalchemy.exc.OperationalError: (psycopg.OperationalError)"), line
    assert error_line("") == "the job failed without an error message"
    report = 'Traceback (most recent call last):\n  File "x.py", line 1, in f\n    g()\n'
    report += "service.ml.dataset.DatasetError: validation of d.csv: 3 rows read\nerror: line 2"
    assert error_line(report) == (
        "service.ml.dataset.DatasetError: validation of d.csv: 3 rows read\nerror: line 2"
    )


def test_an_unknown_job_is_not_found(sqlite_engine: Engine, redis_conn: redis.Redis) -> None:
    with pytest.raises(NotFoundError, match="does not exist"), Session(sqlite_engine) as session:
        job_public(session, connection=redis_conn, job_id="no-such-job")


def test_without_redis_queueing_and_reading_are_unavailable(
    sqlite_engine: Engine, redis_conn: redis.Redis
) -> None:
    # Port 1 is never a Redis: the connection is refused at once. Made as the service makes its
    # clients (from a URL, which sets no retries): redis-py's constructor default retries a
    # refused connection with backoff, 3-4 s a command here.
    down = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=2, socket_connect_timeout=2)
    with pytest.raises(UnavailableError, match="not queued"):
        enqueue(sqlite_engine, Queue("jobs-test", connection=down), "math.sqrt", "4")
    with Session(sqlite_engine) as session:
        assert not session.exec(select(JobRecord)).all()  # refused: nothing to wait for
        with pytest.raises(UnavailableError, match="state unknown"):
            job_public(session, connection=down, job_id="any")
    # A job with a record answers from it while Redis cannot be asked.
    queued = enqueue(sqlite_engine, Queue("jobs-test", connection=redis_conn), "math.sqrt", "4")
    assert state(sqlite_engine, down, queued) == (JobState.QUEUED, None, None)


def listed(engine: Engine, **filters: object) -> list[JobListed]:
    with Session(engine) as session:
        return list_jobs(session, **filters)  # type: ignore[arg-type]


def ran_three_and_queued_one(engine: Engine, queue: Queue) -> list[str]:
    """Three jobs run by a real worker (the second fails), then a fourth left queued; their
    ids, oldest first. These standard-library jobs do not record their end themselves, as the
    service's do: the API's redelivery check copies RQ's to their records."""
    ids = [
        enqueue(engine, queue, "posixpath.basename", "/d/first.csv"),
        enqueue(engine, queue, "math.sqrt", "nine"),
        enqueue(engine, queue, "posixpath.basename", "/d/third.csv"),
    ]
    work(queue)
    assert redeliver(engine, queue) == 0
    return [*ids, enqueue(engine, queue, "posixpath.basename", "/d/fourth.csv")]


def test_jobs_are_listed_newest_first_by_state_and_time(
    engine: Engine, redis_conn: redis.Redis
) -> None:
    """An admin could read one job by its id, and had no way to ask what ran last night and
    what failed."""
    queue = Queue("jobs-test", connection=redis_conn)
    first, failed, third, fourth = ran_three_and_queued_one(engine, queue)
    jobs = listed(engine)
    assert [j.job_id for j in jobs] == [fourth, third, failed, first]
    assert [j.status for j in jobs] == [
        JobState.QUEUED,
        JobState.FINISHED,
        JobState.FAILED,
        JobState.FINISHED,
    ]
    assert (jobs[1].result, jobs[1].error, jobs[1].description) == (
        "third.csv",
        None,
        "posixpath.basename",
    )
    assert jobs[1].ended_at is not None and jobs[0].ended_at is None
    [failure] = listed(engine, state=JobState.FAILED)
    assert failure.job_id == failed and (failure.error or "").startswith("TypeError:")
    assert [j.job_id for j in listed(engine, state=JobState.FINISHED)] == [third, first]
    assert [j.job_id for j in listed(engine, limit=2)] == [fourth, third]
    since = jobs[1].created_at
    assert [j.job_id for j in listed(engine, since=since)] == [fourth, third]
    # A time with another offset is the same instant.
    assert [j.job_id for j in listed(engine, since=since.astimezone())] == [fourth, third]
    assert listed(engine, since=utcnow() + timedelta(minutes=1)) == []


def test_get_jobs_lists_them_for_admins_only(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    seed_result: TrainResult,
    redis_conn: redis.Redis,
) -> None:
    queue = Queue("jobs-test", connection=redis_conn)
    # No watch round during the test: it would queue the unfinished job on its own queue.
    with sqlite_app(make_settings, tmp_path, seed_result, watch_interval_s=3600) as client:
        engine = client.app.state.tagflow.engine
        first, failed, third, fourth = ran_three_and_queued_one(engine, queue)
        answer = client.get("/jobs", headers=auth("admin"))
        assert answer.status_code == 200
        jobs = answer.json()["jobs"]
        assert [j["job_id"] for j in jobs] == [fourth, third, failed, first]
        assert jobs[1]["status"] == "finished" and jobs[1]["result"] == "third.csv"
        assert "error" not in jobs[1] and "result" not in jobs[0]
        assert set(jobs[1]) >= {"description", "created_at", "ended_at"}
        failures = client.get("/jobs?state=failed", headers=auth("admin")).json()["jobs"]
        assert [j["job_id"] for j in failures] == [failed]
        assert failures[0]["error"].startswith("TypeError:")
        newest = client.get("/jobs?limit=1", headers=auth("admin")).json()["jobs"]
        assert [j["job_id"] for j in newest] == [fourth]
        since = jobs[1]["created_at"]
        recent = client.get("/jobs", params={"since": since}, headers=auth("admin")).json()
        assert [j["job_id"] for j in recent["jobs"]] == [fourth, third]

        assert client.get("/jobs").status_code == 401
        for role in ("client", "reviewer", "metrics"):
            assert client.get("/jobs", headers=auth(role)).status_code == 403, role
        for query in ("state=lost", "state=FAILED", "limit=0", "limit=501", "since=yesterday"):
            refused = client.get(f"/jobs?{query}", headers=auth("admin"))
            assert refused.status_code == 422, query


def test_a_result_holding_a_lone_surrogate_is_shown_escaped(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    seed_result: TrainResult,
    redis_conn: redis.Redis,
) -> None:
    """A job's result recorded with a lone surrogate (a retraining whose base file's name was
    not UTF-8, run before that was refused) made GET /jobs a 500 for every job listed."""
    queue = Queue("jobs-test", connection=redis_conn)
    with sqlite_app(make_settings, tmp_path, seed_result, watch_interval_s=3600) as client:
        engine = client.app.state.tagflow.engine
        job_id = enqueue(engine, queue, "posixpath.basename", "a")
        with Session(engine) as session:
            job_ended(session, job_id=job_id, result={"source": "/data/caf\udce9.csv"})
        for path in ("/jobs", f"/jobs/{job_id}"):
            answer = client.get(path, headers=auth("admin"))
            assert answer.status_code == 200, answer.text
            shown = answer.json()["jobs"][0] if path == "/jobs" else answer.json()
            assert shown["result"] == {"source": "/data/caf\\udce9.csv"}


def test_an_automatic_job_redis_lost_is_recorded_failed_not_sent_again(
    sqlite_engine: Engine, own_redis: EmbeddedRedis
) -> None:
    """Its trigger queues the next (the prune's daily key is lost with the same Redis); sent
    again from its record as well, it would run twice."""
    conn = redis.Redis.from_url(own_redis.url)
    queue = Queue("jobs-test", connection=conn)
    with Session(sqlite_engine) as session:
        lost = maybe_enqueue_prune(session, queue=queue, retention_days=90)
    restart_losing_everything(own_redis)
    conn = redis.Redis.from_url(own_redis.url)
    queue = Queue("jobs-test", connection=conn)
    assert redeliver(sqlite_engine, queue) == 0 and queue.count == 0
    [record] = listed(sqlite_engine)
    assert (record.job_id, record.status) == (lost, JobState.FAILED)
    assert (record.error or "").startswith("Redis lost this job")
    assert not conn.exists(PRUNE_KEY)
    with Session(sqlite_engine) as session:
        again = maybe_enqueue_prune(session, queue=queue, retention_days=90)
    assert again not in (None, lost) and queue.job_ids == [again]
    assert [(j.job_id, j.status) for j in listed(sqlite_engine)] == [
        (again, JobState.QUEUED),
        (lost, JobState.FAILED),
    ]
    conn.close()
