"""The outbox between /predict and RQ: nothing lost in a Redis outage, nothing counted twice,
and failing jobs retried with backoff and kept visible in the FailedJobRegistry."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import redis
from fastapi.testclient import TestClient
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from typer.testing import CliRunner

from service.api.lifecycle import drain_outbox
from service.api.main import create_app
from service.api.state import AppState
from service.cli import app as cli_app
from service.config import Settings
from service.crud.predictions import save_predictions
from service.entities import OutboxItem, PredictionStatus
from service.entities.review import ReviewTask
from service.ml.training import TrainResult
from service.outbox import (
    JOBS,
    LABELING_QUEUE,
    MAX_SENDS,
    OUTBOX_ID,
    REVIEW_BATCH,
    REVIEW_RETRY,
    redeliver_lost,
    relay,
    relay_failures,
    resend_stopped,
)
from service.redis_server import EmbeddedRedis
from tests.conftest import auth, make_prediction, register_promoted
from tests.freezable_proxy import FreezableProxy
from tests.test_metrics import scrape, total
from tests.test_review_api import (
    predict_until_review,
    run_labeling_worker,
    state_of,
)
from tests.waiting import wait_until
from workers.context import JobContext, use_context
from workers.worker import Worker

SCORES = {"natural-language-processing": 0.4, "computer-vision": 0.35, "mlops": 0.15, "other": 0.1}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, on its own port, that the test may stop (never the shared
    one); `start()` again brings it back on the same port with the same data directory."""
    server = EmbeddedRedis(tmp_path / "own-redis")
    server.start()
    yield server
    server.stop()


def payloads(queue: Queue) -> list[dict]:
    """Every review payload waiting in `queue`, in order (a job carries a batch of them)."""
    return [p for job in queue.get_jobs() for p in job.args[0]]


def outbox_rows(engine: Engine) -> list[OutboxItem]:
    with Session(engine) as session:
        return list(session.exec(select(OutboxItem).order_by(OutboxItem.id)))


def test_predictions_survive_a_redis_outage(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    shared_result: TrainResult,
    own_redis: EmbeddedRedis,
) -> None:
    settings = make_settings(database_url=database_url, redis_url=own_redis.url)
    register_promoted(engine, settings, shared_result)
    with TestClient(create_app(settings)) as client:
        own_redis.stop()
        review = predict_until_review(client)  # answered while Redis is down
        wait_until(
            lambda: (
                len(outbox_rows(engine)) == len(review)  # the relay stops at the
                and outbox_rows(engine)[0].attempts >= 2
            ),
            what="relay attempts",
        )  # first error
        rows = outbox_rows(engine)
        assert all(r.sent_at is None for r in rows)
        assert "ConnectionError" in (rows[0].last_error or "")
        stats = client.get("/review/stats", headers=auth("reviewer"))
        assert stats.status_code == 200
        assert stats.json()["failed_jobs"] is None and "unreachable" in stats.json()["note"]
        assert stats.json()["outbox_pending"] == len(review)

        own_redis.start()  # same port, same data directory
        state = state_of(client)

        def drained() -> bool:
            drain_outbox(state)
            return all(r.sent_at is not None for r in outbox_rows(engine))

        wait_until(drained, what="the outbox to drain after Redis came back")
        conn = redis.Redis.from_url(own_redis.url)
        run_labeling_worker(conn, settings)
        conn.close()
        stats = client.get("/review/stats", headers=auth("reviewer")).json()
        assert stats["failed_jobs"] == 0 and stats["outbox_pending"] == 0
    with Session(engine) as session:
        stored = session.exec(select(ReviewTask)).all()
    assert {t.prediction_id for t in stored} == {r["prediction_id"] for r in review}
    assert all(t.arrivals == 1 for t in stored)


def test_same_text_twice_is_one_task_even_when_resent(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    redis_conn: redis.Redis,
) -> None:
    settings = make_settings(database_url=database_url)
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    with Session(engine, expire_on_commit=False) as session:
        save_predictions(
            session,
            predictions=[
                make_prediction("Graph networks", status=PredictionStatus.REVIEW),
                make_prediction("graph  NETWORKS", status=PredictionStatus.REVIEW),
            ],
        )
        assert relay(session, queue=queue) == 2
        for row in session.exec(select(OutboxItem)):  # as if the relay crashed before commit
            row.sent_at, row.sends = None, 0  # (its one UPDATE sets both)
            session.add(row)
        session.commit()
        assert relay(session, queue=queue) == 2
    assert queue.count == 2 and len(payloads(queue)) == 4  # one job per relay
    run_labeling_worker(redis_conn, settings)
    with Session(engine) as session:
        [task] = session.exec(select(ReviewTask)).all()
    assert task.arrivals == 2 and len(task.arrival_keys) == 2
    assert FailedJobRegistry(queue=queue).count == 0


def restart_losing_everything(server: EmbeddedRedis) -> None:
    """Restart `server` with none of its data, as the machine's Redis (no persistence) or a
    failover to an empty replica comes back."""
    server.stop()
    for path in server.workdir.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        elif path.name != "redis-auth.conf":
            path.unlink()
    server.start()


def test_review_items_whose_jobs_redis_lost_are_sent_again(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    own_redis: EmbeddedRedis,
) -> None:
    settings = make_settings(database_url=database_url, redis_url=own_redis.url)
    conn = redis.Redis.from_url(own_redis.url)
    queue = Queue(LABELING_QUEUE, connection=conn)

    def send(titles: list[str]) -> None:
        with Session(engine) as session:
            save_predictions(
                session,
                predictions=[make_prediction(t, status=PredictionStatus.REVIEW) for t in titles],
            )
            assert relay(session, queue=queue) == len(titles)

    def tasks() -> set[str]:
        with Session(engine) as session:
            return {t.title for t in session.exec(select(ReviewTask))}

    worked, lost, after = ["Worked 1", "Worked 2"], ["Lost 1", "Lost 2", "Lost 3"], ["After 1"]
    send(worked)
    run_labeling_worker(conn, settings)  # done: never sent again, whatever Redis forgets
    send(lost)  # in the labelling queue when Redis restarts
    restart_losing_everything(own_redis)
    conn = redis.Redis.from_url(own_redis.url)
    queue = Queue(LABELING_QUEUE, connection=conn)
    send(after)  # waiting in the new Redis: not sent twice
    run_labeling_worker(conn, settings)
    assert tasks() == set(worked + after)  # the restart lost three review items

    with Session(engine) as session:
        assert redeliver_lost(session, queue=queue) == len(lost)
        assert relay(session, queue=queue) == len(lost)
        assert redeliver_lost(session, queue=queue) == 0  # their new job is in Redis
    run_labeling_worker(conn, settings)
    assert tasks() == set(worked + lost + after)
    with Session(engine) as session:
        stored = session.exec(select(ReviewTask)).all()
        assert all(t.arrivals == 1 for t in stored)
        assert all(r.done_at is not None for r in session.exec(select(OutboxItem)))
    restart_losing_everything(own_redis)  # done rows stay done
    with Session(engine) as session:
        assert redeliver_lost(session, queue=Queue(LABELING_QUEUE, connection=conn)) == 0
    conn.close()


def test_relay_sends_in_order_in_one_transaction_up_to_its_limit(
    engine: Engine, redis_conn: redis.Redis
) -> None:
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    titles = [f"Unsure item {i}" for i in range(5)]
    with Session(engine) as session:
        save_predictions(
            session,
            predictions=[make_prediction(t, status=PredictionStatus.REVIEW) for t in titles],
        )
        assert relay(session, queue=queue, limit=3) == 3
        [job] = queue.get_jobs()
        assert [p["title"] for p in job.args[0]] == titles[:3]
        assert job.func_name == JOBS["review"] and job.retries_left == REVIEW_RETRY.max
        assert job.timeout == 600
        sent = [r.sent_at is not None for r in outbox_rows(engine)]
        assert sent == [True, True, True, False, False]
        assert relay(session, queue=queue) == 2
    assert [p["title"] for p in payloads(queue)] == titles
    assert all(r.sent_at is not None and r.attempts == 0 for r in outbox_rows(engine))


def test_relay_cuts_jobs_at_the_batch_size(engine: Engine, redis_conn: redis.Redis) -> None:
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    titles = [f"Unsure item {i}" for i in range(2 * REVIEW_BATCH + 7)]
    with Session(engine) as session:
        save_predictions(
            session,
            predictions=[make_prediction(t, status=PredictionStatus.REVIEW) for t in titles],
        )
        assert relay(session, queue=queue, limit=len(titles)) == len(titles)
    assert [len(j.args[0]) for j in queue.get_jobs()] == [REVIEW_BATCH, REVIEW_BATCH, 7]
    assert [p["title"] for p in payloads(queue)] == titles


def test_relay_marks_nothing_sent_when_redis_is_down(
    engine: Engine, own_redis: EmbeddedRedis
) -> None:
    conn = redis.Redis.from_url(own_redis.url)
    queue = Queue(LABELING_QUEUE, connection=conn)
    with Session(engine) as session:
        save_predictions(
            session,
            predictions=[
                make_prediction(f"Unsure item {i}", status=PredictionStatus.REVIEW)
                for i in range(3)
            ],
        )
        own_redis.stop()
        assert relay(session, queue=queue) == 0
    rows = outbox_rows(engine)
    assert all(r.sent_at is None for r in rows)
    assert rows[0].attempts == 1 and "ConnectionError" in (rows[0].last_error or "")
    own_redis.start()
    with Session(engine) as session:
        assert relay(session, queue=queue) == 3
    assert queue.count == 1 and len(payloads(queue)) == 3
    assert all(r.sent_at is not None for r in outbox_rows(engine))
    conn.close()


def test_a_redis_outage_is_logged_when_it_starts_and_when_it_ends(
    engine: Engine, own_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """The API relays after every log flush (four times a second) and from its watch loop:
    each failed relay logged a warning (4 lines a second while Redis was down in the QA pass)."""
    conn = redis.Redis.from_url(own_redis.url)
    queue = Queue(LABELING_QUEUE, connection=conn)
    failures = relay_failures()
    with Session(engine) as session:
        unsure = [make_prediction(f"Unsure {i}", status=PredictionStatus.REVIEW) for i in range(2)]
        save_predictions(session, predictions=unsure)
        own_redis.stop()
        with caplog.at_level(logging.INFO, logger="service.outbox"):
            for _ in range(20):
                assert relay(session, queue=queue, failures=failures) == 0
            own_redis.start()
            assert relay(session, queue=queue, failures=failures) == 2
    said = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
    assert len(said) == 2, said
    (level, down, tb), (back_level, back, _) = said
    assert level == "ERROR" and tb is None
    assert down.startswith("outbox relay to Redis failed: ConnectionError")
    assert down.endswith("; 2 rows wait")
    assert back_level == "INFO"
    assert back == "outbox relay to Redis works again after 20 failed rounds; 2 rows sent"
    conn.close()


def test_failing_jobs_are_retried_then_kept_as_failed(
    sqlite_client: TestClient,
    redis_conn: redis.Redis,
) -> None:
    settings = state_of(sqlite_client).settings
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    broken = {"text_hash": "0" * 64, "reason": "low_confidence"}  # no title: the job raises
    with Session(state_of(sqlite_client).engine) as session:
        session.add(OutboxItem(kind="review", payload=broken))
        session.commit()
        relay(session, queue=queue)
    [job_id] = [j.id for j in queue.get_jobs() if j.func_name == JOBS["review"]]

    def work(with_scheduler: bool = False) -> None:
        use_context(JobContext(settings))
        try:
            Worker([queue], connection=redis_conn).work(burst=True, with_scheduler=with_scheduler)
        finally:
            use_context(None)

    work()
    job = Job.fetch(job_id, connection=redis_conn)
    assert job.get_status() == JobStatus.SCHEDULED  # failed once, retried after a backoff
    assert job.retries_left == REVIEW_RETRY.max - 1
    assert job_id in ScheduledJobRegistry(queue=queue)
    time.sleep(REVIEW_RETRY.intervals[0] + 0.5)
    work(with_scheduler=True)  # the scheduler re-enqueues it; it runs and fails again
    job = Job.fetch(job_id, connection=redis_conn)
    assert job.get_status() == JobStatus.SCHEDULED
    assert job.retries_left == REVIEW_RETRY.max - 2
    assert FailedJobRegistry(queue=queue).count == 0

    # A job whose retries run out ends in the FailedJobRegistry, visible in /review/stats.
    exhausted = queue.enqueue(JOBS["review"], [broken], retry=Retry(max=2))
    work()
    assert exhausted.id in FailedJobRegistry(queue=queue)
    exhausted = Job.fetch(exhausted.id, connection=redis_conn)
    assert exhausted.get_status() == JobStatus.FAILED and exhausted.retries_left == 0
    assert "KeyError" in (exhausted.latest_result().exc_string or "")
    stats = sqlite_client.get("/review/stats", headers=auth("reviewer")).json()
    assert stats["failed_jobs"] == 1 and stats["note"] is None


# --- the cap on sends --------------------------------------------------------------------------


def review_jobs(queue: Queue) -> list[Job]:
    """The labelling jobs in `queue` (not the API's re-prioritisation after a promotion)."""
    return [job for job in queue.get_jobs() if job.func_name == JOBS["review"]]


def lose_every_job(engine: Engine, conn: redis.Redis) -> int:
    """Send the outbox's one unsent row and lose its job (Redis comes back empty) again and
    again, as a payload whose run takes its worker and Redis down would, until the relay
    stops sending it; how many times it was sent."""
    queue = Queue(LABELING_QUEUE, connection=conn)
    sent = 0
    with Session(engine) as session:
        while relay(session, queue=queue) == 1:
            sent += 1
            assert sent <= MAX_SENDS, "sent past the cap"
            assert len(review_jobs(queue)) == 1
            conn.flushdb()  # the job is gone before any worker ran it
            put_back = redeliver_lost(session, queue=queue)
            assert put_back == (0 if sent == MAX_SENDS else 1)
    return sent


def one_review_row(engine: Engine, title: str) -> int:
    with Session(engine) as session:
        save_predictions(
            session, predictions=[make_prediction(title, status=PredictionStatus.REVIEW)]
        )
        [row] = session.exec(select(OutboxItem)).all()
        assert row.id is not None
        return row.id


def test_a_row_whose_job_is_lost_every_time_is_stopped_after_max_sends(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    redis_conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    row_id = one_review_row(engine, "A payload that takes Redis down")
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    with caplog.at_level(logging.ERROR, logger="service.outbox"):
        assert lose_every_job(engine, redis_conn) == MAX_SENDS
        with Session(engine) as session:  # later passes neither send it nor log it again
            for _ in range(3):
                assert redeliver_lost(session, queue=queue) == 0
                assert relay(session, queue=queue) == 0
    assert queue.count == 0
    [row] = outbox_rows(engine)
    assert row.stopped_at is not None and row.sends == MAX_SENDS
    assert row.sent_at is not None and row.job_id is None and row.done_at is None
    assert row.last_error is not None and " lost: Redis no longer had it" in row.last_error
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said == [
        (
            "ERROR",
            f"outbox row {row_id} (review) stopped after {MAX_SENDS} sends, its job lost each "
            f"time: not sent again until tagflow db resend-outbox {row_id}; last error: "
            f"{row.last_error}",
        )
    ]

    with Session(engine) as session:
        assert resend_stopped(session, ids=[row_id + 1]) == []  # not a stopped row
        assert resend_stopped(session) == [(row_id, "review")]
        assert relay(session, queue=queue) == 1
    [row] = outbox_rows(engine)
    assert row.stopped_at is None and row.sends == 1 and row.job_id is not None
    run_labeling_worker(redis_conn, make_settings(database_url=database_url))
    with Session(engine) as session:
        [task] = session.exec(select(ReviewTask)).all()
    assert task.title == "A payload that takes Redis down"
    assert outbox_rows(engine)[0].done_at is not None


def test_rows_of_a_lost_job_go_again_one_a_job_so_a_poison_payload_is_stopped_alone(
    engine: Engine, redis_conn: redis.Redis
) -> None:
    """Three review items relayed in one job, lost (Redis empty before a worker ran it): they
    go again as three jobs, so that when one of them is what takes Redis down, only it keeps
    losing its job and reaches the cap; the two others go through. Sent again together, all
    three were lost and stopped with it."""
    titles = ["Poison payload", "Innocent one", "Innocent two"]
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    with Session(engine) as session:
        save_predictions(
            session,
            predictions=[make_prediction(t, status=PredictionStatus.REVIEW) for t in titles],
        )
        assert relay(session, queue=queue) == 3
        assert [len(job.args[0]) for job in review_jobs(queue)] == [3]
        redis_conn.flushdb()
        assert redeliver_lost(session, queue=queue) == 3
        assert relay(session, queue=queue) == 3
        jobs = review_jobs(queue)
        assert sorted(job.args[0][0]["title"] for job in jobs) == sorted(titles)
        assert [len(job.args[0]) for job in jobs] == [1, 1, 1]
        # From now on only the poison payload's job goes missing, each time it is sent (its
        # sends 2 to MAX_SENDS); then it is stopped, not sent again.
        for _ in range(MAX_SENDS - 1):
            [poison] = [job for job in review_jobs(queue) if job.args[0][0]["title"] == titles[0]]
            poison.delete()
            redeliver_lost(session, queue=queue)
            relay(session, queue=queue)
    titles_queued = sorted(job.args[0][0]["title"] for job in review_jobs(queue))
    assert titles_queued == sorted(titles[1:])
    by_title = {row.payload["title"]: row for row in outbox_rows(engine)}
    assert by_title[titles[0]].stopped_at is not None
    assert by_title[titles[0]].sends == MAX_SENDS
    for title in titles[1:]:
        assert by_title[title].stopped_at is None and by_title[title].sends == 2
        assert by_title[title].job_id is not None  # in flight, for a worker to take


def test_stopped_rows_show_in_metrics_and_stats_until_resent(
    client: TestClient,
    database_url: str,
    redis_conn: redis.Redis,
    cli_env: dict[str, str],
) -> None:
    """The gauge and the stats field say a row was given up on; `tagflow db resend-outbox`
    puts it back, and the running API's relay sends it at its next pass."""
    state = state_of(client)
    with state.outbox_lock:  # the API's own relay waits meanwhile
        row_id = one_review_row(state.engine, "Another payload that takes Redis down")
        assert lose_every_job(state.engine, redis_conn) == MAX_SENDS
    assert total(scrape(client), "tagflow_outbox_stopped") == 1
    stats = client.get("/review/stats", headers=auth("reviewer")).json()
    assert stats["outbox_stopped"] == 1 and stats["outbox_pending"] == 0

    env = {**cli_env, "TAGFLOW_DATABASE_URL": database_url}
    result = CliRunner().invoke(cli_app, ["db", "resend-outbox", str(row_id), "999999"], env=env)
    assert result.exit_code == 1, result.output
    assert result.stdout.strip() == (
        f"re-queued 1 outbox row(s) for the relay's next pass: {row_id} (review)"
    )
    assert result.stderr.strip() == "not re-queued: 999999: no such row, or not stopped"
    # Waited for in the database: the relay marks a row sent once Redis has its job, so the
    # job can be in Redis a moment before the row says so (waiting for the job instead failed
    # on a loaded machine, the row read before the relay's UPDATE).
    wait_until(
        lambda: outbox_rows(state.engine)[0].sent_at is not None,
        what="the API's relay to send it again",
    )
    [row] = outbox_rows(state.engine)
    assert row.stopped_at is None and row.sends == 1
    queue = Queue(LABELING_QUEUE, connection=redis_conn)
    assert [p[OUTBOX_ID] for job in review_jobs(queue) for p in job.args[0]] == [row_id]
    assert total(scrape(client), "tagflow_outbox_stopped") == 0
    stats = client.get("/review/stats", headers=auth("reviewer")).json()
    assert stats["outbox_stopped"] == 0

    again = CliRunner().invoke(cli_app, ["db", "resend-outbox"], env=env)
    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == "no stopped outbox rows re-queued"


def freezable_redis(redis_url: str) -> tuple[FreezableProxy, str]:
    """A proxy in front of the test Redis that a test can freeze, and its URL (with the
    Redis's credentials: the embedded Redis has a password)."""
    target = urlparse(redis_url)
    proxy = FreezableProxy(target.hostname or "127.0.0.1", target.port or 6379)
    credentials = target.netloc.rpartition("@")[0]
    address = f"127.0.0.1:{proxy.port}"
    url = target._replace(netloc=f"{credentials}@{address}" if credentials else address).geturl()
    return proxy, url


def hang_the_relay(state: AppState, proxy: FreezableProxy) -> None:
    """Freeze Redis (connections held, nothing answered) and flush a review row, so the
    relay task hangs on Redis holding the outbox lock, until the client's 2 s timeout."""
    proxy.thawed.clear()
    state.log.record(make_prediction("first", status=PredictionStatus.REVIEW))
    assert state.log.flush() == 1
    wait_until(state.outbox_lock.locked, what="the relay to hang on Redis", timeout_s=10)


def test_a_flush_does_not_wait_for_the_relay_to_a_hung_redis(
    make_settings: Callable[..., Settings],
    sqlite_engine: Engine,
    shared_result: TrainResult,
    test_redis_url: str,
) -> None:
    """The outbox relay ran on the prediction log's flush thread, after each flush that wrote
    rows: with Redis hung, every flush waited up to the client's 2 s socket timeout for it (a
    QA chaos run's buffer grew from under 30 rows to 284, what a kill -9 then loses). Now a
    flush wakes a relay task of its own and returns: here the second flush comes back while the
    relay the first one woke still hangs on Redis, holding the outbox lock. (No periodic flush
    or watch-loop relay: the test's flushes are the only ones.)"""
    proxy, url = freezable_redis(test_redis_url)
    database_url = str(sqlite_engine.url)
    settings = make_settings(
        database_url=database_url, redis_url=url, log_flush_interval_s=3600, watch_interval_s=3600
    )
    register_promoted(sqlite_engine, settings, shared_result)
    try:
        with TestClient(create_app(settings)) as client:
            state = state_of(client)
            hang_the_relay(state, proxy)
            state.log.record(make_prediction("second", status=PredictionStatus.REVIEW))
            assert state.log.flush() == 1
            assert state.outbox_lock.locked()  # the relay still hangs; the flush did not wait
            proxy.thawed.set()

            def drained() -> bool:
                drain_outbox(state)
                return all(r.sent_at is not None for r in outbox_rows(sqlite_engine))

            wait_until(drained, what="the outbox to drain once Redis answers")
        assert len(outbox_rows(sqlite_engine)) == 2
    finally:
        proxy.close()


def test_a_report_does_not_wait_for_the_relay_to_a_hung_redis(
    make_settings: Callable[..., Settings],
    sqlite_engine: Engine,
    shared_result: TrainResult,
    test_redis_url: str,
) -> None:
    """POST /feedback relayed the outbox itself before answering: with Redis hung, a report
    waited for the relay already hanging (the outbox lock) and then for its own, up to the
    client's 2 s socket timeout each. Now it wakes the relay task and answers: here the report
    is answered while the relay the flush woke still hangs (no relay failure recorded yet), and
    its review request reaches RQ once Redis answers. (No quota: the quota's own trip to Redis
    would hang too; no periodic flush or watch-loop relay.)"""
    proxy, url = freezable_redis(test_redis_url)
    settings = make_settings(
        database_url=str(sqlite_engine.url),
        redis_url=url,
        log_flush_interval_s=3600,
        watch_interval_s=3600,
        feedback_per_key_per_minute=0,
    )
    register_promoted(sqlite_engine, settings, shared_result)
    try:
        with TestClient(create_app(settings)) as client:
            state = state_of(client)
            item = {"title": "Whisper fine-tuned on court recordings", "description": "ASR."}
            answer = client.post("/predict", json=item, headers=auth("client"))
            assert answer.status_code == 200
            assert state.log.flush() == 1
            hang_the_relay(state, proxy)
            report = client.post(
                "/feedback",
                json={"prediction_id": answer.json()["prediction_id"], "correct_tag": "other"},
                headers=auth("client"),
            )
            assert report.status_code == 201, report.text
            assert state.outbox_failures.count == 0  # the hung relay has not timed out yet
            assert state.outbox_lock.locked()
            proxy.thawed.set()
            wait_until(
                lambda: all(r.sent_at is not None for r in outbox_rows(sqlite_engine)),
                what="the report's review request to reach RQ once Redis answers",
            )
        reasons = sorted(r.payload["reason"] for r in outbox_rows(sqlite_engine))
        assert "user_report" in reasons
    finally:
        proxy.close()
