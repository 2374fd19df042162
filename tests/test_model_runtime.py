"""A version records the runtime that made it, and one this runtime cannot trust is refused.

The artifacts "made by another scikit-learn" here are real trained models pickled again with
each estimator's `_sklearn_version` state set to another release, as that release would have
written them: scikit-learn itself warns when it loads them (`InconsistentVersionWarning`),
nothing is mocked."""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import pytest
import sklearn
from alembic import command
from fastapi.testclient import TestClient
from sklearn.base import BaseEstimator
from sqlalchemy import inspect
from sqlalchemy.engine import Engine
from sqlmodel import Session
from typer.testing import CliRunner

from service import retraining
from service.cli import app
from service.config import Settings
from service.db import init_db, make_engine
from service.entities import ModelStatus, ModelVersion
from service.entities.model_version import RUNTIME, RUNTIME_PARTS
from service.errors import ArtifactError
from service.migrations import current_revision, head_revision, make_config
from service.ml import production_history, registry
from service.ml.bundle import export_bundle, import_bundle
from service.ml.encoder import Encoder
from service.ml.runtime import current_runtime
from service.ml.training import TrainResult
from service.tags import TagSet
from tests.conftest import auth, register_promoted
from tests.waiting import wait_until

ITEM = {"title": "Tracking experiments and deploying models", "description": "An MLOps stack."}
MAJOR, MINOR = (int(part) for part in sklearn.__version__.split(".")[:2])
OLDER_MINOR = f"{MAJOR}.{MINOR - 1}.0" if MINOR else f"{MAJOR - 1}.99.0"  # refused
OTHER_PATCH = f"{MAJOR}.{MINOR}.{'1' if sklearn.__version__.endswith('.0') else '0'}"  # loaded


class _PickledBy(pickle.Pickler):
    """Pickles as scikit-learn `release` would: every estimator's state names that release."""

    def __init__(self, file: Any, release: str) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.release = release

    def reducer_override(self, obj: Any) -> Any:
        if not isinstance(obj, BaseEstimator):
            return NotImplemented
        reduced = obj.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        return (*reduced[:2], {**reduced[2], "_sklearn_version": self.release}, *reduced[3:])


def rewrite_model_file(
    session: Session, row: ModelVersion, settings: Settings, write: Callable[[Path], object]
) -> None:
    """Replace `row`'s model file by what `write(path)` writes there, and record the new file's
    checksum, as if the version had been registered so."""
    model_file = registry.artifact_folder(row, artifacts_dir=settings.artifacts_dir)
    model_file /= registry.MODEL_FILE
    write(model_file)
    row.checksum = registry.sha256_file(model_file)
    session.add(row)
    session.commit()


def made_by(engine: Engine, settings: Settings, version: str, release: str) -> None:
    """Make `version`'s artifact the one scikit-learn `release` would have registered: its
    model pickled by that release, its record saying so, its checksum the file's."""
    with Session(engine) as session:
        row = registry.get_version(session, version=version)
        model = registry.load_model(row, artifacts_dir=settings.artifacts_dir)

        def pickle_by_release(model_file: Path) -> None:
            with model_file.open("wb") as fh:
                _PickledBy(fh, release).dump(model)

        row.params = {**row.params, RUNTIME: {**current_runtime(), "scikit-learn": release}}
        rewrite_model_file(session, row, settings, pickle_by_release)


def unrecorded(engine: Engine, version: str) -> None:
    """Make `version` one registered before the runtime was recorded."""
    with Session(engine) as session:
        row = registry.get_version(session, version=version)
        row.params = {k: v for k, v in row.params.items() if k != RUNTIME}
        session.add(row)
        session.commit()


def _register(engine: Engine, settings: Settings, result: TrainResult) -> str:
    with Session(engine, expire_on_commit=False) as session:
        return registry.register(
            session, result=result, artifacts_dir=settings.artifacts_dir
        ).version


def _promote(engine: Engine, settings: Settings, tags: TagSet, version: str) -> None:
    with Session(engine) as session:
        registry.promote(
            session, version=version, tags=tags, artifacts_dir=settings.artifacts_dir, actor="t"
        )


def test_a_version_records_the_runtime_that_made_it_and_one_from_before_says_unknown(
    engine: Engine, make_settings: Callable[..., Settings], shared_result: TrainResult
) -> None:
    settings = make_settings()
    version = _register(engine, settings, shared_result)
    with Session(engine) as session:
        row = registry.get_version(session, version=version)
        shown = registry.public_record(row, artifacts_dir=settings.artifacts_dir)
    assert row.params[RUNTIME] == current_runtime()
    assert set(current_runtime()) == set(RUNTIME_PARTS)
    assert current_runtime()["scikit-learn"] == sklearn.__version__
    assert shown.params[RUNTIME] == current_runtime()
    unrecorded(engine, version)
    with Session(engine) as session:
        row = registry.get_version(session, version=version)
        shown = registry.public_record(row, artifacts_dir=settings.artifacts_dir)
        model = registry.load_model(row, artifacts_dir=settings.artifacts_dir)  # still loads
    assert shown.params[RUNTIME] == dict.fromkeys(RUNTIME_PARTS, "unknown")
    assert model.classes == shared_result.model.classes


def test_a_version_pickled_by_another_minor_release_is_neither_promoted_nor_rolled_back_to(
    engine: Engine, make_settings: Callable[..., Settings], shared_result: TrainResult, tags: TagSet
) -> None:
    settings = make_settings()
    first = register_promoted(engine, settings, shared_result)
    old = _register(engine, settings, shared_result)
    made_by(engine, settings, old, OLDER_MINOR)
    with pytest.raises(ArtifactError) as refused, Session(engine) as session:
        registry.promote(
            session, version=old, tags=tags, artifacts_dir=settings.artifacts_dir, actor="t"
        )
    message = str(refused.value)
    assert message.startswith(f"{old} cannot be loaded by this runtime: scikit-learn {OLDER_MINOR}")
    assert f"made with tagflow {current_runtime()['tagflow']}" in message
    assert f"scikit-learn {OLDER_MINOR}, numpy" in message  # what made it
    assert f"this runtime is tagflow {current_runtime()['tagflow']}" in message
    assert f"scikit-learn {sklearn.__version__}, numpy" in message  # what runs now
    assert "train it again under this runtime" in message
    assert f"pin scikit-learn=={OLDER_MINOR}" in message
    # Production and the history are as they were.
    with Session(engine) as session:
        assert registry.get_production(session).version == first  # type: ignore[union-attr]
        assert registry.get_version(session, version=old).status is ModelStatus.CANDIDATE
        assert [c.version for c in production_history.history(session)] == [first]
    # A rollback target that this runtime cannot load (made before an upgrade) is refused too.
    second = _register(engine, settings, shared_result)
    _promote(engine, settings, tags, second)
    made_by(engine, settings, first, OLDER_MINOR)
    with (
        pytest.raises(ArtifactError, match=f"{first} cannot be loaded by this runtime"),
        Session(engine) as session,
    ):
        registry.rollback(session, tags=tags, artifacts_dir=settings.artifacts_dir, actor="t")
    with Session(engine) as session:
        assert registry.get_production(session).version == second  # type: ignore[union-attr]


def test_a_version_pickled_by_another_patch_release_loads_with_a_warning(
    sqlite_engine: Engine,
    make_settings: Callable[..., Settings],
    shared_result: TrainResult,
    tags: TagSet,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings()
    version = _register(sqlite_engine, settings, shared_result)
    made_by(sqlite_engine, settings, version, OTHER_PATCH)
    with caplog.at_level(logging.WARNING, logger="service.ml.registry"):
        _promote(sqlite_engine, settings, tags, version)
    assert f"{version} was pickled by scikit-learn {OTHER_PATCH}" in caplog.text
    with Session(sqlite_engine) as session:
        assert registry.get_production(session).version == version  # type: ignore[union-attr]


def test_a_version_whose_classes_moved_is_refused_with_the_unpickling_error(
    sqlite_engine: Engine, make_settings: Callable[..., Settings], shared_result: TrainResult
) -> None:
    """A release that moved a class the pickle names: its module is not found on load."""
    settings = make_settings()
    version = _register(sqlite_engine, settings, shared_result)
    with Session(sqlite_engine) as session:
        row = registry.get_version(session, version=version)

        def move_a_class(model_file: Path) -> None:
            data = model_file.read_bytes()
            # Renamed in place, one letter for another: the pickle's framing stays as it was.
            assert b"sklearn.linear_model._logistic" in data
            moved = b"sklearn.linear_model._logistix"
            model_file.write_bytes(data.replace(b"sklearn.linear_model._logistic", moved))

        rewrite_model_file(session, row, settings, move_a_class)
        with pytest.raises(ArtifactError) as refused:
            registry.load_model(row, artifacts_dir=settings.artifacts_dir)
    assert str(refused.value).startswith(
        f"{version} cannot be loaded by this runtime: it does not unpickle "
        "(ModuleNotFoundError: No module named 'sklearn.linear_model._logistix')"
    )
    assert "pin scikit-learn" not in str(refused.value)  # which release moved it is not known


def test_a_version_that_loads_but_cannot_score_is_refused_and_production_stays(
    engine: Engine,
    make_settings: Callable[..., Settings],
    shared_result: TrainResult,
    tags: TagSet,
) -> None:
    """A model that unpickles without a word but lacks what serving reads (here its embedding
    head's weights, as a release that renamed them would leave it) was loaded, promoted and
    swapped in, and then failed every request. A load now scores a probe text first."""
    settings = make_settings()
    first = _register(engine, settings, shared_result)
    _promote(engine, settings, tags, first)
    broken = _register(engine, settings, shared_result)
    with Session(engine) as session:
        row = registry.get_version(session, version=broken)
        model = registry.load_model(row, artifacts_dir=settings.artifacts_dir)
        del model.embedding_head.coef_
        rewrite_model_file(session, row, settings, lambda path: joblib.dump(model, path))
        with pytest.raises(ArtifactError) as refused:
            registry.load_model(row, artifacts_dir=settings.artifacts_dir)
    assert str(refused.value).startswith(
        f"{broken} loads but cannot score a probe text (AttributeError"
    )
    with pytest.raises(ArtifactError):
        _promote(engine, settings, tags, broken)
    with Session(engine) as session:
        production = registry.get_production(session)
    assert production is not None and production.version == first


def test_the_api_keeps_serving_when_production_or_the_shadow_was_made_by_another_release(
    client: TestClient, shared_result: TrainResult
) -> None:
    state = client.app.state.tagflow
    engine, settings = state.engine, state.settings
    with state.production_lock:  # the watch loop meets it only as an older release made it
        old = _register(engine, settings, shared_result)
        made_by(engine, settings, old, OLDER_MINOR)
    # The newest candidate is shadowed: refused, logged, counted, not shadowed.
    wait_until(lambda: old in state.shadow_refused, what=f"the shadow to refuse {old}")
    assert state.predictor.shadow is None
    promoted = client.post(f"/models/{old}/promote", headers=auth("admin"))
    assert promoted.status_code == 409
    assert promoted.json()["detail"].startswith(f"{old} cannot be loaded by this runtime")
    # Named production behind the API's back (as a registry shared with an older host would):
    # the hot swap refuses it and the model served keeps serving.
    with Session(engine) as session:
        previous = registry.get_production(session)
        assert previous is not None
        previous.status = ModelStatus.ARCHIVED
        row = registry.get_version(session, version=old)
        row.status = ModelStatus.PRODUCTION
        session.add_all([previous, row])
        session.commit()
    wait_until(lambda: state.model_errors, what=f"the watch loop to refuse {old}")
    predicted = client.post("/predict", json=ITEM, headers=auth("client"))
    assert predicted.status_code == 200 and predicted.json()["model_version"] == "v0001"
    ready = client.get("/readyz").json()
    assert ready["model_version"] == "v0001"
    [error] = ready["model_errors"]
    assert error.startswith(f"{old} cannot be loaded by this runtime: scikit-learn {OLDER_MINOR}")
    metrics = client.get("/metrics", headers=auth("metrics")).text
    assert "tagflow_model_errors 1.0" in metrics
    assert "tagflow_model_refusals_total 2.0" in metrics  # as the shadow, then as production
    shown = client.get(f"/models/{old}", headers=auth("client")).json()
    assert shown["params"][RUNTIME]["scikit-learn"] == OLDER_MINOR


def test_a_retraining_replaces_a_production_this_runtime_refuses(
    engine: Engine,
    make_settings: Callable[..., Settings],
    seed_result: TrainResult,
    tags: TagSet,
    encoder: Encoder,
) -> None:
    """After an upgrade, production (trained on the base data alone) was made by the older
    release: a retraining on the same data does not call it "nothing new", and its gate, which
    cannot score production here, keeps the candidate for an admin instead of failing."""
    settings = make_settings()
    before = register_promoted(engine, settings, seed_result)
    made_by(engine, settings, before, OLDER_MINOR)
    with Session(engine, expire_on_commit=False) as session:
        outcome = retraining.retrain(session, settings=settings, tags=tags, encoder=encoder)
    assert outcome["candidate"] not in (None, before), outcome["outcome"]
    assert not outcome["promoted"] and outcome["outcome"] == "gate failed: waits as a candidate"
    assert "production_scored" in outcome["failed_checks"]
    [scored] = [c for c in outcome["checks"] if c["name"] == "production_scored"]
    assert scored["note"].startswith(f"{before} cannot be loaded by this runtime")
    with Session(engine) as session:
        assert registry.get_production(session).version == before  # type: ignore[union-attr]
    _promote(engine, settings, tags, outcome["candidate"])  # by hand: it loads here


def test_an_imported_version_keeps_the_exporters_runtime(
    engine: Engine, make_settings: Callable[..., Settings], shared_result: TrainResult, tags: TagSet
) -> None:
    settings = make_settings()
    source = _register(engine, settings, shared_result)
    exporter = {**current_runtime(), "tagflow": "0.0.9", "python": "3.11.2"}
    with Session(engine) as session:
        row = registry.get_version(session, version=source)
        row.params = {**row.params, RUNTIME: exporter}
        session.add(row)
        session.commit()
        data = export_bundle(session, version=source, artifacts_dir=settings.artifacts_dir)
        imported = import_bundle(
            session,
            data=data,
            artifacts_dir=settings.artifacts_dir,
            tags=tags,
            encoder=shared_result.model.encoder,
        )
    assert imported.row.params[RUNTIME] == exporter


def test_a_bundle_this_runtime_cannot_load_is_refused_with_nothing_recorded(
    engine: Engine, make_settings: Callable[..., Settings], shared_result: TrainResult, tags: TagSet
) -> None:
    settings = make_settings()
    source = _register(engine, settings, shared_result)
    made_by(engine, settings, source, OLDER_MINOR)  # as a deployment on that release exports
    with Session(engine) as session:
        data = export_bundle(session, version=source, artifacts_dir=settings.artifacts_dir)
    folders = sorted(settings.artifacts_dir.iterdir())
    with (
        pytest.raises(ArtifactError, match="cannot be loaded by this runtime"),
        Session(engine) as session,
    ):
        import_bundle(
            session,
            data=data,
            artifacts_dir=settings.artifacts_dir,
            tags=tags,
            encoder=shared_result.model.encoder,
        )
    with Session(engine) as session:
        assert [r.version for r in registry.list_versions(session)] == [source]
    assert sorted(settings.artifacts_dir.iterdir()) == folders


def _check(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, ["models", "check", *args], env=env)


def test_models_check_before_an_upgrade_leaves_the_database_at_its_revision(
    database_url: str,
    cli_env: dict[str, str],
    make_settings: Callable[..., Settings],
    shared_result: TrainResult,
) -> None:
    """README: run `tagflow models check` with the new release before the upgrade. It read the
    registry through a session that upgraded the database first, so the release still in
    service could no longer open it ("a newer tagflow has upgraded it", exit 2), whatever the
    check found: an operator told "refused" could not stay on the old release."""
    settings = make_settings(database_url=database_url)
    engine = make_engine(database_url)
    init_db(engine)
    with engine.begin() as conn:  # the schema of the release in service (0013: before 0014)
        command.downgrade(make_config(conn), "0013")
    version = register_promoted(engine, settings, shared_result)
    env = {**cli_env, "TAGFLOW_DATABASE_URL": database_url}
    checked = _check(env, "--json")
    assert checked.exit_code == 0, checked.output
    versions = json.loads(checked.stdout)["versions"]
    assert [(v["version"], v["loads"]) for v in versions] == [(version, True)]
    assert current_revision(engine) == "0013"
    assert "reviewer" not in inspect(engine).get_table_names()  # 0014's table, rolled back
    # The upgrade itself is still the operator's step, and works after the check.
    assert CliRunner().invoke(app, ["db", "upgrade"], env=env).exit_code == 0
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_models_check_reports_what_this_runtime_can_serve(
    cli_env: dict[str, str],
    make_settings: Callable[..., Settings],
    shared_result: TrainResult,
    tags: TagSet,
) -> None:
    settings = make_settings()  # the data directory the commands use (cli_env's)
    engine = make_engine(settings.resolved_database_url)
    assert CliRunner().invoke(app, ["db", "upgrade"], env=cli_env).exit_code == 0
    first = register_promoted(engine, settings, shared_result)
    second = _register(engine, settings, shared_result)
    _promote(engine, settings, tags, second)
    clean = _check(cli_env, "--json")
    assert clean.exit_code == 0, clean.output
    report = json.loads(clean.stdout)
    assert report["runtime"] == current_runtime()
    assert [(v["version"], v["status"], v["loads"]) for v in report["versions"]] == [
        (second, "production", True),
        (first, "archived", True),  # the version a rollback restores
    ]
    assert report["versions"][0]["made_with"] == current_runtime()
    assert [a["tag"] for a in report["versions"][0]["answers"]] == [
        "natural-language-processing",
        "computer-vision",
        "mlops",
        "other",
    ]
    # Upgraded: the rollback target was pickled by an older release, production predates the
    # runtime record.
    made_by(engine, settings, first, OLDER_MINOR)
    unrecorded(engine, second)
    upgraded = _check(cli_env, "--json")
    assert upgraded.exit_code == 0, upgraded.output  # production still loads
    now, rollback = json.loads(upgraded.stdout)["versions"]
    assert now["loads"] and now["made_with"] is None and now["refused"] is None
    assert not rollback["loads"] and rollback["answers"] == []
    assert rollback["refused"].startswith(f"{first} cannot be loaded by this runtime")
    assert rollback["made_with"]["scikit-learn"] == OLDER_MINOR
    table = _check(cli_env)
    assert table.exit_code == 0
    assert f"{first} cannot be loaded by this runtime" in table.stderr
    lines = {line.split()[0]: line.split() for line in table.stdout.splitlines() if "v000" in line}
    assert lines[second][-3:] == ["unknown", "unknown", "loads"]
    assert lines[first][-3:] == [OLDER_MINOR, current_runtime()["python"], "refused"]
    # A version named is checked alone, and its refusal is the exit code.
    named = _check(cli_env, first)
    assert named.exit_code == 1 and f"refused: {first}" in named.stderr
    # Production refused: exit 1, whatever else loads.
    made_by(engine, settings, second, OLDER_MINOR)
    refused = _check(cli_env)
    assert refused.exit_code == 1 and f"refused: {second}\n" in refused.stderr
    assert _check(cli_env, "v9999").exit_code == 1
    engine.dispose()
