"""The API's schema lists every answer an operation gives: the error answers the app is made to
give here (an unknown version, task, report, job or prediction; a conflict; a quota; a body
too large; no model; the database away) are each documented for the operation that gave them,
so a client generated from /openapi.json can expect them. Before, the schema listed the 401,
403 and 422 and nothing else: no 404, 409, 413, 429 nor 503."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, create_engine

from service import quotas
from service.api.main import create_app
from service.config import Settings
from service.crud import review_intake
from service.entities.review import ReviewReason, ReviewTask
from service.ml import registry
from service.ml.dataset import text_hash
from service.ml.training import TrainResult
from tests.conftest import auth, auth_as, sqlite_app

ITEM = {"title": "Image captioning", "description": "Describe photos with words."}
UNKNOWN_PREDICTION = "0" * 32


def assert_documented(client: TestClient, response: httpx.Response, status: int) -> None:
    """`response` has `status`, and the schema lists it for the operation that gave it."""
    request = response.request
    assert response.status_code == status, (request.method, request.url.path, response.text)
    assert response.json()["detail"], response.text  # the body every error answer has
    paths = client.get("/openapi.json").json()["paths"]
    method = request.method.lower()
    # A path without parameters before one with: /models/history, not /models/{version}.
    path = next(
        path
        for path in sorted(paths, key=lambda path: path.count("{"))
        if method in paths[path]
        and re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", path), request.url.path)
    )
    documented = sorted(paths[path][method]["responses"])
    assert str(status) in documented, f"{request.method} {path} answers {status}: {documented}"
    if status in (429, 503):
        assert_retry_after(response, paths[path][method]["responses"][str(status)])


def assert_retry_after(response: httpx.Response, documented: dict) -> None:
    """A 429 or 503 says when to try again, and its schema says it does."""
    assert int(response.headers["retry-after"]) >= 1, response.headers
    assert "Retry-After" in documented.get("headers", {}), documented


@pytest.fixture
def app(
    make_settings: Callable[..., Settings], tmp_path: Path, shared_result: TrainResult
) -> Iterator[TestClient]:
    with sqlite_app(make_settings, tmp_path, shared_result, feedback_per_key_per_minute=1) as c:
        yield c


def leased_task(client: TestClient) -> int:
    """A review task, leased to the reviewer pia."""
    state = client.app.state.tagflow  # type: ignore[attr-defined]
    with Session(state.engine) as session:
        task = review_intake.create_task(
            session,
            task=ReviewTask(
                text_hash=text_hash("Some tool", ""),
                title="Some tool",
                description="",
                reason=ReviewReason.LOW_CONFIDENCE,
                uncertainty=0.5,
                suggestion_tag="other",
                suggestion_scores={"other": 1.0},
            ),
        )
        assert task is not None and task.id is not None
        task_id = task.id
    claimed = client.post("/review/claim", headers=auth_as("pia"))
    assert claimed.json()["task_id"] == task_id
    return task_id


def test_an_unknown_thing_asked_for_is_a_documented_404(app: TestClient) -> None:
    admin = auth("admin")
    for response in (
        app.get("/models/v9999", headers=admin),
        app.post("/models/v9999/promote", headers=admin),
        app.put("/models/v9999/threshold", json={"threshold": 0.5}, headers=admin),
        app.post("/models/rollback", headers=admin),  # v0001 replaced none
        app.get("/jobs/no-such-job", headers=admin),
        app.get("/feedback/999", headers=admin),
        app.get(f"/predictions/{UNKNOWN_PREDICTION}", headers=admin),
        app.post("/feedback", json={"prediction_id": UNKNOWN_PREDICTION, "correct_tag": "other"}),
        app.post("/review/999/skip", headers=auth_as("pia")),
        app.post("/review/999/label", json={"tag": "other"}, headers=auth_as("pia")),
    ):
        if response.request.url.path == "/feedback":  # sent without a key, to show the 401 too
            assert_documented(app, response, 401)
            continue
        assert_documented(app, response, 404)


def test_a_conflict_is_a_documented_409(app: TestClient, shared_result: TrainResult) -> None:
    admin = auth("admin")
    assert_documented(app, app.post("/models/rollback?from=v9999", headers=admin), 409)
    task_id = leased_task(app)
    # Leased to pia: not quin's to renew.
    assert_documented(app, app.post(f"/review/{task_id}/renew", headers=auth_as("quin")), 409)
    labelled = app.post(f"/review/{task_id}/label", json={"tag": "other"}, headers=auth_as("pia"))
    assert labelled.status_code == 201
    again = app.post(f"/review/{task_id}/label", json={"tag": "mlops"}, headers=auth_as("pia"))
    assert_documented(app, again, 409)
    assert again.json()["label"]["tag"] == "other"  # a field besides `detail`, as documented
    # A version whose artifact was altered since it was registered is not promoted.
    state = app.app.state.tagflow  # type: ignore[attr-defined]
    artifacts = state.settings.artifacts_dir
    with Session(state.engine) as session:
        row = registry.register(session, result=shared_result, artifacts_dir=artifacts)
    (registry.artifact_folder(row, artifacts_dir=artifacts) / registry.MODEL_FILE).write_bytes(b"x")
    assert_documented(app, app.post(f"/models/{row.version}/promote", headers=admin), 409)
    assert_documented(app, app.get(f"/models/{row.version}/bundle", headers=admin), 409)


def test_each_review_route_documents_its_own_refusals(app: TestClient) -> None:
    """A label of a task shed or whose lease ran out is kept, while a renewal of a lease that
    ran out is refused: the schema said all of them refuse both alike."""
    paths = app.get("/openapi.json").json()["paths"]

    def refusal(route: str) -> str:
        return paths[f"/review/{{task_id}}/{route}"]["post"]["responses"]["409"]["description"]

    for route in ("skip", "release"):
        assert "shed" in refusal(route) and "ran out" not in refusal(route), route
    assert "a task shed from the queue or whose lease ran out is kept" in refusal("label")
    assert "its lease ran out (a claim put the task back in the queue" in refusal("renew")


def test_a_quota_and_a_large_body_are_documented(app: TestClient) -> None:
    if time.time() % quotas.WINDOW_S > quotas.WINDOW_S - 10:  # both reports in one minute
        time.sleep(quotas.WINDOW_S - time.time() % quotas.WINDOW_S + 0.1)
    client = auth("client")
    ids = [
        app.post("/predict", json={"title": title}, headers=client).json()["prediction_id"]
        for title in ("A graph library", "A speech model")
    ]
    first = app.post(
        "/feedback", json={"prediction_id": ids[0], "correct_tag": "other"}, headers=client
    )
    assert first.status_code == 201, first.text
    second = {"prediction_id": ids[1], "correct_tag": "other"}
    assert_documented(app, app.post("/feedback", json=second, headers=client), 429)
    large = {"title": "x" * 10_000_000}
    assert_documented(app, app.post("/predict", json=large, headers=client), 413)
    # An operation that takes no body refuses one over the bound all the same.
    unasked = app.request("GET", "/tags", content=b"x" * 10_000_000, headers=client)
    assert_documented(app, unasked, 413)


def test_no_model_is_a_documented_503(make_settings: Callable[..., Settings]) -> None:
    with TestClient(create_app(make_settings())) as client:
        response = client.post("/predict", json=ITEM, headers=auth("client"))
        assert_documented(client, response, 503)


def test_with_the_database_away_every_operation_answers_as_documented(app: TestClient) -> None:
    """Every operation of the schema, called as it should be with the database away: each
    answers a status it documents, and those that read the database a 503."""
    state = app.app.state.tagflow  # type: ignore[attr-defined]
    working = state.engine
    # A PostgreSQL URL where nothing listens: every connection fails for real, at once.
    state.engine = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/test", connect_args={"connect_timeout": 2}
    )
    answered: dict[str, int] = {}
    try:
        for path, operations in app.get("/openapi.json").json()["paths"].items():
            url = path.format(**PATH_VALUES)
            for method, operation in operations.items():
                request = {"headers": auth("admin"), **body_for(path, operation)}
                response = app.request(method, url, **request)
                answered[f"{method.upper()} {path}"] = response.status_code
                assert str(response.status_code) in operation["responses"], (
                    f"{method.upper()} {path} answers {response.status_code}: {response.text}"
                )
                if response.status_code == 503 and path != "/readyz":  # a probe's answer
                    assert_retry_after(response, operation["responses"]["503"])
    finally:
        state.engine.dispose()
        state.engine = working
    # All but those that read no database (the import refuses this body before it does).
    assert len(answered) > 30
    assert {operation for operation, status in answered.items() if status != 503} == {
        "GET /healthz",
        "GET /metrics",
        "GET /tags",
        "GET /whoami",
        "POST /models/import",
        "POST /predict",
        "POST /predict/batch",
    }, answered


PATH_VALUES = {
    "version": "v0001",
    "task_id": "1",
    "feedback_id": "1",
    "prediction_id": UNKNOWN_PREDICTION,
    "job_id": "no-such-job",
}


def body_for(path: str, operation: dict) -> dict[str, object]:
    """What to send the operation with its key: a body it takes, so that it gets as far as
    the database."""
    if "requestBody" not in operation:
        return {}
    bodies: dict[str, object] = {
        "/predict": ITEM,
        "/predict/batch": {"items": [ITEM]},
        "/models/{version}/threshold": {"threshold": 0.5},
        "/feedback": {"prediction_id": UNKNOWN_PREDICTION, "correct_tag": "other"},
        "/review/{task_id}/label": {"reviewer": "ann", "tag": "other"},
    }
    if path == "/models/import":
        return {
            "content": b"not a bundle",
            "headers": {**auth("admin"), "Content-Type": "application/gzip"},
        }
    return {"json": bodies.get(path, {"reviewer": "ann"})}
