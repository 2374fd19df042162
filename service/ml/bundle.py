"""Model bundles: one registry version packed in a file, to move it to another deployment.

A team that validates a model on staging wants to serve that very model in production, not a
retrained look-alike. `export_bundle` packs a version into a gzipped tar: `manifest.json` (the
version's registry record as `GET /models/{version}` shows it, with its artifact checksum) and
the artifact folder's files. `import_bundle` checks a bundle before anything is unpickled or
recorded: its format, that its members are exactly the expected plain files, that the model
file matches the manifest's checksum, and that the manifest names only tags this deployment
approves (the loaded model's own classes are checked again). It then records a new
`candidate` version (numbered by this registry) whose `params.imported` names where it came
from; it is promoted like any other version.

The imported version is served with the cut its training chose: a cut set later on the source
deployment (audit recalibration or by hand) was measured on that deployment's traffic, so it is
kept in `params.imported.serving_threshold` for an admin to apply, not applied.

A model file is a pickle, and loading one runs code: import bundles only from deployments you
trust, as you would copy an artifact folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tarfile
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from sqlmodel import Session

from service.entities import ModelStatus, ModelVersion, ModelVersionPublic
from service.entities.common import new_id, utcnow
from service.errors import InvalidInputError
from service.ml import registry
from service.tags import TagSet

log = logging.getLogger(__name__)

FORMAT = "tagflow-model-bundle"
MANIFEST = "manifest.json"
REPORT_FILES = ("report.json", "report.png")
MEMBERS = frozenset({MANIFEST, registry.MODEL_FILE, *REPORT_FILES})
# A bound on each member as the tar header declares it, checked before it is read: a model is
# a few MB (1.2 MB trained on the bundled seed), and a hostile bundle must not expand into all
# of memory.
MAX_MEMBER_BYTES = 64 * 1024 * 1024


class BundleManifest(BaseModel):
    """What `manifest.json` holds: the exported version's record, and where it came from."""

    format: Literal["tagflow-model-bundle"]
    format_version: Literal[1]
    exported_at: datetime
    tagflow_version: str
    model: ModelVersionPublic


@dataclass
class Imported:
    """A recorded import, with what the importer should know before promoting it."""

    row: ModelVersion
    warnings: list[str] = field(default_factory=list)


def bundle_name(version: str) -> str:
    """The file name an export of `version` is offered under."""
    return f"tagflow-{version}.tar.gz"


def export_bundle(session: Session, *, version: str) -> bytes:
    """`version` packed as a bundle; its artifact must verify against the registry first."""
    row = registry.get_version(session, version=version)
    model_path = registry.verified_artifact(row)
    manifest = BundleManifest(
        format=FORMAT,
        format_version=1,
        exported_at=utcnow(),
        tagflow_version=package_version("tagflow"),
        model=ModelVersionPublic.model_validate(row, from_attributes=True),
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        _add(tar, MANIFEST, manifest.model_dump_json(indent=2).encode())
        _add(tar, registry.MODEL_FILE, model_path.read_bytes())
        for name in REPORT_FILES:
            report = model_path.parent / name
            if report.exists():
                _add(tar, name, report.read_bytes())
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(utcnow().timestamp())
    tar.addfile(info, io.BytesIO(data))


def read_bundle(data: bytes) -> tuple[BundleManifest, dict[str, bytes]]:
    """The manifest and files of a bundle, checked: format, members, model checksum.
    Anything else is an `InvalidInputError` saying what is wrong."""
    files = _members(data)
    if MANIFEST not in files or registry.MODEL_FILE not in files:
        raise InvalidInputError(
            f"not a tagflow model bundle: it needs {MANIFEST} and {registry.MODEL_FILE}"
        )
    try:
        manifest = BundleManifest.model_validate(json.loads(files.pop(MANIFEST)))
    except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidInputError(f"not a tagflow model bundle: bad {MANIFEST}: {exc}") from None
    if not isinstance(manifest.model.thresholds.get("auto"), int | float):
        raise InvalidInputError(f"not a tagflow model bundle: {MANIFEST} has no auto threshold")
    actual = hashlib.sha256(files[registry.MODEL_FILE]).hexdigest()
    if actual != manifest.model.checksum:
        raise InvalidInputError(
            f"the bundle's {registry.MODEL_FILE} has checksum {actual[:12]}..., its manifest "
            f"says {manifest.model.checksum[:12]}...: refused (damaged or altered)"
        )
    return manifest, files


def _members(data: bytes) -> dict[str, bytes]:
    """Every member of the tar, by name; only the expected plain files, each once."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                if member.name not in MEMBERS or not member.isfile() or member.name in files:
                    raise InvalidInputError(
                        f"not a tagflow model bundle: unexpected member {member.name!r} "
                        f"(a bundle holds only {', '.join(sorted(MEMBERS))}, each once)"
                    )
                if member.size > MAX_MEMBER_BYTES:
                    raise InvalidInputError(f"bundle member {member.name} is too large")
                extracted = tar.extractfile(member)
                assert extracted is not None  # a regular file always has content
                files[member.name] = extracted.read()
    except (tarfile.TarError, EOFError, OSError) as exc:  # gzip errors are OSErrors
        raise InvalidInputError(f"not a tagflow model bundle (a .tar.gz): {exc}") from None
    return files


def import_bundle(
    session: Session,
    *,
    data: bytes,
    artifacts_dir: Path,
    tags: TagSet,
    encoder: str,
    note: str = "",
) -> Imported:
    """Record the model in bundle `data` as a new `candidate` version of this registry.

    Refused, with nothing recorded or left on disk: a bundle that fails `read_bundle`, and a
    model that could answer with a tag outside `tags`. A model trained on another encoder than
    this deployment's `encoder` is recorded with a warning (it serves, slightly off)."""
    manifest, files = read_bundle(data)
    source = manifest.model
    _check_tags(source.params.get("classes", []), tags, source.version)
    row = ModelVersion(
        version=f"pending-{new_id()}",
        status=ModelStatus.CANDIDATE,
        data_hash=source.data_hash,
        data_rows=source.data_rows,
        # The training file's path names a file on the source's machine: kept as lineage, not
        # as this deployment's base dataset for retraining (`retraining.base_source`).
        params={k: v for k, v in source.params.items() if k != "source"}
        | {"imported": _lineage(manifest)},
        metrics=source.metrics,
        thresholds={"auto": source.thresholds["auto"]},
        gate=source.gate,
        artifact_path="",
        checksum=source.checksum,
        note=note or f"imported from {source.version} (exported {manifest.exported_at:%Y-%m-%d})",
    )
    folder = registry.add_version(session, row, artifacts_dir=artifacts_dir)
    try:
        for name, blob in files.items():
            (folder / name).write_bytes(blob)
        row.artifact_path = str(folder.resolve())
        model = registry.load_model(row)  # the checksum again, then what the pickle holds
        _check_tags(model.classes, tags, source.version)
        session.commit()
    except BaseException:
        session.rollback()
        shutil.rmtree(folder, ignore_errors=True)
        raise
    session.refresh(row)
    warnings = []
    if model.encoder and model.encoder != encoder:
        warnings.append(
            f"{row.version} was trained on {model.encoder} embeddings and this deployment "
            f"serves {encoder}: its answers may differ a little from its recorded metrics"
        )
    log.info("imported %s as %s", source.version, row.version)
    return Imported(row, warnings)


def _check_tags(classes: list[str], tags: TagSet, version: str) -> None:
    unknown = sorted(set(classes) - set(tags.names))
    if unknown:
        raise InvalidInputError(
            f"model {version} answers with tags this deployment does not approve: "
            f"{', '.join(unknown)}: refused"
        )


def _lineage(manifest: BundleManifest) -> dict[str, Any]:
    """Where an imported version came from, kept in its `params.imported`."""
    source = manifest.model
    return {
        "version": source.version,
        "status": source.status.value,
        "created_at": source.created_at.isoformat(),
        "dataset_snapshot_id": source.dataset_snapshot_id,
        "source": source.params.get("source"),
        "serving_threshold": registry.serving_threshold(source),
        "exported_at": manifest.exported_at.isoformat(),
        "tagflow_version": manifest.tagflow_version,
        "imported_at": utcnow().isoformat(),
    }
