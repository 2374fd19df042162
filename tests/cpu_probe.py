"""A job that reports how the worker running it shares the CPU, for the test that starts a
real `tagflow worker` and reads its answer (tests/test_worker_cpu_share.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_info

from workers.context import get_context
from workers.cpu_share import autogroup_niceness, thread_niceness


def report() -> dict[str, Any]:
    """The niceness of this job's thread and of every thread of its process (the encoder run
    first, so that ONNX Runtime's threads exist), of its autogroup, the encoder's thread count
    and the largest BLAS or OpenMP pool."""
    encoder = get_context().encoder
    encoder.encode(["a probe text the cache cannot have (cpu_probe)"])
    tasks = Path("/proc/self/task")
    nices = {int(t.name): os.getpriority(os.PRIO_PROCESS, int(t.name)) for t in tasks.iterdir()}
    return {
        "job_thread": thread_niceness(),
        "least_nice_thread": min(nices.values()),
        "threads_seen": len(nices),
        "encoder_threads": encoder.threads,
        "autogroup": autogroup_niceness(),
        "pool_threads": max((p["num_threads"] for p in threadpool_info()), default=0),
    }
