"""The prediction API contract, on SQLite and PostgreSQL."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from service.entities import Prediction
from tests.conftest import auth

ITEM = {"title": "Object detection with YOLO", "description": "Real-time detection of cars in video."}


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
    ids = [client.post("/predict", json=ITEM, headers=auth("client")).json()["prediction_id"]
           for _ in range(3)]
    engine = client.app.state.tagflow.engine
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with Session(engine) as session:
            rows = session.exec(select(Prediction).where(Prediction.id.in_(ids))).all()
        if len(rows) == 3:
            break
        time.sleep(0.05)
    assert {r.id for r in rows} == set(ids)
    assert all(r.title == ITEM["title"] and r.latency_ms > 0 for r in rows)
