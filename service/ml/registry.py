"""The model registry: versions in the database, artifacts on disk, verified by checksum."""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import operator
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
from sqlalchemy import func, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from service.crud.predictions import add_label_checks
from service.db import take_turns
from service.entities import ModelStatus, ModelVersion, ModelVersionBase, ModelVersionPublic
from service.entities.common import new_id, storable, utc_text, utcnow
from service.errors import (
    ArtifactError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    TagflowError,
)
from service.ml import production_history
from service.tags import CRITERION_OPERATORS, TagSet

if TYPE_CHECKING:  # both pull in scikit-learn: the CLI's --help and list need neither
    from service.ml.classifier import TagModel
    from service.ml.training import TrainResult

ArtifactStamp = tuple[int, int] | None
MODEL_FILE = "model.joblib"
REPORT_JSON = "report.json"
REPORT_PNG = "report.png"
_THRESHOLD_LOCK_CLASS = 0x74667463  # "tftc": changes of one version's served cut take turns
# A staging folder lives seconds (the model's dump, its report, an import's load of the model,
# a turn bound by the database's timeouts): one untouched for an hour was left by a process
# killed outright (kill -9, the OOM killer), which no `finally` outlives.
STAGING_PREFIX = ".staging-"
STALE_STAGING_S = 3600.0
_PROMOTION_TRIES = 5  # each lost race means another promotion committed: progress
MAX_THRESHOLD = 1.01  # a served cut above every probability: everything goes to review
# The key of a version's params that says how many label checks were sent with it (in the
# transaction that registered it): versions without it were registered before that, and a
# retraining that finishes one may have to send them (`pipeline.review_saved_suspects`).
LABEL_CHECKS = "label_checks"
log = logging.getLogger(__name__)
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
# A metric's path is any text but the operators: it names tags, which the tag file allows to
# hold spaces and other signs ("time series", "c++") and dots ("v1.0"), but not these.
_CRITERION = re.compile(rf"^\s*([^{CRITERION_OPERATORS}]*?)\s*(>=|<=|==|>|<)\s*([0-9.eE+-]+)\s*$")


@dataclass(frozen=True)
class Criterion:
    """A metric condition such as `per_class.mlops.precision>=0.95`."""

    name: str  # the metric's dotted path, as `metric_paths` names it
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Criterion:
        match = _CRITERION.match(text)
        try:
            value = float(match[3]) if match and match[1] else None
        except ValueError:  # the pattern lets through "e", "." or "1e"
            value = None
        if match is None or value is None or not math.isfinite(value):
            raise InvalidInputError(
                f"criterion {text!r} is not of the form metric.path>=number "
                "(e.g. per_class.mlops.precision>=0.95)"
            )
        return cls(match[1], match[2], value)

    def holds(self, metrics: dict[str, Any]) -> bool:
        node = _metric(metrics, self.name)
        return (
            isinstance(node, int | float)
            and not isinstance(node, bool)
            and _OPS[self.op](node, self.value)
        )


def _metric(node: Any, name: str) -> Any:
    """The value at dotted path `name` in a metrics document (None if there is none), a key
    holding dots itself (a tag named "v1.0") included."""
    if not isinstance(node, dict):
        return None
    if name in node:
        return node[name]
    for key, value in node.items():
        if name.startswith(f"{key}."):
            found = _metric(value, name[len(key) + 1 :])
            if found is not None:
                return found
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def register(
    session: Session,
    *,
    result: TrainResult,
    artifacts_dir: Path,
    snapshot_id: int | None = None,
    note: str = "",
    gate: dict[str, Any] | None = None,
    label_checks: Sequence[dict[str, Any]] = (),
    staged: Staged | None = None,
) -> ModelVersion:
    """Write a trained model's artifacts and record it as a `candidate` version, with the
    review items of its `label_checks` (the training rows whose label it doubts, as
    `SuspectReport.items`) in the same commit: a version is never registered without its
    checks, nor checks sent for a version that is not. Its params record how many
    (`LABEL_CHECKS`). `staged`: its artifacts, written already by `staged_result` (by a
    caller that takes a lock before registering, so as not to hold it while they are
    written); else they are written here, before the row is added."""
    artifacts = (
        nullcontext(staged)
        if staged is not None
        else staged_result(session, result=result, artifacts_dir=artifacts_dir, gate=gate)
    )
    with artifacts as written:
        row = ModelVersion(
            version=f"pending-{new_id()}",
            data_hash=result.data_hash,
            data_rows=result.data_rows,
            dataset_snapshot_id=snapshot_id,
            params={**result.params, LABEL_CHECKS: len(label_checks)},
            metrics=result.metrics,
            thresholds={"auto": result.model.threshold},
            artifact_path="",
            checksum=written.checksum,
            note=note,
            gate=gate,
        )
        with new_version(session, row, artifacts_dir=artifacts_dir, staged=written):
            # Named after the version, known once it is added: committed with it by new_version.
            add_label_checks(session, suspects=label_checks, version=row.version)
    return row


def staged_result(
    session: Session, *, result: TrainResult, artifacts_dir: Path, gate: dict[str, Any] | None
) -> AbstractContextManager[Staged]:
    """A trained model's artifacts, written for `register` before its row is added."""

    def name_files(folder: Path, version: str) -> None:
        report = {
            "version": version,
            "metrics": result.metrics,
            "params": result.params,
            "cv": result.cv,
            "gate": gate,
            "train_seconds": result.seconds,
        }
        write_report(folder, report, title=f"tagflow {version}")

    return staged_version(
        session,
        artifacts_dir=artifacts_dir,
        write=lambda folder: joblib.dump(result.model, folder / MODEL_FILE),
        name_files=name_files,
    )


def saved_report(row: ModelVersionBase, *, artifacts_dir: Path) -> dict[str, Any]:
    """The evaluation report saved beside `row`'s model (`staged_result`). OSError when the
    file is missing or unreadable, ValueError when it is not a JSON object."""
    path = artifact_folder(row, artifacts_dir=artifacts_dir) / REPORT_JSON
    report = json.loads(path.read_text())
    if not isinstance(report, dict):
        raise ValueError(f"{path} is not a JSON object")
    return report


def write_report(folder: Path, report: dict[str, Any], *, title: str) -> None:
    """A version's evaluation report beside its model: `report` as JSON, and a picture of
    its `metrics` under `title`."""
    (folder / REPORT_JSON).write_text(json.dumps(report, indent=2, default=str))
    from service.ml.evaluation import render_png

    render_png(report["metrics"], folder / REPORT_PNG, title=title)


@dataclass(frozen=True)
class Staged:
    """A new version's artifacts, written in a folder of their own before its row is added
    (`staged_version`): the slow part of a registration (the model's dump, the report's
    picture, an import's load of the model) then holds no lock. On SQLite the row's insert
    takes the database's write lock until the commit, and every other writer (the API's
    prediction log, review labels, feedback) waited for the picture to be drawn."""

    folder: Path
    version: str  # the name its files were written under: the row's, unless guessed wrong
    reserved_id: int | None  # the row's id, reserved (PostgreSQL); None: guessed (SQLite)
    checksum: str  # the SHA-256 of its model file
    name_files: Callable[[Path, str], None]  # writes again the files that name the version


@contextmanager
def staged_version(
    session: Session,
    *,
    artifacts_dir: Path,
    write: Callable[[Path], None],
    name_files: Callable[[Path, str], None],
) -> Iterator[Staged]:
    """A new version's artifacts in a staging folder under `artifacts_dir` (hidden, removed on
    leaving): `write` puts the model file there, `name_files` the files that name the version,
    under the name it will most likely get. `new_version` moves them into its folder."""
    reserved_id, version = _next_version(session)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(artifacts_dir)
    folder = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=artifacts_dir))
    try:
        write(folder)
        name_files(folder, version)
        yield Staged(folder, version, reserved_id, sha256_file(folder / MODEL_FILE), name_files)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_staging(artifacts_dir: Path) -> list[Path]:
    """Remove the staging folders under `artifacts_dir` that nothing has touched for
    `STALE_STAGING_S`: left by a registration killed outright, they were kept for good. A
    registration in progress (here or on another host sharing the folder) touches its own
    within seconds, so it is never one of them. Returns those removed, each logged."""
    removed = []
    for folder in artifacts_dir.glob(f"{STAGING_PREFIX}*"):
        try:
            if folder.is_symlink() or not folder.is_dir():
                continue
            touched = max(p.lstat().st_mtime for p in [folder, *folder.iterdir()])
        except OSError:  # removed meanwhile: its registration ended, or another one swept it
            continue
        idle_s = time.time() - touched
        if idle_s < STALE_STAGING_S:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        log.warning(
            "removed %s, a registration's staging folder untouched for %.0f min: left by a "
            "process killed while it registered a version",
            folder,
            idle_s / 60,
        )
        removed.append(folder)
    return removed


def _next_version(session: Session) -> tuple[int | None, str]:
    """The id a new version's row will get, and its name: on PostgreSQL reserved from the
    table's sequence (never given twice, committed or not); on SQLite the next rowid as it
    stands, which a version registered meanwhile takes (`new_version` then renames)."""
    if session.get_bind().dialect.name == "postgresql":
        sequence = "SELECT nextval(pg_get_serial_sequence('modelversion', 'id'))"
        reserved = int(session.execute(text(sequence)).scalar_one())
        return reserved, _version_name(reserved)
    last = session.exec(select(func.max(ModelVersion.id))).one()
    return None, _version_name((last or 0) + 1)


def _version_name(row_id: int) -> str:
    return f"v{row_id:04d}"


@contextmanager
def new_version(
    session: Session, row: ModelVersion, *, artifacts_dir: Path, staged: Staged
) -> Iterator[Path]:
    """A new version, recorded with its artifact folder or not at all: `row` gets its version
    name and a new folder (recorded by name in `artifact_path`) holding the `staged`
    artifacts. The body adds what goes in the same commit. If the body raises, neither the
    row nor the folder stays behind; else the row is committed. From the row's insert to the
    commit (the database's write lock, on SQLite), nothing slow is done, unless another
    version took the name the staged files were written under (`_next_version`)."""
    folder = None
    try:
        folder = _add_version(
            session, row, artifacts_dir=artifacts_dir, reserved_id=staged.reserved_id
        )
        # Recorded relative to the artifacts folder: a data directory moved, restored
        # elsewhere, or mounted at another path by another host sharing the database finds it.
        row.artifact_path = folder.name
        for path in staged.folder.iterdir():
            path.replace(folder / path.name)
        if row.version != staged.version:
            log.info(
                "%s was registered meanwhile: the report of the version after it is written "
                "again as %s",
                staged.version,
                row.version,
            )
            staged.name_files(folder, row.version)
        yield folder
        session.add(row)
        session.commit()
    except BaseException:
        with suppress(Exception):  # a session interrupted in its commit may refuse it
            session.rollback()
        if folder is None:
            # Stopped (Ctrl-C, SIGTERM) between making its folder and being told its name:
            # its folder is the empty one of its name (one left by another registry holds
            # files, and is not removed).
            with suppress(OSError):
                (artifacts_dir / row.version).rmdir()
        elif not _committed(session, row, folder=folder):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    session.refresh(row)


def _committed(session: Session, row: ModelVersion, *, folder: Path) -> bool:
    """Whether `row` was committed with `folder` all the same: Ctrl-C or SIGTERM (as
    KeyboardInterrupt) can land in the commit after the database committed it, and removing
    the folder then left a version without artifacts. When the database cannot say, the
    folder is kept: a folder no version owns is harmless, a version without one is not."""
    if row.id is None:
        return False
    try:
        with Session(session.get_bind()) as look:
            found = look.exec(
                select(ModelVersion.id).where(
                    ModelVersion.id == row.id, ModelVersion.artifact_path == folder.name
                )
            ).first()
    except Exception:
        log.warning(
            "%s is kept: the database cannot say whether %s was registered", folder, row.version
        )
        return True
    return found is not None


def _add_version(
    session: Session, row: ModelVersion, *, artifacts_dir: Path, reserved_id: int | None
) -> Path:
    """Give a new `row` its id (`reserved_id`, else the next) and the version name it makes
    (from its id, so concurrent writers never share one), and a new, empty artifact folder."""
    row.id = reserved_id
    session.add(row)
    session.flush()
    assert row.id is not None  # given by the insert
    row.version = _version_name(row.id)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    folder = artifacts_dir / row.version
    try:
        folder.mkdir()
    except FileExistsError:
        # Left by a registry whose database was reset, or by another one sharing the folder:
        # their files are not ours to overwrite or delete, so this version lives beside them.
        folder = artifacts_dir / f"{row.version}-{new_id()[-8:]}"
        folder.mkdir()
        log.warning(
            "%s already exists and no version of this registry owns it: %s stores its "
            "artifacts in %s instead",
            artifacts_dir / row.version,
            row.version,
            folder,
        )
    return folder


def artifact_folder(row: ModelVersionBase, *, artifacts_dir: Path) -> Path:
    """Where `row`'s artifacts are on this host: its folder under `artifacts_dir`.

    Versions record their folder's name. Versions recorded before that hold an absolute path,
    used while it exists; once it is gone (the data directory moved, restored elsewhere, or
    this host mounts it at another path), the folder of that name under `artifacts_dir`. The
    checksum decides either way.
    """
    recorded = Path(row.artifact_path)
    if recorded.is_absolute() and recorded.is_dir():
        return recorded
    return artifacts_dir / recorded.name


def artifact_stamp(row: ModelVersionBase, *, artifacts_dir: Path) -> ArtifactStamp:
    """Size and modification time of `row`'s model file (None while it is missing): cheap to
    read every few seconds, and changed by anything that rewrites or restores the file."""
    try:
        stat = (artifact_folder(row, artifacts_dir=artifacts_dir) / MODEL_FILE).stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def public_record(row: ModelVersion, *, artifacts_dir: Path) -> ModelVersionPublic:
    """`row` as the API and `models list --json` show it, `artifact_path` as this host finds
    it (an absolute path)."""
    shown = ModelVersionPublic.model_validate(row, from_attributes=True)
    folder = artifact_folder(row, artifacts_dir=artifacts_dir)
    return shown.model_copy(update={"artifact_path": str(folder.resolve())})


def verified_artifact(version: ModelVersion, *, artifacts_dir: Path) -> Path:
    """The path of `version`'s model file, once its checksum matches the registry's."""
    path = artifact_folder(version, artifacts_dir=artifacts_dir) / MODEL_FILE
    if not path.exists():
        raise ArtifactError(f"artifact of {version.version} is missing at {path}")
    actual = sha256_file(path)
    if actual != version.checksum:
        raise ArtifactError(
            f"artifact of {version.version} has checksum {actual[:12]}..., "
            f"registry says {version.checksum[:12]}...: refused"
        )
    return path


def load_model(version: ModelVersion, *, artifacts_dir: Path) -> TagModel:
    """Load an artifact after checking its checksum; a mismatch is refused, never loaded, and
    so is an artifact this runtime cannot be trusted with (`runtime.load_artifact`) or one
    that loads but cannot score (`TagModel.probe`). What its load warned of without refusing
    it is logged."""
    model, notes = load_model_noting(version, artifacts_dir=artifacts_dir)
    for note in notes:
        log.warning("%s", note)
    return model


def load_model_noting(version: ModelVersion, *, artifacts_dir: Path) -> tuple[TagModel, list[str]]:
    """`load_model`, with what the load warned of returned rather than logged (for a report,
    `tagflow models check`)."""
    path = verified_artifact(version, artifacts_dir=artifacts_dir)
    from service.ml.classifier import TagModel
    from service.ml.runtime import load_artifact, made_with

    loaded = load_artifact(path, version=version.version, recorded=made_with(version.params))
    if not isinstance(loaded.obj, TagModel):
        raise ArtifactError(f"artifact of {version.version} is not a tagflow model")
    try:
        loaded.obj.probe()
    except Exception as exc:  # whatever it is, the model cannot serve: refused, and said why
        raise ArtifactError(
            f"{version.version} loads but cannot score a probe text "
            f"({type(exc).__name__}: {exc}): train it again"
        ) from None
    return loaded.obj, loaded.notes


def get_version(session: Session, *, version: str) -> ModelVersion:
    """The version of that name; NotFoundError for none, and for a name no database can store
    (a byte that is not UTF-8 in a command-line argument), which the driver would refuse."""
    try:
        storable(version)
    except ValueError:
        raise NotFoundError(f"model version {version!r} does not exist") from None
    row = session.exec(select(ModelVersion).where(ModelVersion.version == version)).first()
    if row is None:
        raise NotFoundError(f"model version {version!r} does not exist")
    return row


def versions_with_checksum(session: Session, *, checksum: str) -> list[str]:
    """The versions whose artifact has this checksum: the same model, registered before."""
    rows = session.exec(
        select(ModelVersion.version)
        .where(ModelVersion.checksum == checksum)
        .order_by(col(ModelVersion.id))
    )
    return list(rows)


def get_production(session: Session) -> ModelVersion | None:
    return session.exec(
        select(ModelVersion).where(ModelVersion.status == ModelStatus.PRODUCTION)
    ).first()


def version_or_production(session: Session, *, version: str | None) -> ModelVersion:
    """The named version, else production; NotFoundError when there is none."""
    row = get_version(session, version=version) if version else get_production(session)
    if row is None:
        raise NotFoundError("no production model; name a version")
    return row


def list_versions(
    session: Session,
    *,
    status: ModelStatus | None = None,
    criteria: list[Criterion] | None = None,
) -> list[ModelVersion]:
    """Versions, newest first, filtered by status and by every metric criterion."""
    rows = list(session.exec(select(ModelVersion).order_by(col(ModelVersion.id).desc())))
    # Judged on every version, not the status's alone: a metric only other versions have
    # (a tag approved since production was trained) is no typo, and leaves these out.
    _check_known(criteria or [], rows)
    return [
        r
        for r in rows
        if (status is None or r.status == status)
        and all(c.holds(r.metrics) for c in criteria or [])
    ]


def _check_known(criteria: list[Criterion], rows: list[ModelVersion]) -> None:
    """Refuse a criterion on a metric no listed version has: a typo would otherwise match
    nothing, which reads as "no version qualifies". (A metric only newer versions have just
    leaves the older ones out.)"""
    # A figure a version has as null (the precision of a tag it never answered) is a metric
    # all the same: the criterion leaves that version out, it is not a typo.
    known = {path for row in rows for path in metric_paths(row.metrics, with_null=True)}
    for criterion in criteria:
        name = criterion.name
        if rows and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.75)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise InvalidInputError(f"no version has a metric {name!r}{hint}")


def metric_paths(
    metrics: dict[str, Any], prefix: str = "", *, with_null: bool = False
) -> Iterator[str]:
    """Every number in a metrics document (and, `with_null`, every figure nothing measured),
    as the dotted path a criterion names it by."""
    for key, value in metrics.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from metric_paths(value, f"{path}.", with_null=with_null)
        elif (isinstance(value, int | float) and not isinstance(value, bool)) or (
            with_null and value is None
        ):
            yield path


def promote(
    session: Session, *, version: str, tags: TagSet, artifacts_dir: Path, actor: str
) -> ModelVersion:
    """Make `version` production (its artifact must verify, and every tag it can answer with
    must be approved); the previous one is archived, and is what a rollback of this promotion
    restores. `actor` (who asked) is kept in the production history."""
    production = get_production(session)
    checked = _servable(
        session,
        version=None if production and production.version == version else version,
        tags=tags,
        artifacts_dir=artifacts_dir,
    )

    def attempt() -> ModelVersion:
        row = get_version(session, version=version)
        current = get_production(session)
        if current is not None and current.id == row.id:
            return row  # already production: nothing to archive or remember
        if row.version != checked:
            _refuse_unservable(row, tags=tags, artifacts_dir=artifacts_dir)
        row.previous_version = current.version if current else None
        production_history.record_promotion(
            session, version=row.version, replaced=row.previous_version, actor=actor
        )
        return _switch(session, row, current=current)

    return _serialized(session, attempt, action=f"promotion of {version}")


def rollback(
    session: Session, *, tags: TagSet, artifacts_dir: Path, actor: str, current: str | None = None
) -> ModelVersion:
    """Undo the latest promotion not yet undone: restore the version it replaced. Rollbacks in
    a row walk back through the promotions, never forward, and stop at the first one. With
    `current`, only if that version is still production, so a retried or concurrent rollback
    does not roll back twice."""
    promotion = production_history.undoable(session)
    checked = _servable(
        session,
        version=promotion.replaced if promotion else None,
        tags=tags,
        artifacts_dir=artifacts_dir,
    )

    def attempt() -> ModelVersion:
        production = get_production(session)
        if production is None:
            raise NotFoundError("no production version to roll back from")
        if current is not None and production.version != current:
            raise ConflictError(
                f"{current} is not production ({production.version} is): nothing rolled back"
            )
        promotion = production_history.undoable(session)
        if promotion is None or promotion.replaced is None:
            raise NotFoundError(f"no version was production before {production.version}")
        if promotion.version != production.version:
            raise ConflictError(
                f"the history's last promotion is of {promotion.version}, but "
                f"{production.version} is production: promote the version you want instead"
            )
        previous = get_version(session, version=promotion.replaced)
        if previous.version != checked:
            _refuse_unservable(previous, tags=tags, artifacts_dir=artifacts_dir)
        production_history.record_rollback(session, promotion=promotion, actor=actor)
        return _switch(session, previous, current=production)

    return _serialized(session, attempt, action="rollback")


def _serialized(
    session: Session, attempt: Callable[[], ModelVersion], *, action: str
) -> ModelVersion:
    """Run a change of production under the production lock, so that it reads what is
    production, and the history's top, as they are, and no other change interleaves: two
    promotions of one version record one, a promotion racing a rollback to the same version
    does not record a change that did not happen, and no two changes deadlock.

    Beyond the lock, the database allows one production row (a partial unique index) and a
    promotion is undone once (a conditional update): a writer that bypassed the lock fails
    on write, and the change is re-run on fresh rows.
    """
    for tries in range(1, _PROMOTION_TRIES + 1):
        try:
            production_history.lock(session)
            session.expire_all()  # rows this session read before the lock may be stale
            return attempt()
        except (IntegrityError, production_history.UndoRaced) as exc:
            session.rollback()
            log.info("%s raced another change of production (try %d): %s", action, tries, exc)
        except BaseException:
            session.rollback()  # releases the lock with nothing changed
            raise
    raise ConflictError(
        f"{action} lost {_PROMOTION_TRIES} races to other changes of production: try again"
    )


def _servable(
    session: Session, *, version: str | None, tags: TagSet, artifacts_dir: Path
) -> str | None:
    """`version` if it is servable (`_refuse_unservable`), as a change of production about to
    make it production finds it before taking the production lock; else None. The load
    (checksum, unpickling, a probe) takes a while, and on SQLite the lock is the database's
    write lock, which every other writer (the prediction log, review labels) waited for. A
    version's artifact is fixed by its checksum: the change checks under the lock only a
    version it did not expect, or one refused here (to refuse it, or not, as it then is)."""
    if not version:
        return None
    try:
        _refuse_unservable(
            get_version(session, version=version), tags=tags, artifacts_dir=artifacts_dir
        )
    except TagflowError:
        return None
    return version


def _refuse_unservable(row: ModelVersion, *, tags: TagSet, artifacts_dir: Path) -> None:
    """Refuse before touching the registry: a model that does not verify, or one the running
    APIs would refuse to serve (they keep the old model), never becomes production."""
    unknown = tags.unapproved(load_model(row, artifacts_dir=artifacts_dir).classes)
    if unknown:
        raise ConflictError(
            f"{row.version} can answer with tags that are not approved ({', '.join(unknown)}): "
            f"it stays {row.status.value}"
        )


def _switch(session: Session, row: ModelVersion, *, current: ModelVersion | None) -> ModelVersion:
    """Archive `current`, make `row` production, and commit with whatever history was added."""
    if current is not None:
        current.status = ModelStatus.ARCHIVED
        session.add(current)
        session.flush()
    row.status = ModelStatus.PRODUCTION
    row.promoted_at = utcnow()
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def serving_threshold(row: ModelVersionBase) -> float:
    """The auto-acceptance cut `row` is served with: one set after training (audit
    recalibration, or by hand) if any, else the one training chose."""
    return float(row.thresholds.get("serving", row.thresholds["auto"]))


def lock_thresholds(session: Session, *, version: str) -> ModelVersion:
    """`version`'s row as it is now, read after taking the turn to change its cut, held until
    the session's transaction ends: no other change of the cut comes between what the caller
    reads and what it writes (a row this session read before would be stale)."""
    get_version(session, version=version)  # NotFoundError before any lock
    take_turns(session, cls=_THRESHOLD_LOCK_CLASS, key=version, table=ModelVersion)
    session.expire_all()
    return get_version(session, version=version)


def set_serving_threshold(
    session: Session, *, version: str, threshold: float, evidence: dict[str, Any]
) -> ModelVersion:
    """Record a new auto-acceptance cut for `version`; every change is kept in its history."""
    if not 0.0 < threshold <= MAX_THRESHOLD:
        raise InvalidInputError(f"threshold {threshold} is outside (0, {MAX_THRESHOLD}]")
    row = lock_thresholds(session, version=version)
    entry = {**evidence, "previous": serving_threshold(row), "threshold": threshold}
    history = [*row.thresholds.get("history", []), {**entry, "at": utc_text(utcnow())}]
    # A new dict: SQLAlchemy does not see in-place changes to a JSON column.
    row.thresholds = {**row.thresholds, "serving": threshold, "history": history}
    session.add(row)
    session.commit()
    session.refresh(row)
    return row
