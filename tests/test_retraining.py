"""Retraining behind the quality gate (the gate's checks: test_gate.py): training sets from
base data plus labels, snapshots, promotion, the RQ job over the API, automatic retraining
and the CLI.

Real models throughout: production is either the seed model or a deliberately weak one (the
seed trained with a third of its tags wrong), so a retrained candidate is predictably better.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from fastapi.testclient import TestClient
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from sqlalchemy import delete, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from service import retrain_queue, retraining
from service.api.main import create_app
from service.cli import app as cli_app
from service.config import DEFAULT_TAGS_FILE, SEED_DATASET, Settings
from service.crud import snapshots as snapshots_crud
from service.db import init_db, make_engine
from service.entities import DatasetSnapshot, JobState, ModelStatus, OutboxItem
from service.entities.common import utcnow
from service.jobs import job_ended, list_jobs
from service.ml import registry
from service.ml.dataset import Example
from service.ml.encoder import Encoder
from service.ml.pipeline import base_split
from service.ml.training import TrainResult, train
from service.outbox import TRAINING_QUEUE
from service.redis_server import EmbeddedRedis
from service.tags import TagSet
from tests.conftest import KEYS, auth, register_promoted
from tests.test_outbox import restart_losing_everything
from tests.test_training_sets import add_labels, rotated
from tests.test_worker import start_worker
from tests.waiting import wait_for_watch_rounds, wait_until
from workers.context import JobContext, use_context
from workers.worker import CLAIM_TTL_S, Worker

ITEM = {"title": "Serving models with Kubernetes", "description": "Deploy and monitor models."}


@pytest.fixture(scope="module")
def weak_result(encoder: Encoder, tags: TagSet) -> TrainResult:
    """The seed's train split with every third tag wrong: a clearly worse production model."""
    train_set, eval_set, _ = base_split(SEED_DATASET, tags=tags)
    noisy = [rotated(e, tags) if i % 3 == 0 else e for i, e in enumerate(train_set)]
    result = train(noisy, eval_set, encoder=encoder, target_precision=0.99)
    result.params["source"] = str(SEED_DATASET)
    return result


def test_retrain_promotes_a_better_candidate_and_records_its_snapshot(
    engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    encoder: Encoder,
    weak_result: TrainResult,
    new_items: list[Example],
) -> None:
    # A target the candidate clearly meets: at 0.99, its 68 automatic answers on the 72
    # held-out items had to be all right, and on an AVX2 machine (int8 arithmetic differs by
    # CPU) one wrong one sat 0.0075 above the cut. At 0.9 it accepts all 72 and gets 3 wrong
    # with the int8 encoder, 5 with fp32: the promotion path, not a coin toss, is tested.
    settings = make_settings(target_precision=0.9)
    weak = register_promoted(engine, settings, weak_result)
    labels = add_labels(engine, new_items, share=0.2)
    with Session(engine, expire_on_commit=False) as session:
        outcome = retraining.retrain(session, settings=settings, tags=tags, encoder=encoder)
    json.dumps(outcome)
    assert outcome["gate_passed"] and outcome["promoted"], outcome["failed_checks"]
    assert outcome["production_before"] == weak and outcome["candidate"] != weak
    cand, prod = outcome["metrics"]["candidate"], outcome["metrics"]["production"]
    assert cand["weighted_f1"] > prod["weighted_f1"] and cand["n"] == prod["n"]

    with Session(engine) as session:
        version = registry.get_version(session, version=outcome["candidate"])
        assert version.status == ModelStatus.PRODUCTION
        assert registry.get_version(session, version=weak).status == ModelStatus.ARCHIVED
        snapshot = session.get(DatasetSnapshot, version.dataset_snapshot_id)
        assert snapshot is not None and snapshot.id == outcome["snapshot_id"]
        assert snapshot.train_label_ids == [r.id for r in labels if not r.holdout]
        assert snapshot.holdout_label_ids == [r.id for r in labels if r.holdout]
        assert snapshot.holdout_label_ids and snapshot.base_rows == 321
        assert version.gate is not None and version.gate["passed"]
        assert version.gate["production_version"] == weak
        assert version.gate["eval_rows"] == outcome["eval_rows"] == version.params["eval_rows"]
        assert all(
            {"candidate", "production", "limit", "passed"} <= set(c) for c in version.gate["checks"]
        )
        assert version.params["source"] == str(SEED_DATASET.resolve())
        assert snapshots_crud.labels_since_latest_snapshot(session) == 0
    add_labels(engine, [rotated(new_items[0], tags)], share=0.0)
    with Session(engine) as session:
        assert snapshots_crud.labels_since_latest_snapshot(session) == 1


def test_worse_candidate_fails_the_gate_and_waits(
    sqlite_engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    encoder: Encoder,
    seed_result: TrainResult,
) -> None:
    """Reviewers relabel half the training rows wrongly: the candidate must not go live."""
    settings = make_settings()
    production = register_promoted(sqlite_engine, settings, seed_result)
    base_train, _, _ = base_split(SEED_DATASET, tags=tags)
    add_labels(sqlite_engine, [rotated(e, tags) for e in base_train[:128]], share=0.0)
    with Session(sqlite_engine, expire_on_commit=False) as session:
        outcome = retraining.retrain(session, settings=settings, tags=tags, encoder=encoder)
        version = registry.get_version(session, version=outcome["candidate"])
        current = registry.get_production(session)
    assert not outcome["gate_passed"] and not outcome["promoted"]
    assert "weighted_f1" in outcome["failed_checks"] and "gate failed" in outcome["outcome"]
    assert version.status == ModelStatus.CANDIDATE and version.gate is not None
    assert not version.gate["passed"]
    f1 = next(c for c in version.gate["checks"] if c["name"] == "weighted_f1")
    assert f1["candidate"] < f1["production"] and not f1["passed"]
    assert current is not None and current.version == production


def test_the_gate_scores_production_at_the_cut_it_serves_with(
    engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    encoder: Encoder,
    seed_result: TrainResult,
    new_items: list[Example],
) -> None:
    """An admin sends everything to review (cut 1.01) while reviewers catch up, then retrains.
    The gate's report, the job's result and `tagflow evaluate --version` must say what
    production does: it accepts nothing. They said it accepted most items at training's cut
    (a QA loop: coverage 0.76 at precision 0.974 in the gate, 0 and null from `evaluate` on
    the same 154 rows)."""
    settings = make_settings()
    production = register_promoted(engine, settings, seed_result)
    with Session(engine) as session:
        registry.set_serving_threshold(
            session, version=production, threshold=1.01, evidence={"source": "manual"}
        )
    add_labels(engine, new_items, share=0.2)
    with Session(engine, expire_on_commit=False) as session:
        outcome = retraining.retrain(session, settings=settings, tags=tags, encoder=encoder)
        version = registry.get_version(session, version=outcome["candidate"])
    served = outcome["metrics"]["production"]
    assert served["auto_coverage"] == 0.0 and served["auto_precision"] is None, served
    assert version.gate is not None and version.gate["production"] == served
    auto = next(c for c in version.gate["checks"] if c["name"] == "auto_precision")
    assert auto["production"] is None


def refuse_inserts(engine: Engine, *, table: str) -> None:
    """A trigger that makes the database refuse every new row of `table` with the error
    "`table` refused": a retraining then fails where it writes one, as one whose process died
    there (kill -9, the OOM killer, the artifacts' disk full) never wrote it."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(
                text(
                    f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} refused'); END"
                )
            )
            return
        conn.execute(
            text(
                f"CREATE FUNCTION refuse_{table}() RETURNS trigger AS "
                f"$$ BEGIN RAISE EXCEPTION '{table} refused'; END $$ LANGUAGE plpgsql"
            )
        )
        conn.execute(
            text(
                f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION refuse_{table}()"
            )
        )


def allow_inserts(engine: Engine, *, table: str) -> None:
    """Drop the trigger of `refuse_inserts`: the database is back to normal."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text(f"DROP TRIGGER refuse_{table}"))
            return
        conn.execute(text(f"DROP TRIGGER refuse_{table} ON {table}"))
        conn.execute(text(f"DROP FUNCTION refuse_{table}()"))


def test_a_retraining_that_dies_registering_its_version_leaves_no_snapshot(
    engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    encoder: Encoder,
    seed_result: TrainResult,
    new_items: list[Example],
    redis_conn: redis.Redis,
) -> None:
    """The snapshot was committed before the version: one left by a retraining that died in
    between counted as the latest, so the 12 labels it had read were not "new" and the next
    automatic retraining waited for 12 more, though no model had learned them."""
    settings = make_settings(retrain_after_labels=12)
    register_promoted(engine, settings, seed_result)
    add_labels(engine, new_items[:12], share=0.2)
    refuse_inserts(engine, table="modelversion")
    with Session(engine) as session, pytest.raises(DBAPIError, match="modelversion refused"):
        retraining.retrain(session, settings=settings, tags=tags, encoder=encoder)
    with Session(engine) as session:
        assert session.exec(select(DatasetSnapshot)).all() == []
        assert len(registry.list_versions(session)) == 1
        assert snapshots_crud.labels_since_latest_snapshot(session) == 12
        queue = Queue(TRAINING_QUEUE, connection=redis_conn)
        queued = retrain_queue.maybe_enqueue_auto_retrain(session, settings=settings, queue=queue)
        assert queued == retrain_queue.AUTO_RETRAIN_JOB_ID


@pytest.fixture
def make_client(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
) -> Iterator[Callable[..., TestClient]]:
    """The real app with `result` in production and setting overrides; once per test."""
    stack = ExitStack()

    def build(result: TrainResult, **overrides: Any) -> TestClient:
        settings = make_settings(database_url=database_url, **overrides)
        register_promoted(engine, settings, result)
        return stack.enter_context(TestClient(create_app(settings)))

    yield build
    stack.close()


def work_training(client: TestClient, conn: redis.Redis) -> None:
    """Run the training queue in this process, as `tagflow worker` would."""
    use_context(JobContext(client.app.state.tagflow.settings))
    try:
        Worker([Queue(TRAINING_QUEUE, connection=conn)], connection=conn).work(burst=True)
    finally:
        use_context(None)


def served_version(client: TestClient) -> str:
    return client.post("/predict", json=ITEM, headers=auth("client")).json()["model_version"]


def test_retrain_job_over_the_api_then_promotion_reaches_the_api(
    make_client: Callable[..., TestClient],
    database_url: str,
    weak_result: TrainResult,
    new_items: list[Example],
    engine: Engine,
    redis_conn: redis.Redis,
    tags: TagSet,
) -> None:
    client = make_client(weak_result, auto_promote=False)
    add_labels(engine, new_items[:20], share=0.2)
    assert client.post("/models/retrain", headers=auth("reviewer")).status_code == 403
    accepted = client.post("/models/retrain", headers=auth("admin"))
    assert accepted.status_code == 202
    job_id = accepted.json()["job_id"]
    queued = client.get(f"/jobs/{job_id}", headers=auth("admin"))
    assert queued.status_code == 200 and queued.json() == {"job_id": job_id, "status": "queued"}
    assert Queue(TRAINING_QUEUE, connection=redis_conn).job_ids == [job_id]
    assert client.get(f"/jobs/{job_id}", headers=auth("client")).status_code == 403
    assert client.get("/jobs/no-such-job", headers=auth("admin")).status_code == 404

    work_training(client, redis_conn)
    done = client.get(f"/jobs/{job_id}", headers=auth("admin")).json()
    assert done["status"] == "finished" and "error" not in done
    result = done["result"]
    assert result["gate_passed"] and not result["promoted"] and "auto_promote" in result["outcome"]
    assert result["train_labels"] + result["holdout_labels"] == 20
    candidate = result["candidate"]
    model = client.get(f"/models/{candidate}", headers=auth("client")).json()
    assert model["status"] == "candidate" and model["gate"]["passed"]
    assert served_version(client) == result["production_before"]

    # Promotion by another process (the CLI or a worker) reaches the running API by itself.
    outside = make_engine(database_url)
    with Session(outside) as session:
        artifacts = client.app.state.tagflow.settings.artifacts_dir
        registry.promote(
            session, actor="test", version=candidate, tags=tags, artifacts_dir=artifacts
        )
    outside.dispose()
    wait_until(lambda: served_version(client) == candidate, what=f"{candidate} served")


def test_an_admins_retraining_and_comparison_survive_a_redis_restart(
    make_client: Callable[..., TestClient],
    weak_result: TrainResult,
    new_items: list[Example],
    engine: Engine,
    own_redis: EmbeddedRedis,
) -> None:
    """Queued by an admin and lost in a Redis restart before a worker took them (the machine's
    Redis keeps nothing on disk): GET /jobs/{id} answered 404 and the retraining never ran.
    They are now recorded, answered from the record, and queued again by the API."""
    client = make_client(weak_result, auto_promote=False, redis_url=own_redis.url)
    state = client.app.state.tagflow
    state.next_job_check = time.monotonic() + 3600  # the API looks when the test says
    add_labels(engine, new_items[:20], share=0.2)
    retrain_id = client.post("/models/retrain", headers=auth("admin")).json()["job_id"]
    production = served_version(client)
    compare_id = client.post(f"/models/{production}/compare", headers=auth("admin")).json()
    compare_id = compare_id["job_id"]
    restart_losing_everything(own_redis)
    conn = redis.Redis.from_url(own_redis.url)
    assert Queue(TRAINING_QUEUE, connection=conn).count == 0  # Redis lost both
    for job_id in (retrain_id, compare_id):
        answer = client.get(f"/jobs/{job_id}", headers=auth("admin"))
        assert answer.status_code == 200 and answer.json()["status"] == "queued"

    state.next_job_check = 0.0  # the API's next look (every 30 s)
    queue = Queue(TRAINING_QUEUE, connection=conn)
    wait_until(lambda: queue.count == 2, what="the API to queue them again")
    assert sorted(queue.job_ids) == sorted([retrain_id, compare_id])
    work_training(client, conn)
    restart_losing_everything(own_redis)  # the results outlive Redis too
    done = client.get(f"/jobs/{retrain_id}", headers=auth("admin")).json()
    assert done["status"] == "finished" and done["result"]["gate_passed"]
    assert done["result"]["train_labels"] + done["result"]["holdout_labels"] == 20
    model = client.get(f"/models/{done['result']['candidate']}", headers=auth("client")).json()
    assert model["status"] == "candidate"
    compared = client.get(f"/jobs/{compare_id}", headers=auth("admin")).json()
    assert compared["status"] == "finished" and compared["result"]["evaluation"]["rows"] > 0
    conn.close()


def test_a_retraining_its_record_says_finished_is_not_run_again(
    make_client: Callable[..., TestClient],
    seed_result: TrainResult,
    engine: Engine,
    redis_conn: redis.Redis,
) -> None:
    """Its worker recorded the end, then died before RQ knew: RQ runs it again (its retries are
    for a killed worker), and the record's result stands instead of a second training."""
    client = make_client(seed_result)
    job_id = client.post("/models/retrain?force=true", headers=auth("admin")).json()["job_id"]
    with Session(engine) as session:
        job_ended(session, job_id=job_id, result={"candidate": "v0002", "outcome": "recorded"})
        versions = len(registry.list_versions(session))
    work_training(client, redis_conn)
    assert Job.fetch(job_id, connection=redis_conn).return_value() == {
        "candidate": "v0002",
        "outcome": "recorded",
    }
    with Session(engine) as session:
        assert len(registry.list_versions(session)) == versions  # nothing trained


def test_failed_job_reports_its_error(
    make_client: Callable[..., TestClient],
    seed_result: TrainResult,
    tmp_path: Path,
    redis_conn: redis.Redis,
) -> None:
    client = make_client(seed_result, base_dataset=tmp_path / "missing.csv")
    job_id = client.post("/models/retrain", headers=auth("admin")).json()["job_id"]
    work_training(client, redis_conn)
    failed = client.get(f"/jobs/{job_id}", headers=auth("admin")).json()
    assert failed["status"] == "failed" and "missing.csv: no such file" in failed["error"]
    assert "result" not in failed


def test_jobs_answer_503_without_redis(
    make_settings: Callable[..., Settings],
    sqlite_engine: Engine,
    seed_result: TrainResult,
    tmp_path: Path,
) -> None:
    settings = make_settings(database_url=str(sqlite_engine.url), redis_url="redis://127.0.0.1:1/0")
    register_promoted(sqlite_engine, settings, seed_result)
    with TestClient(create_app(settings)) as client:
        status = client.get("/jobs/anything", headers=auth("admin"))
        assert status.status_code == 503 and "Redis is unavailable" in status.json()["detail"]
        queued = client.post("/models/retrain", headers=auth("admin"))
        assert queued.status_code == 503 and "not queued" in queued.json()["detail"]


def test_jobs_answer_500_to_a_redis_that_refuses_the_connection(
    make_settings: Callable[..., Settings],
    sqlite_engine: Engine,
    seed_result: TrainResult,
    test_redis_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Redis that answers and refuses (a database it does not have, a wrong password) was a
    503 "Redis is unavailable" with Retry-After: 5, an outage's answer, to a configuration
    error no retry cures (the CLI says "refused the connection" for it). It is a 500 saying
    so, without Retry-After, and an error line in the log; a Redis away stays a 503."""
    no_such_db = make_url(test_redis_url).set(database="100000").render_as_string(False)
    embedded = EmbeddedRedis(tmp_path / "redis")
    url = embedded.start()
    try:
        wrong_password = url.replace(embedded.password, "not-the-password")
        for redis_url, reason in (
            (no_such_db, "DB index is out of range"),
            (wrong_password, "invalid username-password pair"),
        ):
            settings = make_settings(database_url=str(sqlite_engine.url), redis_url=redis_url)
            register_promoted(sqlite_engine, settings, seed_result)
            caplog.clear()
            with TestClient(create_app(settings)) as client:
                status = client.get("/jobs/anything", headers=auth("admin"))
                queued = client.post("/models/retrain", headers=auth("admin"))
            for answer in (status, queued):
                detail = answer.json()["detail"]
                assert answer.status_code == 500 and "retry-after" not in answer.headers, detail
                assert detail.startswith("Redis refused the connection: ") and reason in detail
                assert "unavailable" not in detail and "not-the-password" not in detail
            assert "not queued" in queued.json()["detail"]
            logged = [r for r in caplog.records if r.name == "service.api.errors"]
            assert any("refused the connection" in r.getMessage() for r in logged), logged
            assert all(r.levelno == logging.ERROR for r in logged)
    finally:
        embedded.stop()


def test_a_full_redis_is_an_outage_to_retry_not_a_refusal(
    make_settings: Callable[..., Settings],
    sqlite_engine: Engine,
    seed_result: TrainResult,
    tmp_path: Path,
) -> None:
    """A Redis out of memory (maxmemory reached, no eviction) answers a write with an error
    reply, as a refusal does, but frees up as the worker takes jobs: queueing a retraining
    on it is a 503 with Retry-After, not the 500 "refused the connection" of a wrong password."""
    embedded = EmbeddedRedis(tmp_path / "redis")
    url = embedded.start()
    try:
        with redis.Redis.from_url(url) as full:
            full.config_set("maxmemory-policy", "noeviction")
            full.config_set("maxmemory", 1)
        settings = make_settings(database_url=str(sqlite_engine.url), redis_url=url)
        register_promoted(sqlite_engine, settings, seed_result)
        with TestClient(create_app(settings)) as client:
            queued = client.post("/models/retrain", headers=auth("admin"))
        detail = queued.json()["detail"]
        assert queued.status_code == 503 and queued.headers["retry-after"] == "5", detail
        assert detail.startswith("Redis is unavailable") and "maxmemory" in detail, detail
    finally:
        embedded.stop()


def test_auto_retrain_trigger_counts_labels_since_the_snapshot(
    engine: Engine,
    make_settings: Callable[..., Settings],
    redis_conn: redis.Redis,
    new_items: list[Example],
) -> None:
    queue = Queue(TRAINING_QUEUE, connection=redis_conn)
    settings = make_settings(retrain_after_labels=3)

    def auto(session: Session) -> str | None:
        return retrain_queue.maybe_enqueue_auto_retrain(session, settings=settings, queue=queue)

    add_labels(engine, new_items[:2], share=0.2)
    with Session(engine) as session:
        assert auto(session) is None
        assert (
            retrain_queue.maybe_enqueue_auto_retrain(
                session, settings=make_settings(retrain_after_labels=0), queue=queue
            )
            is None
        )
    add_labels(engine, new_items[2:3], share=0.2)
    with Session(engine) as session:
        first, second = auto(session), auto(session)
        assert first == retrain_queue.AUTO_RETRAIN_JOB_ID and second is None
        assert queue.count == 1
        Job.fetch(first, connection=redis_conn).delete()
        snapshots_crud.create_snapshot(
            session, base_hash="x", base_rows=1, train_label_ids=[], holdout_label_ids=[]
        )
        session.commit()
        assert snapshots_crud.labels_since_latest_snapshot(session) == 0
        assert auto(session) is None
    add_labels(engine, new_items[3:6], share=0.2)
    with Session(engine) as session:
        assert snapshots_crud.labels_since_latest_snapshot(session) == 3
        assert auto(session) == retrain_queue.AUTO_RETRAIN_JOB_ID


def test_a_retraining_whose_worker_is_killed_runs_again(
    cli_env: dict[str, str],
    make_settings: Callable[..., Settings],
    seed_result: TrainResult,
    new_items: list[Example],
    test_redis_url: str,
    redis_conn: redis.Redis,
) -> None:
    """A worker killed in the middle of a retraining (kill -9, the OOM killer): maintenance
    failed the job for good once its claim lapsed, and its fixed id then kept the automatic
    retraining from being queued again for an hour. It is now run again by the next worker."""
    settings = make_settings(retrain_after_labels=3)  # the data dir of `cli_env`
    settings.data_dir.mkdir()
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    register_promoted(engine, settings, seed_result)
    add_labels(engine, new_items[:3], share=0.2)
    queue = Queue(TRAINING_QUEUE, connection=redis_conn)
    with Session(engine) as session:
        job_id = retrain_queue.maybe_enqueue_auto_retrain(session, settings=settings, queue=queue)
    assert job_id is not None
    job = Job.fetch(job_id, connection=redis_conn)
    worker = start_worker(cli_env, redis_url=test_redis_url)
    forked: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while job.get_status(refresh=True) != JobStatus.STARTED:
            assert time.monotonic() < deadline and worker.poll() is None, "the job never started"
            time.sleep(0.05)
        forked = psutil.Process(worker.pid).children()
    finally:
        worker.kill()
        worker.communicate(timeout=30)
    for left in psutil.wait_procs(forked, timeout=10)[1]:  # the scheduler dies with it
        left.kill()
    # What the next worker's maintenance does once the killed worker's claim has lapsed.
    StartedJobRegistry(queue=queue).cleanup(timestamp=time.time() + CLAIM_TTL_S + 1)
    assert job.get_status(refresh=True) == JobStatus.QUEUED
    job.refresh()
    assert job.retries_left == retrain_queue.RETRAIN_RETRIES - 1
    use_context(JobContext(settings))
    try:
        Worker([queue], connection=redis_conn).work(burst=True)
    finally:
        use_context(None)
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    result = job.return_value()
    assert result is not None and result["reason"] == "auto"
    with Session(engine) as session:
        assert len(registry.list_versions(session)) == 2  # the killed run registered none
        assert snapshots_crud.labels_since_latest_snapshot(session) == 0
    engine.dispose()


def test_a_failed_retraining_is_not_run_again_and_new_labels_queue_another(
    make_settings: Callable[..., Settings],
    sqlite_engine: Engine,
    seed_result: TrainResult,
    new_items: list[Example],
    tmp_path: Path,
    redis_conn: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A retraining that raises (here, its base file is missing) would fail every run again:
    it fails once, and the same labels do not queue it again at every watch tick. New labels
    do, as many as start a retraining: a failed automatic retraining no longer holds its job
    id for an hour. Each run of it is listed (GET /jobs) with its outcome: it went to Redis
    only, and an admin asking what ran and what failed did not see it."""
    settings = make_settings(
        database_url=str(sqlite_engine.url),
        base_dataset=tmp_path / "missing.csv",
        retrain_after_labels=3,
    )
    register_promoted(sqlite_engine, settings, seed_result)
    add_labels(sqlite_engine, new_items[:3], share=0.2)
    queue = Queue(TRAINING_QUEUE, connection=redis_conn)

    def auto() -> str | None:
        with Session(sqlite_engine) as session:
            return retrain_queue.maybe_enqueue_auto_retrain(session, settings=settings, queue=queue)

    def jobs() -> list[tuple[str, JobState]]:
        with Session(sqlite_engine) as session:
            return [(job.description, job.status) for job in list_jobs(session)]

    def work(settings: Settings = settings) -> int:
        """Run the queue as a worker does; returns how many retrainings it started."""
        caplog.clear()
        use_context(JobContext(settings))
        try:
            Worker([queue], connection=redis_conn).work(burst=True)
        finally:
            use_context(None)
        return sum("retraining" in r.message and "started" in r.message for r in caplog.records)

    caplog.set_level(logging.INFO, logger="workers.training_jobs")

    with Session(sqlite_engine) as session:
        manual_id = retrain_queue.enqueue_retrain(session, queue=queue)
    manual = Job.fetch(manual_id, connection=redis_conn)
    assert manual.retries_left == retrain_queue.RETRAIN_RETRIES  # for a killed worker
    assert auto() == retrain_queue.AUTO_RETRAIN_JOB_ID
    assert work() == 2, "a retraining that raised was run again"
    assert manual.get_status(refresh=True) == JobStatus.FAILED
    failed = Job.fetch(retrain_queue.AUTO_RETRAIN_JOB_ID, connection=redis_conn)
    assert failed.get_status() == JobStatus.FAILED
    assert "missing.csv: no such file" in (failed.latest_result().exc_string or "")
    with Session(sqlite_engine) as session:
        [run, _manual] = list_jobs(session)
    assert (run.description, run.status) == ("retrain (auto)", JobState.FAILED)
    assert "missing.csv: no such file" in (run.error or "") and run.ended_at is not None
    assert auto() is None and queue.count == 0  # no new label: not queued again
    # After a failure, as many labels as start a retraining (a failure late in a run, a full
    # disk, would otherwise cost a whole retraining per label).
    add_labels(sqlite_engine, new_items[3:5], share=0.2)
    assert auto() is None and queue.count == 0
    add_labels(sqlite_engine, new_items[5:6], share=0.2)
    assert auto() == retrain_queue.AUTO_RETRAIN_JOB_ID
    assert queue.job_ids == [retrain_queue.AUTO_RETRAIN_JOB_ID]
    assert FailedJobRegistry(queue=queue).get_job_ids() == [manual.id]  # the old one is gone
    queued = Job.fetch(retrain_queue.AUTO_RETRAIN_JOB_ID, connection=redis_conn)
    assert queued.get_status() == JobStatus.QUEUED
    assert queued.retries_left == retrain_queue.RETRAIN_RETRIES
    assert auto() is None and queue.count == 1  # never a second while one is queued
    # Each run has a record of its own, under the one RQ id, and one held writes none.
    assert jobs() == [
        ("retrain (auto)", JobState.QUEUED),
        ("retrain (auto)", JobState.FAILED),
        ("retrain (manual)", JobState.FAILED),
    ]
    assert work(make_settings(database_url=str(sqlite_engine.url))) == 1  # its base file back
    assert jobs()[0] == ("retrain (auto)", JobState.FINISHED)
    with Session(sqlite_engine) as session:
        finished = list_jobs(session, limit=1)[0].result
    assert finished == queued.return_value() and finished["reason"] == "auto"


def test_the_automatic_trigger_reads_a_failures_time_on_its_own_clock(
    make_settings: Callable[..., Settings],
    sqlite_engine: Engine,
    seed_result: TrainResult,
    new_items: list[Example],
    tmp_path: Path,
    redis_conn: redis.Redis,
) -> None:
    """After a failed automatic retraining, the labels given since its end free its id for the
    next. Its end came from Redis's clock (RQ's result time) and the labels' times from the
    API's: with the API's clock two hours ahead, labels given ten minutes before the failure
    counted as given since it, and the failure was queued again with nothing new."""
    settings = make_settings(
        database_url=str(sqlite_engine.url),
        base_dataset=tmp_path / "missing.csv",
        retrain_after_labels=3,
    )
    register_promoted(sqlite_engine, settings, seed_result)
    add_labels(sqlite_engine, new_items[:3], share=0.2)
    queue = Queue(TRAINING_QUEUE, connection=redis_conn)
    with Session(sqlite_engine) as session:
        assert retrain_queue.maybe_enqueue_auto_retrain(session, settings=settings, queue=queue)
    use_context(JobContext(settings))
    try:
        Worker([queue], connection=redis_conn).work(burst=True)
    finally:
        use_context(None)
    job = Job.fetch(retrain_queue.AUTO_RETRAIN_JOB_ID, connection=redis_conn)
    assert job.get_status() == JobStatus.FAILED
    api_now = utcnow() + timedelta(hours=2)  # the API's clock, two hours ahead of Redis's

    def given_at(examples: list[Example], at: datetime) -> None:
        with Session(sqlite_engine) as session:
            for label in add_labels(sqlite_engine, examples, share=0.2):
                label.created_at = at
                session.add(label)
            session.commit()

    def released() -> bool:
        with Session(sqlite_engine) as session:
            retrain_queue._release_ended_auto_job(
                session, connection=redis_conn, after_failure=3, now=api_now
            )
        return not redis_conn.exists(Job.key_for(retrain_queue.AUTO_RETRAIN_JOB_ID))

    given_at(new_items[3:6], api_now - timedelta(minutes=10))  # before the failure
    assert not released(), "labels given before the failure counted as given since"
    given_at(new_items[6:9], api_now + timedelta(minutes=1))
    assert released()


def test_watch_loop_retrains_once_after_enough_labels(
    make_settings: Callable[..., Settings],
    sqlite_engine: Engine,
    weak_result: TrainResult,
    new_items: list[Example],
    redis_conn: redis.Redis,
) -> None:
    # This test is about when the loop retrains, not about the gate (tests above): at 0.99 the
    # gate's precision check hangs on a single item of the ~65 the candidate accepts on the
    # small frozen set (with the packages resolved on 2026-11-25 it scored 64/65 = 0.985 and
    # failed, where the same code had passed before).
    settings = make_settings(
        database_url=str(sqlite_engine.url), retrain_after_labels=5, target_precision=0.95
    )
    weak = register_promoted(sqlite_engine, settings, weak_result)
    queue = Queue(TRAINING_QUEUE, connection=redis_conn)
    with TestClient(create_app(settings)) as client:
        state = client.app.state.tagflow
        add_labels(sqlite_engine, new_items[:4], share=0.2)
        # Three rounds of the loop, each of which would have queued a retraining by now (seen
        # through, not slept: a busy machine may run none in a guessed 0.6 s).
        wait_for_watch_rounds(state, 3)
        assert queue.count == 0
        add_labels(sqlite_engine, new_items[4:10], share=0.2)
        wait_until(lambda: queue.count == 1, what="the automatic retraining")
        wait_for_watch_rounds(state, 3)
        assert queue.count == 1, "a second automatic retraining was queued"
        work_training(client, redis_conn)
        job = Job.fetch(retrain_queue.AUTO_RETRAIN_JOB_ID, connection=redis_conn)
        assert job.get_status() == "finished" and job.return_value()["reason"] == "auto"
        failed = [c for c in job.return_value()["checks"] if not c["passed"]]
        assert job.return_value()["promoted"], failed
        candidate = job.return_value()["candidate"]
        wait_until(lambda: served_version(client) == candidate, what=f"{candidate} served")
        wait_for_watch_rounds(state, 3)
        assert queue.count == 0  # the snapshot reset the count: nothing new to train on
        assert served_version(client) != weak


def test_cli_retrain_and_enqueue(
    tmp_path: Path,
    encoder_dir: Path,
    seed_result: TrainResult,
    new_items: list[Example],
    make_settings: Callable[..., Settings],
    test_redis_url: str,
    redis_conn: redis.Redis,
) -> None:
    # A newly approved tag with a single label: trained on without it, and said.
    tags_file = tmp_path / "tags.csv"
    tags_file.write_text(DEFAULT_TAGS_FILE.read_text() + "graphs,Graph learning.\n")
    env = {
        "TAGFLOW_API_KEYS": f"admin:{KEYS['admin']}",
        "TAGFLOW_DATA_DIR": str(tmp_path / "cli"),
        "TAGFLOW_ENCODER_DIR": str(encoder_dir),
        "TAGFLOW_REDIS_URL": test_redis_url,
        "TAGFLOW_TAGS_FILE": str(tags_file),
    }
    settings = make_settings(data_dir=tmp_path / "cli", base_dataset=None)
    (tmp_path / "cli").mkdir()
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    production = register_promoted(engine, settings, seed_result)
    add_labels(engine, new_items[:10], share=0.2)
    add_labels(
        engine, [Example("Graph attention networks", "Node classification.", "graphs")], share=0
    )
    runner = CliRunner()
    ran = runner.invoke(cli_app, ["retrain"], env=env)
    assert ran.exit_code == 0, ran.output
    assert "tag 'graphs' has 1 training example(s): left out of training until it has 10" in (
        " ".join(ran.stderr.split())
    )
    assert "weighted_f1" in ran.output and "auto_precision" in ran.output
    assert "snapshot" in ran.output
    with Session(engine) as session:
        versions = registry.list_versions(session)
        snapshots = session.exec(select(DatasetSnapshot)).all()
    assert len(versions) == 2 and versions[0].version != production and len(snapshots) == 1
    assert versions[0].params["source"] == str(SEED_DATASET.resolve())
    queued = runner.invoke(cli_app, ["retrain", "--enqueue"], env=env)
    assert queued.exit_code == 0 and "queued retraining job" in queued.output
    assert Queue(TRAINING_QUEUE, connection=redis_conn).count == 1
    engine.dispose()


def test_a_retraining_with_nothing_new_registers_nothing_unless_forced(
    engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    encoder: Encoder,
    seed_result: TrainResult,
) -> None:
    """With the same training rows as production's (and the same settings), a retraining
    trained, registered and promoted production's twin. The automatic one gets there too: a
    reviewer confirming a base row's tag (a label check) gives that very row, so 50 such
    labels queued a retraining that remade production. It now says so and registers nothing;
    its snapshot counts the labels read, so the automatic trigger waits for new ones."""
    settings = make_settings()
    production = register_promoted(engine, settings, seed_result)
    base_train, _, _ = base_split(SEED_DATASET, tags=tags)
    add_labels(engine, base_train[:3], share=0.0)  # confirmations: the same rows, same tags
    with Session(engine, expire_on_commit=False) as session:
        assert snapshots_crud.labels_since_latest_snapshot(session) == 3
        outcome = retraining.retrain(session, settings=settings, tags=tags, encoder=encoder)
        json.dumps(outcome)
        assert outcome["candidate"] is None and not outcome["promoted"], outcome
        assert outcome["outcome"].startswith(f"nothing new since {production}")
        assert outcome["train_labels"] == 3 and outcome["snapshot_id"] is not None
        assert [row.version for row in registry.list_versions(session)] == [production]
        assert snapshots_crud.labels_since_latest_snapshot(session) == 0

        forced = retraining.retrain(
            session, settings=settings, tags=tags, encoder=encoder, force=True
        )
        twin = registry.get_version(session, version=forced["candidate"])
        assert twin.version != production
        assert twin.data_hash == registry.get_version(session, version=production).data_hash

    # Another target precision is another model: it trains.
    other = make_settings(target_precision=0.95)
    with Session(engine, expire_on_commit=False) as session:
        assert retraining.retrain(session, settings=other, tags=tags, encoder=encoder)["candidate"]


def test_a_retraining_finishes_the_candidate_it_registered_instead_of_training_another(
    engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    encoder: Encoder,
    weak_result: TrainResult,
    new_items: list[Example],
) -> None:
    """A retraining killed after registering its candidate and before promoting it is run
    again by RQ (its retries), and trained and registered a second, identical candidate;
    with auto-promote off, each retraining on the same data registered one more. A candidate
    from the same data and settings, gated on the same evaluation against the same production,
    is now finished instead: promoted if the settings allow, nothing trained (a forced
    retraining only when it runs again, since forced is to train anew)."""
    settings = make_settings(auto_promote=False)
    weak = register_promoted(engine, settings, weak_result)
    add_labels(engine, new_items[:20], share=0.2)
    with Session(engine, expire_on_commit=False) as session:
        first = retraining.retrain(session, settings=settings, tags=tags, encoder=encoder)
        candidate = first["candidate"]
        assert first["gate_passed"] and not first["promoted"], first["failed_checks"]

        again = retraining.retrain(session, settings=settings, tags=tags, encoder=encoder)
        json.dumps(again)
        assert again["candidate"] == candidate and not again["promoted"]
        assert "not trained again" in again["outcome"] and "promote by hand" in again["outcome"]
        assert again["gate_passed"] and again["metrics"] == first["metrics"]
        # Forced, run again by RQ (`tagflow up` cut a forced retraining): the same holds.
        resumed = retraining.retrain(
            session, settings=settings, tags=tags, encoder=encoder, force=True, resume=True
        )
        assert resumed["candidate"] == candidate, resumed["outcome"]

        # As RQ's retry of a retraining whose worker was killed before it promoted.
        promoting = make_settings(auto_promote=True)
        retried = retraining.retrain(session, settings=promoting, tags=tags, encoder=encoder)
        assert retried["candidate"] == candidate and retried["promoted"], retried["outcome"]
        assert [row.version for row in registry.list_versions(session)] == [candidate, weak]
        assert registry.get_version(session, version=candidate).status is ModelStatus.PRODUCTION
        assert snapshots_crud.labels_since_latest_snapshot(session) == 0


def label_checks(engine: Engine) -> list[dict[str, Any]]:
    """The payloads of every label check in the outbox, in order."""
    with Session(engine) as session:
        rows = session.exec(select(OutboxItem).order_by(col(OutboxItem.id))).all()
    return [row.payload for row in rows if row.payload["reason"] == "label_check"]


def test_a_retraining_whose_label_checks_fail_registers_no_version(
    make_client: Callable[..., TestClient],
    seed_result: TrainResult,
    new_items: list[Example],
    engine: Engine,
    redis_conn: redis.Redis,
    tags: TagSet,
) -> None:
    """A retraining registered its candidate, then sent its label checks: one that died in
    between (here the database refuses the checks' rows) left a candidate without them, and
    the next retraining on the same data finished it. The checks are now written in the
    transaction that registers the version: when they fail, no version, snapshot or artifact
    folder is left, and the next run trains, registers and sends them, once."""
    client = make_client(seed_result, auto_promote=False, review_suspects=True)
    artifacts = client.app.state.tagflow.settings.artifacts_dir
    # Wrong labels on new content: rows the out-of-fold model denies, so there are checks.
    add_labels(engine, [rotated(e, tags) for e in new_items[:10]], share=0.0)

    def run_retraining() -> dict[str, Any]:
        job_id = client.post("/models/retrain", headers=auth("admin")).json()["job_id"]
        work_training(client, redis_conn)
        return client.get(f"/jobs/{job_id}", headers=auth("admin")).json()

    with Session(engine) as session:
        [production] = [row.version for row in registry.list_versions(session)]
    folders = sorted(p.name for p in artifacts.iterdir())
    refuse_inserts(engine, table="outboxitem")
    died = run_retraining()
    assert died["status"] == "failed" and "outboxitem refused" in died["error"], died
    with Session(engine) as session:
        assert [row.version for row in registry.list_versions(session)] == [production]
        assert session.exec(select(DatasetSnapshot)).all() == []
    assert sorted(p.name for p in artifacts.iterdir()) == folders
    assert label_checks(engine) == []

    allow_inserts(engine, table="outboxitem")
    again = run_retraining()
    assert again["status"] == "finished", again
    result = again["result"]
    with Session(engine) as session:
        candidate = registry.get_version(session, version=result["candidate"])
    assert (
        candidate.status is ModelStatus.CANDIDATE and "not trained again" not in result["outcome"]
    )
    report = registry.saved_report(candidate, artifacts_dir=artifacts)
    doubted = [item["text_hash"] for item in report["cv"]["suspect_labels"]["items"]]
    assert doubted and result["label_checks_sent"] == len(doubted)
    assert candidate.params[registry.LABEL_CHECKS] == len(doubted)
    sent = label_checks(engine)
    assert [check["text_hash"] for check in sent] == doubted
    assert {check["model_version"] for check in sent} == {candidate.version}

    once_more = run_retraining()  # the same candidate, finished: its checks went with it
    assert once_more["result"]["candidate"] == candidate.version, once_more
    assert "not trained again" in once_more["result"]["outcome"]
    assert once_more["result"]["label_checks_sent"] == 0
    assert label_checks(engine) == sent


def test_a_candidate_registered_without_its_label_checks_gets_them_once(
    engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    encoder: Encoder,
    seed_result: TrainResult,
    new_items: list[Example],
) -> None:
    """A candidate registered before its label checks were written with it, by a retraining
    that died before sending them, has no `label_checks` in its params and no checks: the
    retraining that finishes it sends them from its saved report (274410a) and records them
    in it, so that once their outbox rows are pruned (done and old), it sends none again."""
    settings = make_settings(auto_promote=False, review_suspects=True)
    register_promoted(engine, settings, seed_result)
    add_labels(engine, [rotated(e, tags) for e in new_items[:10]], share=0.0)
    with Session(engine, expire_on_commit=False) as session:
        first = retraining.retrain(session, settings=settings, tags=tags, encoder=encoder)
        sent = label_checks(engine)
        assert sent and first["label_checks_sent"] == len(sent)
        # What the code before this change left when it died between the two commits.
        candidate = registry.get_version(session, version=first["candidate"])
        candidate.params = {k: v for k, v in candidate.params.items() if k != registry.LABEL_CHECKS}
        session.add(candidate)
        session.execute(delete(OutboxItem))
        session.commit()

        again = retraining.retrain(session, settings=settings, tags=tags, encoder=encoder)
        assert again["candidate"] == candidate.version and "not trained again" in again["outcome"]
        assert again["label_checks_sent"] == len(sent)
        assert label_checks(engine) == sent
        session.refresh(candidate)
        assert candidate.params[registry.LABEL_CHECKS] == len(sent)

        session.execute(delete(OutboxItem))  # as the retention prune, once they are done and old
        session.commit()
        pruned = retraining.retrain(session, settings=settings, tags=tags, encoder=encoder)
        assert pruned["candidate"] == candidate.version and pruned["label_checks_sent"] == 0
        assert label_checks(engine) == []


def test_a_retraining_does_not_remake_a_version_production_was_rolled_back_from(
    engine: Engine,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    encoder: Encoder,
    seed_result: TrainResult,
    new_items: list[Example],
) -> None:
    """An admin rolls production back from v2. The next retraining, on the data v2 was
    trained on (no label since), made v2's twin, which passed the gate v2 had passed and was
    promoted: the rollback undone behind the admin's back. It now trains nothing and says
    which version it would have remade; a new label, or force, trains."""
    settings = make_settings(target_precision=0.9)
    first = register_promoted(engine, settings, seed_result)
    add_labels(engine, new_items[:12], share=0.0)
    with Session(engine, expire_on_commit=False) as session:
        second = retraining.retrain(session, settings=settings, tags=tags, encoder=encoder)
        rolled_back = second["candidate"]
        if not second["promoted"]:  # the gate's verdict is not what this test is about
            registry.promote(
                session,
                version=rolled_back,
                tags=tags,
                artifacts_dir=settings.artifacts_dir,
                actor="t",
            )
        registry.rollback(session, tags=tags, artifacts_dir=settings.artifacts_dir, actor="t")
        assert registry.get_production(session).version == first  # type: ignore[union-attr]

        again = retraining.retrain(session, settings=settings, tags=tags, encoder=encoder)
        assert again["candidate"] is None and not again["promoted"], again
        assert f"made {rolled_back}, which production was rolled back from" in again["outcome"]
        # No hint of its own: the CLI adds "--force trains anyway", and said it twice.
        assert "force" not in again["outcome"]
        assert {v.version for v in registry.list_versions(session)} == {first, rolled_back}
        assert registry.get_production(session).version == first  # type: ignore[union-attr]

    add_labels(engine, new_items[12:13], share=0.0)  # something new: it trains
    with Session(engine, expire_on_commit=False) as session:
        newer = retraining.retrain(session, settings=settings, tags=tags, encoder=encoder)
        assert newer["candidate"] not in (None, first, rolled_back)


@pytest.mark.parametrize("auto_promote", [False, True])
def test_a_cli_retraining_beside_a_queued_one_registers_one_candidate(
    auto_promote: bool,
    engine: Engine,
    database_url: str,
    make_settings: Callable[..., Settings],
    tags: TagSet,
    encoder: Encoder,
    weak_result: TrainResult,
    new_items: list[Example],
    redis_conn: redis.Redis,
) -> None:
    """`tagflow retrain` run while a queued retraining ran on a worker: each looked for a twin
    before training, neither found one, and both registered a candidate from the same data and
    settings, gated alike. The one that registers second now finds the first's (checked again
    as registrations take turns) and finishes it instead, or, the first promoted already,
    registers nothing: it would remake production."""
    settings = make_settings(database_url=database_url, auto_promote=auto_promote)
    weak = register_promoted(engine, settings, weak_result)
    add_labels(engine, new_items[:20], share=0.2)
    queue = Queue(TRAINING_QUEUE, connection=redis_conn)
    with Session(engine) as session:
        job_id = retrain_queue.enqueue_retrain(session, queue=queue, reason="manual")

    def the_queued_one_runs_meanwhile(step: str) -> None:
        # The worker takes the queued job while the CLI's retraining has trained and gated its
        # candidate and is about to register it.
        if step == "register":
            use_context(JobContext(settings))
            try:
                Worker([queue], connection=redis_conn).work(burst=True)
            finally:
                use_context(None)

    with Session(engine, expire_on_commit=False) as session:
        cli = retraining.retrain(
            session,
            settings=settings,
            tags=tags,
            encoder=encoder,
            reason="cli",
            progress=the_queued_one_runs_meanwhile,
        )
        versions = [row.version for row in registry.list_versions(session)]
    queued = Job.fetch(job_id, connection=redis_conn).return_value()
    assert queued is not None and queued["gate_passed"], queued
    assert queued["promoted"] is auto_promote
    assert versions == [queued["candidate"], weak]
    if auto_promote:
        assert cli["candidate"] is None and not cli["promoted"], cli["outcome"]
        assert cli["outcome"].startswith(f"nothing new since {queued['candidate']}")
    else:
        assert cli["candidate"] == queued["candidate"], cli["outcome"]
        assert "not trained again" in cli["outcome"] and "promote by hand" in cli["outcome"]
