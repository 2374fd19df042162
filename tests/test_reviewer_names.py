"""One person, one reviewer, however a shared key's request spells the name: "Ann", "ann",
"ANN", fullwidth "ａｎｎ", "ann" with a zero-width space and Cyrillic "Аnn" read the same
(`service.api_keys.name_key`), so they are recorded under the first spelling seen, on SQLite
and PostgreSQL. Over HTTP: leases, second opinions and decisions, undo, reviewer stats and
agreement; the first-spelling race between two requests at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.config import Settings
from service.crud import reviewers
from service.entities import Label, Reviewer
from service.ml.training import TrainResult
from tests.conftest import PERSONAL_KEYS, auth, sqlite_app
from tests.test_review_api import add_tasks, body

NLP, CV = "natural-language-processing", "computer-vision"
# One person's name as six requests may spell it.
ANN = ("Ann", "ann", "ANN", "\uff41\uff4e\uff4e", "an\u200bn", "\u0410nn")


@pytest.fixture
def app_settings(make_settings: Callable[..., Settings], database_url: str) -> Settings:
    """The app of `client`, with every content in the overlap sample."""
    return make_settings(database_url=database_url, review_overlap_share=1.0)


def act(client: TestClient, path: str, reviewer: str, **extra: str) -> Response:
    """A review call with the shared reviewer key, naming `reviewer`."""
    return client.post(path, json=body(reviewer, **extra), headers=auth("reviewer"))


def test_one_person_under_several_spellings_is_one_reviewer(
    client: TestClient, engine: Engine
) -> None:
    [task_id] = add_tasks(engine, 1)
    claimed = act(client, "/review/claim", "Ann").json()
    assert (claimed["task_id"], claimed["stage"]) == (task_id, "first")
    # Her lease, whichever way she spells herself: resumed, renewed, given back.
    assert act(client, "/review/claim", "ann").json()["task_id"] == task_id
    assert act(client, f"/review/{task_id}/renew", "\uff41\uff4e\uff4e").status_code == 200
    assert act(client, "/review/release", "an\u200bn").json() == {"released": [task_id]}
    assert act(client, "/review/claim", "ANN").json()["task_id"] == task_id
    first = act(client, f"/review/{task_id}/label", "ann", tag=NLP)
    assert first.status_code == 201 and first.json()["reviewer"] == "Ann"
    # No second opinion of her own, under any spelling: the task waits for someone else.
    for spelling in ANN:
        assert act(client, "/review/claim", spelling).status_code == 204, spelling
        again = act(client, f"/review/{task_id}/label", spelling, tag=NLP)
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"], spelling
    # Her undo, under another spelling than the label's, is hers.
    assert act(client, f"/review/{task_id}/reopen", "\u0410nn").json()["stage"] == "first"
    relabelled = act(client, f"/review/{task_id}/label", "ANN", tag=NLP)
    assert relabelled.status_code == 201 and relabelled.json()["reviewer"] == "Ann"

    assert act(client, "/review/claim", "bob").json()["stage"] == "second"
    assert act(client, f"/review/{task_id}/label", "bob", tag=CV).status_code == 201
    # Nor does she decide between her label and Bob's.
    for spelling in ANN:
        assert act(client, "/review/claim", spelling).status_code == 204, spelling
    decide = act(client, "/review/claim", "Cat").json()
    assert decide["earlier_labels"] == [
        {"reviewer": "Ann", "tag": NLP},
        {"reviewer": "bob", "tag": CV},
    ]
    assert act(client, f"/review/{task_id}/label", "CAT", tag=CV).status_code == 201

    people = client.get("/review/reviewers", headers=auth("reviewer")).json()["reviewers"]
    figures = {r["reviewer"]: (r["labels"], r["paired"], r["upheld"]) for r in people}
    assert figures == {"Ann": (1, 1, 0.0), "Cat": (1, 0, None), "bob": (1, 1, 1.0)}
    agreement = client.get("/review/agreement", headers=auth("reviewer")).json()
    assert (agreement["pairs"], agreement["agreed"], agreement["decided"]) == (1, 0, 1)
    with Session(engine) as session:
        names = session.exec(select(Label.reviewer).order_by(Label.id)).all()
        assert set(names) == {"Ann", "bob", "Cat"}
        recorded = session.exec(select(Reviewer.name).order_by(Reviewer.name)).all()
        assert recorded == ["Ann", "Cat", "bob"]


def test_a_personal_keys_holder_stays_refused_under_any_spelling(
    client: TestClient, engine: Engine
) -> None:
    """Pia holds a personal key: a shared key naming her, however spelled, is refused before
    anything is recorded under her name."""
    add_tasks(engine, 1)
    for spelling in ("Pia", "\uff50\uff49\uff41", "\u0440i\u0430"):
        assert act(client, "/review/claim", spelling).status_code == 403, spelling
    with Session(engine) as session:
        assert session.exec(select(Reviewer)).all() == []


def test_recorded_name_keeps_the_first_spelling(engine: Engine) -> None:
    with Session(engine) as session:
        assert [reviewers.recorded_name(session, name=n) for n in ANN] == ["Ann"] * len(ANN)
        assert reviewers.recorded_name(session, name="bob") == "bob"
        assert reviewers.recorded_name(session, name="BOB ") == "bob"
        rows = session.exec(select(Reviewer).order_by(Reviewer.name)).all()
    assert [(r.name_key, r.name) for r in rows] == [("ann", "Ann"), ("bob", "bob")]


def test_two_first_requests_at_once_end_as_one_reviewer(engine: Engine) -> None:
    """Each thread its own session, all asking at once under another spelling of a name not
    seen yet: one spelling wins, and every thread is told the same one."""
    spellings = ANN * 2
    barrier = threading.Barrier(len(spellings))
    got: list[str] = []
    errors: list[BaseException] = []

    def first_request(spelling: str) -> None:
        try:
            with Session(engine) as session:
                barrier.wait(timeout=10)
                got.append(reviewers.recorded_name(session, name=spelling))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=first_request, args=(s,)) for s in spellings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert len(got) == len(spellings) and len(set(got)) == 1 and got[0] in ANN
    with Session(engine) as session:
        assert session.exec(select(Reviewer.name)).all() == got[:1]


def test_a_personal_key_may_name_its_holder_in_any_spelling(client: TestClient) -> None:
    """A personal key whose request names its own holder, spelled as people spell her ("Pia"
    for the key of pia), acts as her: it names nobody else. It was refused with a 403, "this
    key is pia's: it cannot act as 'Pia'", as if it had named another reviewer. Another
    person's name stays refused."""
    [task_id] = add_tasks(client.app.state.tagflow.engine, 1)  # type: ignore[attr-defined]
    pia = {"Authorization": f"Bearer {PERSONAL_KEYS['pia']}"}
    for spelling in ("Pia", "PIA", "\uff50\uff49\uff41", "\u0440i\u0430", " pia "):
        claimed = client.post("/review/claim", json={"reviewer": spelling}, headers=pia)
        assert claimed.status_code == 200, (spelling, claimed.json())
        assert claimed.json()["task_id"] == task_id
    labelled = client.post(
        f"/review/{task_id}/label", json={"reviewer": "PIA", "tag": NLP}, headers=pia
    )
    assert labelled.status_code == 201 and labelled.json()["reviewer"] == "pia"
    posing = client.post("/review/claim", json={"reviewer": "quin"}, headers=pia)
    assert posing.status_code == 403 and "pia's" in posing.json()["detail"]


def test_a_personal_key_issued_later_acts_as_the_person_its_holder_was(
    make_settings: Callable[..., Settings], tmp_path: Path, shared_result: TrainResult
) -> None:
    """A team moves from the shared key to personal keys, as the README advises with second
    opinions on: Ann gave first opinions as "Ann" with the shared key, then gets
    `reviewer/ann:KEY`. With that key she is still the one person "Ann": she is not offered a
    second opinion on her own first label (she was, being "ann" to the queue), her labels are
    recorded under "Ann", and GET /review/reviewers shows one reviewer, not two."""
    keys = tmp_path / "keys"
    keys.write_text("# no personal key yet\n")
    settings = {"api_keys_file": keys, "review_overlap_share": 1.0}
    with sqlite_app(make_settings, tmp_path, shared_result, **settings) as client:
        first, other = add_tasks(client.app.state.tagflow.engine, 2)[::-1]  # type: ignore[attr-defined]
        assert act(client, "/review/claim", "Ann").json()["task_id"] == first
        assert act(client, f"/review/{first}/label", "Ann", tag=NLP).status_code == 201

        keys.write_text("reviewer/ann:test-ann-key\n")
        ann = {"Authorization": "Bearer test-ann-key"}
        deadline = time.monotonic() + 10
        while client.get("/whoami", headers=ann).status_code != 200:
            assert time.monotonic() < deadline, "the key file was not read again"
            time.sleep(0.1)

        claimed = client.post("/review/claim", headers=ann)
        assert claimed.status_code == 200
        assert (claimed.json()["task_id"], claimed.json()["stage"]) == (other, "first")
        own = client.post(f"/review/{first}/label", json={"tag": CV}, headers=ann)
        assert own.status_code == 409  # her own first opinion: the second is someone else's
        assert own.json()["label"]["tag"] == NLP
        labelled = client.post(f"/review/{other}/label", json={"tag": CV}, headers=ann)
        assert labelled.status_code == 201 and labelled.json()["reviewer"] == "Ann"
        assert client.post("/review/claim", headers=ann).status_code == 204

        people = client.get("/review/reviewers", headers=auth("reviewer")).json()["reviewers"]
        assert [(r["reviewer"], r["labels"]) for r in people] == [("Ann", 2)]
