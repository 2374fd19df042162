"""Bounds on what a request may cost: the body (service/api/limits.py, 413) and the work
waiting to be scored (admission in the micro-batcher, 503 with Retry-After); never a 500."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.limits import max_body_bytes
from service.config import Settings
from service.ml.pipeline import base_split
from service.ml.training import TrainResult
from service.tags import TagSet
from tests.conftest import auth, sqlite_app
from tests.test_metrics import scrape, total

LIMIT = 4096


@pytest.fixture
def small_limit_client(
    make_settings: Callable[..., Settings], tmp_path: Path, shared_result: TrainResult
) -> Iterator[TestClient]:
    with sqlite_app(make_settings, tmp_path, shared_result, max_body_bytes=LIMIT) as client:
        yield client


def body(description_chars: int) -> bytes:
    return json.dumps({"title": "YOLO", "description": "x" * description_chars}).encode()


JSON_AROUND = len(body(0))


def test_a_declared_body_over_the_limit_is_refused_unread(small_limit_client: TestClient) -> None:
    response = small_limit_client.post(
        "/predict",
        content=body(LIMIT),
        headers={**auth("client"), "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json() == {
        "detail": f"request body of {LIMIT + JSON_AROUND} bytes is over the limit of {LIMIT} bytes"
    }
    metrics = small_limit_client.get("/metrics", headers=auth("metrics")).text
    # Refused before routing, yet counted under its route (it was "unmatched", out of sight of
    # a /predict dashboard).
    assert 'tagflow_http_requests_total{method="POST",route="/predict",status="413"} 1.0' in (
        metrics
    )
    small_limit_client.post("/nowhere", content=body(LIMIT), headers=auth("client"))
    metrics = small_limit_client.get("/metrics", headers=auth("metrics")).text
    assert 'tagflow_http_requests_total{method="POST",route="unmatched",status="413"} 1.0' in (
        metrics
    )


def test_a_streamed_body_over_the_limit_is_refused(small_limit_client: TestClient) -> None:
    chunks = [b'{"title": "YOLO", "description": "'] + [b"x" * 1000] * 5 + [b'"}']
    response = small_limit_client.post(
        "/predict",
        content=iter(chunks),  # no Content-Length: sent chunked
        headers={**auth("client"), "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert "over the limit of 4096 bytes" in response.json()["detail"]


def test_a_body_at_the_limit_is_served(small_limit_client: TestClient) -> None:
    at_limit = body(LIMIT - JSON_AROUND)
    assert len(at_limit) == LIMIT
    response = small_limit_client.post(
        "/predict",
        content=at_limit,
        headers={**auth("client"), "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text


def test_the_default_limit_admits_the_largest_valid_batch(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    # Every character escaped (\u00e9: 6 bytes), every item at both length limits.
    item = {
        "title": "é" * settings.max_title_chars,
        "description": "é" * settings.max_description_chars,
    }
    largest = json.dumps({"items": [item] * settings.max_batch_items}).encode()
    assert len(largest) <= max_body_bytes(settings) < 2 * len(largest)


def test_an_overloaded_api_answers_503_with_retry_after(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    shared_result: TrainResult,
    shared_dataset: Path,
    tags: TagSet,
) -> None:
    """Four full batches at once against a bound of 300 waiting items: the first is scored,
    batches arriving while it waits are refused at once, and nothing fails otherwise."""
    _, held_out, _ = base_split(shared_dataset, tags=tags)
    items = [
        {"title": f"{e.title} ({n})", "description": e.description}
        for n, e in enumerate(held_out * 7)
    ]
    batches = [{"items": items[i * 256 : (i + 1) * 256]} for i in range(4)]
    with sqlite_app(make_settings, tmp_path, shared_result, max_waiting_items=300) as client:

        def send(body: dict) -> tuple[int, dict, str | None]:
            response = client.post("/predict/batch", json=body, headers=auth("client"))
            return response.status_code, response.json(), response.headers.get("retry-after")

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(send, batches))
        metrics = scrape(client)
    codes = sorted(code for code, _, _ in answers)
    assert set(codes) == {200, 503} and codes[0] == 200, codes
    for code, body, retry_after in answers:
        if code == 503:
            assert retry_after == "1" and body["detail"].startswith("overloaded: ")
        else:
            assert len(body["results"]) == 256
    assert total(metrics, "tagflow_refused_requests_total") == codes.count(503)
    assert total(metrics, "tagflow_refused_items_total") == 256 * codes.count(503)


# Values found by schemathesis (session 7) that reached a database which could not take them:
# a 500 then, and a NUL in a title blocked the write-behind log on PostgreSQL for every later row.
UNSTORABLE = [
    ("POST", "/review/18446744073709551616/label", {"reviewer": "ann", "tag": "mlops"}),
    ("POST", "/review/2147483648/release", {"reviewer": "ann"}),  # past PostgreSQL's INTEGER
    ("GET", "/feedback/9223372036854775808", None),
    ("GET", "/jobs/%C2%96", None),  # not an RQ job id
    ("GET", "/predictions/a%00b", None),
    ("GET", "/models/v%00001", None),
    ("POST", "/models/v0001/compare?against=%00", None),
    ("PUT", "/models/v0001/threshold", {"threshold": 0.9, "note": "a \x00 note"}),
    ("POST", "/feedback", {"prediction_id": "x", "correct_tag": "mlops", "comment": "\ud800"}),
    ("POST", "/review/claim", {"reviewer": "a\x00b"}),
    ("POST", "/predict/batch", {"items": [{"title": "ok"}, {"title": "\x00"}]}),
]


@pytest.mark.parametrize(("method", "path", "payload"), UNSTORABLE, ids=[u[1] for u in UNSTORABLE])
def test_what_no_database_can_store_is_a_422(
    client: TestClient, method: str, path: str, payload: object
) -> None:
    # json.dumps escapes as \\u0000 and \\ud800, as a client's JSON would.
    body = None if payload is None else json.dumps(payload)
    headers = auth("admin") | {"content-type": "application/json"}
    response = client.request(method, path, content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]
    fine = client.post("/predict", json={"title": "Kubeflow pipelines"}, headers=auth("client"))
    assert fine.status_code == 200
