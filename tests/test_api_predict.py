"""The prediction API contract, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from service.entities import Prediction
from tests.conftest import auth
from tests.waiting import wait_until

ITEM = {
    "title": "Object detection with YOLO",
    "description": "Real-time detection of cars in video.",
}


def test_predict_returns_an_approved_tag_with_scores(client: TestClient) -> None:
    tags = [t["name"] for t in client.get("/tags", headers=auth("client")).json()["tags"]]
    response = client.post("/predict", json=ITEM, headers=auth("client"))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"prediction_id", "tag", "confidence", "scores", "status", "model_version"}
    assert body["tag"] == "computer-vision"
    assert body["tag"] in tags
    assert set(body["scores"]) == set(tags)
    assert abs(sum(body["scores"].values()) - 1.0) < 1e-3
    assert body["confidence"] == max(body["scores"].values())
    assert body["status"] in {"auto", "review"}
    assert body["model_version"] == "v0001"


def test_every_prediction_is_logged(client: TestClient) -> None:
    ids = [
        client.post("/predict", json=ITEM, headers=auth("client")).json()["prediction_id"]
        for _ in range(3)
    ]
    engine = client.app.state.tagflow.engine

    def logged() -> list[Prediction]:
        with Session(engine) as session:
            return list(session.exec(select(Prediction).where(Prediction.id.in_(ids))))

    wait_until(lambda: len(logged()) == 3, what="the three predictions logged")
    rows = logged()
    assert {r.id for r in rows} == set(ids)
    assert all(r.title == ITEM["title"] and r.latency_ms > 0 for r in rows)


def test_batch_keeps_order_and_matches_single(sqlite_client: TestClient) -> None:
    items = [
        {"title": "Fine-tuning BERT for sentiment analysis", "description": "Text classification."},
        ITEM,
        {
            "title": "Serving models with Kubernetes",
            "description": "Deploy and monitor in production.",
        },
    ]
    response = sqlite_client.post("/predict/batch", json={"items": items}, headers=auth("client"))
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["tag"] for r in results] == [
        "natural-language-processing",
        "computer-vision",
        "mlops",
    ]
    single = sqlite_client.post("/predict", json=items[0], headers=auth("client")).json()
    assert single["scores"] == results[0]["scores"]
    assert len({r["prediction_id"] for r in results}) == 3


def test_behavioural_cases(sqlite_client: TestClient) -> None:
    """Made With ML's behavioural checks, title only."""
    cases = {
        "MLOps is the next big wave in machine learning.": "mlops",
        "This is about graph neural networks.": "other",
        "CNNs for text classification.": "natural-language-processing",
        "Transformers applied to image classification.": "computer-vision",
    }
    for title, expected in cases.items():
        body = sqlite_client.post(
            "/predict", json={"title": title, "description": ""}, headers=auth("client")
        ).json()
        assert body["tag"] == expected, (title, body)


def test_a_description_may_be_missing_null_or_empty(sqlite_client: TestClient) -> None:
    """All three mean "no description", and get the same answer."""
    title = "MLOps is the next big wave in machine learning."
    bodies = [{"title": title}, {"title": title, "description": None}]
    bodies.append({"title": title, "description": ""})
    answers = [sqlite_client.post("/predict", json=b, headers=auth("client")) for b in bodies]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert {(a.json()["tag"], a.json()["confidence"]) for a in answers} == {
        (answers[0].json()["tag"], answers[0].json()["confidence"])
    }
    one = sqlite_client.get(
        f"/predictions/{answers[1].json()['prediction_id']}", headers=auth("client")
    )
    assert one.status_code == 200 and one.json()["description"] == ""


def test_concurrent_requests_are_microbatched_and_answered(sqlite_client: TestClient) -> None:
    from concurrent.futures import ThreadPoolExecutor

    titles = [f"Semantic segmentation of satellite images, part {i}" for i in range(24)]

    def call(title: str) -> dict:
        return sqlite_client.post(
            "/predict", json={"title": title, "description": "Pixels."}, headers=auth("client")
        ).json()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, titles))
    assert all(r["tag"] == "computer-vision" for r in results)


BAD_INPUTS = [
    ("malformed json", b'{"title": "x"', 422),
    ("not an object", b'["title"]', 422),
    ("missing title", b'{"description": "only a description"}', 422),
    ("empty title", b'{"title": "", "description": "d"}', 422),
    ("blank title", b'{"title": "   ", "description": "d"}', 422),
    ("title wrong type", b'{"title": 42, "description": "d"}', 422),
    ("description wrong type", b'{"title": "t", "description": ["d"]}', 422),
    ("title too long", b'{"title": "' + b"x" * 301 + b'", "description": ""}', 422),
    ("description too long", b'{"title": "t", "description": "' + b"y" * 5001 + b'"}', 422),
    ("empty body", b"", 422),
    # Neither database can store these: refused here, never left to poison the write-behind log.
    ("NUL in the title", b'{"title": "a \\u0000 b", "description": "d"}', 422),
    ("lone surrogate in the description", b'{"title": "t", "description": "\\ud800"}', 422),
    ("invisible title", b'{"title": "\\u200b\\u2060", "description": "d"}', 422),
    # FastAPI answers these with a bare 400 "error parsing the body"; said here as a 422.
    ("not UTF-8", b'{"title": "\xff", "description": "d"}', 422),
    ("nested too deeply", b"[" * 100_000, 422),
    ("a number of 5,000 digits", b'{"title": ' + b"1" * 5000 + b"}", 422),
    # Python reads these, JSON has no such values: the 422 that echoes them must be JSON.
    ("NaN", b'{"title": NaN}', 422),
    ("Infinity in a list", b'{"title": "t", "description": [-Infinity]}', 422),
]


def _strict_json(text: str) -> object:
    """`text` read as JSON, as JavaScript or Go read it: no NaN, no infinities."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(("case", "body", "status"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_clear_4xx(
    sqlite_client: TestClient, case: str, body: bytes, status: int
) -> None:
    response = sqlite_client.post(
        "/predict", content=body, headers=auth("client") | {"content-type": "application/json"}
    )
    assert response.status_code == status, case
    assert _strict_json(response.text)["detail"], case  # type: ignore[index]


def test_title_at_the_limit_is_accepted(sqlite_client: TestClient) -> None:
    response = sqlite_client.post(
        "/predict", json={"title": "x" * 300, "description": "y" * 5000}, headers=auth("client")
    )
    assert response.status_code == 200


def test_characters_are_counted_as_composed(sqlite_client: TestClient) -> None:
    """300 accented letters, each sent as a letter and a combining accent (600 code points, as
    macOS sends them): 300 characters on the page and to the model, so within the limit."""
    decomposed = "e\u0301" * 300
    response = sqlite_client.post("/predict", json={"title": decomposed}, headers=auth("client"))
    assert response.status_code == 200, response.text
    over = sqlite_client.post(
        "/predict", json={"title": decomposed + "e\u0301"}, headers=auth("client")
    )
    assert over.status_code == 422
    assert over.json()["detail"] == "title has 301 characters; the limit is 300"


@pytest.mark.parametrize(
    ("items", "fragment"),
    [([], "must not be empty"), ([{"title": "t", "description": ""}] * 257, "at most 256")],
    ids=["empty batch", "oversized batch"],
)
def test_bad_batches(sqlite_client: TestClient, items: list, fragment: str) -> None:
    response = sqlite_client.post("/predict/batch", json={"items": items}, headers=auth("client"))
    assert response.status_code == 422
    assert fragment in response.json()["detail"]


def test_batch_item_over_limit_names_the_item(sqlite_client: TestClient) -> None:
    items = [{"title": "fine", "description": ""}, {"title": "x" * 301, "description": ""}]
    response = sqlite_client.post("/predict/batch", json={"items": items}, headers=auth("client"))
    assert response.status_code == 422
    assert "items[1].title" in response.json()["detail"]
    one = sqlite_client.post("/predict/batch", json={"items": items[1:]}, headers=auth("client"))
    assert one.json()["detail"].startswith("items[0].title has 301 characters")
