"""Waiting in tests for something to be seen, rather than sleeping a guessed time: a fixed
sleep that suffices on a quiet machine does not on CI's busy two cores."""

from __future__ import annotations

import time
from collections.abc import Callable


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
