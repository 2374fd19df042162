"""Model bundles: a version exported from one registry (SQLite or PostgreSQL) and imported into
another, by function, over HTTP and from the command line; damaged, altered, foreign and
unapproved bundles refused with nothing recorded."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePath

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session
from typer.testing import CliRunner

from service.cli import app
from service.cli.lineage import describe
from service.config import SEED_DATASET, Settings
from service.db import init_db, make_engine
from service.entities import ModelStatus, ModelVersion
from service.entities.snapshot import ModelLineage
from service.errors import ArtifactError, InvalidInputError
from service.ml import registry
from service.ml.bundle import MAX_TAR_BYTES, Imported, export_bundle, import_bundle, read_bundle
from service.ml.encoder import FP32_FILE, Encoder
from service.ml.training import TrainResult
from service.tags import Tag, TagSet
from service.training_sets import base_source
from tests.conftest import auth

KEY = "a-shared-secret-of-32-characters"
TEXTS = [
    "Transformers for summarisation. Abstractive summaries of news with BERT",
    "YOLO on a drone. Real-time object detection from the air",
    "Feature store in production. Serving features to models with low latency",
    "Graph neural networks. Message passing on molecules",
]


@pytest.fixture
def settings(make_settings, database_url: str) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(database_url=database_url)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[Engine, Path]]:
    """A second deployment's registry: its own SQLite database and artifact folder."""
    engine = make_engine(f"sqlite:///{tmp_path / 'target.db'}")
    init_db(engine)
    yield engine, tmp_path / "target-models"
    engine.dispose()


@pytest.fixture
def seed_bundle(
    sqlite_engine: Engine,
    make_settings,  # type: ignore[no-untyped-def]
    seed_result: TrainResult,
) -> bytes:
    """The bundled seed's model, registered on SQLite and exported."""
    with Session(sqlite_engine) as session:
        row = registry.register(
            session, result=seed_result, artifacts_dir=make_settings().artifacts_dir
        )
        return export_bundle(
            session, version=row.version, artifacts_dir=make_settings().artifacts_dir
        )


def _import(target: tuple[Engine, Path], data: bytes, tags: TagSet, encoder: str) -> ModelVersion:
    engine, artifacts = target
    with Session(engine, expire_on_commit=False) as session:
        imported = import_bundle(
            session, data=data, artifacts_dir=artifacts, tags=tags, encoder=encoder
        )
    return imported.row


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


def _pack(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buffer.getvalue()


def _with_manifest(data: bytes, change) -> bytes:  # type: ignore[no-untyped-def]
    files = _members(data)
    manifest = json.loads(files["manifest.json"])
    change(manifest)
    return _pack({**files, "manifest.json": json.dumps(manifest).encode()})


def _with_record(data: bytes, change) -> bytes:  # type: ignore[no-untyped-def]
    """`data` with its manifest's model record changed by `change`."""
    return _with_manifest(data, lambda manifest: change(manifest["model"]))


def _with_report(data: bytes, report: bytes) -> bytes:
    """`data` with another report.json, its checksum in the manifest to match."""
    files = _members(data)
    manifest = json.loads(files["manifest.json"])
    manifest["files"]["report.json"] = hashlib.sha256(report).hexdigest()
    return _pack({**files, "report.json": report, "manifest.json": json.dumps(manifest).encode()})


def _nothing_recorded(target: tuple[Engine, Path]) -> None:
    engine, artifacts = target
    with Session(engine) as session:
        assert registry.list_versions(session) == []
    assert not artifacts.exists() or not any(artifacts.iterdir())


def test_an_exported_version_is_imported_as_a_candidate_that_answers_the_same(
    engine: Engine,
    settings: Settings,
    shared_result: TrainResult,
    target: tuple[Engine, Path],
    tags: TagSet,
    encoder: Encoder,
) -> None:
    with Session(engine) as session:
        source = registry.register(
            session, result=shared_result, artifacts_dir=settings.artifacts_dir
        )
        registry.promote(
            session,
            actor="test",
            version=source.version,
            tags=tags,
            artifacts_dir=settings.artifacts_dir,
        )
        # A cut set on the source deployment: kept as lineage, not applied on import.
        registry.set_serving_threshold(
            session, version=source.version, threshold=0.97, evidence={"source": "manual"}
        )
        data = export_bundle(session, version=source.version, artifacts_dir=settings.artifacts_dir)
        source = registry.get_version(session, version=source.version)

    row = _import(target, data, tags, encoder.path.name)
    assert row.version == "v0001" and row.status is ModelStatus.CANDIDATE
    assert (row.checksum, row.data_hash, row.data_rows) == (
        source.checksum,
        source.data_hash,
        source.data_rows,
    )
    assert row.metrics == source.metrics and row.gate == source.gate
    assert row.thresholds == {"auto": source.thresholds["auto"]}
    lineage = row.params.pop("imported")
    # The training file's path is another machine's: lineage, not this deployment's base data.
    assert row.params == {k: v for k, v in source.params.items() if k != "source"}
    assert lineage["source"] == source.params["source"]
    assert lineage["version"] == source.version and lineage["status"] == "production"
    assert lineage["serving_threshold"] == 0.97
    assert "imported from v0001" in row.note
    assert row.artifact_path == "v0001"  # by name, under this deployment's folder
    folder = target[1] / "v0001"
    # The report names the version as this registry knows it, and where it came from.
    report = json.loads((folder / "report.json").read_text())
    assert report["version"] == "v0001" and report["imported"] == lineage
    assert report["metrics"] == source.metrics
    picture = (folder / "report.png").read_bytes()
    assert picture[:4] == b"\x89PNG" and picture != _members(data)["report.png"]

    moved = registry.load_model(row, artifacts_dir=target[1])
    expected = shared_result.model.predict_proba(TEXTS, encoder.encode)
    assert (moved.predict_proba(TEXTS, encoder.encode) == expected).all()
    with Session(target[0]) as session:
        assert (
            registry.promote(
                session, actor="test", version="v0001", tags=tags, artifacts_dir=target[1]
            ).status
            is ModelStatus.PRODUCTION
        )
        # Retraining here needs this deployment's own base data, not the source's file path.
        with pytest.raises(InvalidInputError, match="no base dataset"):
            base_source(session, settings=settings.model_copy(update={"base_dataset": None}))


def test_an_altered_model_file_is_refused(
    seed_bundle: bytes, seed_result: TrainResult, target: tuple[Engine, Path], tags: TagSet
) -> None:
    files = _members(seed_bundle)
    files["model.joblib"] += b"tampered"
    with pytest.raises(InvalidInputError, match="checksum .* refused"):
        _import(target, _pack(files), tags, seed_result.model.encoder)
    _nothing_recorded(target)


def test_a_model_with_tags_this_deployment_does_not_approve_is_refused(
    seed_bundle: bytes, seed_result: TrainResult, target: tuple[Engine, Path], tags: TagSet
) -> None:
    data = seed_bundle
    narrower = TagSet(tuple(t for t in tags.tags if t.name != "mlops"))
    with pytest.raises(InvalidInputError, match="does not approve: mlops"):
        _import(target, data, narrower, seed_result.model.encoder)
    # A manifest that hides the tag is caught by the model itself, after loading it; the
    # version it had started to record and the files it wrote are gone.
    hidden = _with_manifest(
        data, lambda m: m["model"]["params"].update(classes=["computer-vision"])
    )
    with pytest.raises(InvalidInputError, match="does not approve: mlops"):
        _import(target, hidden, narrower, seed_result.model.encoder)
    _nothing_recorded(target)
    with_more = TagSet((*tags.tags, Tag("time-series", "Forecasting")))
    assert _import(target, data, with_more, seed_result.model.encoder).version == "v0001"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda data: b"not a bundle at all", "not a gzip file"),
        (lambda data: data[: len(data) // 2], "not a tagflow model bundle"),
        (lambda data: _pack({**_members(data), "../evil.py": b"x"}), "unexpected member"),
        (lambda data: _pack({**_members(data), "report.png": b"x"}), "report.png has checksum"),
        (
            lambda data: _pack({k: v for k, v in _members(data).items() if k != "report.json"}),
            "its manifest lists",
        ),
        (lambda data: _pack({"model.joblib": _members(data)["model.joblib"]}), "needs manifest"),
        (lambda data: _with_manifest(data, lambda m: m.update(format_version=2)), "bad manifest"),
        (lambda data: _with_manifest(data, lambda m: m["model"].pop("checksum")), "bad manifest"),
        (
            lambda data: _with_manifest(data, lambda m: m["model"].update(thresholds={})),
            "no auto threshold",
        ),
        (
            lambda data: _with_manifest(data, lambda m: m["model"].update(version="v\x001")),
            "malformed version name",
        ),
        (
            lambda data: _with_manifest(data, lambda m: m["model"].update(data_hash="x\x00")),
            "malformed version name or data hash",
        ),
        (
            lambda data: _with_manifest(data, lambda m: m["model"]["thresholds"].update(auto=5.0)),
            "auto threshold 5.0 is outside",
        ),
        (
            lambda data: _with_manifest(data, lambda m: m["model"]["thresholds"].update(auto=True)),
            "no auto threshold",
        ),
        (
            lambda data: _with_manifest(data, lambda m: m["model"].update(data_rows=10**30)),
            "data_rows 1000000000000000000000000000000 is outside",
        ),
        (
            lambda data: _with_manifest(data, lambda m: m["model"].update(data_rows=-5)),
            "data_rows -5 is outside",
        ),
        (
            lambda data: _with_record(data, lambda r: r["metrics"].update(weighted_f1="a")),
            "metric weighted_f1 is 'a'",
        ),
        (
            lambda data: _with_record(data, lambda r: r["metrics"]["auto"].update(coverage=2)),
            "metric auto.coverage is 2",
        ),
        (
            lambda data: _with_record(data, lambda r: r["params"].update(source="caf\udce9.csv")),
            "holds a lone UTF-16 surrogate",
        ),
        (
            lambda data: _with_record(data, lambda r: r["metrics"].update({"\ud800": 1.0})),
            "holds a lone UTF-16 surrogate",
        ),
        (lambda data: _with_report(data, b"{not json"), "report.json is not JSON"),
        (lambda data: _with_report(data, b'{"version": "v0001"}'), "has no metrics"),
        (
            lambda data: _with_report(data, b'{"metrics": {"n": 3}}'),
            "evaluation report cannot be drawn",
        ),
    ],
    ids=[
        "garbage",
        "truncated",
        "extra-member",
        "altered-report",
        "missing-report",
        "no-manifest",
        "format",
        "field",
        "threshold",
        "nul-in-version",
        "nul-in-data-hash",
        "threshold-out-of-range",
        "threshold-bool",
        "rows-overflow",
        "rows-negative",
        "f1-not-a-number",
        "coverage-out-of-range",
        "surrogate-in-params",
        "surrogate-in-metrics",
        "report-not-json",
        "report-without-metrics",
        "report-unreadable-metrics",
    ],
)
def test_what_is_not_a_bundle_is_a_clear_error(
    make,  # type: ignore[no-untyped-def]
    message: str,
    seed_bundle: bytes,
    seed_result: TrainResult,
    target: tuple[Engine, Path],
    tags: TagSet,
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        _import(target, make(seed_bundle), tags, seed_result.model.encoder)
    _nothing_recorded(target)


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME], ids=["pax", "gnu"])
def test_a_header_that_unpacks_past_the_bound_is_refused_before_it_is_held(kind: bytes) -> None:
    """tarfile reads a pax or long-name header whole, whatever size it declares: a 2 MB
    bundle of one such header made an import hold 2 GB. The unpacking stops at the bound."""
    header = tarfile.TarInfo("././@LongHeader")
    header.type = kind
    header.size = 4 * MAX_TAR_BYTES
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip
    parts = [packer.compress(header.tobuf(format=tarfile.USTAR_FORMAT))]
    zeros = bytes(1 << 20)
    parts += [packer.compress(zeros) for _ in range(MAX_TAR_BYTES // len(zeros) + 2)]
    data = b"".join([*parts, packer.flush()])
    assert len(data) < 2_000_000  # well under the HTTP body limit
    with pytest.raises(InvalidInputError, match=f"unpacks to more than {MAX_TAR_BYTES} bytes"):
        read_bundle(data)


def test_a_bundle_without_reports_gets_one_drawn_from_its_record(
    seed_bundle: bytes, seed_result: TrainResult, target: tuple[Engine, Path], tags: TagSet
) -> None:
    """A version whose source had lost its report files still moves, with a report here."""
    files = _members(seed_bundle)
    manifest = json.loads(files.pop("manifest.json"))
    for name in ("report.json", "report.png"):
        files.pop(name)
        manifest["files"].pop(name)
    data = _pack({**files, "manifest.json": json.dumps(manifest).encode()})
    row = _import(target, data, tags, seed_result.model.encoder)
    report = json.loads((target[1] / row.artifact_path / "report.json").read_text())
    assert report["version"] == row.version and report["metrics"] == row.metrics
    assert (target[1] / row.artifact_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_a_damaged_artifact_is_not_exported(
    sqlite_engine: Engine,
    make_settings,  # type: ignore[no-untyped-def]
    seed_result: TrainResult,
) -> None:
    settings = make_settings()
    with Session(sqlite_engine) as session:
        row = registry.register(session, result=seed_result, artifacts_dir=settings.artifacts_dir)
        artifact = settings.artifacts_dir / row.artifact_path / "model.joblib"
        artifact.write_bytes(artifact.read_bytes() + b"x")
        with pytest.raises(ArtifactError, match="checksum"):
            export_bundle(session, version=row.version, artifacts_dir=settings.artifacts_dir)


def test_a_model_of_another_encoder_is_recorded_with_a_warning(
    seed_bundle: bytes, seed_result: TrainResult, target: tuple[Engine, Path], tags: TagSet
) -> None:
    engine, artifacts = target
    with Session(engine) as session:
        imported = import_bundle(
            session, data=seed_bundle, artifacts_dir=artifacts, tags=tags, encoder=FP32_FILE
        )
    assert seed_result.model.encoder != FP32_FILE
    assert imported.row.version == "v0001"
    assert [w for w in imported.warnings if f"this deployment serves {FP32_FILE}" in w]


def test_export_and_import_over_http(sqlite_client: TestClient) -> None:
    """Exported from the serving deployment, imported back as a new version (as a second
    deployment would), promoted, and served with the same answers."""
    body = {"title": TEXTS[0], "description": ""}
    before = sqlite_client.post("/predict", json=body, headers=auth("client")).json()
    assert sqlite_client.get("/models/v0001/bundle", headers=auth("client")).status_code == 403
    assert sqlite_client.get("/models/v0042/bundle", headers=auth("admin")).status_code == 404
    exported = sqlite_client.get("/models/v0001/bundle", headers=auth("admin"))
    assert exported.status_code == 200
    assert exported.headers["content-type"] == "application/gzip"
    assert 'filename="tagflow-v0001.tar.gz"' in exported.headers["content-disposition"]

    gzip = {"content-type": "application/gzip"}
    refused = sqlite_client.post(
        "/models/import", content=exported.content, headers=auth("client") | gzip
    )
    assert refused.status_code == 403
    garbage = sqlite_client.post("/models/import", content=b"junk", headers=auth("admin") | gzip)
    assert garbage.status_code == 422 and "not a tagflow model bundle" in garbage.json()["detail"]
    imported = sqlite_client.post(
        "/models/import", content=exported.content, headers=auth("admin") | gzip
    )
    assert imported.status_code == 201, imported.text
    model = imported.json()["model"]
    assert model["version"] == "v0002" and model["status"] == "candidate"
    assert model["params"]["imported"]["version"] == "v0001"
    assert [w for w in imported.json()["warnings"] if "signature not checked" in w]
    # The source deployment's training file: its path for admin keys, its name for others.
    path = model["params"]["imported"]["source"]
    assert path.startswith("/") and path.endswith(".csv")
    seen = sqlite_client.get("/models/v0002", headers=auth("client")).json()
    assert seen["params"]["imported"]["source"] == PurePath(path).name
    assert seen["params"]["imported"]["version"] == "v0001"
    # Its lineage says it was imported, not "trained from a file alone", as it said.
    lineage = sqlite_client.get("/models/v0002/lineage", headers=auth("client")).json()
    assert lineage["imported_from"] == "v0001" and lineage["snapshot_id"] is None
    said = describe(ModelLineage.model_validate(lineage))
    assert "imported: it was v0001" in said and "file alone" not in said
    assert (
        sqlite_client.get("/models/v0001/lineage", headers=auth("client")).json()["imported_from"]
        is None
    )

    promoted = sqlite_client.post("/models/v0002/promote", headers=auth("admin"))
    assert promoted.status_code == 200
    after = sqlite_client.post("/predict", json=body, headers=auth("client")).json()
    assert after["model_version"] == "v0002"
    assert (after["tag"], after["scores"]) == (before["tag"], before["scores"])


def test_a_version_imported_twice_keeps_where_it_was_trained(sqlite_client: TestClient) -> None:
    """Training deployment to staging to production: the bundle staging exports holds a version
    that was itself imported, whose training file and first lineage must not be lost on the
    way (they were: `source` came out null, and the first hop was gone)."""
    gzip = {"content-type": "application/gzip"}
    for version in ("v0001", "v0002"):
        bundle = sqlite_client.get(f"/models/{version}/bundle", headers=auth("admin")).content
        imported = sqlite_client.post(
            "/models/import", content=bundle, headers=auth("admin") | gzip
        )
        assert imported.status_code == 201, imported.text
    first = sqlite_client.get("/models/v0002", headers=auth("admin")).json()["params"]["imported"]
    twice = sqlite_client.get("/models/v0003", headers=auth("admin")).json()["params"]["imported"]
    assert twice["version"] == "v0002" and twice["earlier"] == first
    assert twice["source"] == first["source"] and twice["source"].endswith(".csv")
    seen = sqlite_client.get("/models/v0003", headers=auth("client")).json()["params"]["imported"]
    assert seen["source"] == seen["earlier"]["source"] == PurePath(first["source"]).name


def _said(output: str) -> str:
    """CLI output as one line: rich wraps long lines at the terminal's width."""
    return " ".join(output.split())


def test_export_and_import_from_the_command_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    """Two deployments sharing a bundle key: signed on one side, checked on the other."""
    runner = CliRunner()
    here = {**cli_env, "TAGFLOW_BUNDLE_KEY": KEY}
    trained = runner.invoke(app, ["train", "--data", str(SEED_DATASET)], env=here)
    assert trained.exit_code == 0, trained.output
    bundle = tmp_path / "v1.tar.gz"
    exported = runner.invoke(app, ["models", "export", "v0001", "--out", str(bundle)], env=here)
    assert exported.exit_code == 0, exported.output
    assert "v0001 exported to" in exported.output and "MB, signed)" in _said(exported.output)

    elsewhere = {**here, "TAGFLOW_DATA_DIR": str(tmp_path / "elsewhere")}
    imported = runner.invoke(app, ["models", "import", str(bundle)], env=elsewhere)
    assert imported.exit_code == 0, imported.output
    assert "v0001: candidate, imported from v0001" in imported.output
    assert "warning" not in imported.output
    # A note with a byte that is not UTF-8 (a Latin-1 terminal's "é") arrives as a lone
    # surrogate, which no database stores: it was a traceback from the driver.
    latin1 = runner.invoke(
        app, ["models", "import", str(bundle), "--note", "caf\udce9"], env=elsewhere
    )
    assert latin1.exit_code == 2 and "Invalid value for '--note'" in latin1.output
    assert "v0001" in runner.invoke(app, ["models", "list"], env=elsewhere).output
    assert runner.invoke(app, ["models", "promote", "v0001"], env=elsewhere).exit_code == 0
    again = runner.invoke(app, ["models", "import", str(bundle)], env=elsewhere)
    assert again.exit_code == 0 and "v0002: candidate" in again.stdout
    assert "already holds the same model as v0001" in _said(again.stderr)

    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"junk")
    refused = runner.invoke(app, ["models", "import", str(broken)], env=elsewhere)
    assert refused.exit_code == 1
    assert "not a tagflow model bundle" in _said(refused.output)
    missing = runner.invoke(app, ["models", "export", "v0042"], env=here)
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_the_command_line_warns_before_it_loads_an_unsigned_bundle(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Loading the pickle runs its code: a warning after the import would come too late."""
    runner = CliRunner()
    trained = runner.invoke(app, ["train", "--data", str(SEED_DATASET)], env=cli_env)
    assert trained.exit_code == 0, trained.output
    bundle = tmp_path / "v1.tar.gz"
    exported = runner.invoke(app, ["models", "export", "v0001", "--out", str(bundle)], env=cli_env)
    assert exported.exit_code == 0, exported.output
    elsewhere = {**cli_env, "TAGFLOW_DATA_DIR": str(tmp_path / "elsewhere")}
    imported = runner.invoke(app, ["models", "import", str(bundle)], env=elsewhere)
    assert imported.exit_code == 0, imported.output
    said = _said(imported.stderr)
    assert "is not checked against a bundle key" in said
    assert "runs any code its maker put in it" in said
    # Before the import: the warning comes ahead of what the import itself says.
    assert said.index("runs any code") < said.index("signature not checked")
    # A file that never gets as far as loading is warned about too: the warning cannot wait.
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"junk")
    refused = runner.invoke(app, ["models", "import", str(junk)], env=elsewhere)
    assert refused.exit_code == 1 and "runs any code" in _said(refused.stderr)


def test_with_a_bundle_key_only_bundles_signed_with_it_are_imported(
    make_settings,  # type: ignore[no-untyped-def]
    sqlite_engine: Engine,
    seed_result: TrainResult,
    seed_bundle: bytes,
    target: tuple[Engine, Path],
    tags: TagSet,
) -> None:
    engine, artifacts = target
    source_dir = make_settings().artifacts_dir  # where seed_bundle's version was registered
    with Session(sqlite_engine) as session:
        signed = export_bundle(session, version="v0001", artifacts_dir=source_dir, key=KEY)
        other = export_bundle(
            session,
            version="v0001",
            artifacts_dir=source_dir,
            key="another-secret-of-32-characters!",
        )
    assert "manifest.sig" in _members(signed) and "manifest.sig" not in _members(seed_bundle)

    def bring(data: bytes) -> Imported:
        with Session(engine, expire_on_commit=False) as session:
            return import_bundle(
                session,
                data=data,
                artifacts_dir=artifacts,
                tags=tags,
                encoder=seed_result.model.encoder,
                key=KEY,
            )

    with pytest.raises(InvalidInputError, match="not signed"):
        bring(seed_bundle)
    with pytest.raises(InvalidInputError, match="signature does not match"):
        bring(other)
    # The signature covers the manifest, which holds every file's checksum: a changed cut (or
    # a changed file with its checksum updated in the manifest) breaks it.
    lowered = _with_manifest(signed, lambda m: m["model"]["thresholds"].update(auto=0.1))
    with pytest.raises(InvalidInputError, match="signature does not match"):
        bring(lowered)
    _nothing_recorded(target)
    imported = bring(signed)
    assert imported.row.version == "v0001" and imported.warnings == []


def test_files_already_in_the_new_versions_folder_are_left_alone(
    seed_bundle: bytes,
    seed_result: TrainResult,
    target: tuple[Engine, Path],
    tags: TagSet,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A registry whose database was reset but whose artifact folder was kept: the import
    neither overwrites nor deletes what it finds there, and stores the version beside it."""
    stray = target[1] / "v0001" / "model.joblib"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"someone else's model")
    with caplog.at_level(logging.WARNING, logger="service.ml.registry"):
        row = _import(target, seed_bundle, tags, seed_result.model.encoder)
    assert stray.read_bytes() == b"someone else's model"
    assert [p.name for p in stray.parent.iterdir()] == ["model.joblib"]
    assert row.version == "v0001" and row.artifact_path.startswith("v0001-")
    assert registry.load_model(row, artifacts_dir=target[1]).classes == seed_result.model.classes
    assert "no version of this registry owns it" in caplog.text
