"""A fixed pool of threads that runs the most urgent waiting task first.

The scorer threads encode one item per task. With a FIFO pool (ThreadPoolExecutor) a single
request's encode queued behind every encode of a 256-item batch that came first; here a
request's tasks carry its lane's priority, and a batch's tasks run only when nothing more
urgent waits. Tasks of one priority run in the order they came.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

URGENT = 0
BULK = 1

_STOP = (float("inf"), 0, None, None)


class PriorityPool:
    """`submit(priority, fn, *args)` -> a Future; lower priority numbers run first."""

    def __init__(self, threads: int, *, name: str) -> None:
        self._queue: queue.PriorityQueue[tuple[float, int, Any, Any]] = queue.PriorityQueue()
        self._order = itertools.count()  # ties keep arrival order and never compare callables
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, priority: int, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((priority, next(self._order), future, (fn, args)))
        return future

    def shutdown(self) -> None:
        """Finish every task already submitted, then stop the threads."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while self._run_next():
            pass

    def _run_next(self) -> bool:
        """Run the next task; False at the stop marker. A call of its own, so that nothing of
        a task outlives it on this thread: kept in the loop's variables while the thread
        waited for the next task, its arguments (a triaged batch, which holds its model) kept
        a model swapped out since then alive for as long as the thread stayed idle."""
        _, _, future, call = self._queue.get()
        if future is None:
            return False
        if not future.set_running_or_notify_cancel():
            return True
        fn, args = call
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to the waiting request, which re-raises it
            future.set_exception(exc)
        return True
