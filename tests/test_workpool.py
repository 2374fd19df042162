"""The scorer threads' pool: the most urgent waiting task first, arrival order within a
priority, errors handed to the waiter, everything submitted finished on shutdown."""

from __future__ import annotations

import threading

import pytest

from service.ml.workpool import BULK, URGENT, PriorityPool


def test_urgent_tasks_overtake_queued_bulk_ones() -> None:
    pool = PriorityPool(1, name="test")
    gate, ran = threading.Event(), []
    blocker = pool.submit(URGENT, gate.wait, 10)  # holds the only thread
    bulk = [pool.submit(BULK, ran.append, f"bulk {i}") for i in range(3)]
    urgent = [pool.submit(URGENT, ran.append, f"urgent {i}") for i in range(2)]
    gate.set()
    for future in [blocker, *bulk, *urgent]:
        future.result(timeout=10)
    pool.shutdown()
    assert ran == ["urgent 0", "urgent 1", "bulk 0", "bulk 1", "bulk 2"]


def test_a_failing_task_fails_only_its_future() -> None:
    pool = PriorityPool(2, name="test")

    def boom() -> None:
        raise RuntimeError("encoder failed on purpose")

    failed, fine = pool.submit(URGENT, boom), pool.submit(URGENT, sum, [1, 2])
    with pytest.raises(RuntimeError, match="on purpose"):
        failed.result(timeout=10)
    assert fine.result(timeout=10) == 3
    pool.shutdown()


def test_shutdown_finishes_what_was_submitted() -> None:
    pool = PriorityPool(2, name="test")
    futures = [pool.submit(BULK, pow, i, 2) for i in range(50)]
    pool.shutdown()
    assert [f.result(timeout=0) for f in futures] == [i * i for i in range(50)]
    assert not any(t.is_alive() for t in pool._threads)
