"""`tagflow jobs`: the recorded background jobs (retrainings, comparisons, prunes), as GET /jobs
lists them."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from service.cli.common import CommandGroup, console, open_session, settings_or_exit
from service.entities import JobState
from service.jobs import DEFAULT_LISTED, MAX_LISTED, JobListed, list_jobs

jobs_app = typer.Typer(
    help="The background jobs, as recorded.", no_args_is_help=True, cls=CommandGroup
)

OUTCOME_CHARS = 100


def _iso_time(value: str) -> datetime:
    """A `--since` time as GET /jobs reads one: ISO 8601, with an offset or Z, else UTC."""
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 time, such as 2026-09-01T12:00:00Z"
        ) from None


@jobs_app.command("list")
def jobs_list(
    state: Annotated[
        JobState | None, typer.Option(help="Only the jobs in this state", case_sensitive=False)
    ] = None,
    since: Annotated[
        datetime | None,
        typer.Option(
            parser=_iso_time,
            metavar="TIME",
            help="Only the jobs queued at or after this time (ISO 8601: an offset or Z, else "
            "UTC), as GET /jobs?since=",
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=MAX_LISTED, help="How many jobs, newest first")
    ] = DEFAULT_LISTED,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the jobs as JSON, as GET /jobs")
    ] = False,
) -> None:
    """Background jobs, newest first: admins' retrainings and comparisons, automatic
    retrainings and daily prunes, with their state and outcome (from the database)."""
    settings = settings_or_exit()
    with open_session(settings) as session:
        jobs = list_jobs(session, state=state, since=since, limit=limit)
    if as_json:
        shown = [job.model_dump(mode="json", exclude_none=True) for job in jobs]
        print(json.dumps({"jobs": shown}, indent=2))
    elif jobs:
        console.print(_jobs_table(jobs))
    else:
        which = (f" {state.value}" if state else "") + (f" queued since {since}" if since else "")
        console.print("no job" + (which or " recorded yet"))


def _jobs_table(jobs: list[JobListed]) -> Table:
    """A row of three lines a job, so that the whole id (for GET /jobs/{id}) fits in 80
    columns beside its outcome."""
    table = Table(
        Column("job\nid", no_wrap=True),
        Column("state\nqueued (UTC)\nended", no_wrap=True),
        Column("outcome", min_width=16, overflow="fold"),
    )
    for job in jobs:
        table.add_row(
            f"{job.description}\n{job.job_id}",
            f"{job.status.value}\n{_when(job.created_at)}\n{_when(job.ended_at)}",
            _outcome(job),
        )
    return table


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M") if at is not None else ""


def _outcome(job: JobListed) -> str:
    """One line of what the job came to: its error, a retraining's own outcome, else its
    result as JSON; cut to OUTCOME_CHARS (`--json` has it all)."""
    text = job.error or _result_line(job.result)
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= OUTCOME_CHARS else line[: OUTCOME_CHARS - 3] + "..."


def _result_line(result: Any) -> str:
    if result is None:
        return ""
    if isinstance(result, dict) and isinstance(result.get("outcome"), str):
        return result["outcome"]
    return json.dumps(result, separators=(", ", ": "))
