"""GET /metrics: counters that follow the traffic, and state read at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from uuid import uuid4

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from rq import Queue, Worker
from sklearn.linear_model import LogisticRegression

from service.api.state import Queues
from service.db import make_engine
from service.metrics import Metrics, Sample, StateCollector
from service.ml.classifier import NEVER
from service.ml.serving import LoadedModel
from tests.conftest import auth
from tests.waiting import wait_until

ITEMS = [
    {"title": "YOLOv8 object detection", "description": "Real-time detection of cars in images."},
    {"title": "BERT for named entity recognition", "description": "Token classification."},
    {"title": "A note", "description": ""},
]


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics scrape, keyed by name and label set."""
    response = client.get("/metrics", headers=auth("metrics"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of `name` over the samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_metrics_follow_predictions_and_responses(sqlite_client: TestClient) -> None:
    answers = [sqlite_client.post("/predict", json=i, headers=auth("client")).json() for i in ITEMS]
    assert (
        sqlite_client.post("/predict", json={"title": ""}, headers=auth("client")).status_code
        == 422
    )
    assert sqlite_client.post("/predict", json=ITEMS[0]).status_code == 401
    assert sqlite_client.get("/models/v-none", headers=auth("client")).status_code == 404

    wait_until(
        lambda: total(scrape(sqlite_client), "tagflow_prediction_log_written_total") >= 3,
        what="the three predictions written to the log",
    )
    samples = scrape(sqlite_client)

    version = answers[0]["model_version"]
    assert total(samples, "tagflow_predictions_total") == 3
    for a in answers:
        expected = sum(1 for b in answers if (b["tag"], b["status"]) == (a["tag"], a["status"]))
        got = total(
            samples,
            "tagflow_predictions_total",
            model_version=version,
            tag=a["tag"],
            status=a["status"],
        )
        assert got == expected
    assert total(samples, "tagflow_http_requests_total", route="/predict", status="200") == 3
    assert total(samples, "tagflow_http_requests_total", route="/predict", status="422") == 1
    assert total(samples, "tagflow_http_requests_total", route="/predict", status="401") == 1
    # The template, never the concrete path.
    assert (
        total(samples, "tagflow_http_requests_total", route="/models/{version}", status="404") == 1
    )
    assert total(samples, "tagflow_http_request_seconds_count", route="/predict") == 5
    assert total(samples, "tagflow_scored_items_total") == 3
    encoded = total(samples, "tagflow_encoded_items_total")
    assert 0 <= encoded <= 3
    # Thread CPU time: every batch is triaged; the encoder ran only if an item needed it.
    assert total(samples, "tagflow_scoring_cpu_seconds_total", stage="triage") > 0
    encode_cpu = total(samples, "tagflow_scoring_cpu_seconds_total", stage="encode")
    assert (encode_cpu > 0) == (encoded > 0)
    assert total(samples, "tagflow_model_info", version=version, role="production") == 1
    assert 0.0 < total(samples, "tagflow_model_threshold", version=version) <= 1.01
    assert total(samples, "tagflow_prediction_log_written_total") == 3
    assert total(samples, "tagflow_prediction_log_buffered") == 0
    assert total(samples, "tagflow_database_up") == 1
    assert total(samples, "tagflow_redis_up") == 1
    assert ("tagflow_rq_queued_jobs", frozenset({("queue", "labeling")})) in samples
    assert total(samples, "tagflow_scrape_errors_total") == 0


def test_metrics_need_a_metrics_or_admin_key(sqlite_client: TestClient) -> None:
    """The scrape shows every key's fingerprint, enough to confirm a guessed key offline, so a
    client or reviewer key is refused; the metrics key reads /metrics and nothing else."""
    assert sqlite_client.get("/metrics").status_code == 401
    for role in ("client", "reviewer"):
        refused = sqlite_client.get("/metrics", headers=auth(role))
        assert refused.status_code == 403
        assert "tagflow_api_key" not in refused.text
    for role in ("metrics", "admin"):
        scrape = sqlite_client.get("/metrics", headers=auth(role))
        assert scrape.status_code == 200
        assert "tagflow_api_key_last_used_timestamp_seconds" in scrape.text
    item = {"title": "A title", "description": "A description"}
    assert sqlite_client.post("/predict", json=item, headers=auth("metrics")).status_code == 403
    assert sqlite_client.get("/tags", headers=auth("metrics")).status_code == 403
    assert sqlite_client.get("/review/stats", headers=auth("metrics")).status_code == 403


def test_the_workers_alive_are_counted(sqlite_client: TestClient) -> None:
    """A worker registered in Redis counts while its key lives; one killed outright keeps its
    name in RQ's worker set until a cleanup, but its key expires, and it counts no more."""
    state = sqlite_client.app.state.tagflow  # type: ignore[attr-defined]
    queue = state.queues.labeling
    before = total(scrape(sqlite_client), "tagflow_rq_workers")
    worker = Worker([queue], connection=queue.connection, name=f"metrics-test-{uuid4().hex}")
    worker.register_birth()
    try:
        assert total(scrape(sqlite_client), "tagflow_rq_workers") == before + 1
        queue.connection.delete(worker.key)  # as its TTL runs out after a kill -9
        assert total(scrape(sqlite_client), "tagflow_rq_workers") == before
    finally:
        worker.register_death()


def test_unreachable_redis_is_a_gauge_not_a_failed_scrape(sqlite_client: TestClient) -> None:
    state = sqlite_client.app.state.tagflow  # type: ignore[attr-defined]
    working = state.queues
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)  # nothing listens
    state.queues = Queues(
        labeling=Queue("labeling", connection=dead), training=Queue("training", connection=dead)
    )
    try:
        samples = scrape(sqlite_client)
    finally:
        state.queues = working
    assert total(samples, "tagflow_redis_up") == 0
    assert total(samples, "tagflow_database_up") == 1
    assert not any(name.startswith("tagflow_rq_") for name, _ in samples)


def test_an_outage_is_logged_once_by_the_scrapes_not_at_each(
    sqlite_client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The database and Redis away across scrapes: a gauge at 0 each time, and a line when the
    outage starts and one when it ends. A QA chaos run's 30 s PostgreSQL stop, scraped every
    3 s, logged a traceback of about 120 lines at each scrape (1,180 lines per API process;
    at Prometheus's 15 s, 240 tracebacks an hour of outage), and Redis away a warning at
    each."""
    state = sqlite_client.app.state.tagflow  # type: ignore[attr-defined]
    engine, queues = state.engine, state.queues
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)  # nothing listens
    state.engine = make_engine("sqlite:////nonexistent-dir/tagflow.db")
    state.queues = Queues(
        labeling=Queue("labeling", connection=dead), training=Queue("training", connection=dead)
    )
    with caplog.at_level(logging.INFO, logger="service.api.telemetry"):
        try:
            for _ in range(3):
                samples = scrape(sqlite_client)
                assert total(samples, "tagflow_database_up") == 0
                assert total(samples, "tagflow_redis_up") == 0
        finally:
            state.engine.dispose()
            state.engine, state.queues = engine, queues
        samples = scrape(sqlite_client)
    assert total(samples, "tagflow_database_up") == total(samples, "tagflow_redis_up") == 1
    lines = [r for r in caplog.records if r.name == "service.api.telemetry"]
    assert [(r.levelname, r.getMessage().split(":")[1].strip()) for r in lines] == [
        ("ERROR", "database read failed"),
        ("WARNING", "Redis read failed"),
        ("INFO", "database read works again after 3 failed rounds"),
        ("INFO", "Redis read works again after 3 failed rounds"),
    ]
    assert not any(r.exc_info for r in lines)  # an outage is a line, not a traceback


def test_a_failing_state_read_is_counted_and_the_rest_still_served() -> None:
    metrics = Metrics()

    def broken() -> Iterator[Sample]:
        yield Sample("tagflow_partial", "a sample before the failure", 1, {})
        raise RuntimeError("database gone")

    metrics.add_collector(StateCollector(broken))
    metrics.predictions.labels("v1", "mlops", "auto").inc()
    text = generate_latest(metrics.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["tagflow_scrape_errors"].samples[0].value == 1
    assert families["tagflow_predictions"].samples[0].value == 1
    assert "tagflow_partial" not in families  # a half-read state is dropped, not mixed in


def test_a_failing_shadow_is_counted_and_production_still_answers(
    sqlite_client: TestClient,
) -> None:
    """A shadow candidate that raises on every item: each failure is counted in /metrics, and
    the production answers are unaffected."""
    predictor = sqlite_client.app.state.tagflow.predictor  # type: ignore[attr-defined]
    production = predictor.current
    # The production model with an embedding head fitted on 3 features: scoring a 384-d
    # embedding fails in the head's matrix product, as a corrupt candidate would.
    head = LogisticRegression().fit(np.eye(3)[[0, 1, 2, 0]], production.model.classes[:2] * 2)
    broken = replace(production.model, embedding_head=head, fast_threshold=NEVER)
    predictor.set_shadow(LoadedModel("v-broken", broken))
    try:
        answers = [sqlite_client.post("/predict", json=i, headers=auth("client")) for i in ITEMS]
        wait_until(
            lambda: total(scrape(sqlite_client), "tagflow_shadow_errors_total") >= 3,
            what="the shadow's three errors",
        )
    finally:
        predictor.set_shadow(None)
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert {a.json()["model_version"] for a in answers} == {production.version}
    assert total(scrape(sqlite_client), "tagflow_shadow_errors_total") == 3
