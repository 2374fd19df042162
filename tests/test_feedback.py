"""User feedback end to end on SQLite and PostgreSQL: POST /feedback -> outbox -> RQ -> review
task -> reviewer label -> GET /feedback; idempotency, errors, roles, buffered predictions and
trusted feedback."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from rq import Queue
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service import quotas
from service.api.main import create_app
from service.config import DEFAULT_TAGS_FILE, Settings
from service.crud.feedback import MAX_REPORTS_SHOWN
from service.crud.labels import holdout_for
from service.entities import Feedback, Label, LabelSource, OutboxItem
from service.entities.review import ReviewTask
from service.ml.training import TrainResult
from service.outbox import JOBS, LABELING_QUEUE
from tests.conftest import auth, live_server, register_promoted
from tests.test_review_api import VAGUE, wait_outbox_sent
from workers import review_jobs
from workers.context import JobContext, use_context
from workers.worker import Worker

ITEM = {
    "title": "YOLO object detection on drone images",
    "description": "Train a convolutional detector to find cars and people in aerial photos.",
}
TAGS = ["computer-vision", "mlops", "natural-language-processing", "other"]


@pytest.fixture
def make_client(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    seed_result: TrainResult,
) -> Iterator[Callable[..., TestClient]]:
    """Start the real app (seed model in production) with setting overrides; once per test."""
    stack = ExitStack()

    def build(**overrides: Any) -> TestClient:
        settings = make_settings(database_url=database_url, **overrides)
        register_promoted(engine, settings, seed_result)
        return stack.enter_context(TestClient(create_app(settings)))

    yield build
    stack.close()


def predict(client: TestClient, item: dict[str, str] = ITEM) -> dict[str, Any]:
    response = client.post("/predict", json=item, headers=auth("client"))
    assert response.status_code == 200
    return response.json()


def other_tag(tag: str) -> str:
    return next(t for t in TAGS if t != tag)


def report(client: TestClient, role: str = "client", **body: Any) -> Any:
    return client.post("/feedback", json=body, headers=auth(role))


def user_report_rows(engine: Engine) -> list[OutboxItem]:
    with Session(engine) as session:
        rows = session.exec(select(OutboxItem)).all()
    return [r for r in rows if r.payload["reason"] == "user_report"]


def work_labeling(client: TestClient, conn: redis.Redis) -> None:
    """Run the labelling jobs in this process, as `tagflow worker` would, once the relay task
    has handed the outbox to RQ (after POST /feedback's answer)."""
    wait_outbox_sent(client.app.state.tagflow.engine, at_least=0)
    use_context(JobContext(client.app.state.tagflow.settings))
    try:
        Worker([Queue(LABELING_QUEUE, connection=conn)], connection=conn).work(burst=True)
    finally:
        use_context(None)


def open_unsure_task(client: TestClient, conn: redis.Redis) -> dict[str, Any]:
    """Predict vague items until one goes to review, and open its low-confidence task; the
    prediction's answer."""
    unsure = next(
        answer
        for title in VAGUE
        if (answer := predict(client, {"title": title}))["status"] == "review"
    )
    wait_outbox_sent(client.app.state.tagflow.engine, at_least=1)
    work_labeling(client, conn)  # the low-confidence task is open
    return unsure


def test_report_goes_to_review_and_settles_with_the_label(
    make_client: Callable[..., TestClient], engine: Engine, redis_conn: redis.Redis
) -> None:
    client = make_client()
    prediction = predict(client)
    claimed = other_tag(prediction["tag"])
    first = report(
        client,
        prediction_id=prediction["prediction_id"],
        correct_tag=claimed,
        reporter="alice",
        comment="this is about something else",
    )
    assert first.status_code == 201
    assert first.json() == {"feedback_id": first.json()["feedback_id"], "status": "received"}
    again = report(
        client, prediction_id=prediction["prediction_id"], correct_tag=claimed, reporter="alice"
    )
    assert again.status_code == 200 and again.json() == first.json()
    same_words = report(
        client,
        prediction_id=prediction["prediction_id"],
        correct_tag=claimed,
        reporter="alice",
        comment="this is about something else",
    )
    assert same_words.status_code == 200 and same_words.json() == first.json()
    reworded = report(
        client,
        prediction_id=prediction["prediction_id"],
        correct_tag=claimed,
        reporter="alice",
        comment="it is a computer-vision paper",
    )  # a new comment is not dropped without a word either
    assert reworded.status_code == 409
    assert f"as {claimed!r} with another comment" in reworded.json()["detail"]
    changed = report(
        client,
        prediction_id=prediction["prediction_id"],
        correct_tag=other_tag(claimed),
        reporter="alice",
    )  # not dropped without a word: a report is not changed
    assert changed.status_code == 409
    assert "reporter 'alice' already reported" in changed.json()["detail"]
    # A second reporter disagrees with alice: her own report, the same review task.
    bob = report(
        client,
        prediction_id=prediction["prediction_id"],
        reporter="bob",
        correct_tag=other_tag(claimed),
    )
    assert bob.status_code == 201 and bob.json()["feedback_id"] != first.json()["feedback_id"]

    with Session(engine) as session:
        assert len(session.exec(select(Feedback)).all()) == 2
    wait_outbox_sent(engine, at_least=2)  # the relay task sends them after the answers
    rows = user_report_rows(engine)
    assert sorted(r.payload["feedback_id"] for r in rows) == sorted(
        [first.json()["feedback_id"], bob.json()["feedback_id"]]
    )
    assert all(r.sent_at is not None for r in rows), "the outbox was not drained to RQ"
    reviews = [
        payload
        for job in Queue(LABELING_QUEUE, connection=redis_conn).jobs
        if job.func_name == JOBS["review"]
        for payload in job.args[0]
    ]
    assert sorted(p.get("feedback_id") or 0 for p in reviews)[-2:] == sorted(
        r.payload["feedback_id"] for r in rows
    )
    assert rows[0].payload["prediction_id"] == prediction["prediction_id"]

    work_labeling(client, redis_conn)
    alice_id = first.json()["feedback_id"]
    in_review = client.get(f"/feedback/{alice_id}", headers=auth("client")).json()
    assert in_review["status"] == "in_review" and in_review["task_id"] is not None
    assert in_review["final_tag"] is None and in_review["correct_tag"] == claimed

    task = client.post("/review/claim", json={"reviewer": "rev"}, headers=auth("reviewer"))
    assert task.status_code == 200 and task.json()["task_id"] == in_review["task_id"]
    assert task.json()["reason"] == "user_report"
    assert task.json()["reports"] == [  # what the users said, for the reviewer to judge
        {"correct_tag": claimed, "comment": "this is about something else"},
        {"correct_tag": other_tag(claimed), "comment": None},
    ]
    labeled = client.post(
        f"/review/{in_review['task_id']}/label",
        json={"reviewer": "rev", "tag": claimed},
        headers=auth("reviewer"),
    )
    assert labeled.status_code == 201

    alice = client.get(f"/feedback/{alice_id}", headers=auth("client")).json()
    assert alice["status"] == "confirmed" and alice["final_tag"] == claimed
    bob_view = client.get(f"/feedback/{bob.json()['feedback_id']}", headers=auth("admin")).json()
    assert bob_view["status"] == "rejected" and bob_view["final_tag"] == claimed
    assert bob_view["task_id"] == alice["task_id"]


def test_a_task_shows_its_first_reports_however_many_come(
    make_client: Callable[..., TestClient], redis_conn: redis.Redis
) -> None:
    """One client key reporting under many names must not make every claim of the task a
    response of megabytes (3,000 reports made it 6.1 MB)."""
    client = make_client()
    prediction = predict(client)
    sent = [(other_tag(prediction["tag"]), f"report {n}") for n in range(MAX_REPORTS_SHOWN + 5)]
    for n, (tag, comment) in enumerate(sent):
        response = report(
            client,
            prediction_id=prediction["prediction_id"],
            correct_tag=tag,
            comment=comment,
            reporter=f"user-{n}",
        )
        assert response.status_code == 201
    work_labeling(client, redis_conn)
    task = client.post("/review/claim", json={"reviewer": "rev"}, headers=auth("reviewer"))
    assert task.status_code == 200 and task.json()["reason"] == "user_report"
    shown = [(r["correct_tag"], r["comment"]) for r in task.json()["reports"]]
    assert shown == sent[:MAX_REPORTS_SHOWN]


def test_trusted_feedback_on_content_in_review_joins_the_task(
    make_client: Callable[..., TestClient], engine: Engine, redis_conn: redis.Redis
) -> None:
    """A report about content a reviewer is asked to label does not label it under the
    reviewer (whose label would then overwrite it): it joins the task, for the reviewer."""
    client = make_client(trust_feedback=True)
    unsure = open_unsure_task(client, redis_conn)
    claimed = other_tag(unsure["tag"])
    response = report(
        client, prediction_id=unsure["prediction_id"], correct_tag=claimed, reporter="carol"
    )
    assert response.status_code == 201 and response.json()["status"] == "received"
    work_labeling(client, redis_conn)
    with Session(engine) as session:
        assert session.exec(select(Label)).all() == []
        assert len(session.exec(select(ReviewTask)).all()) == 1  # joined, not a second task
    task = client.post("/review/claim", json={"reviewer": "rev"}, headers=auth("reviewer"))
    assert task.status_code == 200 and task.json()["reason"] == "user_report"
    assert task.json()["reports"] == [{"correct_tag": claimed, "comment": None}]
    labeled = client.post(
        f"/review/{task.json()['task_id']}/label",
        json={"reviewer": "rev", "tag": claimed},
        headers=auth("reviewer"),
    )
    assert labeled.status_code == 201
    view = client.get(f"/feedback/{response.json()['feedback_id']}", headers=auth("client"))
    assert view.json()["status"] == "confirmed" and view.json()["final_tag"] == claimed
    assert view.json()["task_id"] == task.json()["task_id"]


def test_errors_and_roles(make_client: Callable[..., TestClient], engine: Engine) -> None:
    client = make_client()
    prediction = predict(client)
    pid = prediction["prediction_id"]
    missing = report(client, prediction_id="0" * 32, correct_tag="mlops")
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]
    unapproved = report(client, prediction_id=pid, correct_tag="astrology")
    assert unapproved.status_code == 422 and "approved" in unapproved.json()["detail"]
    assert report(client, prediction_id=pid).status_code == 422  # no correct_tag
    long = report(client, prediction_id=pid, correct_tag="mlops", comment="x" * 2001)
    assert long.status_code == 422
    assert long.json()["detail"][0]["msg"] == "String should have at most 2000 characters"
    assert long.json()["detail"][0]["input"] == "x" * 200 + "... (2001 characters)"  # not whole
    assert (
        client.post("/feedback", json={"prediction_id": pid, "correct_tag": "mlops"}).status_code
        == 401
    )
    assert client.get("/feedback/12345", headers=auth("client")).status_code == 404
    # Every role key may report; agreeing with the model's own tag is still a report.
    for role in ("client", "reviewer", "admin"):
        response = report(
            client,
            role,
            prediction_id=pid,
            correct_tag=prediction["tag"],
            reporter=f"someone-{role}",
        )
        assert response.status_code == 201, response.text
    anonymous = report(client, prediction_id=pid, correct_tag="mlops")
    assert anonymous.status_code == 201
    assert report(client, prediction_id=pid, correct_tag="mlops").json() == anonymous.json()
    other = report(client, prediction_id=pid, correct_tag="other", reporter="  ")  # anonymous
    assert other.status_code == 409 and "name the reporter" in other.json()["detail"]
    invisible = report(client, prediction_id=pid, correct_tag="other", reporter="\u200b\u200b")
    assert invisible.status_code == 422
    assert invisible.json()["detail"][0]["msg"].endswith("must contain a visible character")
    with Session(engine) as session:
        assert len(session.exec(select(Feedback)).all()) == 4
    assert len(user_report_rows(engine)) == 4


def test_report_on_a_prediction_still_in_the_write_behind_buffer(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    client = make_client(log_flush_interval_s=60)
    prediction = predict(client)
    state = client.app.state.tagflow
    assert state.log.pending(prediction["prediction_id"]) is not None
    response = report(client, prediction_id=prediction["prediction_id"], correct_tag="other")
    assert response.status_code == 201, response.text
    assert state.log.pending(prediction["prediction_id"]) is None
    with Session(engine) as session:
        feedback = session.exec(select(Feedback)).one()
    assert feedback.prediction_id == prediction["prediction_id"]


def test_trusted_feedback_becomes_a_label(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    client = make_client(trust_feedback=True, label_holdout_share=0.5)
    prediction = predict(client)
    claimed = other_tag(prediction["tag"])
    response = report(
        client, prediction_id=prediction["prediction_id"], correct_tag=claimed, reporter="carol"
    )
    assert response.status_code == 201 and response.json()["status"] == "confirmed"
    anonymous = report(
        client,
        prediction_id=predict(client, {"title": "Kubeflow pipelines"})["prediction_id"],
        correct_tag="mlops",
    )
    assert anonymous.status_code == 201 and anonymous.json()["status"] == "confirmed"
    view = client.get(f"/feedback/{response.json()['feedback_id']}", headers=auth("client"))
    assert view.json()["final_tag"] == claimed and view.json()["task_id"] is None
    with Session(engine) as session:
        labels = session.exec(select(Label).order_by(Label.id)).all()
        feedback = session.get(Feedback, response.json()["feedback_id"])
    assert [(label.tag, label.reviewer, label.source) for label in labels] == [
        (claimed, "carol", LabelSource.FEEDBACK),
        ("mlops", "feedback", LabelSource.FEEDBACK),
    ]
    assert feedback is not None and feedback.label_id == labels[0].id
    assert all(label.holdout == holdout_for(label.text_hash, share=0.5) for label in labels)
    assert user_report_rows(engine) == []  # trusted: nobody is asked to review it

    # The content has a label now: a report against it goes to a person (it used to overwrite
    # it, the last report winning), and one agreeing with it is confirmed by it.
    against = report(
        client,
        prediction_id=prediction["prediction_id"],
        correct_tag=other_tag(claimed),
        reporter="dave",
    )
    assert against.status_code == 201 and against.json()["status"] == "received"
    assert [r.payload["feedback_id"] for r in user_report_rows(engine)] == [
        against.json()["feedback_id"]
    ]
    agreeing = report(
        client, prediction_id=prediction["prediction_id"], correct_tag=claimed, reporter="erin"
    )
    assert agreeing.json()["status"] == "confirmed"
    view = client.get(f"/feedback/{agreeing.json()['feedback_id']}", headers=auth("client"))
    assert view.json()["final_tag"] == claimed
    with Session(engine) as session:
        assert len(session.exec(select(Label)).all()) == 2  # neither wrote a label


def _away_from_a_minute_boundary() -> None:
    """Quotas count per wall-clock minute: start a test with at least 20 s of it left (10 s
    was short for a dozen reports on a busy CI machine: a minute that turns mid-test resets
    the count, and the 429 expected does not come)."""
    if time.time() % quotas.WINDOW_S > quotas.WINDOW_S - 20:
        time.sleep(quotas.WINDOW_S - time.time() % quotas.WINDOW_S + 0.1)


def test_a_key_over_its_quota_of_reports_a_minute_gets_429_and_other_keys_do_not(
    make_client: Callable[..., TestClient],
    redis_conn: redis.Redis,
    engine: Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One client key can send reports under any number of reporter names, each one review
    work: past its quota a minute it gets 429 with Retry-After, nothing stored; another key
    has a quota of its own, and with Redis away reports are taken, not lost."""
    client = make_client(feedback_per_key_per_minute=3)
    pid = predict(client)["prediction_id"]
    _away_from_a_minute_boundary()
    sent = [
        report(client, prediction_id=pid, correct_tag="mlops", reporter=f"user-{n}")
        for n in range(4)
    ]
    assert [r.status_code for r in sent] == [201, 201, 201, 429]
    assert 1 <= int(sent[3].headers["retry-after"]) <= 60
    assert "3 reports this minute" in sent[3].json()["detail"]
    other_key = report(client, "reviewer", prediction_id=pid, correct_tag="mlops", reporter="r")
    assert other_key.status_code == 201
    with Session(engine) as session:
        assert len(session.exec(select(Feedback)).all()) == 4
    assert redis_conn.keys("tagflow:quota:feedback:*")  # counted where every API process sees
    state = client.app.state.tagflow  # type: ignore[attr-defined]
    working = state.redis
    state.redis = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        with caplog.at_level(logging.WARNING, logger="service.api.errors"):
            outage = report(client, prediction_id=pid, correct_tag="mlops", reporter="user-9")
    finally:
        state.redis = working
    assert outage.status_code == 201  # the quota could not be counted: the report is kept
    assert any("quota not checked" in r.getMessage() for r in caplog.records)


def test_repeats_of_a_recorded_report_use_no_quota_and_unknown_predictions_do(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    """A report sent again (its answer was lost) is answered as the first one was, and used up
    the key's quota as if it were new review work: five retries of one report left a quota of
    3 spent, and later a retry was a 429 rather than its 200. A report of an unknown
    prediction still counts: it is not review work, but each may wait for another API
    process's log to be written, and an unbounded stream of them probes for ids."""
    client = make_client(feedback_per_key_per_minute=3)
    pid = predict(client)["prediction_id"]
    _away_from_a_minute_boundary()
    first = report(client, prediction_id=pid, correct_tag="mlops", reporter="user-0")
    repeats = [
        report(client, prediction_id=pid, correct_tag="mlops", reporter="user-0") for _ in range(5)
    ]
    changed = report(client, prediction_id=pid, correct_tag="other", reporter="user-0")
    new = [
        report(client, prediction_id=pid, correct_tag="mlops", reporter=f"user-{n}")
        for n in range(1, 4)
    ]
    repeat_past_quota = report(client, prediction_id=pid, correct_tag="mlops", reporter="user-0")
    assert first.status_code == 201
    assert [r.status_code for r in repeats] == [200] * 5
    assert {r.json()["feedback_id"] for r in repeats} == {first.json()["feedback_id"]}
    assert changed.status_code == 409
    assert [r.status_code for r in new] == [201, 201, 429]
    assert repeat_past_quota.status_code == 200
    assert repeat_past_quota.json()["feedback_id"] == first.json()["feedback_id"]
    with Session(engine) as session:
        assert len(session.exec(select(Feedback)).all()) == 3
    unknown = "0" * 32  # made at the epoch: not waited for
    probes = [
        report(client, "reviewer", prediction_id=unknown, correct_tag="mlops", reporter=f"p{n}")
        for n in range(3)
    ]
    assert [r.status_code for r in probes] == [404] * 3
    after = report(client, "reviewer", prediction_id=pid, correct_tag="mlops", reporter="r")
    assert after.status_code == 429


def _concurrently(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """POST each body to /feedback at once, one connection each, as retrying clients do."""
    barrier = threading.Barrier(len(bodies))
    answers: list[httpx.Response] = []

    def send(body: dict[str, Any]) -> None:
        with httpx.Client(base_url=url, headers=auth("client"), timeout=30) as http:
            barrier.wait()
            answers.append(http.post("/feedback", json=body))

    threads = [threading.Thread(target=send, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def _quota_used(conn: redis.Redis) -> int:
    return sum(int(conn.get(name) or 0) for name in conn.keys("tagflow:quota:feedback:*"))


def test_a_report_sent_again_while_the_first_is_in_flight_uses_quota_once(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    seed_result: TrainResult,
    redis_conn: redis.Redis,
) -> None:
    """Copies of one report sent at once (a client retrying while its first attempt is still
    in flight) all passed the repeat check before the first was stored, and each took quota:
    8 copies against a live server stored one report and spent 8 of the key's quota, on
    SQLite and PostgreSQL alike (2 copies: 2). A copy that finds the report stored by then is
    a repeat, or a 409 with another tag, and gives its count back: 1 either way."""
    settings = make_settings(database_url=database_url, feedback_per_key_per_minute=600)
    register_promoted(engine, settings, seed_result)
    with live_server(create_app(settings)) as url:
        answer = httpx.post(f"{url}/predict", json=ITEM, headers=auth("client"), timeout=30)
        pid = answer.json()["prediction_id"]
        _away_from_a_minute_boundary()
        same = {"prediction_id": pid, "correct_tag": "mlops", "reporter": "user-1"}
        copies = _concurrently(url, [same] * 8)
        assert sorted(r.status_code for r in copies) == [200] * 7 + [201]
        assert len({r.json()["feedback_id"] for r in copies}) == 1
        assert _quota_used(redis_conn) == 1
        # Racing reports of one reporter with two tags: one is stored, the others repeat it
        # (200) or contradict it (409), and neither uses quota.
        bodies = [{**same, "reporter": "user-2", "correct_tag": t} for t in ["mlops", "other"] * 4]
        racing = _concurrently(url, bodies)
        assert sorted(r.status_code for r in racing).count(201) == 1
        assert {r.status_code for r in racing} <= {200, 201, 409}
        assert _quota_used(redis_conn) == 2
    with Session(engine) as session:
        assert len(session.exec(select(Feedback)).all()) == 2


def test_with_no_quota_reports_are_not_counted(
    make_client: Callable[..., TestClient], redis_conn: redis.Redis
) -> None:
    client = make_client(feedback_per_key_per_minute=0)
    pid = predict(client)["prediction_id"]
    sent = [
        report(client, prediction_id=pid, correct_tag="mlops", reporter=f"user-{n}")
        for n in range(5)
    ]
    assert [r.status_code for r in sent] == [201] * 5
    assert redis_conn.keys("tagflow:quota:*") == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_report_the_database_could_not_store_uses_no_quota(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    seed_result: TrainResult,
    redis_conn: redis.Redis,
) -> None:
    """A report counted against the key's quota and then not stored, the database being
    locked (here: a table lock held past the API's lock_timeout, as a migration would), answered
    503 "try again shortly" and kept its count: three such reports spent a quota of 3, and the
    key's next four real reports were all 429. A report refused by the outage now gives its
    count back. One sent to a database already unreachable is refused by the repeat check,
    before it is counted (so it was before too)."""
    # The API's connections wait 300 ms for a lock, then fail (LOCK_NOT_AVAILABLE: an outage).
    locking = f"{database_url}?options=-c%20lock_timeout%3D300"
    settings = make_settings(database_url=locking, feedback_per_key_per_minute=3)
    register_promoted(engine, settings, seed_result)
    with TestClient(create_app(settings)) as client:
        pid = predict(client)["prediction_id"]
        _away_from_a_minute_boundary()
        state = client.app.state.tagflow  # type: ignore[attr-defined]
        working = state.engine
        state.engine = create_engine(
            "postgresql+psycopg://postgres@127.0.0.1:1/test", connect_args={"connect_timeout": 2}
        )
        try:
            down = report(client, prediction_id=pid, correct_tag="mlops", reporter="user-0")
        finally:
            state.engine.dispose()
            state.engine = working
        with engine.connect() as conn, conn.begin():
            conn.execute(text("LOCK TABLE feedback IN SHARE MODE"))  # reads pass, writes wait
            locked = [
                report(client, prediction_id=pid, correct_tag="mlops", reporter=f"user-{n}")
                for n in range(2)
            ]
        with engine.connect() as conn, conn.begin():
            # The prediction log cannot write: a report of a prediction still in its buffer
            # fails when it is looked up, after the count.
            conn.execute(text("LOCK TABLE prediction IN SHARE MODE"))
            buffered = predict(client, {"title": "A new item", "description": ""})
            unwritten = report(
                client, prediction_id=buffered["prediction_id"], correct_tag="mlops", reporter="u"
            )
        assert _quota_used(redis_conn) == 0
        back = [
            report(client, prediction_id=pid, correct_tag="mlops", reporter=f"user-{n}")
            for n in range(4)
        ]
    for refused in [down, *locked]:
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
    assert unwritten.status_code == 503
    assert "prediction log cannot be written" in unwritten.json()["detail"]
    assert [r.status_code for r in back] == [201, 201, 201, 429]
    with Session(engine) as session:
        assert len(session.exec(select(Feedback)).all()) == 3


def test_a_report_sent_again_after_its_tag_was_retired_is_still_a_repeat(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    seed_result: TrainResult,
    tmp_path: Path,
) -> None:
    """A report made while a tag was approved, sent again after the tag left the list (its
    first answer lost across the restart): it was a 422 "not in the approved list", which a
    client takes as "not stored", though the report was stored and waits for its review. It is
    a repeat, 200 with the report as it stands; a new report with the tag is still a 422."""
    tags_file = tmp_path / "tags.csv"
    tags_file.write_text(DEFAULT_TAGS_FILE.read_text() + "graphs,Graph learning.\n")
    with_graphs = make_settings(database_url=database_url, tags_file=tags_file)
    register_promoted(engine, with_graphs, seed_result)
    with TestClient(create_app(with_graphs)) as client:
        pid = predict(client, {"title": "Graph neural networks", "description": ""})[
            "prediction_id"
        ]
        first = report(client, prediction_id=pid, correct_tag="graphs", reporter="gina")
        assert first.status_code == 201, first.text
    retired = make_settings(database_url=database_url)  # the tag's line removed, restarted
    with TestClient(create_app(retired)) as client:
        again = report(client, prediction_id=pid, correct_tag="graphs", reporter="gina")
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
        fresh = report(client, prediction_id=pid, correct_tag="graphs", reporter="hal")
        assert fresh.status_code == 422 and "approved" in fresh.json()["detail"]
        other = report(client, prediction_id=pid, correct_tag="mlops", reporter="gina")
        assert other.status_code == 409 and "'graphs'" in other.json()["detail"]
    with Session(engine) as session:
        assert [f.reporter for f in session.exec(select(Feedback)).all()] == ["gina"]


def test_trusted_reports_sent_at_once_give_one_content_one_label(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    seed_result: TrainResult,
) -> None:
    """Trusted, two users' reports of one content sent at once each found no label and made
    their own: on PostgreSQL 13 of 15 such pairs left the content two labels in force with
    different tags, both exported and both trained on, where the second report was to go to a
    reviewer ("no report overwrites another's label"). Reports of one content now take turns:
    one label; the reports that agree with it are confirmed by it, the others wait for review."""
    settings = make_settings(database_url=database_url, trust_feedback=True)
    register_promoted(engine, settings, seed_result)
    with live_server(create_app(settings)) as url:
        pids = [
            httpx.post(f"{url}/predict", json=ITEM, headers=auth("client"), timeout=30).json()[
                "prediction_id"
            ]
            for _ in range(2)
        ]  # one content, answered twice: two users' predictions
        bodies = [
            {"prediction_id": pids[n % 2], "correct_tag": tag, "reporter": f"user-{n}"}
            for n, tag in enumerate(["mlops", "other"] * 4)
        ]
        answers = _concurrently(url, bodies)
    assert sorted(r.status_code for r in answers) == [201] * 8
    with Session(engine) as session:
        labels = session.exec(select(Label)).all()
        reports = session.exec(select(Feedback)).all()
    assert len(labels) == 1, [(label.tag, label.reviewer) for label in labels]
    by_status = {
        status: sorted(r.correct_tag for r in reports if r.status == status)
        for status in ("confirmed", "received")
    }
    [against] = {"mlops", "other"} - {labels[0].tag}
    assert by_status == {"confirmed": [labels[0].tag] * 4, "received": [against] * 4}
    assert all(r.label_id == labels[0].id for r in reports if r.status == "confirmed")


def test_a_report_joining_a_task_its_reviewer_labels_meanwhile_is_settled(
    make_client: Callable[..., TestClient],
    redis_conn: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The labelling job counted a report on the open task of its content, committed, and only
    then linked the report to the task. A reviewer's label landing in between (the task leased
    to them, a key pressed as the report came) settled the task's reports without it, and the
    link then put it `in_review` on a task already labelled: never settled, for good. The
    report is now linked in the transaction that counts it on the task."""
    client = make_client()
    unsure = open_unsure_task(client, redis_conn)
    task = client.post("/review/claim", json={"reviewer": "rev"}, headers=auth("reviewer"))
    assert task.status_code == 200, task.status_code
    task_id = task.json()["task_id"]
    claimed = other_tag(unsure["tag"])
    sent = report(
        client, prediction_id=unsure["prediction_id"], correct_tag=claimed, reporter="dora"
    )
    assert sent.status_code == 201 and sent.json()["status"] == "received"

    bump = review_jobs.review_intake.bump_task

    def bump_then_label(*args: Any, **kwargs: Any) -> Any:
        bumped = bump(*args, **kwargs)
        labeled = client.post(
            f"/review/{task_id}/label",
            json={"reviewer": "rev", "tag": claimed},
            headers=auth("reviewer"),
        )  # the reviewer's key, pressed while the job goes on
        assert labeled.status_code == 201, labeled.text
        return bumped

    monkeypatch.setattr(review_jobs.review_intake, "bump_task", bump_then_label)
    work_labeling(client, redis_conn)
    view = client.get(f"/feedback/{sent.json()['feedback_id']}", headers=auth("client")).json()
    assert (view["status"], view["task_id"], view["final_tag"]) == ("confirmed", task_id, claimed)


def test_a_trusted_report_leaves_an_audit_item_in_the_audit_sample(
    make_client: Callable[..., TestClient], engine: Engine, redis_conn: redis.Redis
) -> None:
    """Trusted, a report made before the worker had opened its content's audit task (within
    the relay's latency, or minutes while the worker runs a retraining) labelled the content at
    once; the audit payload then found a label and opened nothing. The reported item left the
    audit sample, and reported items are the likeliest errors: live precision was overstated,
    the bias the audit keeps reported items for. Such a report now waits for the audit's blind
    label, which settles it."""
    client = make_client(trust_feedback=True, audit_share=1.0)  # every content audited
    prediction = predict(client)
    claimed = other_tag(prediction["tag"])
    sent = report(
        client, prediction_id=prediction["prediction_id"], correct_tag=claimed, reporter="ivy"
    )
    assert sent.status_code == 201 and sent.json()["status"] == "received"
    work_labeling(client, redis_conn)
    task = client.post("/review/claim", json={"reviewer": "rev"}, headers=auth("reviewer"))
    assert task.status_code == 200, task.status_code
    assert task.json()["reason"] == "audit" and task.json()["reports"] == []  # blind
    labeled = client.post(
        f"/review/{task.json()['task_id']}/label",
        json={"reviewer": "rev", "tag": claimed},
        headers=auth("reviewer"),
    )
    assert labeled.status_code == 201
    view = client.get(f"/feedback/{sent.json()['feedback_id']}", headers=auth("client")).json()
    assert (view["status"], view["final_tag"]) == ("confirmed", claimed)
    audit = client.get(f"/models/{prediction['model_version']}/audit", headers=auth("client"))
    assert (audit.json()["audited"], audit.json()["agreed"]) == (1, 0)
    with Session(engine) as session:
        assert [label.source for label in session.exec(select(Label))] == [LabelSource.REVIEW]


def test_a_report_sent_again_in_the_other_unicode_form_is_a_repeat(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    """A reporter's name and comment sent again written in Unicode's other canonical form (an
    accent as a letter and a combining mark, as macOS and some text pipelines send it) were
    other text: "José" reporting again was a second reporter, with a second report to review,
    and the same comment again a 409 "another comment". Both are the same text, as they are
    for a content: a repeat, answered as the first."""
    client = make_client()
    pid = predict(client)["prediction_id"]
    first = report(
        client, prediction_id=pid, correct_tag="mlops", reporter="Jos\u00e9", comment="caf\u00e9"
    )
    assert first.status_code == 201, first.text
    again = report(
        client, prediction_id=pid, correct_tag="mlops", reporter="Jose\u0301", comment="cafe\u0301"
    )
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    with Session(engine) as session:
        assert [f.reporter for f in session.exec(select(Feedback)).all()] == ["Jos\u00e9"]
