"""Write-behind prediction logging: requests append to memory, a background task batches
inserts. A failed flush keeps its rows for the next try; `close` flushes what is left, so a
clean shutdown loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable

from sqlalchemy.engine import Engine

from service.crud.predictions import save_predictions
from service.db import session_scope
from service.entities import Prediction, PredictionCreate, ShadowPrediction

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
    ) -> None:
        self.engine = engine
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
        """Write everything buffered now; on failure put it back and re-raise."""
        written = 0
        with self._flush_lock:
            while self._buffer or self._shadows:
                batch = [
                    self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))
                ]
                shadows = [self._shadows.popleft() for _ in range(len(self._shadows))]
                try:
                    with session_scope(self.engine) as session:
                        save_predictions(
                            session,
                            predictions=batch,
                            shadows=shadows,
                            audit_share=self.audit_share,
                        )
                except Exception:
                    self._buffer.extendleft(reversed(batch))
                    self._shadows.extendleft(reversed(shadows))
                    self.failures += 1
                    raise
                written += len(batch)
        self.written += written
        if written and self.after_flush is not None:
            self.after_flush()
        return written

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="prediction-log")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.flush)
            except Exception:
                log.exception(
                    "prediction log flush failed; %d rows kept for retry", len(self._buffer)
                )

    async def close(self) -> None:
        """Stop the loop and write what is left."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self.flush)
