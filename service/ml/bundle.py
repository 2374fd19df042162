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

A model file is a pickle, and loading one runs code. Deployments that share a bundle key
(TAGFLOW_BUNDLE_KEY) sign what they export with it (HMAC-SHA256 of the manifest, which holds
every other file's SHA-256) and import only what is signed with it; without one, an import
loads what an admin sends, and says so in a warning.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import io
import json
import logging
import math
import re
import tarfile
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

from pydantic import BaseModel, ValidationError
from sqlmodel import Session

from service.entities import ModelStatus, ModelVersion, ModelVersionPublic
from service.entities.common import is_utf8, new_id, utc_text, utcnow
from service.errors import InvalidInputError
from service.ml import registry
from service.tags import TagSet

if TYPE_CHECKING:  # pulls in scikit-learn
    from service.ml.classifier import TagModel

log = logging.getLogger(__name__)

FORMAT = "tagflow-model-bundle"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
REPORT_FILES = (registry.REPORT_JSON, registry.REPORT_PNG)
MEMBERS = frozenset({MANIFEST, SIGNATURE, registry.MODEL_FILE, *REPORT_FILES})
# A bound on each member as the tar header declares it, checked before it is read: a model is
# a few MB (1.2 MB trained on the bundled seed), and a hostile bundle must not expand into all
# of memory.
MAX_MEMBER_BYTES = 64 * 1024 * 1024
# A bound on the whole tar as it is unpacked, checked before the bytes are held: tarfile reads
# a pax or GNU long-name header whole before the member it describes, whatever size it
# declares, so a 2 MB bundle of one such header made an import hold 2 GB (and a body under the
# HTTP limit, 8 GB).
MAX_TAR_BYTES = len(MEMBERS) * MAX_MEMBER_BYTES + 1024 * 1024
VERSION_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MAX_ROWS = 2**31 - 1  # data_rows is an INTEGER column


class BundleManifest(BaseModel):
    """What `manifest.json` holds: the exported version's record, the SHA-256 of every other
    file in the bundle, and where it came from."""

    format: Literal["tagflow-model-bundle"]
    format_version: Literal[1]
    exported_at: datetime
    tagflow_version: str
    model: ModelVersionPublic
    files: dict[str, str]


@dataclass
class Bundle:
    """A bundle's manifest and files, checked; `signed`: its signature was verified."""

    manifest: BundleManifest
    files: dict[str, bytes]
    signed: bool


@dataclass
class Imported:
    """A recorded import, with what the importer should know before promoting it."""

    row: ModelVersion
    warnings: list[str] = field(default_factory=list)


def bundle_name(version: str) -> str:
    """The file name an export of `version` is offered under."""
    return f"tagflow-{version}.tar.gz"


def sign(manifest: bytes, key: str) -> str:
    """The HMAC-SHA256 of the manifest's bytes under `key` (hex). The manifest holds the
    SHA-256 of every other file, so the signature covers the whole bundle."""
    return hmac.new(key.encode(), manifest, hashlib.sha256).hexdigest()


def export_bundle(
    session: Session, *, version: str, artifacts_dir: Path, key: str | None = None
) -> bytes:
    """`version` packed as a bundle, signed with `key` if one is given; its artifact must
    verify against the registry first."""
    row = registry.get_version(session, version=version)
    model_path = registry.verified_artifact(row, artifacts_dir=artifacts_dir)
    files = {registry.MODEL_FILE: model_path.read_bytes()}
    for name in REPORT_FILES:
        if (model_path.parent / name).exists():
            files[name] = (model_path.parent / name).read_bytes()
    manifest = (
        BundleManifest(
            format=FORMAT,
            format_version=1,
            exported_at=utcnow(),
            tagflow_version=package_version("tagflow"),
            model=ModelVersionPublic.model_validate(row, from_attributes=True),
            files={name: hashlib.sha256(blob).hexdigest() for name, blob in files.items()},
        )
        .model_dump_json(indent=2)
        .encode()
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        _add(tar, MANIFEST, manifest)
        if key:
            _add(tar, SIGNATURE, sign(manifest, key).encode())
        for name, blob in files.items():
            _add(tar, name, blob)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(utcnow().timestamp())
    tar.addfile(info, io.BytesIO(data))


def read_bundle(data: bytes, *, key: str | None = None) -> Bundle:
    """The manifest and files of a bundle, checked: members, signature (when `key` is given,
    a bundle without a valid one is refused), format, every file's checksum. Anything wrong is
    an `InvalidInputError` saying what."""
    files = _members(data)
    if MANIFEST not in files or registry.MODEL_FILE not in files:
        raise InvalidInputError(
            f"not a tagflow model bundle: it needs {MANIFEST} and {registry.MODEL_FILE}"
        )
    raw = files.pop(MANIFEST)
    signature = files.pop(SIGNATURE, None)
    if key:
        _check_signature(raw, signature, key)
    manifest = _manifest(raw)
    _check_files(manifest, files)
    return Bundle(manifest, files, signed=bool(key))


def _manifest(raw: bytes) -> BundleManifest:
    """`manifest.json` parsed and checked for what an import relies on."""
    try:
        parsed = json.loads(raw)
        manifest = BundleManifest.model_validate(parsed)
    except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidInputError(f"not a tagflow model bundle: bad {MANIFEST}: {exc}") from None
    # A lone UTF-16 surrogate ("\udce9", valid JSON) would be recorded with the version, after
    # which no answer could show it: every GET /models was a 500.
    if not is_utf8(json.dumps(parsed, ensure_ascii=False)):
        raise InvalidInputError(
            f"not a tagflow model bundle: {MANIFEST} holds a lone UTF-16 surrogate, which is "
            "not text"
        )
    # Both land in plain text columns: PostgreSQL refuses a NUL there with an error, not a 422.
    if not VERSION_NAME.fullmatch(manifest.model.version) or not SHA256_HEX.fullmatch(
        manifest.model.data_hash
    ):
        raise InvalidInputError(
            f"not a tagflow model bundle: {MANIFEST} has a malformed version name or data hash"
        )
    _check_record(manifest.model)
    if manifest.files.get(registry.MODEL_FILE) != manifest.model.checksum:
        raise InvalidInputError(
            f"not a tagflow model bundle: {MANIFEST} gives {registry.MODEL_FILE} another "
            "checksum than its model record"
        )
    return manifest


def _check_record(model: ModelVersionPublic) -> None:
    """The figures an import records and serves by are in range: the cut it would serve with
    (the range an admin may set), the row count (an integer column), and the metrics that
    listings print."""
    auto = model.thresholds.get("auto")
    if not _number(auto):
        raise InvalidInputError(f"not a tagflow model bundle: {MANIFEST} has no auto threshold")
    problems = []
    if not 0.0 < auto <= registry.MAX_THRESHOLD:
        problems.append(f"auto threshold {auto} is outside (0, {registry.MAX_THRESHOLD}]")
    if not 0 <= model.data_rows <= MAX_ROWS:
        problems.append(f"data_rows {model.data_rows} is outside [0, {MAX_ROWS}]")
    summary = model.metrics.get("auto")
    if not isinstance(summary, dict):
        problems.append("metrics.auto is missing")
        summary = {}
    # Weighted F1 is always measured; acceptance figures are null when nothing is accepted.
    for name, value, required in (
        ("weighted_f1", model.metrics.get("weighted_f1"), True),
        ("auto.coverage", summary.get("coverage"), False),
        ("auto.precision", summary.get("precision"), False),
    ):
        if (value is not None or required) and not (_number(value) and 0.0 <= value <= 1.0):
            problems.append(f"metric {name} is {value!r}, not a number in [0, 1]")
    if problems:
        raise InvalidInputError(f"not a tagflow model bundle: {MANIFEST}: {'; '.join(problems)}")


def _number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_files(manifest: BundleManifest, files: dict[str, bytes]) -> None:
    """The bundle holds exactly the files its manifest lists, each with its checksum."""
    if set(files) != set(manifest.files):
        raise InvalidInputError(
            f"the bundle holds {sorted(files)}, its manifest lists {sorted(manifest.files)}: "
            "refused"
        )
    for name, blob in files.items():
        actual = hashlib.sha256(blob).hexdigest()
        if actual != manifest.files[name]:
            raise InvalidInputError(
                f"the bundle's {name} has checksum {actual[:12]}..., its manifest says "
                f"{manifest.files[name][:12]}...: refused (damaged or altered)"
            )


def _check_signature(manifest: bytes, signature: bytes | None, key: str) -> None:
    if signature is None:
        raise InvalidInputError(
            "the bundle is not signed, and this deployment accepts only bundles signed with "
            "its TAGFLOW_BUNDLE_KEY: refused"
        )
    if not hmac.compare_digest(signature.strip(), sign(manifest, key).encode()):
        raise InvalidInputError(
            "the bundle's signature does not match this deployment's TAGFLOW_BUNDLE_KEY "
            "(signed with another key, or altered since): refused"
        )


class _BoundedGzip(gzip.GzipFile):
    """A gzip stream that refuses to unpack past `limit` bytes, before it holds them."""

    def __init__(self, data: bytes, *, limit: int) -> None:
        super().__init__(fileobj=io.BytesIO(data), mode="rb")
        self._limit = limit

    def read(self, size: int | None = -1) -> bytes:
        room = self._limit - self.tell()
        if room < 0:  # a seek went past it
            raise InvalidInputError(_too_large(self._limit))
        chunk = super().read(room + 1 if size is None or size < 0 or size > room else size)
        if self.tell() > self._limit:
            raise InvalidInputError(_too_large(self._limit))
        return chunk


def _too_large(limit: int) -> str:
    return f"not a tagflow model bundle: it unpacks to more than {limit} bytes"


def _members(data: bytes) -> dict[str, bytes]:
    """Every member of the tar, by name; only the expected plain files, each once."""
    files: dict[str, bytes] = {}
    try:
        with (
            _BoundedGzip(data, limit=MAX_TAR_BYTES) as unpacked,
            tarfile.open(fileobj=unpacked, mode="r:") as tar,
        ):
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
    except gzip.BadGzipFile:
        raise InvalidInputError("not a tagflow model bundle (a .tar.gz): not a gzip file") from None
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
    key: str | None = None,
    note: str = "",
) -> Imported:
    """Record the model in bundle `data` as a new `candidate` version of this registry.

    Refused, with nothing recorded or left on disk: a bundle that fails `read_bundle` (with
    `key`, one not signed with it), and a model that could answer with a tag outside `tags`.
    Recorded with a warning: a model trained on another encoder than this deployment's
    `encoder` (it serves, slightly off), and any bundle when there is no `key` to check."""
    bundle = read_bundle(data, key=key)
    manifest, files = bundle.manifest, bundle.files
    source = manifest.model
    _check_tags(source.params.get("classes", []), tags, source.version)
    already = registry.versions_with_checksum(session, checksum=source.checksum)
    row = _candidate(manifest, note=note)
    with registry.staged_version(
        session,
        artifacts_dir=artifacts_dir,
        write=lambda folder: (folder / registry.MODEL_FILE).write_bytes(files[registry.MODEL_FILE]),
        name_files=lambda folder, version: _write_report(
            folder, files.get(registry.REPORT_JSON), row=row, version=version, source=source.version
        ),
    ) as staged:
        # The checksum again, then what the pickle holds: before the row is added, as the
        # load takes a while and the insert holds SQLite's write lock until the commit.
        model = _staged_model(row, staged=staged, artifacts_dir=artifacts_dir)
        _check_tags(model.classes, tags, source.version)
        with registry.new_version(session, row, artifacts_dir=artifacts_dir, staged=staged):
            pass  # nothing else goes in its commit
    warnings = []
    if not bundle.signed:
        warnings.append(
            "signature not checked: this deployment has no TAGFLOW_BUNDLE_KEY, so it loads "
            "a model file, a pickle that runs code as it loads, from anyone with an admin key"
        )
    if already:
        warnings.append(
            f"this registry already holds the same model as {', '.join(already)} (the same "
            f"checksum); {row.version} is another version of it"
        )
    if model.encoder and model.encoder != encoder:
        warnings.append(
            f"{row.version} was trained on {model.encoder} embeddings and this deployment "
            f"serves {encoder}: its answers may differ a little from its recorded metrics"
        )
    log.info("imported %s as %s", source.version, row.version)
    return Imported(row, warnings)


def _candidate(manifest: BundleManifest, *, note: str) -> ModelVersion:
    """The new version's row: the source's record, with its lineage and without what was
    particular to the source deployment (its served cut, its training file's path)."""
    source = manifest.model
    return ModelVersion(
        version=f"pending-{new_id()}",
        status=ModelStatus.CANDIDATE,
        data_hash=source.data_hash,
        data_rows=source.data_rows,
        # The training file's path names a file on the source's machine: kept as lineage, not
        # as this deployment's base dataset for retraining (`training_sets.base_source`).
        params={k: v for k, v in source.params.items() if k != "source"}
        | {"imported": _lineage(manifest)},
        metrics=source.metrics,
        thresholds={"auto": source.thresholds["auto"]},
        gate=source.gate,
        artifact_path="",
        checksum=source.checksum,
        note=note or f"imported from {source.version} (exported {manifest.exported_at:%Y-%m-%d})",
    )


def _staged_model(row: ModelVersion, *, staged: registry.Staged, artifacts_dir: Path) -> TagModel:
    """The model `row` will serve, loaded from its staged folder as `registry.load_model`
    loads a version's."""
    at = {"version": staged.version, "artifact_path": staged.folder.name}
    return registry.load_model(
        ModelVersion.model_validate(row.model_dump() | at), artifacts_dir=artifacts_dir
    )


def _write_report(
    folder: Path, data: bytes | None, *, row: ModelVersion, version: str, source: str
) -> None:
    """The source's evaluation report under this registry's `version` name, with the lineage,
    so that neither the JSON nor the picture names a version this registry does not have. A
    bundle without one (its source had lost it) gets one from the record's metrics."""
    try:
        report = json.loads(data) if data is not None else {"metrics": row.metrics}
    except ValueError as exc:
        raise InvalidInputError(f"the bundle's {registry.REPORT_JSON} is not JSON: {exc}") from None
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        raise InvalidInputError(f"the bundle's {registry.REPORT_JSON} has no metrics: refused")
    report |= {"version": version, "imported": row.params["imported"]}
    try:
        registry.write_report(folder, report, title=f"tagflow {version} (imported from {source})")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise InvalidInputError(
            f"the bundle's evaluation report cannot be drawn ({type(exc).__name__}: {exc}): refused"
        ) from None


def _check_tags(classes: list[str], tags: TagSet, version: str) -> None:
    unknown = tags.unapproved(classes)
    if unknown:
        raise InvalidInputError(
            f"model {version} answers with tags this deployment does not approve: "
            f"{', '.join(unknown)}: refused"
        )


def _lineage(manifest: BundleManifest) -> dict[str, Any]:
    """Where an imported version came from, kept in its `params.imported`. A source that was
    itself imported has no training file of its own (its import dropped the path): the file is
    its lineage's, and that lineage is kept whole under `earlier`, so a version passed from
    deployment to deployment still says where it was trained."""
    source = manifest.model
    earlier = source.params.get("imported")
    earlier = earlier if isinstance(earlier, dict) else None
    return {
        "version": source.version,
        "status": source.status.value,
        "created_at": utc_text(source.created_at),
        "dataset_snapshot_id": source.dataset_snapshot_id,
        "source": source.params.get("source") or (earlier or {}).get("source"),
        "serving_threshold": registry.serving_threshold(source),
        "exported_at": utc_text(manifest.exported_at),
        "tagflow_version": manifest.tagflow_version,
        "imported_at": utc_text(utcnow()),
    } | ({"earlier": earlier} if earlier else {})
