"""Keys and roles: 401 for a missing or unknown key, 403 for the wrong role."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.testclient import TestClient

from service.api.deps import roles_checked
from service.api_keys import hash_key
from service.config import Settings
from service.ml.training import TrainResult
from tests.conftest import KEYS, auth, auth_as, sqlite_app
from tests.waiting import wait_until

ITEM = {"title": "Image captioning", "description": "Describe photos with words."}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}, {"Authorization": ""}],
    ids=["missing", "unknown", "wrong scheme", "empty"],
)
def test_missing_or_wrong_key_is_401(sqlite_client: TestClient, headers: dict) -> None:
    response = sqlite_client.post("/predict", json=ITEM, headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"]


def test_roles(sqlite_client: TestClient) -> None:
    assert sqlite_client.post("/predict", json=ITEM, headers=auth("client")).status_code == 200
    assert sqlite_client.post("/predict", json=ITEM, headers=auth("admin")).status_code == 200
    forbidden = sqlite_client.post("/predict", json=ITEM, headers=auth("reviewer"))
    assert forbidden.status_code == 403
    assert "reviewer" in forbidden.json()["detail"]
    promote = sqlite_client.post("/models/v0001/promote", headers=auth("client"))
    assert promote.status_code == 403
    assert sqlite_client.post("/models/v0001/promote", headers=auth("admin")).status_code == 200


def test_probes_need_no_key(sqlite_client: TestClient) -> None:
    assert sqlite_client.get("/healthz").json() == {"status": "ok"}
    ready = sqlite_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["model_version"] == "v0001"
    assert sqlite_client.get("/openapi.json").status_code == 200


# A value for each path parameter of the schema, of the form the operation takes.
PATH_VALUES = {
    "version": "v0001",
    "task_id": "1",
    "feedback_id": "1",
    "prediction_id": "0" * 32,
    "job_id": "no-such-job",
}


def test_the_schema_names_the_roles_each_operation_takes(sqlite_client: TestClient) -> None:
    """/docs, and a client generated from /openapi.json, learn from each operation which keys
    it takes: its 401, and its 403 naming the roles, exactly those whose keys the app lets
    through. Before, no operation said either: the schema showed a bearer key and nothing of
    roles, so a reader found out by being refused."""
    paths = sqlite_client.get("/openapi.json").json()["paths"]
    checked = 0
    for path, operations in paths.items():
        url = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)
        for method, operation in operations.items():
            responses = operation["responses"]
            if "security" not in operation:  # the probes: no key, no key refused
                assert not {"401", "403"} & set(responses), (method, path)
                assert sqlite_client.request(method, url).status_code == 200, (method, path)
                continue
            assert "401" in responses and "403" in responses, (method, path)
            said = re.fullmatch(r".* takes (.+) keys", responses["403"]["description"])
            assert said, responses["403"]
            documented = set(re.split(r", | or ", said.group(1)))
            let_through = {
                role
                for role, key in KEYS.items()
                if sqlite_client.request(method, url, headers=bearer(key)).status_code != 403
            }
            assert documented == let_through, (method, path)
            assert sqlite_client.request(method, url).status_code == 401, (method, path)
            checked += 1
    assert checked > 30


# What answers without a key: the probes, the docs and the review page with their files (the
# page asks for a key itself). Nothing else.
OPEN_ROUTES = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
    ("HEAD", "/openapi.json"),
    ("GET", "/docs"),
    ("HEAD", "/docs"),
    ("GET", "/docs/assets/{name}"),
    ("HEAD", "/docs/assets/{name}"),
    ("GET", "/review"),
    ("HEAD", "/review"),
    ("GET", "/review/assets/{name}"),
    ("HEAD", "/review/assets/{name}"),
}


def test_every_route_checks_a_key_but_the_open_ones(sqlite_client: TestClient) -> None:
    """The schema walk above sees only the operations in /openapi.json: a route added with
    `include_in_schema=False` and no key check would be open to anyone with no test to say
    so. This one walks the app's routes themselves, hidden ones included."""
    routes = []
    for route in sqlite_client.app.routes:  # type: ignore[attr-defined]
        # FastAPI keeps an included router's routes behind one entry.
        routes += (
            route.effective_candidates() if hasattr(route, "effective_candidates") else [route]
        )
    unchecked = {
        (method, route.path)
        for route in routes
        for method in route.methods
        if not isinstance(getattr(route, "dependant", None), Dependant)
        or roles_checked(route.dependant) is None
    }
    assert unchecked == OPEN_ROUTES
    assert len(routes) > 30 + len(OPEN_ROUTES)


def test_whoami_tells_a_personal_key_from_a_shared_one(sqlite_client: TestClient) -> None:
    assert sqlite_client.get("/whoami", headers=auth_as("pia")).json() == {
        "role": "reviewer",
        "name": "pia",
    }
    assert sqlite_client.get("/whoami", headers=auth("client")).json() == {
        "role": "client",
        "name": None,
    }
    assert sqlite_client.get("/whoami").status_code == 401


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_for_status(client: TestClient, key: str, status: int) -> None:
    """GET /whoami with `key` until it answers `status` (the key file is read once a second)."""
    wait_until(
        lambda: client.get("/whoami", headers=bearer(key)).status_code == status,
        what=f"/whoami to answer {status}",
        every_s=0.1,
    )


def test_keys_in_the_key_file_change_without_a_restart(
    make_settings: Callable[..., Settings], tmp_path: Path, shared_result: TrainResult
) -> None:
    path = tmp_path / "keys"
    path.write_text(f"reviewer/cat:cat-old\nclient/search:{hash_key('search-key')}\n")
    with sqlite_app(make_settings, tmp_path, shared_result, api_keys_file=path) as client:
        assert client.get("/whoami", headers=bearer("cat-old")).json()["name"] == "cat"
        assert client.post("/predict", json=ITEM, headers=bearer("search-key")).status_code == 200
        # Rotate cat's key and revoke the search client's, as an operator edits the file.
        path.write_text("reviewer/cat:cat-new\n")
        wait_for_status(client, "cat-old", 401)
        assert client.get("/whoami", headers=bearer("cat-new")).json()["name"] == "cat"
        assert client.post("/predict", json=ITEM, headers=bearer("search-key")).status_code == 401
        assert client.post("/predict", json=ITEM, headers=auth("client")).status_code == 200
        # A broken edit is refused: the last good keys stay, and /metrics says so.
        path.write_text("reviewer/cat cat-newer\n")
        time.sleep(1.1)
        assert client.get("/whoami", headers=bearer("cat-new")).status_code == 200
        metrics = client.get("/metrics", headers=auth("admin")).text
        assert "tagflow_api_keys_file_valid 0.0" in metrics
        assert 'tagflow_api_keys{role="reviewer"} 4.0' in metrics  # 3 fixed + cat's
        assert "tagflow_api_keys_file_rejections_total 1.0" in metrics


# Bodies FastAPI fails to read before any dependency runs (the key check is a dependency).
UNREADABLE = {
    "malformed JSON": b'{"title": "Image captioning", ',
    "not UTF-8": b'{"title": "\xff\xfe"}',
    "nested too deeply": b"[" * 100_000 + b"]" * 100_000,
}


def _json_body_routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every operation that reads a JSON body, path parameters filled in."""
    routes = []
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        for method, operation in operations.items():
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                filled = path.replace("{version}", "v0001").replace("{task_id}", "1")
                routes.append((method.upper(), filled))
    return routes


def test_no_key_no_role_learns_nothing_about_the_body(sqlite_client: TestClient) -> None:
    """The key is checked before the body is read as JSON: a body that is not JSON got a 422
    from FastAPI before the key check ran, to callers without a key too. Now a missing or
    unknown key is 401 and a key of the wrong role 403, whatever the body; only a caller
    allowed to use the operation is told what is wrong with the body."""
    routes = _json_body_routes(sqlite_client)
    assert ("POST", "/predict") in routes and ("PUT", "/models/v0001/threshold") in routes
    content = {"Content-Type": "application/json"}
    for (method, path), (kind, body) in itertools.product(routes, UNREADABLE.items()):
        for headers in ({}, bearer("nope"), {"Authorization": "Basic abc"}):
            response = sqlite_client.request(method, path, content=body, headers=headers | content)
            assert response.status_code == 401, (method, path, kind, headers, response.text)
            assert response.headers["WWW-Authenticate"] == "Bearer"
        allowed = sqlite_client.request(method, path, content=body, headers=auth("admin") | content)
        assert allowed.status_code == 422, (method, path, kind, allowed.text)
    for method, path, role in (
        ("POST", "/predict", "reviewer"),
        ("POST", "/predict/batch", "reviewer"),
        ("POST", "/review/1/label", "client"),
        ("PUT", "/models/v0001/threshold", "reviewer"),
    ):
        for kind, body in UNREADABLE.items():
            response = sqlite_client.request(
                method, path, content=body, headers=auth(role) | content
            )
            assert response.status_code == 403, (method, path, kind, response.text)
            assert f"({role})" in response.json()["detail"]
