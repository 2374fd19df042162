"""Child processes that do not outlive the process that started them, and the lock that lets
one `tagflow up` own a data directory."""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class DataDirBusyError(RuntimeError):
    """Another process holds the data directory's lock."""


def die_with_parent() -> Callable[[], None]:
    """A `preexec_fn` for `subprocess.Popen`: the child gets SIGTERM when its parent dies,
    even by SIGKILL, so an embedded Redis or a worker never runs on, orphaned, holding the
    data directory's files; and it starts with SIGTERM and SIGINT heeded, whatever the parent
    ignores. The death signal is Linux only (elsewhere the parent's clean exits still stop
    its children)."""
    parent = os.getpid()

    def arm() -> None:
        # A parent that is stopping ignores further stops (`stop_signals_as_exit`), and an
        # ignored signal stays ignored across exec: a worker started then ignored the SIGTERM
        # meant to stop it, until RQ set its own handler, and the parent waited for it.
        for each in _STOP_SIGNALS:
            if signal.getsignal(each) == signal.SIG_IGN:
                signal.signal(each, signal.SIG_DFL)
        if not sys.platform.startswith("linux"):
            return
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


@contextmanager
def sole_owner(data_dir: Path, *, what: str) -> Iterator[None]:
    """Hold `data_dir`'s lock file for the block; DataDirBusyError at once when another process
    holds it. The kernel releases the lock when the holder dies, however it dies."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / ".tagflow-up.lock"
    handle: IO[str] = path.open("a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise DataDirBusyError(
                f"{data_dir} is in use by {holder}: one {what} per data directory "
                "(stop it, or pass another TAGFLOW_DATA_DIR)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{what} (pid {os.getpid()})\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Whether a stop signal came within `stop_signals_as_exit`'s block.

    Its handler raises SystemExit where the main thread happens to be, and a few places
    swallow whatever is raised there: Python prints "Exception ignored" and goes on. A SIGTERM
    that came while `subprocess.Popen` ran the at-fork callbacks (logging's lock release)
    was so lost in a QA run: `tagflow up` went on to start Redis, the worker and the API, and
    served for good, deaf to further signals (ignored after the first). Code that starts
    something long after such a step calls `check` first."""

    def __init__(self) -> None:
        self.requested = False

    def check(self) -> None:
        """Stop now (SystemExit, exit code 0) if a stop signal came and its exception was lost."""
        if self.requested:
            raise SystemExit(0)


def _stopper(request: StopRequest) -> Callable[[int, object], None]:
    """The handler of stop signals that records the stop in `request` and ends the process."""

    def stop(_signum: int, _frame: object) -> None:
        request.requested = True
        for each in _STOP_SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        # Exit code 0: stopped as asked, cleanup done (`make run` reports anything else as an
        # error when Ctrl-C ends it).
        raise SystemExit(0)

    return stop


# A stop that came while the program started (`stop_signals_as_exit_from_start`).
_AT_START = StopRequest()


def stop_signals_as_exit_from_start() -> None:
    """For a program whose stop is a clean exit (`tagflow serve`, `tagflow up`), called before
    its imports: from now a stop signal ends it with exit code 0, as it does once
    `stop_signals_as_exit` takes over. Until then (0.5 s of imports, seconds on a busy machine,
    and the checks before serving) SIGTERM's default action killed it: exit code 143, which
    Docker and Kubernetes report as a failed stop. Nothing has been received by then: nothing
    is lost."""
    stop = _stopper(_AT_START)
    for each in _STOP_SIGNALS:
        signal.signal(each, stop)


@contextmanager
def stop_signals_as_exit() -> Iterator[StopRequest]:
    """Within the block, SIGTERM (a service manager's stop, `docker stop`) and SIGINT (Ctrl-C)
    end the process by an exception (exit code 0), so cleanup in `finally` blocks and exit
    stacks runs (SIGTERM's default action kills the process on the spot, leaving its children
    behind). What it yields also records the signal, for the exception lost (`StopRequest`).
    Signals after the first are ignored: a second Ctrl-C must not cut the cleanup short, stop
    Redis before the worker has finished with it, or leave the worker behind. (SIGKILL still
    ends everything, and the children with it: see `die_with_parent`.)"""
    request = StopRequest()
    previous = {each: signal.signal(each, _stopper(request)) for each in _STOP_SIGNALS}
    try:
        _AT_START.check()  # a stop while the program started, its exception lost
        yield request
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)


class Interruption:
    """What `stop_signal_as_interrupt` yields: whether a stop signal came (`requested`), and
    the switch (`hold`) that a command's point of no return turns."""

    def __init__(self) -> None:
        self.requested = False
        self.held = False

    def hold(self) -> None:
        """From now until the process ends, a stop signal is recorded in `requested` and
        ignored, not raised: what the command does next cannot be undone (a version's commit
        is under way), so it finishes, and says the stop came too late. A stop that came
        before, its exception lost (as `StopRequest` tells), is taken now: KeyboardInterrupt,
        while the work can still be undone."""
        if self.requested and not self.held:
            raise KeyboardInterrupt
        self.held = True


@contextmanager
def stop_signal_as_interrupt() -> Iterator[Interruption]:
    """Within the block, SIGTERM (`timeout`, a cancelled CI job, `docker stop` of compose's
    init) stops the process as Ctrl-C does, by KeyboardInterrupt: what is half done is undone
    on the way out (`registry.new_version` removes a version half-registered, row and folder),
    and the exit code is Ctrl-C's, not 0. Its default action killed the process on the spot:
    `tagflow train` left a half-written artifact folder no version owns. Once the block's
    work is past undoing (`Interruption.hold`), a stop signal no longer interrupts it.

    Stop signals after the first (SIGTERM or Ctrl-C) are ignored until the process ends, as
    `stop_signals_as_exit` ignores them: a second one raised KeyboardInterrupt again in the
    undo, cut it short, and left the version's staging folder, or its folder, behind."""
    stop = Interruption()

    def interrupt(_signum: int, _frame: object) -> None:
        stop.requested = True
        for each in _STOP_SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        if not stop.held:
            raise KeyboardInterrupt

    previous = {each: signal.signal(each, interrupt) for each in _STOP_SIGNALS}
    try:
        yield stop
    finally:
        # Once stopped, or past undoing, the process is on its way out: the signals stay
        # ignored, so that one does not end it by SIGTERM's default action (143) as it
        # unwinds, or, its work done and said, in the half second the interpreter takes to end.
        if stop.requested or stop.held:
            for each in _STOP_SIGNALS:
                signal.signal(each, signal.SIG_IGN)
        else:
            for each, handler in previous.items():
                signal.signal(each, handler)
