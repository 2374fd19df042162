"""Waiting in tests for something to be seen, rather than sleeping a guessed time: a fixed
sleep that suffices on a quiet machine does not on CI's busy two cores."""

from __future__ import annotations

import time
from collections.abc import Callable

from service.api.state import AppState


def wait_until(
    condition: Callable[[], object], *, what: str, timeout_s: float = 60.0, every_s: float = 0.05
) -> None:
    """Return once `condition()` is true; AssertionError naming `what` after `timeout_s`.

    The deadline is generous on purpose: it only bounds a test whose condition never comes,
    so it costs nothing when the condition comes, however slowly the machine runs."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


def wait_for_watch_rounds(state: AppState, rounds: int) -> None:
    """Return once the API's watch loop has run `rounds` whole rounds that began after this
    call: whatever a round does with the data as it is now (queue a retraining, load a shadow,
    log a refusal), it has done. A "did not happen" check that only sleeps may look before any
    round ran on a busy machine, and pass for nothing.

    A round is seen by its look for lost admin jobs, which sets `next_job_check` whenever it
    is due (made due here before each look). The first look seen may belong to a round begun
    before the call; each round after it is over once the next round's look is seen."""
    for _ in range(rounds + 2):
        state.next_job_check = 0.0
        wait_until(lambda: state.next_job_check > 0.0, what="a round of the API's watch loop")
