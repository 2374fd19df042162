"""Background jobs over HTTP: the recorded jobs, newest first, and the state and result of
one (e.g. a retraining)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from service.api.answers import REDIS_REFUSED, answers
from service.api.deps import AdminKey, JobId, SessionDep, StateDep
from service.entities import JobState
from service.jobs import DEFAULT_LISTED, MAX_LISTED, JobList, JobPublic, job_public, list_jobs

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("", response_model=JobList, response_model_exclude_none=True)
def read_jobs(
    session: SessionDep,
    _caller: AdminKey,
    state: Annotated[JobState | None, Query(description="only the jobs in this state")] = None,
    since: Annotated[
        datetime | None, Query(description="only the jobs queued at or after this time")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LISTED)] = DEFAULT_LISTED,
) -> JobList:
    """The recorded background jobs, newest first: admins' retrainings and comparisons, the
    automatic retrainings and the daily prunes, each with its state and its `result` or
    `error`. From the database alone (Redis is not asked)."""
    return JobList(jobs=list_jobs(session, state=state, since=since, limit=limit))


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    response_model_exclude_none=True,
    responses=answers(
        {
            404: "No job with this id, or its result expired",
            500: REDIS_REFUSED,
            503: "Redis cannot be asked about a job that has no record",
        }
    ),
)
def read_job(job_id: JobId, session: SessionDep, state: StateDep, _caller: AdminKey) -> JobPublic:
    """`queued`, `started`, `finished` (with `result`) or `failed` (with `error`), from Redis
    or, for a job Redis lost or while it cannot be asked, from the job's record. 404 for an
    unknown or expired id; 503 when Redis cannot be asked about a job with no record, 500 when
    it refuses the connection (a configuration error)."""
    return job_public(session, connection=state.redis, job_id=job_id)
