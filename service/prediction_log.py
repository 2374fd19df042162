"""Write-behind prediction logging: requests append to memory, a background task batches
inserts. A flush that fails for want of the database keeps its rows for the next try; `close`
flushes what is left, so a clean shutdown loses nothing.

If the database cannot be reached at shutdown, what is left goes to a spill file, and the next
process puts it back in its buffer at start (`take_back_spill`), so an outage during a restart
loses nothing either.

A row the database refuses (not an outage: a value it cannot store, a duplicate id) would fail
every later flush and hold back every row behind it. So when a batch fails for another reason
than a lost connection, its rows are written one by one, and a row refused on its own goes to a
dead-letter file (JSON Lines in the data directory) with an ERROR line, not back to the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.crud.predictions import already_written, save_predictions
from service.db import is_outage, session_scope
from service.entities import Prediction, PredictionCreate, ShadowPrediction
from service.logs import RepeatedFailures

log = logging.getLogger(__name__)


class PredictionLog:
    """Buffers predictions and writes them in batches off the request path."""

    def __init__(
        self,
        engine: Engine,
        *,
        interval_s: float,
        batch_size: int,
        audit_share: float = 0.0,
        after_flush: Callable[[], None] | None = None,
        dead_letter: Path | None = None,
        spill: Path | None = None,
    ) -> None:
        self.engine = engine
        self.dead_letter = dead_letter
        self.spill = spill
        self._replaying: Path | None = None
        self._replay_lock: IO[str] | None = None  # held while the replay file is this log's
        self.audit_share = audit_share
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.after_flush = after_flush
        self._buffer: deque[PredictionCreate] = deque()
        self._shadows: deque[ShadowPrediction] = deque()
        self._flush_lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0
        self.written = 0
        self.dead_lettered = 0

    @property
    def buffered(self) -> int:
        """Predictions answered but not written yet."""
        return len(self._buffer)

    def record(self, prediction: PredictionCreate) -> None:
        """Queue one prediction for writing (O(1), no I/O)."""
        self._buffer.append(prediction)

    def record_shadow(self, shadow: ShadowPrediction) -> None:
        self._shadows.append(shadow)

    def pending(self, prediction_id: str) -> Prediction | None:
        """A prediction that is buffered but not yet written, if any."""
        found = next((p for p in list(self._buffer) if p.id == prediction_id), None)
        return None if found is None else Prediction.model_validate(found.model_dump())

    def flush(self) -> int:
        """Write everything buffered now; on an outage put it back and re-raise."""
        written = 0
        with self._flush_lock:
            while self._buffer or self._shadows:
                batch = [
                    self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))
                ]
                shadows = [self._shadows.popleft() for _ in range(len(self._shadows))]
                try:
                    self._save(batch, shadows)
                    written += len(batch)
                except Exception as exc:
                    if is_outage(exc):
                        self._put_back(batch, shadows)
                        raise
                    log.warning("prediction log: a batch of %d was refused (%s)", len(batch), exc)
                    written += self._save_apart(batch, shadows)
            if self._replaying is not None:  # everything taken back is written now
                self._replaying.unlink(missing_ok=True)
                self._replaying = None
                self._release_replay()
        self.written += written
        if written and self.after_flush is not None:
            self.after_flush()
        return written

    def _save(self, batch: Sequence[PredictionCreate], shadows: Sequence[ShadowPrediction]) -> None:
        with session_scope(self.engine) as session:
            save_predictions(
                session, predictions=batch, shadows=shadows, audit_share=self.audit_share
            )

    def _put_back(
        self, batch: Sequence[PredictionCreate], shadows: Sequence[ShadowPrediction]
    ) -> None:
        self._buffer.extendleft(reversed(batch))
        self._shadows.extendleft(reversed(shadows))
        self.failures += 1

    def _save_apart(self, batch: list[PredictionCreate], shadows: list[ShadowPrediction]) -> int:
        """Each row in a transaction of its own (with its shadow scores); a row refused alone
        is dead-lettered. An outage midway puts back what is not written yet and re-raises."""
        by_id: dict[str, list[ShadowPrediction]] = {}
        for shadow in shadows:
            by_id.setdefault(shadow.prediction_id, []).append(shadow)
        written = 0
        for i, row in enumerate(batch):
            mine = by_id.pop(row.id, [])  # a shadow goes with the first row of its id
            try:
                self._save([row], mine)
                written += 1
            except Exception as exc:
                if is_outage(exc):  # by_id still holds every shadow not written yet
                    self._put_back(batch[i:], mine + [s for v in by_id.values() for s in v])
                    raise
                self._dead_letter(row, mine, exc)
        orphans = [s for v in by_id.values() for s in v]
        if orphans:  # their predictions were written by an earlier flush
            self._save([], orphans)
        return written

    def _dead_letter(
        self, row: PredictionCreate, shadows: list[ShadowPrediction], exc: Exception
    ) -> None:
        self.dead_lettered += 1
        log.error("prediction %s refused by the database, dead-lettered: %s", row.id, exc)
        if self.dead_letter is None:
            return
        entry = {
            "prediction": row.model_dump(mode="json"),
            "shadows": [s.model_dump(mode="json") for s in shadows],
            "error": f"{type(exc).__name__}: {exc}",
        }
        append_lines(self.dead_letter, [entry])

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="prediction-log")

    async def _run(self) -> None:
        # An outage is a line when it starts, again each minute, and one when it ends: a
        # traceback every interval (4 a second by default) flooded the log while PostgreSQL
        # was down.
        failures = RepeatedFailures("prediction log flush", log)
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                written = await asyncio.to_thread(self.flush)
            except Exception as exc:
                kept = f"; {len(self._buffer)} rows kept for retry"
                failures.failed(exc, now=time.monotonic(), detail=kept)
            else:
                if written:  # an empty buffer asks nothing of the database: no news of it
                    failures.succeeded(detail=f"; {written} rows written")

    async def close(self) -> None:
        """Stop the loop and write what is left; what the database cannot take now goes to
        the spill file (re-raised when there is none)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await asyncio.to_thread(self.flush)
        except Exception:
            if self.spill is None:
                raise
            kept = self._spill_out(self.spill)
            log.exception(
                "final flush failed: %d predictions kept in %s for the next start", kept, self.spill
            )

    def _spill_out(self, path: Path) -> int:
        rows, shadows = list(self._buffer), list(self._shadows)
        self._buffer.clear()
        self._shadows.clear()
        entries = [{"prediction": r.model_dump(mode="json")} for r in rows]
        append_lines(path, entries + [{"shadow": s.model_dump(mode="json")} for s in shadows])
        return len(rows)

    def take_back_spill(self) -> int:
        """At start: put back in the buffer what a previous process spilled at shutdown (and
        what a replay cut short left), to be written by the next flush. How many predictions."""
        if self.spill is None:
            return 0
        # API processes sharing a data directory start together: one takes the file back.
        self._replay_lock = lock_replay(self.spill)
        if self._replay_lock is None:
            log.info("another API process is writing back %s", self.spill)
            return 0
        replaying = move_aside(self.spill)
        if replaying is None or replaying.stat().st_size == 0:  # the lock's file alone
            replaying_path(self.spill).unlink(missing_ok=True)
            self._release_replay()
            return 0
        rows: list[PredictionCreate] = []
        shadows: list[ShadowPrediction] = []
        for line in replaying.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            if "prediction" in entry:
                rows.append(PredictionCreate.model_validate(entry["prediction"]))
            else:
                shadows.append(ShadowPrediction.model_validate(entry["shadow"]))
        # A replay cut short (the process died between its flushes) left rows that are in the
        # database already: taken again, they would be refused as duplicates and dead-lettered,
        # a false alarm, and their shadow scores counted twice.
        with Session(self.engine) as session:
            done, done_shadows = already_written(session, predictions=rows, shadows=shadows)
        if done:
            log.info("%d spilled predictions were written before the last stop", len(done))
        self._buffer.extend(r for r in rows if r.id not in done)
        self._shadows.extend(
            s for s in shadows if (s.prediction_id, s.model_version) not in done_shadows
        )
        self._replaying = replaying
        return len(rows) - len(done)

    def _release_replay(self) -> None:
        if self._replay_lock is not None:
            self._replay_lock.close()
            self._replay_lock = None


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
    file, and appends after it start a new file at `path`."""
    aside = replaying_path(path)
    if path.exists():
        taken = path.with_name(f"{path.name}.{os.getpid()}")
        with path.open("a", encoding="utf-8") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            os.replace(path, taken)
        with aside.open("a", encoding="utf-8") as out:
            out.write(taken.read_text(encoding="utf-8"))
        taken.unlink()
    return aside if aside.exists() else None


def _is_current(handle: IO[str], path: Path) -> bool:
    """Whether the open `handle` is still the file at `path` (not moved aside since)."""
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False
