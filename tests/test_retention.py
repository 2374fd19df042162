"""Retention of the prediction log, by hand (`tagflow db prune`) and daily from a worker
(`TAGFLOW_RETENTION_DAYS`): old predictions and their shadow scores go, in batches; recent ones
and those a user report points at stay. So do the outbox rows done before the same cut; rows
not done (pending, in flight, stopped) stay, however old."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError
from rq import Queue
from rq.job import JobStatus
from rq.registry import ScheduledJobRegistry
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from service.cli import app
from service.config import Settings
from service.crud.predictions import prune_predictions, save_predictions
from service.db import PRUNE_LOCK_TIMEOUT_S
from service.entities import Feedback, JobState, OutboxItem, Prediction, ShadowPrediction
from service.entities.common import utcnow
from service.jobs import PRUNE_DESCRIPTION, JobListed, list_jobs
from service.ml.training import TrainResult
from service.outbox import TRAINING_QUEUE, prune_done
from service.retention import PRUNE_JOB, PRUNE_KEY, maybe_enqueue_prune, prune_older_than
from tests.conftest import make_prediction, sqlite_app
from workers.context import JobContext, use_context
from workers.worker import Worker

DAY = timedelta(days=1)


def log_predictions(engine: Engine, *, old: int, recent: int) -> list[str]:
    """`old` predictions 100 days old and `recent` ones from now, each with a shadow score;
    returns the old ones' ids."""
    rows = [make_prediction(f"old {i}") for i in range(old)]
    for row in rows:
        row.created_at = utcnow() - 100 * DAY
    rows += [make_prediction(f"recent {i}") for i in range(recent)]
    shadows = [
        ShadowPrediction(
            prediction_id=r.id, model_version="v2", tag=r.tag, confidence=0.5, agrees=True
        )
        for r in rows
    ]
    with Session(engine) as session:
        save_predictions(session, predictions=rows, shadows=shadows)
    return [r.id for r in rows[:old]]


def remaining(engine: Engine) -> tuple[set[str], set[str]]:
    with Session(engine) as session:
        predictions = set(session.exec(select(Prediction.id)))
        shadows = set(session.exec(select(ShadowPrediction.prediction_id)))
    return predictions, shadows


def fill_outbox(engine: Engine, *, old_done: int) -> set[int]:
    """`old_done` rows done 100 days ago, and one of each kind that must stay: done today,
    and, 100 days old, pending, in flight, stopped, and stopped though marked done (a worker
    that ran a payload whose job was counted lost). Returns the ids of those that stay."""
    old = utcnow() - 100 * DAY
    sent = {"sent_at": old, "sends": 1}
    kept = {
        "done today": {**sent, "done_at": utcnow(), "job_id": "j1"},
        "pending": {},
        "in flight": {**sent, "job_id": "j2"},
        "stopped": {**sent, "sends": 5, "stopped_at": old},
        "stopped, done": {**sent, "sends": 5, "stopped_at": old, "done_at": old},
    }
    with Session(engine) as session:
        done = [
            OutboxItem(kind="review", payload={"n": i}, created_at=old, done_at=old, **sent)
            for i in range(old_done)
        ]
        staying = [
            OutboxItem(kind="review", payload={"n": name}, created_at=old, **fields)
            for name, fields in kept.items()
        ]
        session.add_all(done + staying)
        session.commit()
        return {row.id for row in staying if row.id is not None}


def outbox_ids(engine: Engine) -> set[int]:
    with Session(engine) as session:
        return {row_id for row_id in session.exec(select(OutboxItem.id)) if row_id is not None}


def test_outbox_rows_done_before_the_cut_go_in_batches_and_the_others_stay(engine: Engine) -> None:
    """Every review item, label check and user report passes through the outbox, and its rows
    were never deleted. Those done before the cut now go; none not done, whatever its age."""
    staying = fill_outbox(engine, old_done=5)
    before = utcnow() - 90 * DAY
    with Session(engine) as session:
        assert prune_done(session, before=before, dry_run=True) == 5
    assert len(outbox_ids(engine)) == 10  # a dry run deletes nothing
    with Session(engine) as session:
        assert prune_done(session, before=before, batch=2) == 5  # three batches: 2 + 2 + 1
    assert outbox_ids(engine) == staying
    with Session(engine) as session:
        assert prune_done(session, before=before) == 0


def test_old_predictions_go_in_batches_and_reported_ones_stay(engine: Engine) -> None:
    old = log_predictions(engine, old=7, recent=3)
    with Session(engine) as session:
        report = Feedback(
            prediction_id=old[0], correct_tag="mlops", reporter="u1", text_hash="0" * 64
        )
        session.add(report)
        session.commit()
    before = utcnow() - 90 * DAY
    with Session(engine) as session:
        dry = prune_predictions(session, before=before, dry_run=True)
    assert dry == {"predictions": 6, "shadow_predictions": 6}
    assert len(remaining(engine)[0]) == 10  # a dry run deletes nothing

    with Session(engine) as session:
        gone = prune_predictions(session, before=before, batch=4)  # two batches: 4 + 2
    assert gone == {"predictions": 6, "shadow_predictions": 6}
    predictions, shadows = remaining(engine)
    assert predictions == shadows and len(predictions) == 4
    assert old[0] in predictions and not set(old[1:]) & predictions
    with Session(engine) as session:
        assert prune_predictions(session, before=before) == {
            "predictions": 0,
            "shadow_predictions": 0,
        }
        ages = session.exec(select(Prediction.created_at).where(col(Prediction.id) != old[0]))
        assert all(t.replace(tzinfo=None) > before.replace(tzinfo=None) for t in ages)


def test_prune_from_the_command_line(
    engine: Engine, database_url: str, cli_env: dict[str, str]
) -> None:
    log_predictions(engine, old=3, recent=2)
    staying = fill_outbox(engine, old_done=4)
    env = {**cli_env, "TAGFLOW_DATABASE_URL": database_url}
    runner = CliRunner()
    dry = runner.invoke(app, ["db", "prune", "--older-than-days", "30", "--dry-run"], env=env)
    assert dry.exit_code == 0 and "would delete 3 predictions and 3 shadow scores" in dry.output
    assert "UTC, and 4 outbox rows done before then" in dry.output
    assert len(outbox_ids(engine)) == 9
    done = runner.invoke(app, ["db", "prune", "--older-than-days", "30"], env=env)
    assert done.exit_code == 0 and "deleted 3 predictions and 3 shadow scores" in done.output
    assert "UTC, and 4 outbox rows done before then" in done.output
    assert len(remaining(engine)[0]) == 2
    assert outbox_ids(engine) == staying
    refused = runner.invoke(app, ["db", "prune", "--older-than-days", "0"], env=env)
    assert refused.exit_code == 2  # at least a day: never the predictions still being answered


def enqueue_prune(engine: Engine, queue: Queue, *, retention_days: float) -> str | None:
    """What an API process's watch loop does once a day."""
    with Session(engine) as session:
        return maybe_enqueue_prune(session, queue=queue, retention_days=retention_days)


def listed(engine: Engine) -> list[JobListed]:
    with Session(engine) as session:
        return list_jobs(session)


def test_the_daily_prune_is_enqueued_once_across_processes(
    sqlite_engine: Engine, redis_conn: redis.Redis
) -> None:
    """Every API process's watch loop asks; one job per day goes to the training queue."""
    queue = Queue(TRAINING_QUEUE, connection=redis_conn)
    assert enqueue_prune(sqlite_engine, queue, retention_days=0) is None
    first = enqueue_prune(sqlite_engine, queue, retention_days=90)
    again = enqueue_prune(sqlite_engine, queue, retention_days=90)
    assert first is not None and again is None
    assert queue.job_ids == [first]
    job = queue.fetch_job(first)
    assert job is not None and (job.func_name, job.args) == (PRUNE_JOB, (90,))
    # Retried after a failure (a transient database error cost the day's prune).
    assert (job.retries_left, job.retry_intervals) == (3, [300, 1800, 7200])
    assert 0 < redis_conn.ttl(PRUNE_KEY) <= 86_400
    assert [j.job_id for j in listed(sqlite_engine)] == [first]  # one record: the one queued
    redis_conn.delete(PRUNE_KEY)  # a day later
    assert enqueue_prune(sqlite_engine, queue, retention_days=90) not in (None, first)


def test_a_prune_not_enqueued_after_all_is_due_again_at_the_next_tick(
    sqlite_engine: Engine, tmp_path: Path, redis_conn: redis.Redis
) -> None:
    """The day's key is set first: a prune its database could not record (down, locked), or
    Redis would not take, held off the next try for a day."""
    queue = Queue(TRAINING_QUEUE, connection=redis_conn)
    bare = create_engine(f"sqlite:///{tmp_path / 'no-tables.db'}")  # the record's insert fails
    try:
        with Session(bare) as session, pytest.raises(OperationalError, match="jobrecord"):
            maybe_enqueue_prune(session, queue=queue, retention_days=90)
    finally:
        bare.dispose()
    assert not redis_conn.exists(PRUNE_KEY) and queue.count == 0
    job_id = enqueue_prune(sqlite_engine, queue, retention_days=90)  # the next tick
    assert job_id is not None and queue.job_ids == [job_id]


def test_the_worker_runs_the_prune(
    engine: Engine,
    make_settings: Callable[..., Settings],
    database_url: str,
    redis_conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = log_predictions(engine, old=5, recent=2)
    staying = fill_outbox(engine, old_done=3)
    settings = make_settings(database_url=database_url, retention_days=90)
    queue = Queue(TRAINING_QUEUE, connection=redis_conn)
    job_id = enqueue_prune(engine, queue, retention_days=settings.retention_days)
    queued = listed(engine)
    assert [(j.job_id, j.status, j.description) for j in queued] == [
        (job_id, JobState.QUEUED, PRUNE_DESCRIPTION)
    ]
    use_context(JobContext(settings))
    try:
        with caplog.at_level(logging.INFO, logger="service.retention"):
            Worker([queue], connection=redis_conn).work(burst=True)
    finally:
        use_context(None)
    job = queue.fetch_job(job_id)  # type: ignore[arg-type]
    assert job is not None
    assert job.return_value() == {"predictions": 5, "shadow_predictions": 5, "outbox_rows": 3}
    predictions, shadows = remaining(engine)
    assert len(predictions) == len(shadows) == 2 and not predictions & set(old)
    assert outbox_ids(engine) == staying
    assert "retention: deleted 5 predictions, 5 shadow scores and 3 done outbox rows" in (
        caplog.text
    )
    # The prune is in the list of jobs with its outcome, as an admin's job is.
    [done] = listed(engine)
    assert (done.job_id, done.status, done.error) == (job_id, JobState.FINISHED, None)
    assert done.result == {"predictions": 5, "shadow_predictions": 5, "outbox_rows": 3}
    assert done.started_at is not None and done.ended_at is not None


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_workers_prune_gives_up_on_a_lock_held_elsewhere_and_is_retried(
    engine: Engine,
    make_settings: Callable[..., Settings],
    database_url: str,
    redis_conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The daily prune waited for a lock as long as it was held (PostgreSQL's default): a
    migration or a transaction left open on the prediction table held the worker, and every
    job behind the prune, for as long. It now gives up after PRUNE_LOCK_TIMEOUT_S, as
    `tagflow db prune` does, and fails; it is then tried again 5 minutes later (it used to
    wait for the next day's prune), and once the lock is gone, it deletes."""
    old = log_predictions(engine, old=3, recent=1)
    queue = Queue(TRAINING_QUEUE, connection=redis_conn)
    job_id = enqueue_prune(engine, queue, retention_days=90)
    assert job_id is not None
    holder = engine.connect()
    holder.execute(text("LOCK TABLE prediction IN ACCESS EXCLUSIVE MODE"))  # as ALTER TABLE
    # Let go in the end, so that a prune that waits for it cannot hang the suite.
    release = threading.Timer(PRUNE_LOCK_TIMEOUT_S + 20, holder.rollback)
    use_context(JobContext(make_settings(database_url=database_url, retention_days=90)))
    started = time.monotonic()
    release.start()
    try:
        Worker([queue], connection=redis_conn).work(burst=True)
        took = time.monotonic() - started
    finally:
        release.cancel()
        holder.rollback()
        holder.close()
    try:
        job = queue.fetch_job(job_id)
        assert job is not None and job.get_status() == JobStatus.SCHEDULED, "waited for the lock"
        assert took < PRUNE_LOCK_TIMEOUT_S + 10
        # RQ keeps no result of a try it retries: the log says why it failed.
        assert f"not released within {PRUNE_LOCK_TIMEOUT_S:g} s" in caplog.text
        assert set(old) <= remaining(engine)[0]  # the table was never reached: all there
        assert job.retries_left == 2
        # Its record says it waits for its retry, and why the try failed.
        [waiting] = listed(engine)
        assert (waiting.job_id, waiting.status) == (job_id, JobState.QUEUED)
        assert "lock timeout" in (waiting.error or ""), waiting.error
        scheduled = ScheduledJobRegistry(queue=queue)
        delay = scheduled.get_scheduled_time(job) - utcnow()
        assert timedelta(minutes=4) < delay <= timedelta(minutes=5)

        scheduled.schedule(job, utcnow())  # five minutes later, the lock gone
        Worker([queue], connection=redis_conn).work(burst=True, with_scheduler=True)
    finally:
        use_context(None)
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert job.return_value() == {"predictions": 3, "shadow_predictions": 3, "outbox_rows": 0}
    assert not set(old) & remaining(engine)[0]
    [done] = listed(engine)
    assert (done.status, done.error) == (JobState.FINISHED, None)
    assert done.result == {"predictions": 3, "shadow_predictions": 3, "outbox_rows": 0}


def test_retention_under_a_day_is_refused(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValidationError, match="at least 1"):
        make_settings(retention_days=0.5)


@pytest.mark.parametrize("days", [1_000_000, float("inf")])
def test_retention_no_date_can_reach_back_to_is_refused(days: float, sqlite_engine: Engine) -> None:
    """1,000,000 days (or `inf`, "keep them forever") was taken at start, and every daily prune
    then failed with an OverflowError, retried three times a day. At most 36,500 days, as
    `tagflow db prune` takes, and the prune runs at that bound (`inf` is no finite number)."""
    refused = "less than or equal to 36500|should be a finite number"
    with pytest.raises(ValidationError, match=refused):
        Settings(_env_file=None, dev=True, retention_days=days)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match=refused):
        Settings(_env_file=None, dev=True, review_max_age_days=days)  # type: ignore[call-arg]
    longest = Settings(_env_file=None, dev=True, retention_days=36_500)  # type: ignore[call-arg]
    log_predictions(sqlite_engine, old=0, recent=2)
    gone = prune_older_than(sqlite_engine, days=longest.retention_days)
    assert gone == {"predictions": 0, "shadow_predictions": 0, "outbox_rows": 0}
    assert len(remaining(sqlite_engine)[0]) == 2


def test_the_api_watch_loop_enqueues_it(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    shared_result: TrainResult,
    redis_conn: redis.Redis,
) -> None:
    queue = Queue(TRAINING_QUEUE, connection=redis_conn)
    with sqlite_app(
        make_settings, tmp_path, shared_result, retention_days=30, watch_interval_s=0.05
    ):
        deadline = time.monotonic() + 10
        while not queue.job_ids and time.monotonic() < deadline:
            time.sleep(0.05)
    jobs = [queue.fetch_job(job_id) for job_id in queue.job_ids]
    assert [(job.func_name, job.args) for job in jobs if job] == [(PRUNE_JOB, (30,))]
