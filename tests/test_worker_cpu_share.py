"""`tagflow worker` runs its jobs below the API's priority and on bounded threads
(workers/cpu_share.py), as a real worker process reports it from inside a job."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from redis import Redis
from rq import Queue
from rq.job import JobStatus

from service.outbox import LABELING_QUEUE
from tests.conftest import ROOT
from workers.cpu_share import autogroup_niceness, thread_niceness

PROBE = "tests.cpu_probe.report"


@pytest.mark.parametrize(
    ("overrides", "own_session", "niceness", "threads"),
    [
        ({"TAGFLOW_WORKER_NICE": "10"}, True, 10, 2),
        ({"TAGFLOW_WORKER_NICE": "3", "TAGFLOW_WORKER_THREADS": "1"}, False, 3, 1),
    ],
    ids=["own-session", "shared-session"],
)
def test_a_workers_job_runs_at_its_niceness_on_its_threads(
    overrides: dict[str, str],
    own_session: bool,
    niceness: int,
    threads: int,
    cli_env: dict[str, str],
    test_redis_url: str,
    redis_conn: Redis,
) -> None:
    """Every thread of the worker, those ONNX Runtime starts for the encoder in a job
    included, runs at the configured niceness; the encoder and the BLAS/OpenMP pools use the
    configured number of threads. A worker in a session of its own, as `tagflow up` starts
    it, has its autogroup niced too (the kernel shares the CPU between autogroups first, so
    its threads' niceness alone did not count against the API); one in a session it shares
    (here pytest's) leaves the group as it was. Before, every job ran at the API's priority,
    on two ONNX Runtime threads whatever was configured and a BLAS pool of one per core."""
    assert thread_niceness() < niceness, "the test must start its worker less nice than asked"
    job = Queue(LABELING_QUEUE, connection=redis_conn).enqueue(PROBE)
    env = {**os.environ, **cli_env, **overrides}
    env |= {"HF_HUB_OFFLINE": "1", "TAGFLOW_REDIS_URL": test_redis_url}
    worker = subprocess.run(
        [sys.executable, "-m", "service.cli", "worker", "--burst"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=own_session,
    )
    assert worker.returncode == 0, worker.stderr[-3000:]
    assert job.get_status(refresh=True) == JobStatus.FINISHED, worker.stderr[-3000:]
    seen = job.return_value()
    assert seen["job_thread"] == niceness
    assert seen["least_nice_thread"] == niceness, seen
    assert seen["threads_seen"] > 1  # the encoder's threads, the claim's, BLAS's were looked at
    assert seen["encoder_threads"] == threads
    assert 1 <= seen["pool_threads"] <= threads
    assert f"jobs run at niceness {niceness} on {threads} thread(s)" in worker.stderr
    ours = autogroup_niceness()
    if ours is not None:  # a kernel with autogroup scheduling, as the project's machines have
        assert seen["autogroup"] == (niceness if own_session else ours), seen
        assert autogroup_niceness() == ours  # pytest's own group was left alone
