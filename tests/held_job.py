"""A job that runs until its test releases it, for worker tests that stop or cut a worker
while a job certainly runs: a job of a few seconds could end before a stop landed on a busy
machine (and pass the test without testing it) or outlast a fixed sleep."""

from __future__ import annotations

import time
from pathlib import Path

# A test that never releases its job (it failed first) does not hold its worker for good.
HOLD_LIMIT_S = 120.0


def run_until_released(flag: str, limit_s: float = HOLD_LIMIT_S) -> None:
    """Run until the file `flag` exists (the test's release); raise after `limit_s`."""
    deadline = time.monotonic() + limit_s
    while not Path(flag).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"never released ({flag} does not exist)")
        time.sleep(0.05)


HELD_JOB = f"{__name__}.run_until_released"
