"""The `tagflow` command line (`tagflow --help`)."""

import sys
from pathlib import Path

from service.processes import stop_signals_as_exit_from_start

# The commands a stop signal ends with exit code 0 once they run (`stop_signals_as_exit`),
# and so from the process's start: importing the commands takes 0.5 s, and seconds on a busy
# machine, during which a SIGTERM (a supervisor's stop of one just started) ended them with 143.
STOPPED_CLEANLY = frozenset({"serve", "up"})


def _program_command() -> str | None:
    """The command this process was started to run as the `tagflow` program (`tagflow serve`,
    `python -m service.cli serve`), None when anything else imports the package (a test).
    While `python -m` imports the package, sys.argv[0] is "-m"."""
    argv = sys.argv
    started = Path(argv[0]).name == "tagflow" or (
        argv[0] == "-m" and "service.cli" in sys.orig_argv
    )
    return argv[1] if started and len(argv) > 1 else None


if _program_command() in STOPPED_CLEANLY:
    stop_signals_as_exit_from_start()

from service.cli.main import app  # noqa: E402  (the imports the stop signals are taken for)

__all__ = ["app"]
