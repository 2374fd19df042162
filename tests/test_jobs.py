"""Queueing a background job and reading its state, on the real Redis with a real RQ worker.

The jobs here are standard-library functions, queued by dotted name as the API queues
`workers.*`: what is under test is the queueing and the state, not a job's work.
"""

from __future__ import annotations

import traceback

import pytest
import redis
from rq import Queue
from rq.job import Job
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from service.errors import NotFoundError, UnavailableError
from service.jobs import RESULT_TTL_S, JobState, enqueue_job, error_line, job_public
from workers.worker import Worker


def work(queue: Queue) -> None:
    Worker([queue], connection=queue.connection).work(burst=True)


def test_a_queued_job_then_its_result(redis_conn: redis.Redis) -> None:
    queue = Queue("jobs-test", connection=redis_conn)
    job_id = enqueue_job(queue, "posixpath.basename", "/data/seed.csv", description="basename")
    queued = job_public(redis_conn, job_id=job_id)
    assert (queued.status, queued.result, queued.error) == (JobState.QUEUED, None, None)
    job = Job.fetch(job_id, connection=redis_conn)
    assert job.description == "basename" and job.result_ttl == RESULT_TTL_S

    work(queue)
    done = job_public(redis_conn, job_id=job_id)
    assert (done.status, done.result, done.error) == (JobState.FINISHED, "seed.csv", None)


def test_a_failed_job_reports_the_last_line_of_its_error(redis_conn: redis.Redis) -> None:
    queue = Queue("jobs-test", connection=redis_conn)
    job_id = enqueue_job(queue, "math.sqrt", "nine", description="sqrt")
    work(queue)
    failed = job_public(redis_conn, job_id=job_id)
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


def test_an_unknown_job_is_not_found(redis_conn: redis.Redis) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        job_public(redis_conn, job_id="no-such-job")


def test_without_redis_queueing_and_reading_are_unavailable() -> None:
    # Port 1 is never a Redis: the connection is refused at once. Made as the service makes its
    # clients (from a URL, which sets no retries): redis-py's constructor default retries a
    # refused connection with backoff, 3-4 s a command here.
    down = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=2, socket_connect_timeout=2)
    with pytest.raises(UnavailableError, match="not queued"):
        enqueue_job(Queue("jobs-test", connection=down), "math.sqrt", "4", description="sqrt")
    with pytest.raises(UnavailableError, match="state unknown"):
        job_public(down, job_id="any")
