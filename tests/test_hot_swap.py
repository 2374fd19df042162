"""Promotion and rollback reach the running API without a restart or a failed request."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from service.api.lifecycle import sync_production
from service.api.main import create_app
from service.config import Settings
from service.db import init_db, make_engine
from service.entities import ModelStatus
from service.ml import registry
from service.ml.training import TrainResult
from service.tags import TagSet
from tests.conftest import auth, register_promoted, sqlite_app
from tests.waiting import wait_until

ITEM = {"title": "Tracking experiments and deploying models", "description": "An MLOps stack."}


def _register(client: TestClient, result: TrainResult) -> str:
    state = client.app.state.tagflow
    with Session(state.engine, expire_on_commit=False) as session:
        return registry.register(
            session, result=result, artifacts_dir=state.settings.artifacts_dir
        ).version


def test_promote_under_concurrent_requests(client: TestClient, seed_result: TrainResult) -> None:
    candidate = _register(client, seed_result)
    # (sent after the promote call returned, status, version): counted, not timed, so that
    # a busy machine sends requests on both sides of the promotion however slowly.
    seen: list[tuple[bool, int, str | None]] = []
    returned = threading.Event()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            after = returned.is_set()
            r = client.post("/predict", json=ITEM, headers=auth("client"))
            seen.append((after, r.status_code, r.json().get("model_version")))

    def answered(*, after: bool) -> int:
        return sum(1 for sent_after, _, _ in list(seen) if sent_after is after)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: answered(after=False) >= 8, what="answers before the promotion")
        promoted = client.post(f"/models/{candidate}/promote", headers=auth("admin"))
        returned.set()
        wait_until(lambda: answered(after=True) >= 8, what="answers after the promotion")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert promoted.status_code == 200 and promoted.json()["status"] == "production"
    assert all(code == 200 for _, code, _ in seen)
    assert seen[0][2] == "v0001"
    # Once the promote call has returned, nothing answers with the old model any more.
    assert {version for after, _, version in seen if after} == {candidate}
    after = client.post("/predict", json=ITEM, headers=auth("client")).json()
    assert after["model_version"] == candidate
    rolled = client.post("/models/rollback", params={"from": candidate}, headers=auth("admin"))
    assert rolled.status_code == 200 and rolled.json()["version"] == "v0001"
    assert (
        client.post("/predict", json=ITEM, headers=auth("client")).json()["model_version"]
        == "v0001"
    )
    # The same request again (a retry) changes nothing: the candidate is no longer production.
    again = client.post("/models/rollback", params={"from": candidate}, headers=auth("admin"))
    assert again.status_code == 409 and "nothing rolled back" in again.json()["detail"]
    # Nor does a plain one bring the candidate back: v0001 replaced nothing.
    first = client.post("/models/rollback", headers=auth("admin"))
    assert first.status_code == 404 and "before v0001" in first.json()["detail"]
    # The history says what happened, newest first, and who asked.
    history = client.get("/models/history", headers=auth("admin"))
    assert history.status_code == 200
    changes = history.json()["changes"]
    steps = [(c["action"], c["version"], c["replaced"], c["actor"]) for c in changes]
    assert steps == [
        ("rollback", "v0001", candidate, "shared admin key"),
        ("promote", candidate, "v0001", "shared admin key"),
        ("promote", "v0001", None, "test"),
    ]
    assert changes[1]["undone_by"] == changes[0]["id"] and changes[0]["at"].endswith("Z")
    assert client.get("/models/history", headers=auth("client")).status_code == 403
    assert client.get("/models/history?limit=0", headers=auth("admin")).status_code == 422
    # `from` names a version: empty, or with a line break, it is a 422, not a 409 echoing it.
    for odd in ("", "x\ny", " v0001"):
        refused = client.post("/models/rollback", params={"from": odd}, headers=auth("admin"))
        assert refused.status_code == 422, (odd, refused.text)
    assert (
        client.post("/predict", json=ITEM, headers=auth("client")).json()["model_version"]
        == "v0001"
    )


def test_promotion_from_outside_reaches_the_api(
    sqlite_client: TestClient,
    seed_result: TrainResult,
    tags: TagSet,
) -> None:
    """A promotion by the CLI or a worker (another process) is picked up by the watch loop."""
    candidate = _register(sqlite_client, seed_result)
    with Session(sqlite_client.app.state.tagflow.engine) as session:
        registry.promote(
            session,
            actor="test",
            version=candidate,
            tags=tags,
            artifacts_dir=sqlite_client.app.state.tagflow.settings.artifacts_dir,
        )

    def served() -> str:
        return sqlite_client.post("/predict", json=ITEM, headers=auth("client")).json()[
            "model_version"
        ]

    wait_until(lambda: served() == candidate, what=f"{candidate} to be served")


def test_tampered_artifact_is_refused_and_old_model_keeps_serving(
    client: TestClient, shared_result: TrainResult
) -> None:
    candidate = _register(client, shared_result)
    state = client.app.state.tagflow
    with Session(state.engine) as session:
        row = registry.get_version(session, version=candidate)
        path = state.settings.artifacts_dir / row.artifact_path / "model.joblib"
    path.write_bytes(b"not the model")
    response = client.post(f"/models/{candidate}/promote", headers=auth("admin"))
    assert response.status_code == 409
    assert "checksum" in response.json()["detail"]
    assert (
        client.post("/predict", json=ITEM, headers=auth("client")).json()["model_version"]
        == "v0001"
    )


def test_tampered_production_row_is_not_loaded(
    sqlite_client: TestClient, shared_result: TrainResult
) -> None:
    """Even if the registry names a tampered version production, the API keeps the old one."""
    candidate = _register(sqlite_client, shared_result)
    state = sqlite_client.app.state.tagflow
    # Named production and tampered in one commit: promote() commits on its own, and the
    # watch loop (every 0.2 s) could load the still-valid version between two commits.
    with Session(state.engine) as session:
        previous = registry.get_production(session)
        assert previous is not None
        previous.status = ModelStatus.ARCHIVED
        row = registry.get_version(session, version=candidate)
        row.status = ModelStatus.PRODUCTION
        row.checksum = "0" * 64
        session.add_all([previous, row])
        session.commit()
    state.predictor.swap(state.predictor.current)  # no-op, keeps v0001 until the watcher runs
    # Until the watch loop has met the row (a fixed 1 s was too short on a busy machine).
    wait_until(lambda: state.model_errors, what="the watch loop to refuse the tampered row")
    body = sqlite_client.post("/predict", json=ITEM, headers=auth("client")).json()
    assert body["model_version"] == "v0001"
    ready = sqlite_client.get("/readyz").json()
    assert any("checksum" in e for e in ready["model_errors"])
    assert "tagflow_model_errors 1.0" in _metrics(sqlite_client)
    # Once the artifact verifies again, the version serves and the refusal is over (the alert
    # on tagflow_model_errors resolves); the count since start keeps it.
    with Session(state.engine) as session:
        row = registry.get_version(session, version=candidate)
        row.checksum = registry.sha256_file(
            state.settings.artifacts_dir / row.artifact_path / registry.MODEL_FILE
        )
        session.add(row)
        session.commit()
    wait_until(lambda: state.predictor.current.version == candidate, what=f"{candidate} served")
    body = sqlite_client.post("/predict", json=ITEM, headers=auth("client")).json()
    assert body["model_version"] == candidate
    assert sqlite_client.get("/readyz").json()["model_errors"] == []
    metrics = _metrics(sqlite_client)
    assert "tagflow_model_errors 0.0" in metrics
    assert "tagflow_model_refusals_total 1.0" in metrics


def _metrics(client: TestClient) -> str:
    return client.get("/metrics", headers=auth("metrics")).text


def test_unknown_version_is_404(sqlite_client: TestClient) -> None:
    assert sqlite_client.get("/models/v9999", headers=auth("client")).status_code == 404
    response = sqlite_client.post("/models/v9999/promote", headers=auth("admin"))
    assert response.status_code == 404
    assert "v9999" in response.json()["detail"]


def test_server_paths_are_shown_to_admin_keys_only(sqlite_client: TestClient) -> None:
    admin = sqlite_client.get("/models/v0001", headers=auth("admin")).json()
    assert Path(admin["artifact_path"]).name == "v0001"
    for role in ("client", "reviewer"):
        listed = sqlite_client.get("/models", headers=auth(role)).json()["models"]
        one = sqlite_client.get("/models/v0001", headers=auth(role)).json()
        for shown in (listed[-1], one):
            assert shown["version"] == "v0001" and shown["artifact_path"] is None
            assert shown["checksum"] == admin["checksum"] and shown["metrics"] == admin["metrics"]
            assert Path(admin["params"]["source"]).is_absolute()
            assert shown["params"]["source"] == Path(admin["params"]["source"]).name
            assert {k: v for k, v in shown["params"].items() if k != "source"} == {
                k: v for k, v in admin["params"].items() if k != "source"
            }


def test_models_listing_and_filter(sqlite_client: TestClient, seed_result: TrainResult) -> None:
    _register(sqlite_client, seed_result)
    listed = sqlite_client.get("/models", headers=auth("client")).json()["models"]
    assert [m["version"] for m in listed] == ["v0002", "v0001"]
    assert "checksum" in listed[0] and "metrics" in listed[0]
    f1 = {m["version"]: m["metrics"]["weighted_f1"] for m in listed}
    cut = max(f1.values())
    filtered = sqlite_client.get(
        "/models", params={"where": f"weighted_f1>={cut}"}, headers=auth("client")
    ).json()["models"]
    assert [m["version"] for m in filtered] == [v for v, f in f1.items() if f >= cut]
    for malformed in ("f1 ~ 3", "weighted_f1>=e", "weighted_f1>=-"):
        bad = sqlite_client.get("/models", params={"where": malformed}, headers=auth("client"))
        assert bad.status_code == 422 and "is not of the form" in bad.json()["detail"]
    typo = sqlite_client.get("/models", params={"where": "weighted_f>0"}, headers=auth("client"))
    assert typo.status_code == 422 and "did you mean weighted_f1" in typo.json()["detail"]
    png = sqlite_client.get("/models/v0001/report.png", headers=auth("client"))
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


def test_a_version_with_tags_no_longer_approved_is_not_promoted(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    seed_result: TrainResult,
    tags: TagSet,
) -> None:
    """`mlops` was dropped from the approved list: a version that can still answer it is a 409
    for the API's admins, and nothing in the registry changes."""
    narrower = tmp_path / "tags.csv"
    narrower.write_text(
        "tag,description\n"
        + "".join(f'{t.name},"{t.description}"\n' for t in tags.tags if t.name != "mlops")
    )
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'api.db'}", tags_file=narrower)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    with Session(engine) as session:
        for _ in range(2):
            registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
        # Promoted before the list changed.
        registry.promote(
            session, actor="test", version="v0001", tags=tags, artifacts_dir=settings.artifacts_dir
        )
    with TestClient(create_app(settings)) as client:
        refused = client.post("/models/v0002/promote", headers=auth("admin"))
        assert refused.status_code == 409
        assert refused.json()["detail"] == (
            "v0002 can answer with tags that are not approved (mlops): it stays candidate"
        )
    with Session(engine) as session:
        statuses = {r.version: r.status for r in registry.list_versions(session)}
    engine.dispose()
    assert statuses == {"v0001": ModelStatus.PRODUCTION, "v0002": ModelStatus.CANDIDATE}


def test_a_missing_artifact_is_refused_and_readyz_shows_no_server_path(
    sqlite_client: TestClient, shared_result: TrainResult
) -> None:
    """/readyz answers callers with no key, so a refusal shows the artifact's path under the
    artifacts directory, not where that directory is on the server."""
    candidate = _register(sqlite_client, shared_result)
    state = sqlite_client.app.state.tagflow
    artifacts = state.settings.artifacts_dir
    with Session(state.engine) as session:
        row = registry.get_version(session, version=candidate)
        folder = row.artifact_path
        model_file = artifacts / folder / registry.MODEL_FILE
        model_file.rename(model_file.with_suffix(".moved"))
        # Named production by hand: promote() verifies the artifact first.
        previous = registry.get_production(session)
        assert previous is not None
        previous.status, row.status = ModelStatus.ARCHIVED, ModelStatus.PRODUCTION
        session.add_all([previous, row])
        session.commit()
        try:
            wait_until(lambda: state.model_errors, what="the watch loop to refuse the artifact")
            ready = sqlite_client.get("/readyz").json()
        finally:
            model_file.with_suffix(".moved").rename(model_file)
    assert ready["model_version"] == "v0001"  # the old version serves on
    assert ready["model_errors"] == [
        f"artifact of {candidate} is missing at {folder}/{registry.MODEL_FILE}"
    ]
    assert str(artifacts.resolve().parent) not in str(ready)


def test_a_refused_production_version_is_named_in_predicts_503(
    make_settings: Callable[..., Settings], tmp_path: Path, seed_result: TrainResult
) -> None:
    """When the only production version is refused at load, /predict's 503 said no model was
    loaded "yet", as if one were coming; it names the refused version and sends the caller to
    /readyz for why (client keys see it: no server path in it)."""
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'api.db'}")
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    version = register_promoted(engine, settings, seed_result)
    with Session(engine) as session:
        folder = registry.get_version(session, version=version).artifact_path
    engine.dispose()
    model_file = settings.artifacts_dir / folder / registry.MODEL_FILE
    moved = model_file.with_suffix(".moved")
    model_file.rename(moved)
    with TestClient(create_app(settings)) as client:
        state = client.app.state.tagflow
        refused = client.post("/predict", json=ITEM, headers=auth("client"))
        ready = client.get("/readyz").json()
        moved.rename(model_file)
        wait_until(lambda: state.predictor.current is not None, what="the version to load")
        served = client.post("/predict", json=ITEM, headers=auth("client"))
    assert refused.status_code == 503
    assert refused.json() == {
        "detail": f"production version {version} was refused at load; GET /readyz says why"
    }
    assert str(settings.artifacts_dir) not in refused.text
    assert ready["model_errors"] == [
        f"artifact of {version} is missing at {folder}/{registry.MODEL_FILE}"
    ]
    assert served.status_code == 200 and served.json()["model_version"] == version


def test_a_refusal_ends_once_production_is_rolled_back_to_the_served_version(
    make_settings: Callable[..., Settings], tmp_path: Path, seed_result: TrainResult
) -> None:
    """v0002 was promoted, and this API refused its artifact (corrupt here) and served v0001
    on; production was rolled back to v0001. /readyz and tagflow_model_errors went on naming
    v0002's refusal until some other swap: the alert on it did not resolve."""
    with sqlite_app(make_settings, tmp_path, seed_result, watch_interval_s=3600) as client:
        state = client.app.state.tagflow
        candidate = _register(client, seed_result)
        with Session(state.engine) as session:
            registry.promote(
                session,
                actor="test",
                version=candidate,
                tags=state.tags,
                artifacts_dir=state.settings.artifacts_dir,
            )
            row = registry.get_version(session, version=candidate)
            model_file = state.settings.artifacts_dir / row.artifact_path / registry.MODEL_FILE
        model_file.write_bytes(b"corrupt after promotion")  # as this host's copy is
        sync_production(state)  # the watch loop's step, at once
        refused = client.get("/readyz").json()
        assert refused["model_version"] == "v0001"
        assert any(candidate in e and "checksum" in e for e in refused["model_errors"])
        assert "tagflow_model_errors 1.0" in _metrics(client)
        back = client.post(f"/models/rollback?from={candidate}", headers=auth("admin"))
        assert back.status_code == 200 and back.json()["version"] == "v0001"
        ready = client.get("/readyz")
        predicted = client.post("/predict", json=ITEM, headers=auth("client"))
        metrics = _metrics(client)
    assert ready.status_code == 200
    assert ready.json()["model_version"] == "v0001" and ready.json()["model_errors"] == []
    assert "tagflow_model_errors 0.0" in metrics
    assert "tagflow_model_refusals_total 1.0" in metrics  # the history since start stays
    assert predicted.json()["model_version"] == "v0001"


def test_readyz_names_only_the_refusal_of_the_production_version(
    make_settings: Callable[..., Settings], tmp_path: Path, seed_result: TrainResult
) -> None:
    """v0002 promoted and refused here, then v0003 promoted over it and refused too: /readyz
    went on naming v0002's refusal beside v0003's, and tagflow_model_errors read 2, though
    v0002 is no longer production. Only the production version's refusals are shown; the
    count since start keeps both."""
    with sqlite_app(make_settings, tmp_path, seed_result, watch_interval_s=3600) as client:
        state = client.app.state.tagflow
        for _ in range(2):
            candidate = _register(client, seed_result)
            with Session(state.engine) as session:
                registry.promote(
                    session,
                    actor="test",
                    version=candidate,
                    tags=state.tags,
                    artifacts_dir=state.settings.artifacts_dir,
                )
                row = registry.get_version(session, version=candidate)
                model_file = state.settings.artifacts_dir / row.artifact_path / registry.MODEL_FILE
            model_file.write_bytes(b"corrupt after promotion")
            sync_production(state)
        ready = client.get("/readyz").json()
        metrics = _metrics(client)
    assert ready["model_version"] == "v0001"
    assert [e.split(" has ")[0] for e in ready["model_errors"]] == ["artifact of v0003"]
    assert "tagflow_model_errors 1.0" in metrics
    assert "tagflow_model_refusals_total 2.0" in metrics


def test_the_watch_loop_and_a_promotion_swap_once_and_never_backwards(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    seed_result: TrainResult,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The watch loop's registry look ran beside the promote and rollback routes' own, with no
    lock: a tick that read production just after a change loaded the new version a second
    time beside the route (twice the memory and load time; nearly every change here), and one
    that read it just before could swap the old version back after the route served the new
    one. With the loop ticking continuously, each promotion and rollback is now one swap, in
    order, and what the route answered stays served."""
    rounds = 30
    with (
        caplog.at_level(logging.INFO, logger="service.ml.serving"),
        sqlite_app(make_settings, tmp_path, seed_result, watch_interval_s=0.001) as client,
    ):
        state = client.app.state.tagflow
        candidate = _register(client, seed_result)
        wrong: list[tuple[str, str | None]] = []
        for _ in range(rounds):
            for action, version in (
                (f"/models/{candidate}/promote", candidate),
                (f"/models/rollback?from={candidate}", "v0001"),
            ):
                answer = client.post(action, headers=auth("admin"))
                assert answer.status_code == 200, answer.text
                # Answered once this API serves it; a few ticks later it still does.
                for _ in range(5):
                    served = state.predictor.current.version
                    if served != version:
                        wrong.append((version, served))
                    time.sleep(0.002)
    swaps = [
        r.getMessage().split()[-1] for r in caplog.records if "serving model" in r.getMessage()
    ]
    changes = [v for n, v in enumerate(swaps) if n == 0 or swaps[n - 1] != v]
    # Before the lock: 114-117 swaps for 61 changes (a second load of nearly every version).
    assert len(swaps) == len(changes), f"{len(swaps)} swaps for {len(changes)} changes"
    assert changes == ["v0001"] + [candidate, "v0001"] * rounds, changes
    assert wrong == []
