"""GET /predictions/{id}: a logged prediction, and what people made of its content since."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.api.main import create_app
from service.config import Settings
from service.crud import review as review_crud
from service.crud import review_intake
from service.entities.review import ReviewReason, ReviewTask
from service.ml.dataset import text_hash
from service.ml.training import TrainResult
from service.tags import TagSet
from tests.conftest import auth, register_promoted
from tests.test_prediction_log import _unreachable
from tests.test_review_api import run_labeling_worker, wait_outbox_sent
from tests.waiting import wait_until

ITEM = {"title": "YOLOv8 object detection", "description": "Real-time detection of cars."}


def test_a_prediction_is_found_at_once_and_unknown_ids_are_404(sqlite_client: TestClient) -> None:
    answer = sqlite_client.post("/predict", json=ITEM, headers=auth("client")).json()
    # Asked before the write-behind log has flushed: the lookup flushes it first.
    record = sqlite_client.get(f"/predictions/{answer['prediction_id']}", headers=auth("client"))
    assert record.status_code == 200, record.text
    body = record.json()
    assert {k: body[k] for k in answer} == answer
    assert (body["title"], body["description"]) == (ITEM["title"], ITEM["description"])
    assert body["latency_ms"] > 0 and body["label"] is None and body["review"] is None
    assert body["created_at"].endswith("Z")  # UTC, said so, on SQLite too

    missing = sqlite_client.get("/predictions/" + "0" * 32, headers=auth("client"))
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]
    assert sqlite_client.get(f"/predictions/{answer['prediction_id']}").status_code == 401


def test_an_over_long_prediction_id_is_refused_as_feedback_refuses_it(
    sqlite_client: TestClient,
) -> None:
    """A 3,000-character id was a 404 whose detail echoed all of it, where `POST /feedback`
    refuses an id over 64 characters with a 422: it is now the same 422, its input cut."""
    long_id = "a" * 3000
    refused = sqlite_client.get(f"/predictions/{long_id}", headers=auth("client"))
    reported = sqlite_client.post(
        "/feedback", json={"prediction_id": long_id, "correct_tag": "mlops"}, headers=auth("client")
    )
    assert refused.status_code == reported.status_code == 422, refused.text
    (error,) = refused.json()["detail"]
    assert error["loc"] == ["path", "prediction_id"] and error["type"] == "string_too_long"
    assert error["input"] == "a" * 200 + "... (3000 characters)" and len(refused.content) < 600
    # The longest id feedback takes is still looked up: unknown, a 404.
    missing = sqlite_client.get("/predictions/" + "a" * 64, headers=auth("client"))
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]


def test_a_prediction_shows_its_review_and_then_its_label(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    redis_conn: redis.Redis,
    shared_result: TrainResult,
) -> None:
    settings = make_settings(database_url=database_url, audit_share=1.0)  # every item reviewed
    register_promoted(engine, settings, shared_result)
    with TestClient(create_app(settings)) as client:
        answer = client.post("/predict", json=ITEM, headers=auth("client")).json()
        url = f"/predictions/{answer['prediction_id']}"
        wait_outbox_sent(engine, at_least=1)
        run_labeling_worker(redis_conn, settings)
        review = client.get(url, headers=auth("client")).json()["review"]
        assert review["status"] == "open" and review["reason"] == "audit"

        claimed = client.post("/review/claim", json={"reviewer": "ann"}, headers=auth("reviewer"))
        task_id = claimed.json()["task_id"]
        assert task_id == review["task_id"]
        client.post(
            f"/review/{task_id}/label",
            json={"tag": "mlops", "reviewer": "ann"},
            headers=auth("reviewer"),
        ).raise_for_status()

        record = client.get(url, headers=auth("client")).json()
    assert record["tag"] == answer["tag"]  # what was answered stays as it was
    assert record["review"] == {
        "task_id": task_id,
        "status": "labeled",
        "reason": "audit",
        "stage": "first",
        "opinions": [],
    }
    assert record["label"]["tag"] == "mlops" and record["label"]["source"] == "review"
    assert record["label"]["created_at"].endswith("Z")


def _predicted_and_queued(client: TestClient) -> tuple[str, int]:
    """ITEM predicted, and a review task of it opened: the prediction's URL, the task's id."""
    answer = client.post("/predict", json=ITEM, headers=auth("client")).json()
    task = ReviewTask(
        text_hash=text_hash(ITEM["title"], ITEM["description"]),
        title=ITEM["title"],
        description=ITEM["description"],
        reason=ReviewReason.LOW_CONFIDENCE,
    )
    with Session(client.app.state.tagflow.engine, expire_on_commit=False) as session:
        task_id = review_intake.create_task(session, task=task).id
    assert task_id is not None
    return f"/predictions/{answer['prediction_id']}", task_id


def test_a_disputed_content_shows_both_opinions_and_no_label_until_decided(
    client: TestClient, tags: TagSet
) -> None:
    """Two reviewers' labels that differ wait for a third's decision, and until then the
    content has no label in force (export and retraining leave it out). The lookup showed the
    later of the two as the label, as if the dispute were settled its way."""
    url, task_id = _predicted_and_queued(client)
    engine = client.app.state.tagflow.engine

    def label(reviewer: str, tag: str) -> None:
        with Session(engine, expire_on_commit=False) as session:
            review_crud.label(
                session,
                task_id=task_id,
                tag=tag,
                reviewer=reviewer,
                tags=tags,
                holdout_share=0.2,
                overlap_share=1.0,
            )

    label("ann", "mlops")
    label("bob", "computer-vision")

    record = client.get(url, headers=auth("client")).json()
    assert record["label"] is None
    assert record["review"] == {
        "task_id": task_id,
        "status": "open",
        "reason": "low_confidence",
        "stage": "adjudicate",
        "opinions": ["mlops", "computer-vision"],
    }
    label("cat", "computer-vision")
    record = client.get(url, headers=auth("client")).json()
    assert record["label"]["tag"] == "computer-vision"
    assert (record["review"]["status"], record["review"]["opinions"]) == ("labeled", [])


def test_a_label_taken_back_is_no_label_until_one_replaces_it(
    client: TestClient, tags: TagSet
) -> None:
    """Undo takes a label back and, until a label replaces it, the export and retraining leave
    it out; the lookup still showed it as the content's label, while the item was back in the
    queue (leased to its reviewer, then skipped)."""
    url, task_id = _predicted_and_queued(client)
    engine = client.app.state.tagflow.engine
    with Session(engine, expire_on_commit=False) as session:
        review_crud.label(
            session, task_id=task_id, tag="mlops", reviewer="ann", tags=tags, holdout_share=0.2
        )
    assert client.get(url, headers=auth("client")).json()["label"]["tag"] == "mlops"
    with Session(engine, expire_on_commit=False) as session:
        review_crud.reopen(session, task_id=task_id, reviewer="ann", lease_s=60)
    record = client.get(url, headers=auth("client")).json()
    assert record["label"] is None and record["review"]["status"] == "leased"
    with Session(engine, expire_on_commit=False) as session:
        review_crud.skip(session, task_id=task_id, reviewer="ann")
    record = client.get(url, headers=auth("client")).json()
    assert record["label"] is None and record["review"]["status"] == "open"
    with Session(engine, expire_on_commit=False) as session:
        review_crud.label(
            session,
            task_id=task_id,
            tag="computer-vision",
            reviewer="bob",
            tags=tags,
            holdout_share=0.2,
        )
    record = client.get(url, headers=auth("client")).json()
    assert record["label"]["tag"] == "computer-vision"


def test_a_prediction_answered_by_another_api_process_is_found_and_reported(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    shared_result: TrainResult,
) -> None:
    """Two API processes behind one address: a prediction answered by one sits in that
    process's write-behind buffer for up to its flush interval, and a lookup or a report sent
    at once reaches the other, which cannot flush that buffer. It waits for the row instead of
    answering 404 "does not exist"."""
    settings = make_settings(database_url=database_url, log_flush_interval_s=0.5)
    register_promoted(engine, settings, shared_result)
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        answers = [
            first.post("/predict", json=ITEM, headers=auth("client")).json() for _ in range(2)
        ]
        record = second.get(f"/predictions/{answers[0]['prediction_id']}", headers=auth("client"))
        assert record.status_code == 200, record.text
        assert record.json()["prediction_id"] == answers[0]["prediction_id"]
        report = second.post(
            "/feedback",
            json={"prediction_id": answers[1]["prediction_id"], "correct_tag": "mlops"},
            headers=auth("client"),
        )
        assert report.status_code == 201, report.text
        # An id made long ago is not waited for: it is 404 at once.
        started = time.monotonic()
        missing = second.get("/predictions/" + "0" * 32, headers=auth("client"))
        assert missing.status_code == 404 and time.monotonic() - started < 1


def test_a_prediction_another_process_could_not_write_yet_is_a_503_not_a_404(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    shared_result: TrainResult,
) -> None:
    """Two API processes, the database away for the first (here its log's engine alone, a
    real unreachable server): it answers predictions and keeps them in memory. A report or a
    lookup of one reaching the other process waited the flush interval and the grace, then
    answered 404 "does not exist", which a client takes as final: a QA chaos run (PostgreSQL
    stopped 30 s under two `tagflow serve`) had a user's report of a prediction answered 4 s
    before refused so, while the process that answered it was still writing its backlog. The
    first process now says in Redis that it holds unwritten predictions, and since when:
    503 to retry; once written, found and reported as usual."""
    settings = make_settings(database_url=database_url, log_flush_interval_s=0.1)
    register_promoted(engine, settings, shared_result)
    with TestClient(create_app(settings)) as first, TestClient(create_app(settings)) as second:
        log = first.app.state.tagflow.log  # type: ignore[attr-defined]
        log.engine = _unreachable(engine)
        answer = first.post("/predict", json=ITEM, headers=auth("client")).json()
        pid = answer["prediction_id"]
        wait_until(lambda: log.failures > 0, what="a failed flush of the first process")
        record = second.get(f"/predictions/{pid}", headers=auth("client"))
        assert record.status_code == 503, record.text
        report = {"prediction_id": pid, "correct_tag": "mlops", "reporter": "ann"}
        refused = second.post("/feedback", json=report, headers=auth("client"))
        assert refused.status_code == 503, refused.text
        # An id made before anything the first process holds is not among them: 404.
        missing = second.get("/predictions/" + "0" * 32, headers=auth("client"))
        assert missing.status_code == 404, missing.text

        log.engine = engine  # the database is back for the first process
        wait_until(lambda: log.buffered == 0 and log.written > 0, what="the first's flush")
        assert second.get(f"/predictions/{pid}", headers=auth("client")).status_code == 200
        stored = second.post("/feedback", json=report, headers=auth("client"))
        assert stored.status_code == 201, stored.text
