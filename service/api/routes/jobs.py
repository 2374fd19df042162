"""Background jobs over HTTP: the state and result of a queued job (e.g. a retraining)."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.answers import answers
from service.api.deps import AdminKey, JobId, SessionDep, StateDep
from service.jobs import JobPublic, job_public

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    response_model_exclude_none=True,
    responses=answers(
        {
            404: "No job with this id, or its result expired",
            503: "Redis cannot be asked about a job that has no record",
        }
    ),
)
def read_job(job_id: JobId, session: SessionDep, state: StateDep, _caller: AdminKey) -> JobPublic:
    """`queued`, `started`, `finished` (with `result`) or `failed` (with `error`), from Redis
    or, for a job Redis lost or while it cannot be asked, from the job's record. 404 for an
    unknown or expired id; 503 when Redis cannot be asked about a job with no record."""
    return job_public(session, connection=state.redis, job_id=job_id)
