"""The model registry on SQLite and PostgreSQL: versions, filters, promote, rollback, checksums."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import os
import signal
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from service.config import Settings
from service.crud.predictions import save_predictions
from service.entities import ModelStatus, Prediction, ProductionAction
from service.errors import ArtifactError, ConflictError, InvalidInputError, NotFoundError
from service.ml import production_history, registry
from service.ml.training import TrainResult
from service.processes import stop_signal_as_interrupt
from service.tags import TagSet
from tests.conftest import auth, make_prediction


@pytest.fixture
def settings(make_settings, database_url: str) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(database_url=database_url)


def test_register_records_lineage_metrics_and_artifacts(
    engine: Engine, settings: Settings, seed_result: TrainResult
) -> None:
    with Session(engine) as session:
        row = registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
    assert row.version == "v0001"
    assert row.status is ModelStatus.CANDIDATE
    assert row.data_rows == seed_result.data_rows and len(row.data_hash) == 64
    assert row.thresholds["auto"] == seed_result.model.threshold
    assert row.metrics["weighted_f1"] == pytest.approx(seed_result.metrics["weighted_f1"])
    assert {"per_class", "slices", "confusion", "precision_coverage", "baselines"} <= set(
        row.metrics
    )
    assert row.artifact_path == "v0001"  # by name: the data directory can move
    folder = settings.artifacts_dir / "v0001"
    assert registry.sha256_file(folder / "model.joblib") == row.checksum
    report = json.loads((folder / "report.json").read_text())
    assert report["version"] == "v0001" and report["cv"]["chosen"]["weight"] == row.params["weight"]
    assert (folder / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_a_new_version_never_writes_into_a_folder_it_does_not_own(
    engine: Engine,
    settings: Settings,
    seed_result: TrainResult,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database reset with the artifact folder kept: v0001's old files stay as they were and
    the new v0001 gets a folder of its own, named in the log."""
    stray = settings.artifacts_dir / "v0001" / "model.joblib"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"an earlier registry's model")
    with (
        caplog.at_level(logging.WARNING, logger="service.ml.registry"),
        Session(engine) as session,
    ):
        row = registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
    assert stray.read_bytes() == b"an earlier registry's model"
    assert [p.name for p in stray.parent.iterdir()] == ["model.joblib"]
    assert row.version == "v0001" and row.artifact_path.startswith("v0001-")
    assert (
        registry.load_model(row, artifacts_dir=settings.artifacts_dir).classes
        == seed_result.model.classes
    )
    assert str(settings.artifacts_dir / row.artifact_path) in caplog.text


def test_a_version_whose_artifacts_fail_to_write_leaves_nothing(
    engine: Engine, settings: Settings, seed_result: TrainResult
) -> None:
    broken = dataclasses.replace(seed_result, metrics={"weighted_f1": 0.9})  # no report to draw
    with Session(engine) as session:
        with pytest.raises(KeyError):
            registry.register(session, result=broken, artifacts_dir=settings.artifacts_dir)
        assert registry.list_versions(session) == []
    assert list(settings.artifacts_dir.iterdir()) == []
    with Session(engine) as session:
        row = registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
    assert row.artifact_path == row.version


class _HeldWhilePickled:
    """An attribute of a model whose pickling says so (`writing`) and then waits for `go_on`:
    a model dump that lasts as long as the test wants."""

    def __init__(self, writing: threading.Event, go_on: threading.Event) -> None:
        self.writing, self.go_on = writing, go_on

    def __reduce__(self) -> tuple[type, tuple[()]]:
        self.writing.set()
        self.go_on.wait(30)
        return dict, ()


def _held_while_dumped(
    result: TrainResult, writing: threading.Event, go_on: threading.Event
) -> TrainResult:
    model = copy.copy(result.model)
    model.held = _HeldWhilePickled(writing, go_on)  # type: ignore[attr-defined]
    return dataclasses.replace(result, model=model)


def _register_in_thread(
    engine: Engine, result: TrainResult, *, artifacts_dir: Path, into: list[str]
) -> threading.Thread:
    def run() -> None:
        with Session(engine) as session:
            into.append(
                registry.register(session, result=result, artifacts_dir=artifacts_dir).version
            )

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@contextmanager
def _registration_held_in_its_dump(
    engine: Engine, result: TrainResult, *, artifacts_dir: Path
) -> Iterator[tuple[threading.Event, list[str]]]:
    """A registration in a thread, held while its model is dumped: the body runs meanwhile,
    given the event that lets it go on and the list its version's name goes in; on leaving,
    it is let go on and waited for."""
    writing, go_on = threading.Event(), threading.Event()
    held = _held_while_dumped(result, writing, go_on)
    registered: list[str] = []
    thread = _register_in_thread(engine, held, artifacts_dir=artifacts_dir, into=registered)
    try:
        assert writing.wait(30)
        yield go_on, registered
    finally:
        go_on.set()
        thread.join(30)


def test_other_writers_go_on_while_a_version_s_artifacts_are_written(
    sqlite_engine: Engine, tmp_path: Path, seed_result: TrainResult
) -> None:
    """On SQLite the new row's insert takes the database's write lock until the commit: the
    model's dump and the report's picture, written after it, kept every other writer (the
    API's prediction log, review labels) waiting, 0.6-1.0 s a registration."""
    with _registration_held_in_its_dump(
        sqlite_engine, seed_result, artifacts_dir=tmp_path / "models"
    ) as (go_on, registered):
        timer = threading.Timer(5, go_on.set)  # where the lock is held, the write waits for this
        timer.start()
        try:
            with Session(sqlite_engine) as session:
                save_predictions(session, predictions=[make_prediction("logged meanwhile")])
            assert not go_on.is_set(), "the write waited for the model's dump to end"
        finally:
            timer.cancel()
    assert registered == ["v0001"]
    with Session(sqlite_engine) as session:
        row = registry.get_version(session, version="v0001")
        assert session.exec(select(Prediction.title)).all() == ["logged meanwhile"]
    assert registry.sha256_file(tmp_path / "models" / "v0001" / "model.joblib") == row.checksum
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["v0001"]  # no staging left


def test_versions_registered_at_once_each_get_a_name_and_a_report_of_their_own(
    engine: Engine, settings: Settings, seed_result: TrainResult
) -> None:
    """One registration's artifacts are written while another registers: their files were
    written before the row had its name, under the name it was likely to get, which the other
    one may take (SQLite). Each version's report and picture name its own version."""
    with (
        _registration_held_in_its_dump(
            engine, seed_result, artifacts_dir=settings.artifacts_dir
        ) as (_, first),
        Session(engine) as session,
    ):
        meanwhile = registry.register(
            session, result=seed_result, artifacts_dir=settings.artifacts_dir
        ).version
    assert sorted([*first, meanwhile]) == ["v0001", "v0002"]
    with Session(engine) as session:
        for version in ("v0001", "v0002"):
            row = registry.get_version(session, version=version)
            folder = settings.artifacts_dir / row.artifact_path
            assert row.artifact_path == version
            assert json.loads((folder / "report.json").read_text())["version"] == version
            assert registry.sha256_file(folder / "model.joblib") == row.checksum
            assert (folder / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in settings.artifacts_dir.iterdir()) == ["v0001", "v0002"]


def test_a_registration_interrupted_once_committed_keeps_its_folder(
    engine: Engine, settings: Settings, seed_result: TrainResult
) -> None:
    """Ctrl-C or SIGTERM (`tagflow models import`, `train`) landing in the commit after the
    database committed the row: the folder was removed as for a version not registered, and
    the registry held a version with no artifacts (3 of 12 SIGTERMs in a QA run)."""

    def interrupt(_session: object) -> None:
        raise KeyboardInterrupt

    with Session(engine) as session:
        event.listen(session, "after_commit", interrupt, once=True)
        with pytest.raises(KeyboardInterrupt):
            registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
    with Session(engine) as session:
        row = registry.get_version(session, version="v0001")
    assert registry.load_model(row, artifacts_dir=settings.artifacts_dir).classes
    assert [p.name for p in settings.artifacts_dir.iterdir()] == [row.artifact_path]


def test_a_second_sigterm_does_not_cut_a_registration_s_undo_short(
    engine: Engine, settings: Settings, seed_result: TrainResult
) -> None:
    """`tagflow train` (as `models import` and `retrain`) stopped by SIGTERM in its version's
    commit undoes it, row and folder; a second SIGTERM during that undo (a supervisor, or a
    user, insisting) raised KeyboardInterrupt again in it, and the version's folder stayed,
    owned by no version. Signals after the first are now ignored: the undo completes."""

    def stop(_session: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    with Session(engine) as session:
        event.listen(session, "before_commit", stop, once=True)  # the stop
        event.listen(session, "after_rollback", stop, once=True)  # the insisting one, in the undo
        with pytest.raises(KeyboardInterrupt), stop_signal_as_interrupt():
            registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
    with Session(engine) as session:
        assert registry.list_versions(session) == []
    assert list(settings.artifacts_dir.iterdir()) == []


def test_a_staging_folder_left_by_a_killed_registration_is_removed_by_the_next_one(
    engine: Engine,
    settings: Settings,
    seed_result: TrainResult,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A registration killed outright (kill -9, the OOM killer) while it wrote its artifacts
    left its hidden staging folder for good. The next registration removes one untouched for
    an hour, and says so; a registration in progress meanwhile keeps its own."""
    settings.artifacts_dir.mkdir(parents=True)
    left = Path(tempfile.mkdtemp(prefix=".staging-", dir=settings.artifacts_dir))
    (left / "model.joblib").write_bytes(b"half a model")  # as `train` killed -9 left it
    two_hours_ago = time.time() - 2 * 3600
    for path in (left / "model.joblib", left):
        os.utime(path, (two_hours_ago, two_hours_ago))
    with (
        _registration_held_in_its_dump(
            engine, seed_result, artifacts_dir=settings.artifacts_dir
        ) as (_, first),
        caplog.at_level(logging.WARNING, logger="service.ml.registry"),
        Session(engine) as session,
    ):
        meanwhile = registry.register(
            session, result=seed_result, artifacts_dir=settings.artifacts_dir
        ).version
    assert sorted([*first, meanwhile]) == ["v0001", "v0002"]  # the one held was not swept
    assert sorted(p.name for p in settings.artifacts_dir.iterdir()) == ["v0001", "v0002"]
    assert f"removed {left}" in caplog.text


# The loads that wait, by key: `_HeldWhileLoaded` in an artifact makes its unpickling call
# `_held_load`, which says so and waits while the test holds its key here.
_HELD_LOADS: dict[str, tuple[threading.Event, threading.Event]] = {}


def _held_load(key: str) -> dict[str, str]:
    if key in _HELD_LOADS:
        loading, go_on = _HELD_LOADS[key]
        loading.set()
        go_on.wait(30)
    return {}


class _HeldWhileLoaded:
    """An attribute of a model whose unpickling waits while the test holds `key`: a load of
    the model (a promotion's check) that lasts as long as the test wants."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Callable[[str], dict[str, str]], tuple[str]]:
        return _held_load, (self.key,)


def _writes_while_loading(engine: Engine, change: Callable[[Session], object], key: str) -> bool:
    """Whether another session's write (the prediction log's) commits while `change`, run in a
    thread, is loading the artifact held by `key`."""
    loading, go_on = threading.Event(), threading.Event()
    _HELD_LOADS[key] = (loading, go_on)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            with Session(engine) as session:
                change(session)
        except BaseException as exc:  # shown by the assertion below
            failed.append(exc)

    thread = threading.Thread(target=run)
    timer = threading.Timer(5, go_on.set)  # where the lock is held, the write waits for this
    thread.start()
    try:
        assert loading.wait(30)
        timer.start()
        with Session(engine) as session:
            save_predictions(session, predictions=[make_prediction(f"logged during {key}")])
        went_on = not go_on.is_set()
    finally:
        go_on.set()
        timer.cancel()
        thread.join(30)
        del _HELD_LOADS[key]
    assert failed == []
    return went_on


def test_other_writers_go_on_while_a_promotion_or_rollback_loads_the_model(
    sqlite_engine: Engine, tmp_path: Path, seed_result: TrainResult, tags: TagSet
) -> None:
    """A change of production loads the version it makes production (checksum, unpickling, a
    probe) to refuse one that cannot serve. It did so under the production lock, on SQLite
    the database's write lock: every other writer waited for the load."""
    models = tmp_path / "models"
    held = copy.copy(seed_result.model)
    held.held = _HeldWhileLoaded("v0001")  # type: ignore[attr-defined]
    with Session(sqlite_engine) as session:
        for result in (dataclasses.replace(seed_result, model=held), seed_result):
            registry.register(session, result=result, artifacts_dir=models)

    def promote(version: str) -> Callable[[Session], object]:
        return lambda session: registry.promote(
            session, version=version, tags=tags, artifacts_dir=models, actor="test"
        )

    assert _writes_while_loading(sqlite_engine, promote("v0001"), "v0001")
    with Session(sqlite_engine) as session:
        promote("v0002")(session)
    rollback = lambda session: registry.rollback(  # noqa: E731
        session, tags=tags, artifacts_dir=models, actor="test"
    )
    assert _writes_while_loading(sqlite_engine, rollback, "v0001")
    with Session(sqlite_engine) as session:
        assert registry.get_production(session).version == "v0001"  # type: ignore[union-attr]
        assert [c.action for c in production_history.history(session, limit=5)] == [
            ProductionAction.ROLLBACK,
            ProductionAction.PROMOTE,
            ProductionAction.PROMOTE,
        ]
        assert len(session.exec(select(Prediction)).all()) == 2


def test_promote_archives_previous_and_rollback_walks_back(
    engine: Engine,
    settings: Settings,
    seed_result: TrainResult,
    shared_result: TrainResult,
    tags: TagSet,
) -> None:
    def status(session: Session) -> dict[str, ModelStatus]:
        return {r.version: r.status for r in registry.list_versions(session)}

    with Session(engine) as session:
        for result in (seed_result, shared_result, seed_result):
            registry.register(session, result=result, artifacts_dir=settings.artifacts_dir)
        for version in ("v0001", "v0002", "v0003"):
            registry.promote(
                session,
                actor="test",
                version=version,
                tags=tags,
                artifacts_dir=settings.artifacts_dir,
            )
        assert (
            registry.promote(
                session,
                actor="test",
                version="v0003",
                tags=tags,
                artifacts_dir=settings.artifacts_dir,
            ).previous_version
            == "v0002"
        )  # no-op
        assert status(session) == {
            "v0003": ModelStatus.PRODUCTION,
            "v0002": ModelStatus.ARCHIVED,
            "v0001": ModelStatus.ARCHIVED,
        }
        # A rollback goes back, and the next one further back: never forward again to the
        # version just rolled away from.
        assert (
            registry.rollback(
                session, actor="test", tags=tags, artifacts_dir=settings.artifacts_dir
            ).version
            == "v0002"
        )
        assert registry.get_version(session, version="v0003").status is ModelStatus.ARCHIVED
        assert (
            registry.rollback(
                session, actor="test", tags=tags, artifacts_dir=settings.artifacts_dir
            ).version
            == "v0001"
        )
        with pytest.raises(NotFoundError, match="no version was production before v0001"):
            registry.rollback(
                session, actor="test", tags=tags, artifacts_dir=settings.artifacts_dir
            )
        assert registry.get_production(session).version == "v0001"
        # A promotion is remembered again: rolling it back restores what it replaced.
        registry.promote(
            session, actor="test", version="v0003", tags=tags, artifacts_dir=settings.artifacts_dir
        )
        assert (
            registry.rollback(
                session, actor="test", tags=tags, artifacts_dir=settings.artifacts_dir
            ).version
            == "v0001"
        )


def test_rollbacks_undo_promotions_in_reverse_even_after_a_version_returns(
    engine: Engine, settings: Settings, seed_result: TrainResult, tags: TagSet
) -> None:
    """Promote v1, v2, v3, then v1 again: rollbacks in a row restore v3, v2, v1 and then stop.
    (Versions remembering only what they replaced last time went v3, v2, v1, v3, v2, ...)"""
    promotions = ["v0001", "v0002", "v0003", "v0001"]
    _promote_in_turn(engine, settings, seed_result, tags, promotions, actor="admin key {}")
    with Session(engine) as session:
        restored = [
            registry.rollback(
                session, actor="ops", tags=tags, artifacts_dir=settings.artifacts_dir
            ).version
            for _ in range(3)
        ]
        assert restored == ["v0003", "v0002", "v0001"]
        with pytest.raises(NotFoundError, match="no version was production before v0001"):
            registry.rollback(session, actor="ops", tags=tags, artifacts_dir=settings.artifacts_dir)
        assert registry.get_production(session).version == "v0001"
        changes = production_history.history(session)
    steps = [(c.action.value, c.version, c.replaced) for c in reversed(changes)]
    assert steps == [
        ("promote", "v0001", None),
        ("promote", "v0002", "v0001"),
        ("promote", "v0003", "v0002"),
        ("promote", "v0001", "v0003"),
        ("rollback", "v0003", "v0001"),
        ("rollback", "v0002", "v0003"),
        ("rollback", "v0001", "v0002"),
    ]
    by_id = {c.id: c for c in changes}
    # Each rollback marks the promotion it undid; the first promotion is never undone.
    undone = {c.id: by_id[c.undone_by].replaced for c in changes if c.undone_by is not None}
    assert sorted(by_id[i].version for i in undone) == ["v0001", "v0002", "v0003"]
    assert all(
        by_id[c.undone_by].action is ProductionAction.ROLLBACK for c in changes if c.undone_by
    )
    assert changes[-1].undone_by is None and changes[-1].actor == "admin key v0001"
    assert all(c.actor == "ops" for c in changes if c.action is ProductionAction.ROLLBACK)


def test_concurrent_rollbacks_each_undo_a_different_promotion(
    engine: Engine, settings: Settings, seed_result: TrainResult, tags: TagSet
) -> None:
    """Operators rolling back at the same moment: with --from, one rolls back and the others
    get a conflict; without it, each undoes the next promotion down, none the same one."""
    _promote_in_turn(engine, settings, seed_result, tags, ["v0001", "v0002", "v0003", "v0004"])
    named = _all_at_once(
        engine, [lambda s: _rollback(s, tags, settings.artifacts_dir, current="v0004")] * 3
    )
    assert sorted(named) == ["conflict", "conflict", "v0003"], named
    unnamed = _all_at_once(engine, [lambda s: _rollback(s, tags, settings.artifacts_dir)] * 2)
    assert sorted(unnamed) == ["v0001", "v0002"], unnamed
    with Session(engine) as session:
        assert registry.get_production(session).version == "v0001"
        changes = production_history.history(session)
    undone = [c.undone_by for c in changes if c.undone_by is not None]
    assert len(undone) == len(set(undone)) == 3
    rollbacks = [c for c in changes if c.action is ProductionAction.ROLLBACK]
    assert sorted(c.id for c in rollbacks) == sorted(undone)


def test_racing_changes_of_production_keep_the_history_true(
    engine: Engine, settings: Settings, seed_result: TrainResult, tags: TagSet
) -> None:
    """Double clicks, retries and operators at once (found by a QA pass): the same version
    promoted four times at once records one promotion; a promotion racing a rollback to the
    same version records no change that did not happen. After every round the history,
    replayed from the start, ends at the production version, and rollback still works."""
    with Session(engine) as session:
        for _ in range(3):
            registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
    artifacts = settings.artifacts_dir

    def promote(version: str) -> Callable[[Session], str]:
        def act(session: Session) -> str:
            return registry.promote(
                session, actor="test", version=version, tags=tags, artifacts_dir=artifacts
            ).version

        return act

    def rollback(session: Session) -> str:
        try:
            return _rollback(session, tags, artifacts)
        except NotFoundError:
            return "nothing to roll back"

    _all_at_once(engine, [promote("v0001")] * 4)
    with Session(engine) as session:
        assert len(production_history.history(session)) == 1
    for _round in range(3):
        for version in ("v0002", "v0003"):
            _all_at_once(engine, [promote(version)] * 3)
        outcomes = _all_at_once(engine, [promote("v0002"), rollback, rollback, promote("v0003")])
        assert None not in outcomes, outcomes
        _assert_history_true(engine)
    with Session(engine) as session:
        before = registry.get_production(session)
        assert before is not None
        undo = production_history.undoable(session)
        if undo is not None and undo.replaced is not None:
            restored = registry.rollback(session, actor="test", tags=tags, artifacts_dir=artifacts)
            assert restored.version == undo.replaced
    _assert_history_true(engine)


def _assert_history_true(engine: Engine) -> None:
    """Replaying the history from the start ends at the production version; each change
    replaced what was production just before it; each undone promotion was undone by the
    rollback that restored what it replaced; and a rollback now would undo production's."""
    with Session(engine) as session:
        production = registry.get_production(session)
        changes = list(reversed(production_history.history(session, limit=1000)))
        undoable = production_history.undoable(session)
    by_id = {c.id: c for c in changes}
    current: str | None = None
    for change in changes:
        assert change.replaced == current, (change, current)
        assert change.version != change.replaced, change
        current = change.version
        if change.undone_by is not None:
            undo = by_id[change.undone_by]
            assert undo.action is ProductionAction.ROLLBACK and undo.id > change.id
            assert (undo.version, undo.replaced) == (change.replaced, change.version)
    assert production is not None and current == production.version
    assert undoable is not None and undoable.version == production.version


def _promote_in_turn(
    engine: Engine,
    settings: Settings,
    result: TrainResult,
    tags: TagSet,
    promotions: list[str],
    *,
    actor: str = "test",
) -> None:
    """Register `result` as every version `promotions` names, then promote them in turn
    (`actor` may name the version: "admin key {}")."""
    with Session(engine) as session:
        for _ in sorted(set(promotions)):
            registry.register(session, result=result, artifacts_dir=settings.artifacts_dir)
        for version in promotions:
            registry.promote(
                session,
                actor=actor.format(version),
                version=version,
                tags=tags,
                artifacts_dir=settings.artifacts_dir,
            )


def _rollback(
    session: Session, tags: TagSet, artifacts_dir: Path, *, current: str | None = None
) -> str:
    try:
        row = registry.rollback(
            session, actor="test", tags=tags, artifacts_dir=artifacts_dir, current=current
        )
    except ConflictError:
        return "conflict"
    return row.version


def _all_at_once(engine: Engine, actions: list[Callable[[Session], str]]) -> list[str | None]:
    """Run each action in its own thread and session, released together; what each returned
    (None if it raised something, which its thread reports)."""
    barrier = threading.Barrier(len(actions))
    outcomes: list[str | None] = [None] * len(actions)

    def run(i: int) -> None:
        with Session(engine) as session:
            barrier.wait(timeout=10)
            outcomes[i] = actions[i](session)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(actions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


def test_rollback_from_a_version_no_longer_production_is_refused(
    engine: Engine,
    settings: Settings,
    seed_result: TrainResult,
    shared_result: TrainResult,
    tags: TagSet,
) -> None:
    """A retried rollback, or a second operator's, names the version it means to leave."""
    with Session(engine) as session:
        for result in (seed_result, shared_result):
            row = registry.register(session, result=result, artifacts_dir=settings.artifacts_dir)
            registry.promote(
                session,
                actor="test",
                version=row.version,
                tags=tags,
                artifacts_dir=settings.artifacts_dir,
            )
        assert (
            registry.rollback(
                session,
                actor="test",
                tags=tags,
                artifacts_dir=settings.artifacts_dir,
                current="v0002",
            ).version
            == "v0001"
        )
        with pytest.raises(ConflictError, match="v0002 is not production \\(v0001 is\\)"):
            registry.rollback(
                session,
                actor="test",
                tags=tags,
                artifacts_dir=settings.artifacts_dir,
                current="v0002",
            )
        assert registry.get_production(session).version == "v0001"


def test_filter_by_metric_criteria(
    engine: Engine, settings: Settings, seed_result: TrainResult, shared_result: TrainResult
) -> None:
    with Session(engine) as session:
        registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
        registry.register(session, result=shared_result, artifacts_dir=settings.artifacts_dir)
        mlops_p = {
            r.version: r.metrics["per_class"]["mlops"]["precision"]
            for r in registry.list_versions(session)
        }
        cut = sorted(mlops_p.values())[-1]
        found = registry.list_versions(
            session, criteria=[registry.Criterion.parse(f"per_class.mlops.precision>={cut}")]
        )
        assert {r.version for r in found} == {v for v, p in mlops_p.items() if p >= cut}
        none = registry.list_versions(session, criteria=[registry.Criterion.parse("weighted_f1>1")])
        assert none == []
        typo = registry.Criterion.parse("per_class.mlop.precision>=0")
        with pytest.raises(InvalidInputError, match="did you mean per_class.mlops.precision"):
            registry.list_versions(session, criteria=[typo])  # not an empty list: a typo
        unknown = registry.Criterion.parse("per_class.nonexistent.precision>=0")
        with pytest.raises(InvalidInputError, match="no version has a metric"):
            registry.list_versions(session, criteria=[unknown])
        newest_only = registry.list_versions(session)[0]
        newest_only.metrics = {**newest_only.metrics, "added_later": 1.0}
        session.add(newest_only)
        session.commit()
        later = registry.Criterion.parse("added_later>=1")  # older versions lack it: left out
        assert registry.list_versions(session, criteria=[later]) == [newest_only]
    for malformed in ("weighted_f1 is high", "weighted_f1>=e", "weighted_f1>=.", "f1<1e", "f1>-"):
        with pytest.raises(InvalidInputError, match="is not of the form"):
            registry.Criterion.parse(malformed)
    with pytest.raises(InvalidInputError, match="is not of the form"):
        registry.Criterion.parse("weighted_f1<1e999")  # no version's metric is infinite


def test_a_status_filter_leaves_out_versions_without_a_metric_others_have(
    engine: Engine, settings: Settings, seed_result: TrainResult, tags: TagSet
) -> None:
    """`GET /models?status=production&where=per_class.<tag approved since>.precision>=0.9`:
    production has no figure for the tag, a candidate has. The criterion was judged on the
    production versions alone and refused as a typo ("no version has a metric ..., did you
    mean ...", 422) where the README says a version without the metric is left out."""
    figures = {"precision": 0.97, "recall": 0.9, "f1": 0.93, "support": 12}
    metrics = {**seed_result.metrics}
    metrics["per_class"] = {**metrics["per_class"], "brand-new": figures}
    with Session(engine) as session:
        registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
        registry.promote(
            session, version="v0001", tags=tags, artifacts_dir=settings.artifacts_dir, actor="t"
        )
        registry.register(
            session,
            result=dataclasses.replace(seed_result, metrics=metrics),
            artifacts_dir=settings.artifacts_dir,
        )
        new_tag = [registry.Criterion.parse("per_class.brand-new.precision>=0.9")]
        by_status = {
            status: [
                r.version for r in registry.list_versions(session, status=status, criteria=new_tag)
            ]
            for status in (ModelStatus.PRODUCTION, ModelStatus.CANDIDATE)
        }
        assert by_status == {ModelStatus.PRODUCTION: [], ModelStatus.CANDIDATE: ["v0002"]}
        typo = [registry.Criterion.parse("per_class.brand-nwe.precision>=0.9")]
        with pytest.raises(InvalidInputError, match="did you mean per_class.brand-new.precision"):
            registry.list_versions(session, status=ModelStatus.PRODUCTION, criteria=typo)


def test_criteria_name_any_approved_tag(
    engine: Engine, settings: Settings, seed_result: TrainResult
) -> None:
    """The tag file takes any name ("time series", "c++", "v1.0"), and a version's figures are
    under it: a criterion on such a tag was "not of the form metric.path>=number" (the path
    was letters, digits, "_", "-" and dots only) and a dot in a tag split its name."""
    with Session(engine) as session:
        row = registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
        figures = {"precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 10}
        per_class = {**row.metrics["per_class"], "time series": figures, "c++": figures}
        row.metrics = {**row.metrics, "per_class": {**per_class, "v1.0": figures}}
        session.add(row)
        session.commit()
        for name in ("time series", "c++", "v1.0"):
            met = registry.Criterion.parse(f"per_class.{name}.precision >= 0.9")
            assert registry.list_versions(session, criteria=[met]) == [row], name
            unmet = registry.Criterion.parse(f" per_class.{name}.recall>0.8 ")
            assert registry.list_versions(session, criteria=[unmet]) == [], name
        typo = registry.Criterion.parse("per_class.time seris.precision>=0")
        with pytest.raises(InvalidInputError, match="did you mean per_class.time series"):
            registry.list_versions(session, criteria=[typo])
    for malformed in (">=0.5", "  <1", "per_class.x.precision=>0.5", "a>=b>=1"):
        with pytest.raises(InvalidInputError, match="is not of the form"):
            registry.Criterion.parse(malformed)


def test_a_versions_times_are_shown_in_utc_on_both_databases(client: TestClient) -> None:
    """SQLite gives stored times back without their zone: a record shown as `"23:00"` reads as
    the client's local time, where PostgreSQL's says `"23:00Z"`. Every place a record is shown
    (the API, `models list --json`, a bundle's manifest and the lineage an import keeps) says
    UTC."""
    listed = client.get("/models", headers=auth("admin")).json()["models"]
    one = client.get("/models/v0001", headers=auth("client")).json()
    bundle = client.get("/models/v0001/bundle", headers=auth("admin"))
    with tarfile.open(fileobj=io.BytesIO(bundle.content), mode="r:gz") as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        manifest = json.loads(member.read())["model"]
    imported = client.post(
        "/models/import",
        content=bundle.content,
        headers={**auth("admin"), "content-type": "application/gzip"},
    ).json()["model"]
    for shown in (listed[0], one, manifest, imported):
        assert shown["created_at"].endswith("Z"), shown["created_at"]
    for shown in (listed[0], one, manifest):
        assert shown["promoted_at"].endswith("Z"), shown["promoted_at"]
    lineage = imported["params"]["imported"]
    for name in ("created_at", "exported_at", "imported_at"):
        assert lineage[name].endswith("Z"), lineage


def test_the_times_a_version_keeps_as_text_are_shown_as_every_other_time(
    client: TestClient, engine: Engine
) -> None:
    """A threshold's history said when each cut was set as "...+00:00", where every other time
    the API shows ends in "Z": now written so, and one stored before shown so too."""
    changed = client.put(
        "/models/v0001/threshold", json={"threshold": 0.9}, headers=auth("admin")
    ).json()
    at = changed["thresholds"]["history"][-1]["at"]
    assert at.endswith("Z") and datetime.fromisoformat(at).utcoffset() == timedelta(0), at
    with Session(engine) as session:
        row = registry.get_version(session, version="v0001")
        *earlier, last = row.thresholds["history"]
        stored = last["at"]
        # New objects throughout: SQLAlchemy does not see in-place changes to a JSON column.
        history = [*earlier, {**last, "at": "2026-12-06T23:01:58.604988+00:00"}]
        row.thresholds = {**row.thresholds, "history": history}
        row.params = {**row.params, "imported": {"created_at": "2026-12-01T10:00:00+00:00"}}
        session.add(row)
        session.commit()
    assert stored == at  # stored as shown
    shown = client.get("/models/v0001", headers=auth("admin")).json()
    assert shown["thresholds"]["history"][-1]["at"] == "2026-12-06T23:01:58.604988Z"
    assert shown["params"]["imported"]["created_at"] == "2026-12-01T10:00:00Z"


def test_a_record_holding_a_lone_surrogate_is_shown_not_a_500(
    client: TestClient, engine: Engine
) -> None:
    """The edges now refuse a lone UTF-16 surrogate (a Latin-1 byte in a file name, a note,
    a bundle), but a record written before they did keeps it in its JSON columns, and one such
    record made every GET /models a 500. It is shown with the surrogate escaped."""
    odd = "caf\udce9"
    with Session(engine) as session:
        row = registry.get_version(session, version="v0001")
        row.params = {**row.params, "source": f"/data/{odd}.csv", odd: 1}
        row.metrics = {**row.metrics, "note": [odd]}
        row.thresholds = {**row.thresholds, "history": [{"note": odd}]}
        row.gate = {"failed": [odd]}
        session.add(row)
        session.commit()
    for path in ("/models", "/models/v0001"):
        answer = client.get(path, headers=auth("admin"))
        assert answer.status_code == 200, answer.text
        shown = answer.json()["models"][0] if path == "/models" else answer.json()
        assert shown["params"]["source"] == "/data/caf\\udce9.csv"
        assert shown["params"]["caf\\udce9"] == 1
        assert shown["metrics"]["note"] == ["caf\\udce9"]
        assert shown["thresholds"]["history"] == [{"note": "caf\\udce9"}]
        assert shown["gate"] == {"failed": ["caf\\udce9"]}


def test_checksum_mismatch_is_refused_and_registry_untouched(
    engine: Engine,
    settings: Settings,
    seed_result: TrainResult,
    shared_result: TrainResult,
    tags: TagSet,
) -> None:
    with Session(engine) as session:
        good = registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
        registry.promote(
            session,
            actor="test",
            version=good.version,
            tags=tags,
            artifacts_dir=settings.artifacts_dir,
        )
        bad = registry.register(session, result=shared_result, artifacts_dir=settings.artifacts_dir)
        artifact = settings.artifacts_dir / bad.artifact_path / "model.joblib"
        artifact.write_bytes(artifact.read_bytes() + b"tampered")
        with pytest.raises(ArtifactError, match="checksum"):
            registry.promote(
                session,
                actor="test",
                version=bad.version,
                tags=tags,
                artifacts_dir=settings.artifacts_dir,
            )
        assert registry.get_production(session).version == good.version
        assert registry.get_version(session, version=bad.version).status is ModelStatus.CANDIDATE


def test_concurrent_promotions_leave_one_production_version(
    engine: Engine, settings: Settings, seed_result: TrainResult, tags: TagSet
) -> None:
    """Operators and the retraining job promoting at once: every promotion succeeds or is a
    clear conflict, and one version is production, remembering one that really was before."""
    with Session(engine) as session:
        for _ in range(4):
            registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
    versions = ["v0001", "v0002", "v0003", "v0004"]
    for _round in range(3):
        outcomes = _promote_all_at_once(engine, versions, tags, settings.artifacts_dir)
        assert None not in outcomes.values(), "a promotion raised something else"
        with Session(engine) as session:
            rows = registry.list_versions(session)
            last = production_history.undoable(session)
        production = [r for r in rows if r.status is ModelStatus.PRODUCTION]
        assert len(production) == 1, [(r.version, r.status) for r in rows]
        assert outcomes[production[0].version] == "promoted"
        assert production[0].previous_version in {*versions, None} - {production[0].version}
        # The history agrees: a rollback now would undo this very promotion.
        assert last is not None and last.version == production[0].version
        assert last.replaced == production[0].previous_version
        assert {r.status for r in rows} == {ModelStatus.PRODUCTION, ModelStatus.ARCHIVED}


def test_the_database_refuses_a_second_production_version(
    engine: Engine, settings: Settings, seed_result: TrainResult, tags: TagSet
) -> None:
    with Session(engine) as session:
        for _ in range(2):
            registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
        registry.promote(
            session, actor="test", version="v0001", tags=tags, artifacts_dir=settings.artifacts_dir
        )
        second = registry.get_version(session, version="v0002")
        second.status = ModelStatus.PRODUCTION
        session.add(second)
        with pytest.raises(IntegrityError):
            session.commit()


def test_a_version_with_unapproved_tags_is_not_promoted(
    engine: Engine, settings: Settings, seed_result: TrainResult, tags: TagSet
) -> None:
    """The running APIs would refuse to serve it; the registry refuses to call it production."""
    narrower = TagSet(tags=tuple(t for t in tags.tags if t.name != "mlops"))
    with Session(engine) as session:
        for _ in range(2):
            registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
        registry.promote(
            session, actor="test", version="v0001", tags=tags, artifacts_dir=settings.artifacts_dir
        )
        with pytest.raises(ConflictError, match=r"v0002 can answer with tags that are not "):
            registry.promote(
                session,
                actor="test",
                version="v0002",
                tags=narrower,
                artifacts_dir=settings.artifacts_dir,
            )
        assert registry.get_version(session, version="v0002").status is ModelStatus.CANDIDATE
        registry.promote(
            session, actor="test", version="v0002", tags=tags, artifacts_dir=settings.artifacts_dir
        )
        with pytest.raises(ConflictError, match=r"\(mlops\): it stays archived"):
            registry.rollback(
                session, actor="test", tags=narrower, artifacts_dir=settings.artifacts_dir
            )
        assert registry.get_production(session).version == "v0002"


def _promote_all_at_once(
    engine: Engine, versions: list[str], tags: TagSet, artifacts_dir: Path
) -> dict[str, str | None]:
    """Promote every version from its own thread and session, released together; what each
    promotion came to ("promoted", or the conflict it reported)."""

    def promotion(version: str) -> Callable[[Session], str]:
        def act(session: Session) -> str:
            try:
                registry.promote(
                    session, actor="test", version=version, tags=tags, artifacts_dir=artifacts_dir
                )
            except ConflictError as exc:  # lost every retry: a clear, retryable refusal
                return f"conflict: {exc}"
            return "promoted"

        return act

    outcomes = _all_at_once(engine, [promotion(v) for v in versions])
    return dict(zip(versions, outcomes, strict=True))


def test_versions_are_found_where_the_artifacts_folder_is_now(
    engine: Engine, settings: Settings, seed_result: TrainResult, tmp_path: Path
) -> None:
    """A data directory moved, restored elsewhere, or mounted at another path by a second host
    sharing the database: versions record their folder by name, so each process finds them
    under its own artifacts folder, and nothing it does rewrites where the others look."""
    with Session(engine) as session:
        for _ in range(2):
            registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
        # A version recorded before folders were recorded by name: an absolute path.
        legacy = registry.get_version(session, version="v0002")
        legacy.artifact_path = str((settings.artifacts_dir / "v0002").resolve())
        session.add(legacy)
        session.commit()
    moved = tmp_path / "restored" / "models"
    moved.parent.mkdir()
    settings.artifacts_dir.rename(moved)
    with Session(engine) as session:
        for version in ("v0001", "v0002"):
            row = registry.get_version(session, version=version)
            assert registry.artifact_folder(row, artifacts_dir=moved) == moved / version
            model = registry.load_model(row, artifacts_dir=moved)
            assert model.classes == seed_result.model.classes
        row = registry.get_version(session, version="v0001")
        assert row.artifact_path == "v0001"  # loading wrote nothing
        # Another host, whose copy was tampered with: refused there, by checksum.
        other = tmp_path / "other-host" / "models"
        (other / "v0001").mkdir(parents=True)
        (other / "v0001" / registry.MODEL_FILE).write_bytes(b"tampered")
        with pytest.raises(ArtifactError, match="checksum.*refused"):
            registry.load_model(row, artifacts_dir=other)
        with pytest.raises(ArtifactError, match=f"missing at {other / 'v0002'}"):
            registry.load_model(registry.get_version(session, version="v0002"), artifacts_dir=other)
