"""Redriving the prediction dead-letter file: once the cause of a refusal is fixed (a migration,
a widened column), `tagflow db replay-dead-letters` writes the rows the database refused into
it, and keeps in the file only what it still refuses.

The API may append to the file while a replay runs: the replay first moves the file aside (an
atomic rename; `append_lines` reopens a file that was moved while it waited for the lock), so
a new dead letter is never read half-written nor overwritten. A replay cut short leaves the
moved-aside file, which the next replay takes first; a row it wrote before it stopped is found
in the database (same id, same text hash) and dropped from the file, not refused as a duplicate.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy.engine import Engine

from service.crud.predictions import save_predictions
from service.db import is_outage, session_scope
from service.entities import Prediction, PredictionCreate, ShadowPrediction
from service.jsonl_files import append_lines, move_aside, replaying_path

log = logging.getLogger(__name__)

# What `_replay_one` did with a line, when it does not hand the line back (a JSON object).
WRITTEN, ALREADY_THERE = "written", "already there"


@dataclass
class ReplayReport:
    """What a replay did with each dead letter."""

    written: int = 0
    already_there: int = 0  # written by a replay that was cut short
    kept: int = 0  # still refused, or unreadable: back in the dead-letter file


def replay_dead_letters(engine: Engine, path: Path) -> ReplayReport:
    """Write every dead-lettered prediction (with its shadow scores) the database takes now, one
    transaction each; what it still refuses goes back to `path` with the new error. An outage
    puts everything not written yet back and re-raises."""
    report = ReplayReport()
    aside = move_aside(path)
    if aside is None:
        return report
    # A byte that is not UTF-8 (a line edited in a Latin-1 editor) was a UnicodeDecodeError
    # before any line was tried, at every replay: it reads as `\xe9`, an unreadable line kept.
    lines = aside.read_bytes().decode("utf-8", errors="backslashreplace").splitlines()
    back: list[str] = []
    tried = 0
    try:
        for line in lines:
            try:
                outcome = _replay_one(engine, line)
            except Exception as exc:
                if is_outage(exc):
                    raise
                outcome = _with_error(line, exc)
            tried += 1
            if outcome == WRITTEN:
                report.written += 1
            elif outcome == ALREADY_THERE:
                report.already_there += 1
            else:
                back.append(outcome)
    finally:
        back.extend(lines[tried:])  # not tried: an outage, or the command was interrupted
        report.kept = len(back)
        if back:
            append_lines(path, back)
        aside.unlink()
    return report


def _replay_one(engine: Engine, line: str) -> str:
    """Write one dead letter: WRITTEN, ALREADY_THERE, or the line to keep, with the reason the
    row is still refused."""
    try:
        entry = json.loads(line)
        row = PredictionCreate.model_validate(entry["prediction"])
        shadows = [ShadowPrediction.model_validate(s) for s in entry.get("shadows", [])]
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        log.error("unreadable dead letter kept: %s", exc)
        return _with_error(line, exc)
    with session_scope(engine) as session:
        stored = session.get(Prediction, row.id)
        if stored is not None:
            if stored.text_hash == row.text_hash:
                return ALREADY_THERE
            return _with_error(line, ValueError(f"another prediction has the id {row.id}"))
        save_predictions(session, predictions=[row], shadows=shadows)
    return WRITTEN


def _with_error(line: str, exc: Exception) -> str:
    """`line` with its error replaced by `exc` (an unreadable line is kept as it was)."""
    error = f"{type(exc).__name__}: {exc}"
    try:
        entry = json.loads(line)
        entry["error"] = error
    except (ValueError, TypeError):
        return line
    log.error("dead letter still refused: %s", error)
    return json.dumps(entry, ensure_ascii=True)


@dataclass
class WaitingCount:
    """How many dead letters wait to be replayed (the file, and one a replay is working
    through), for /metrics. Reads only what was appended since the last call, so a scrape costs
    little however large the file grows; a file replaced since (new inode, or shorter than
    what was read) is counted from its start."""

    path: Path
    # file -> (inode, bytes read, lines counted in them)
    _seen: dict[Path, tuple[int, int, int]] = field(default_factory=dict)
    # /metrics runs on the threadpool: two scrapes at once must not both add the same bytes.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self) -> int:
        with self._lock:
            return self._lines(self.path) + self._lines(replaying_path(self.path))

    def _lines(self, path: Path) -> int:
        try:
            with path.open("rb") as f:
                stat = os.fstat(f.fileno())
                inode, offset, lines = self._seen.get(path, (stat.st_ino, 0, 0))
                if inode != stat.st_ino or stat.st_size < offset:
                    offset, lines = 0, 0
                f.seek(offset)
                while chunk := f.read(1 << 20):
                    lines += chunk.count(b"\n")
                    offset += len(chunk)
        except FileNotFoundError:
            self._seen.pop(path, None)
            return 0
        self._seen[path] = (stat.st_ino, offset, lines)
        return lines
