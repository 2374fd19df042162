"""`tagflow worker` as a process, against a Redis that goes away while it runs a job."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from redis import Redis
from rq import Queue
from rq.job import JobStatus

from service.outbox import LABELING_QUEUE
from service.redis_server import EmbeddedRedis
from tests.conftest import ROOT


def test_a_worker_that_loses_redis_mid_job_stops_with_one_line(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Redis gone in the middle of a job (an outage, or `tagflow up` killed outright): RQ
    logs what it lost; the worker ends with one line and exit 1 for a supervisor to restart,
    not with the CLI's page-long traceback."""
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    worker: subprocess.Popen[str] | None = None
    try:
        job = Queue(LABELING_QUEUE, connection=Redis.from_url(url)).enqueue("time.sleep", 2)
        env = {**os.environ, **cli_env, "HF_HUB_OFFLINE": "1", "TAGFLOW_REDIS_URL": url}
        worker = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while job.get_status(refresh=True) != JobStatus.STARTED:
            assert time.monotonic() < deadline and worker.poll() is None, "the job never started"
            time.sleep(0.05)
        server.stop()
        output, _ = worker.communicate(timeout=60)
    finally:
        server.stop()
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 1, output[-3000:]
    assert "worker stopped: lost its Redis connection" in output
    assert "Traceback (most recent call last)" not in output.split("worker stopped:")[-1]
    assert "╭" not in output  # no rich traceback box from the CLI
