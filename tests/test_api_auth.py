"""Keys and roles: 401 for a missing or unknown key, 403 for the wrong role."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.conftest import auth, auth_as

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


def test_whoami_tells_a_personal_key_from_a_shared_one(sqlite_client: TestClient) -> None:
    assert sqlite_client.get("/whoami", headers=auth_as("ann")).json() == {
        "role": "reviewer",
        "name": "ann",
    }
    assert sqlite_client.get("/whoami", headers=auth("client")).json() == {
        "role": "client",
        "name": None,
    }
    assert sqlite_client.get("/whoami").status_code == 401
