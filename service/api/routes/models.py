"""The model registry over HTTP: list, filter, inspect, compare, promote, roll back, and move a
version between deployments (export and import)."""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from service.api.answers import REDIS_REFUSED, answers
from service.api.deps import AdminKey, AnyKey, PredictorDep, SessionDep, SettingsDep, StateDep
from service.api.lifecycle import sync_production
from service.calibration import Recalibration, recalibrate_as_configured
from service.comparison import enqueue_compare
from service.config import Caller, Role
from service.crud.audit import AuditStats, audit_stats
from service.crud.lineage import lineage
from service.crud.shadow import ShadowStats, shadow_stats
from service.entities import ModelStatus, ModelVersion, ModelVersionPublic, ProductionChangePublic
from service.entities.common import StorableStr, storable_text
from service.entities.snapshot import ModelLineage
from service.errors import NotFoundError
from service.jobs import JobAccepted
from service.ml import production_history, registry
from service.ml.bundle import bundle_name, export_bundle, import_bundle
from service.ml.production_history import MAX_HISTORY
from service.retrain_queue import enqueue_retrain

router = APIRouter(prefix="/models", tags=["models"])
VERSION_NAME = r"^[^\x00-\x20\x7f]+$"  # a version's name: no spaces, no control characters
UNKNOWN_VERSION = "No version of this name"
UNSERVABLE = (
    "it can answer with a tag that is not approved, or its artifact is missing or does not "
    "match the registry's checksum; or other changes of production won the race five times "
    "(retry)"
)
NOT_QUEUED = "Redis is unavailable: the job is not queued (retry)"


class ModelList(BaseModel):
    models: list[ModelVersionPublic]


def public(row: ModelVersion, *, caller: Caller, artifacts_dir: Path) -> ModelVersionPublic:
    """The version as `caller` may see it: server paths (the artifact folder, the training
    file's directory) only for admin keys; other keys see the training file's name."""
    shown = registry.public_record(row, artifacts_dir=artifacts_dir)
    if caller.role is Role.ADMIN:
        return shown
    params = _file_names(shown.params)
    return shown.model_copy(update={"artifact_path": None, "params": params})


def _file_names(params: dict[str, Any]) -> dict[str, Any]:
    """`params` with the training file's path cut to its name, in its lineage too (the source
    deployment's file, and the one before it for a version imported twice)."""
    shown = dict(params)
    if isinstance(shown.get("source"), str):
        shown["source"] = PurePath(shown["source"]).name
    for hop in ("imported", "earlier"):
        if isinstance(shown.get(hop), dict):
            shown[hop] = _file_names(shown[hop])
    return shown


@router.get("", response_model=ModelList)
def list_models(
    session: SessionDep,
    settings: SettingsDep,
    caller: AnyKey,
    status: ModelStatus | None = None,
    where: Annotated[
        list[str] | None,
        Query(description="Metric criteria, e.g. per_class.mlops.precision>=0.95 (all must hold)"),
    ] = None,
) -> ModelList:
    criteria = [registry.Criterion.parse(w) for w in where or []]
    rows = registry.list_versions(session, status=status, criteria=criteria)
    shown = [public(r, caller=caller, artifacts_dir=settings.artifacts_dir) for r in rows]
    return ModelList(models=shown)


@router.post(
    "/retrain",
    response_model=JobAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=answers({500: REDIS_REFUSED, 503: NOT_QUEUED}),
)
def retrain_model(
    session: SessionDep, state: StateDep, _caller: AdminKey, force: bool = False
) -> JobAccepted:
    """Queue a retraining on the base dataset plus current labels; follow it at
    GET /jobs/{job_id}. The candidate is promoted only if it passes the quality gate. With
    nothing new since production (or a version rolled back from) it trains nothing, unless
    `force=true`."""
    job_id = enqueue_retrain(session, queue=state.queues.training, reason="manual", force=force)
    return JobAccepted(job_id=job_id)


@router.post(
    "/{version}/compare",
    response_model=JobAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=answers(
        {
            404: "No version of this name (`version` or `against`), or no production version "
            "to compare with",
            500: REDIS_REFUSED,
            503: NOT_QUEUED,
        }
    ),
)
def compare_model(
    version: StorableStr,
    session: SessionDep,
    state: StateDep,
    _caller: AdminKey,
    against: Annotated[
        StorableStr | None,
        Query(min_length=1, description="The other version (default: production)"),
    ] = None,
) -> JobAccepted:
    """Queue a comparison of `version` with another version, each as it serves, on the frozen
    evaluation set the retraining gate uses: both reports, the gate's verdict for `version`,
    and the paired counts with McNemar's exact test. The result is at GET /jobs/{job_id}."""
    a = registry.get_version(session, version=version)
    b = registry.version_or_production(session, version=against)
    job_id = enqueue_compare(session, queue=state.queues.training, a=a.version, b=b.version)
    return JobAccepted(job_id=job_id)


class ProductionHistory(BaseModel):
    changes: list[ProductionChangePublic]


@router.get("/history", response_model=ProductionHistory)
def production_changes(
    session: SessionDep,
    _caller: AdminKey,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY)] = 100,
) -> ProductionHistory:
    """Changes of production, newest first: each promotion and rollback, who asked, and, on a
    promotion, the rollback that undid it. The latest promotion not undone is what
    POST /models/rollback undoes."""
    return ProductionHistory(changes=production_history.history(session, limit=limit))


@router.get(
    "/{version}", response_model=ModelVersionPublic, responses=answers({404: UNKNOWN_VERSION})
)
def get_model(
    version: StorableStr, session: SessionDep, settings: SettingsDep, caller: AnyKey
) -> ModelVersionPublic:
    row = registry.get_version(session, version=version)
    return public(row, caller=caller, artifacts_dir=settings.artifacts_dir)


@router.get(
    "/{version}/lineage", response_model=ModelLineage, responses=answers({404: UNKNOWN_VERSION})
)
def get_lineage(version: StorableStr, session: SessionDep, _caller: AnyKey) -> ModelLineage:
    """The data `version` was made from: the base file (hash, rows), the reviewer labels it
    trained on and those held out to evaluate it, by id, and the user reports behind them
    (`snapshot_id` null for a version trained from a file alone)."""
    row = registry.get_version(session, version=version)
    return lineage(session, version=row)


@router.get(
    "/{version}/report.png",
    response_class=FileResponse,
    responses=answers({404: "No version of this name, or it has no report picture"}),
)
def get_report_png(
    version: StorableStr, session: SessionDep, settings: SettingsDep, _caller: AnyKey
) -> FileResponse:
    """The evaluation picture saved with the version."""
    row = registry.get_version(session, version=version)
    folder = registry.artifact_folder(row, artifacts_dir=settings.artifacts_dir)
    path = folder / registry.REPORT_PNG
    if not path.exists():
        raise NotFoundError(f"no report picture for {version}")
    return FileResponse(path, media_type="image/png")


@router.get(
    "/{version}/shadow", response_model=ShadowStats, responses=answers({404: UNKNOWN_VERSION})
)
def get_shadow_stats(version: StorableStr, session: SessionDep, _caller: AnyKey) -> ShadowStats:
    """How `version`, run in shadow on live traffic, agreed with production and with labels."""
    registry.get_version(session, version=version)
    return shadow_stats(session, version=version)


@router.get(
    "/{version}/audit", response_model=AuditStats, responses=answers({404: UNKNOWN_VERSION})
)
def get_audit_stats(
    version: StorableStr, session: SessionDep, settings: SettingsDep, _caller: AnyKey
) -> AuditStats:
    """How precise `version`'s automatic acceptance was on live traffic, by its audit sample."""
    row = registry.get_version(session, version=version)
    return audit_stats(
        session,
        version=version,
        target=settings.target_precision,
        threshold=registry.serving_threshold(row),
    )


@router.post(
    "/{version}/recalibrate",
    response_model=Recalibration,
    responses=answers({404: UNKNOWN_VERSION}),
)
def recalibrate_model(
    version: StorableStr,
    session: SessionDep,
    state: StateDep,
    settings: SettingsDep,
    _caller: AdminKey,
    apply: bool = True,
) -> Recalibration:
    """Judge `version`'s served auto-acceptance cut by its audit sample: raise it when the
    audit shows live precision below target, lower it when the audit shows a lower cut
    reaching the target with 95% confidence (`apply=false`: only report)."""
    outcome = recalibrate_as_configured(session, version=version, settings=settings, apply=apply)
    if outcome.applied:
        sync_production(state)
    return outcome


NoteText = storable_text(max_length=500)


class ThresholdUpdate(BaseModel):
    # strict: `true` or "0.5" is a client's mistake, not a cut of 1.0 or 0.5
    threshold: float = Field(
        gt=0.0, le=1.01, strict=True, description="1.01 sends every prediction to review"
    )
    note: NoteText = ""


@router.put(
    "/{version}/threshold",
    response_model=ModelVersionPublic,
    responses=answers({404: UNKNOWN_VERSION}),
)
def set_threshold(
    version: StorableStr,
    body: ThresholdUpdate,
    session: SessionDep,
    state: StateDep,
    caller: AdminKey,
) -> ModelVersionPublic:
    """Set the cut `version` is served with by hand; the change is kept in its history."""
    row = registry.set_serving_threshold(
        session,
        version=version,
        threshold=body.threshold,
        evidence={"source": "manual", "note": body.note},
    )
    sync_production(state)
    return public(row, caller=caller, artifacts_dir=state.settings.artifacts_dir)


@router.post(
    "/{version}/promote",
    response_model=ModelVersionPublic,
    responses=answers({404: UNKNOWN_VERSION, 409: f"Refused, production unchanged: {UNSERVABLE}"}),
)
def promote_model(
    version: StorableStr, session: SessionDep, state: StateDep, caller: AdminKey
) -> ModelVersionPublic:
    """Make `version` production; this API serves it before answering. 409 when it can answer
    with a tag that is not approved."""
    row = registry.promote(
        session,
        version=version,
        tags=state.tags,
        artifacts_dir=state.settings.artifacts_dir,
        actor=caller.describe(),
    )
    sync_production(state)
    return public(row, caller=caller, artifacts_dir=state.settings.artifacts_dir)


@router.post(
    "/rollback",
    response_model=ModelVersionPublic,
    responses=answers(
        {
            404: "No production version, or no version was production before it (the first "
            "promotion is reached)",
            409: "Refused, production unchanged: `from` is not production; the history's last "
            "promotion is not of production; or the version to restore cannot be: "
            f"{UNSERVABLE}",
        }
    ),
)
def rollback_model(
    session: SessionDep,
    state: StateDep,
    caller: AdminKey,
    current: Annotated[
        StorableStr | None,
        Query(
            alias="from",
            min_length=1,
            pattern=VERSION_NAME,
            description="Roll back only if this version is still production (409 if not), so "
            "a retried or concurrent rollback does not go back twice",
        ),
    ] = None,
) -> ModelVersionPublic:
    """Undo the latest promotion not yet undone (GET /models/history shows it): restore the
    version it replaced. Rollbacks in a row walk back through the promotions, never forward,
    and stop at the first (404)."""
    row = registry.rollback(
        session,
        tags=state.tags,
        artifacts_dir=state.settings.artifacts_dir,
        actor=caller.describe(),
        current=current,
    )
    sync_production(state)
    return public(row, caller=caller, artifacts_dir=state.settings.artifacts_dir)


@router.get(
    "/{version}/bundle",
    response_class=Response,
    responses={
        200: {"content": {"application/gzip": {}}, "description": "The bundle"},
        **answers(
            {
                404: UNKNOWN_VERSION,
                409: "Its artifact is missing or does not match the registry's checksum",
            }
        ),
    },
)
def export_model(
    version: StorableStr, session: SessionDep, settings: SettingsDep, _caller: AdminKey
) -> Response:
    """`version` packed for another deployment: its registry record and artifact, to import
    there with POST /models/import or `tagflow models import` (signed with TAGFLOW_BUNDLE_KEY
    if it is set)."""
    data = export_bundle(
        session, version=version, artifacts_dir=settings.artifacts_dir, key=settings.bundle_secret
    )
    disposition = f'attachment; filename="{bundle_name(version)}"'
    return Response(
        data, media_type="application/gzip", headers={"Content-Disposition": disposition}
    )


class ModelImported(BaseModel):
    model: ModelVersionPublic
    warnings: list[str]


@router.post(
    "/import",
    response_model=ModelImported,
    status_code=status.HTTP_201_CREATED,
    responses=answers({409: "The bundle's model file, its checksum right, is not a tagflow model"}),
)
def import_model(
    bundle: Annotated[bytes, Body(media_type="application/gzip", description="A model bundle")],
    session: SessionDep,
    settings: SettingsDep,
    predictor: PredictorDep,
    caller: AdminKey,
) -> ModelImported:
    """Record an exported version as a new `candidate` of this registry (promote it as any
    other). Refused: a damaged or altered bundle, a model with unapproved tags, and with
    TAGFLOW_BUNDLE_KEY set, a bundle not signed with it."""
    imported = import_bundle(
        session,
        data=bundle,
        artifacts_dir=settings.artifacts_dir,
        tags=predictor.tags,
        encoder=predictor.encoder.path.name,
        key=settings.bundle_secret,
    )
    shown = public(imported.row, caller=caller, artifacts_dir=settings.artifacts_dir)
    return ModelImported(model=shown, warnings=imported.warnings)
