"""The worker's share of the CPU: below the API's if configured, on a bounded number of threads.

`tagflow up` (and any host running the API beside a worker) puts both on the same cores. A
retraining, a comparison or a reprioritisation is CPU-bound for seconds to minutes while
upstream services keep calling /predict, whose answers are due in milliseconds. With
TAGFLOW_WORKER_NICE above 0 the worker lowers its scheduling priority (as `nice -n` would, its
autogroup included), so that the kernel gives the API the cores when it wants them and the
worker takes what the API leaves idle; TAGFLOW_WORKER_THREADS bounds the threads its numeric
libraries start (BLAS and OpenMP here; ONNX Runtime where the encoder is built,
`workers.context`). loadtests/RESULTS.md ("A retraining beside /predict") has what each did.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from threadpoolctl import threadpool_limits

log = logging.getLogger(__name__)

TASKS = Path("/proc/self/task")
AUTOGROUP = Path("/proc/self/autogroup")


def thread_niceness() -> int:
    """The niceness of the calling thread (on Linux each thread has its own)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def lower_priority(niceness: int) -> None:
    """Run every thread of this process at `niceness` at least; threads started later inherit
    it from the thread that starts them.

    On Linux, `os.nice` and `setpriority(PRIO_PROCESS, 0)` change the calling thread alone,
    and the BLAS pool is started when numpy is imported, long before this runs: each thread
    is set by its id. A thread already nicer (the worker started under `nice -n 15`) is left
    as it is: a priority is only ever lowered here, which needs no privilege.
    """
    ids = [int(p.name) for p in TASKS.iterdir()] if TASKS.is_dir() else [0]
    for tid in ids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except ProcessLookupError:  # a thread that ended since the listing
            continue
        except OSError as exc:  # that thread keeps its priority; the others are still set
            log.warning("worker: could not lower thread %d to niceness %d: %s", tid, niceness, exc)


def autogroup_niceness() -> int | None:
    """The niceness of this process's autogroup; None where the kernel has none."""
    try:
        return int(AUTOGROUP.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def lower_group_priority(niceness: int) -> None:
    """Nice this worker's autogroup to `niceness` at least, when the group is its own.

    With autogroup scheduling (Linux's default where `kernel.sched_autogroup_enabled` is 1,
    as here), the kernel shares the CPU between sessions first, and a thread's niceness only
    weighs against the threads of its own session. `tagflow up` starts its worker in a session
    of its own, so its threads' niceness alone changed nothing against the API (two busy loops
    on one core, each in a session of its own: 2.42 s of CPU each in 5 s with one's thread at
    niceness 10; 0.48 s against 4.21 s with its autogroup at 10 too). A worker that leads its
    session has the session's group niced too; one in a session it shares (started from a
    shell beside other work, the API maybe) leaves the group alone, as niceing it would lower
    everything else in that session with it.
    """
    current = autogroup_niceness()
    if current is None or current >= niceness or os.getsid(0) != os.getpid():
        return
    try:
        AUTOGROUP.write_text(str(niceness))
    except OSError as exc:  # the threads' niceness still holds within the session
        log.warning("worker: could not nice its autogroup to %d: %s", niceness, exc)


def bound_threads(threads: int) -> None:
    """At most `threads` threads in each BLAS and OpenMP pool of this process, for good (the
    encoder's ONNX Runtime threads are set where it is built). On two cores, a BLAS pool of
    one thread per core left none for the API while a job ran."""
    threadpool_limits(limits=threads)


def take_back_seat(*, niceness: int, threads: int) -> None:
    """Lower this worker process's priority and bound its threads, as configured
    (TAGFLOW_WORKER_NICE, TAGFLOW_WORKER_THREADS); said in its log."""
    lower_priority(niceness)
    lower_group_priority(niceness)
    bound_threads(threads)
    group = autogroup_niceness()
    log.info(
        "worker: jobs run at niceness %d on %d thread(s)%s",
        thread_niceness(),
        threads,
        "" if group is None else f" (its autogroup at niceness {group})",
    )
