"""Write-behind prediction logging: requests append to memory, a background task batches
inserts. A flush that fails for want of the database keeps its rows for the next try; `close`
flushes what is left, so a clean shutdown loses nothing.

If the database cannot be reached at shutdown, what is left goes to a spill file, and the next
process writes it back (`take_back_spill`), so an outage during a restart loses nothing either.
A long outage does not grow the buffer without bound either: past `max_buffered` rows, the
oldest go to the same spill file (an hour at 300 req/s was 2-3 GB of memory, all lost to an OOM
kill), and once the database answers they are written back from it, oldest first, a few
batches per flush beside the new rows. Whichever API process holds the spill's replay lock
writes it back, for every process sharing the data directory.

A row the database refuses (not an outage: a value it cannot store, a duplicate id) would fail
every later flush and hold back every row behind it. So when a batch fails for another reason
than a lost connection, its rows are written one by one, and a row refused on its own goes to a
dead-letter file (JSON Lines in the data directory) with an ERROR line, not back to the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
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
from service.entities.common import id_made_at
from service.jsonl_files import append_lines, lock_replay, move_aside, replaying_path
from service.logs import RepeatedFailures

log = logging.getLogger(__name__)
# Batches of the spill file written back per flush, at most: the write-back of a long outage
# (a million rows) is spread over flushes, so the rows answered meanwhile are written at each
# flush too, and a GET /predictions/{id} that flushes does not wait for all of it.
WRITE_BACK_BATCHES_PER_FLUSH = 4
# Batches read per flush, at most: those a replay cut short wrote already cost a query each,
# not a write, so more of them fit in a flush.
READ_BACK_BATCHES_PER_FLUSH = 64


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
        max_buffered: int | None = None,
    ) -> None:
        self.engine = engine
        self.dead_letter = dead_letter
        self.spill = spill
        # Past this many rows in memory, the oldest go to the spill file (None: no bound;
        # without a spill file there is nowhere to put them).
        self.max_buffered = max_buffered
        self._replaying: Path | None = None
        self._replay_lock: IO[str] | None = None  # held while the replay file is this log's
        self._replay_offset = 0  # bytes of the replay file written back already
        self._replay_skipped = 0  # rows of the replay found written (a replay cut short)
        self._spilling = False  # rows went to disk since the last complete write-back
        self._spill_refused = False  # the last spill failed (a full disk), and was logged
        self.audit_share = audit_share
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.after_flush = after_flush
        self._buffer: deque[PredictionCreate] = deque()
        self._in_flight: PredictionCreate | None = None  # the oldest row of the batch in flight
        self._in_flight_rows = 0  # the rows of that batch: out of the buffer, not written yet
        self._shadows: deque[ShadowPrediction] = deque()
        self._flush_lock = threading.Lock()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0
        self.written = 0
        self.dead_lettered = 0
        self.spilled = 0  # rows moved from memory to the spill file during outages

    @property
    def buffered(self) -> int:
        """Predictions answered but not written yet, in memory (not those spilled to disk):
        in the buffer, or in the batch a flush is writing (it takes them out of the buffer
        first, and a write to a slow database takes seconds)."""
        return len(self._buffer) + self._in_flight_rows

    @property
    def writing_back(self) -> bool:
        """Whether predictions spilled to disk (by any process sharing the data directory) wait
        to be written back: until then, the database lacks some answered predictions."""
        return self.spill is not None and (
            self.spill.exists() or replaying_path(self.spill).exists()
        )

    def unwritten_since(self) -> float | None:
        """When the oldest prediction answered and not written yet was made (its id's time, in
        seconds since the epoch), in memory: buffered, or in the batch being written (a flush
        that hangs holds it); None when there is none. Not the spilled rows."""
        oldest = self._in_flight
        if oldest is None:
            try:
                oldest = self._buffer[0]
            except IndexError:  # emptied by a flush meanwhile
                return None
        return id_made_at(oldest.id)

    def record(self, prediction: PredictionCreate) -> None:
        """Queue one prediction for writing (O(1), no I/O)."""
        self._buffer.append(prediction)

    def record_shadow(self, shadow: ShadowPrediction) -> None:
        self._shadows.append(shadow)

    def pending(self, prediction_id: str) -> Prediction | None:
        """A prediction that is answered but not yet written, if any: in the buffer, or in the
        spill file (read through: for tests and tools, not for the request path)."""
        found = next((p for p in list(self._buffer) if p.id == prediction_id), None)
        if found is None and self.spill is not None:
            found = _find_spilled(self.spill, prediction_id)
        return None if found is None else Prediction.model_validate(found.model_dump())

    def flush(self) -> int:
        """Write back a few batches of the spill file, then everything buffered now; on an
        outage keep the rows (the oldest to the spill file past `max_buffered`) and re-raise."""
        before = self.written
        with self._flush_lock:
            try:
                self._write_back()
                self._write_buffer()
            except Exception:
                self.failures += 1
                raise
            finally:
                self._overflow()
        written = self.written - before
        if written and self.after_flush is not None:
            self.after_flush()
        return written

    def _write_buffer(self) -> None:
        while self._buffer or self._shadows:
            self._in_flight = self._buffer[0] if self._buffer else None  # before it leaves
            # Counted before they leave too: a scrape meanwhile may count them twice, never
            # miss them.
            self._in_flight_rows = min(self.batch_size, len(self._buffer))
            batch = [self._buffer.popleft() for _ in range(self._in_flight_rows)]
            shadows = [self._shadows.popleft() for _ in range(len(self._shadows))]
            try:
                self._write(batch, shadows, put_back=True)
            finally:
                self._in_flight, self._in_flight_rows = None, 0

    def _write(
        self, batch: list[PredictionCreate], shadows: list[ShadowPrediction], *, put_back: bool
    ) -> None:
        """Write a batch; a refused one row by row. On an outage, the rows not written go back
        to the buffer (`put_back`; a spill file's stay in the file) and it re-raises."""
        try:
            self._save(batch, shadows)
            self.written += len(batch)
        except Exception as exc:
            if not is_outage(exc):
                self.written += self._write_refused(batch, shadows, exc, put_back=put_back)
                return
            if put_back:
                self._put_back(batch, shadows)
            raise

    def _write_refused(
        self,
        batch: list[PredictionCreate],
        shadows: list[ShadowPrediction],
        refusal: Exception,
        *,
        put_back: bool,
    ) -> int:
        """Write a batch the database refused; how many of its rows it has now.

        Rows it has already are not written again: a flush whose COMMIT the server took and
        whose answer an outage cut off (PostgreSQL stopped right after it) left them in the
        database and, as for any outage, back in the buffer, and the next flush's batch was
        refused for their ids. Those count as written (no earlier flush counted them); the
        rest go as a batch again, and one refused again goes row by row (`_save_apart`)."""
        try:
            with Session(self.engine) as session:
                done, done_shadows = already_written(session, predictions=batch, shadows=shadows)
        except Exception:
            if put_back:
                self._put_back(batch, shadows)
            raise
        if not done and not done_shadows:
            log.warning("prediction log: a batch of %d was refused (%s)", len(batch), refusal)
            return self._save_apart(batch, shadows, put_back=put_back)
        log.info(
            "prediction log: %d of a batch of %d were written by a commit whose answer was "
            "lost in an outage: not written twice",
            len(done),
            len(batch),
        )
        rest = [row for row in batch if row.id not in done]
        rest_shadows = [
            s for s in shadows if (s.prediction_id, s.model_version) not in done_shadows
        ]
        try:
            self._save(rest, rest_shadows)
        except Exception as exc:
            if is_outage(exc):
                if put_back:
                    self._put_back(rest, rest_shadows)
                raise
            log.warning("prediction log: a batch of %d was refused (%s)", len(rest), exc)
            return len(done) + self._save_apart(rest, rest_shadows, put_back=put_back)
        return len(done) + len(rest)

    def _write_back(self) -> None:
        """Write up to WRITE_BACK_BATCHES_PER_FLUSH batches' worth of the spill file, oldest first,
        if there is one and no other process is writing it back. Rows a replay cut short wrote
        already are skipped; an outage leaves the rest in the file, where the next flush goes
        on from."""
        if self.spill is None:
            return
        if self._replaying is None:
            if not self.spill.exists() and not replaying_path(self.spill).exists():
                return
            if not self._claim_spill():
                return  # another process holds it: it writes back ours too
        assert self._replaying is not None
        to_write = WRITE_BACK_BATCHES_PER_FLUSH * self.batch_size
        for _ in range(READ_BACK_BATCHES_PER_FLUSH):
            if to_write <= 0:
                return
            offset = self._replay_offset
            try:
                rows, shadows, end = _read_spilled(self._replaying, offset, self.batch_size)
            except FileNotFoundError:  # removed by hand: nothing left to write back
                log.warning("%s is gone: its predictions are not written back", self._replaying)
                self._finish_replay()
                return
            if end == offset:  # all written: the rows spilled since come next
                if self.spill.exists() and move_aside(self.spill) is not None:
                    continue
                self._finish_replay()
                return
            if rows or shadows:
                with Session(self.engine) as session:
                    done, done_shadows = already_written(session, predictions=rows, shadows=shadows)
                self._replay_skipped += len(done)
                fresh = [r for r in rows if r.id not in done]
                self._write(
                    fresh,
                    [s for s in shadows if (s.prediction_id, s.model_version) not in done_shadows],
                    put_back=False,
                )
                to_write -= len(fresh)
            self._replay_offset = end

    def _claim_spill(self) -> bool:
        """Make the spill file this process's to write back (False: another process has it)."""
        assert self.spill is not None
        self._replay_lock = lock_replay(self.spill)
        if self._replay_lock is None:
            return False
        replaying = move_aside(self.spill)
        if replaying is None or replaying.stat().st_size == 0:  # the lock's file alone
            replaying_path(self.spill).unlink(missing_ok=True)
            self._release_replay()
            return False
        self._replaying, self._replay_offset, self._replay_skipped = replaying, 0, 0
        return True

    def _finish_replay(self) -> None:
        assert self._replaying is not None
        self._replaying.unlink(missing_ok=True)
        self._replaying = None
        self._release_replay()
        if self._replay_skipped:
            log.info(
                "%d spilled predictions were written before the last stop", self._replay_skipped
            )
        if self._spilling:
            log.info("prediction log: every prediction spilled to %s is written", self.spill)
            self._spilling = False

    def _overflow(self) -> None:
        """Past `max_buffered`, move the oldest rows (down to half the bound, so that this is
        not a few rows every flush) and the shadow scores to the spill file."""
        if self.spill is None or self.max_buffered is None:
            return
        if len(self._buffer) <= self.max_buffered:
            return
        rows = [self._buffer.popleft() for _ in range(len(self._buffer) - self.max_buffered // 2)]
        shadows = [self._shadows.popleft() for _ in range(len(self._shadows))]
        try:
            _append_spill(self.spill, rows, shadows)
        except OSError as exc:  # a full disk: kept in memory, not lost
            if not self._spill_refused:  # once, not at every flush (4 a second)
                log.error("prediction log: cannot spill to %s: %s", self.spill, exc)
            self._spill_refused = True
            self._buffer.extendleft(reversed(rows))
            self._shadows.extendleft(reversed(shadows))
            return
        self._spill_refused = False
        self.spilled += len(rows)
        if not self._spilling:
            log.warning(
                "prediction log: over %d rows waiting for the database; the oldest go to %s "
                "and are written from there once it answers",
                self.max_buffered,
                self.spill,
            )
            self._spilling = True

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

    def _save_apart(
        self, batch: list[PredictionCreate], shadows: list[ShadowPrediction], *, put_back: bool
    ) -> int:
        """Each row in a transaction of its own (with its shadow scores); a row refused alone
        is dead-lettered. An outage midway puts back what is not written yet (`put_back`) and
        re-raises."""
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
                if not is_outage(exc):
                    self._dead_letter(row, mine, exc)
                    continue
                if put_back:  # by_id still holds every shadow not written yet
                    self._put_back(batch[i:], mine + [s for v in by_id.values() for s in v])
                raise
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
                if self._spilling:
                    kept += f", {self.spilled} moved to {self.spill} since start"
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
        finally:
            # What is left of a write-back is another process's or the next start's (which
            # skip what was written).
            self._replaying = None
            self._release_replay()

    def _spill_out(self, path: Path) -> int:
        rows, shadows = list(self._buffer), list(self._shadows)
        self._buffer.clear()
        self._shadows.clear()
        _append_spill(path, rows, shadows)
        return len(rows)

    def take_back_spill(self) -> int:
        """At start: make this process the one that writes back what a previous process spilled
        (at shutdown or in an outage) and what a replay cut short left; the flushes write it,
        a few batches each. How many predictions the file holds (rows a replay cut short
        wrote already among them: those are skipped, not written twice)."""
        if self.spill is None:
            return 0
        # API processes sharing a data directory start together: one takes the file back.
        if not self._claim_spill():
            if replaying_path(self.spill).exists():  # not ours: another process holds it
                log.info("another API process is writing back %s", self.spill)
            return 0
        assert self._replaying is not None
        with self._replaying.open("rb") as lines:
            return sum(1 for line in lines if line.startswith(SPILLED_PREDICTION))

    def _release_replay(self) -> None:
        if self._replay_lock is not None:
            self._replay_lock.close()
            self._replay_lock = None


# How a prediction's line in a spill file starts (`_append_spill`'s json.dumps of a dict).
SPILLED_PREDICTION = b'{"prediction": '


def _append_spill(
    path: Path, rows: Sequence[PredictionCreate], shadows: Sequence[ShadowPrediction]
) -> None:
    entries = [{"prediction": r.model_dump(mode="json")} for r in rows]
    append_lines(path, entries + [{"shadow": s.model_dump(mode="json")} for s in shadows])


def _read_spilled(
    path: Path, offset: int, batch_size: int
) -> tuple[list[PredictionCreate], list[ShadowPrediction], int]:
    """Up to `batch_size` predictions of the spill file at `path` from byte `offset`, with the
    shadow scores among them, and the offset after them (`offset`: the file ends there)."""
    rows: list[PredictionCreate] = []
    shadows: list[ShadowPrediction] = []
    with path.open("rb") as lines:
        lines.seek(offset)
        while len(rows) < batch_size and (line := lines.readline()).endswith(b"\n"):
            try:
                entry = json.loads(line)
                if "prediction" in entry:
                    rows.append(PredictionCreate.model_validate(entry["prediction"]))
                else:
                    shadows.append(ShadowPrediction.model_validate(entry["shadow"]))
            except ValueError as exc:  # a line cut by a crash: it must not stop the rest
                log.error("a line of %s cannot be read, skipped: %s", path, exc)
            offset += len(line)
    return rows, shadows, offset


def _find_spilled(spill: Path, prediction_id: str) -> PredictionCreate | None:
    """The prediction `prediction_id` in the spill file or its replay, if there."""
    needle = f'"id": "{prediction_id}"'.encode()
    for path in (replaying_path(spill), spill):
        with contextlib.suppress(FileNotFoundError), path.open("rb") as lines:
            for line in lines:
                if needle in line and line.startswith(SPILLED_PREDICTION):
                    found = PredictionCreate.model_validate(json.loads(line)["prediction"])
                    if found.id == prediction_id:
                        return found
    return None
