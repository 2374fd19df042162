"""Append-only JSON Lines files that several processes write and one replays: the prediction
log's spill file and the dead letters (`service.dead_letters`).

Appends take an exclusive lock on the file at the path (`append_lines`); a replay moves the
lines aside under the same lock with an atomic rename (`move_aside`), so an append is never
half in the moved file, and holds the replay file's own lock (`lock_replay`) so one process
replays at a time.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


def lock_replay(path: Path) -> IO[str] | None:
    """Make the replay of the JSON Lines file at `path` this process's alone: an open handle on
    its replay file, exclusively locked until closed (the kernel lets go of a process that
    dies); None while another process holds it. The file is created empty if need be, and
    `move_aside` then appends to it."""
    aside = replaying_path(path)
    aside.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = aside.open("a", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        if _is_current(handle, aside):
            return handle
        handle.close()  # locked as its holder unlinked it, written back: lock the new one


def append_lines(path: Path, entries: Sequence[dict[str, object] | str]) -> None:
    """Append `entries` to a JSON Lines file, each an ASCII line (a NUL or a lone surrogate in a
    refused row is written as its \\u escape; a str is taken as a line already).

    Under an exclusive lock, and into the file at `path` now: a replay of the dead letters
    moves the file aside under the same lock, and a writer that opened it before then opens
    the new one instead of writing into the file being replayed."""
    text = "".join(
        (e if isinstance(e, str) else json.dumps(e, ensure_ascii=True)) + "\n" for e in entries
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with path.open("a", encoding="utf-8") as out:
            fcntl.flock(out, fcntl.LOCK_EX)
            if _is_current(out, path):
                out.write(text)
                return


def replaying_path(path: Path) -> Path:
    """Where `move_aside` puts the lines of `path` that a replay works through."""
    return path.with_name(path.name + ".replaying")


def move_aside(path: Path) -> Path | None:
    """Move the lines of the JSON Lines file at `path` to `replaying_path(path)`, after what a
    replay cut short left there; that file, or None when there is nothing to replay.

    Under `append_lines`'s lock, then an atomic rename: an append is never half in the moved
    file, and appends after it start a new file at `path`. A move cut short by the process's
    death (killed while it copied a large file) is finished first (`_finish_moves`)."""
    aside = replaying_path(path)
    _finish_moves(path, aside)
    if path.exists():
        taken = path.with_name(f"{path.name}.{os.getpid()}")
        with path.open("a", encoding="utf-8") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            os.replace(path, taken)
        _append_taken(taken, aside)
    return aside if aside.exists() else None


def _append_taken(taken: Path, aside: Path) -> None:
    """Append the lines of `taken` (a file `move_aside` renamed) to `aside`, then remove it.

    Copied in chunks: a spill file of a long outage is gigabytes. The size `aside` had before
    is written beside `taken` first (`_start_mark`), so that a copy cut short is redone from
    there: neither lost (the renamed file was left where nothing read it again) nor appended
    twice, nor a line cut in half."""
    mark = _start_mark(taken)
    if mark.exists():  # a copy cut short: its part of `aside` is redone
        # Never past the end: `aside` removed by hand since would be padded with NULs.
        start = min(int(mark.read_text(encoding="ascii")), _size(aside))
    else:
        start = _size(aside)
        written = mark.with_name(mark.name + ".new")
        written.write_text(str(start), encoding="ascii")
        os.replace(written, mark)
    with aside.open("ab") as out, taken.open("rb") as lines:
        out.truncate(start)
        shutil.copyfileobj(lines, out)
    taken.unlink()
    mark.unlink(missing_ok=True)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _start_mark(taken: Path) -> Path:
    return taken.with_name(taken.name + ".from")


def _finish_moves(path: Path, aside: Path) -> None:
    """Finish the moves of `path`'s lines that a process died in: its renamed file, named for
    its pid, still there (killed while it copied); drop what one that died after its copy left
    of its start mark."""
    for left in sorted(path.parent.glob(f"{path.name}.*")):
        pid, _, rest = left.name[len(path.name) + 1 :].partition(".")
        if not pid.isdigit() or _is_alive(int(pid)):
            continue  # not a move's file (the replay file), or a move under way
        if not rest:
            log.warning("finishing a move of %s that its process left cut short", left)
            _append_taken(left, aside)
        elif rest in ("from", "from.new"):
            left.unlink(missing_ok=True)  # its renamed file was copied and removed


def _is_alive(pid: int) -> bool:
    """Whether a process `pid` runs (this one included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


def _is_current(handle: IO[str], path: Path) -> bool:
    """Whether the open `handle` is still the file at `path` (not moved aside since)."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False
