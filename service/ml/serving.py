"""The serving path: the production model behind an atomic swap, fed by a micro-batcher.

Concurrent requests are gathered for up to `wait_ms` (or `max_items`) and scored in one call
in a worker thread, so the event loop never runs model code and tokeniser / TF-IDF / LR
overheads are paid once per batch instead of once per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.entities import PredictionStatus
from service.errors import ArtifactError, UnavailableError
from service.ml.classifier import TagModel
from service.ml.encoder import Encoder
from service.tags import TagSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A verified model and the registry version it came from."""

    version: str
    model: TagModel


@dataclass(frozen=True)
class Scored:
    """One item's prediction, before it gets an id and is logged."""

    tag: str
    confidence: float
    scores: dict[str, float]
    status: PredictionStatus
    model_version: str


class Predictor:
    """Scores texts with whatever model is current; `swap` changes it between two batches."""

    def __init__(self, encoder: Encoder, tags: TagSet, *, fast_path: bool = True) -> None:
        self.encoder = encoder
        self.tags = tags
        self.fast_path = fast_path
        self._current: LoadedModel | None = None
        self._shadow: LoadedModel | None = None

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @property
    def shadow(self) -> LoadedModel | None:
        return self._shadow

    def check(self, loaded: LoadedModel) -> None:
        """Refuse a model that could return a tag outside the approved list."""
        unknown = set(loaded.model.classes) - set(self.tags.names)
        if unknown:
            raise ArtifactError(
                f"model {loaded.version} predicts unapproved tags {sorted(unknown)}: refused"
            )
        if loaded.model.encoder and loaded.model.encoder != self.encoder.path.name:
            log.warning(
                "model %s was trained on %s embeddings but %s is serving",
                loaded.version,
                loaded.model.encoder,
                self.encoder.path.name,
            )

    def swap(self, loaded: LoadedModel) -> None:
        """Make `loaded` the production model; batches already running finish on the old one."""
        self.check(loaded)
        self._current = loaded  # a single reference assignment: atomic for readers
        log.info("serving model %s", loaded.version)

    def set_shadow(self, loaded: LoadedModel | None) -> None:
        if loaded is not None:
            self.check(loaded)
        self._shadow = loaded

    def score(self, texts: list[str], loaded: LoadedModel | None = None) -> list[Scored]:
        """Score a batch synchronously (CPU work; call it from a worker thread)."""
        loaded = loaded or self._current
        if loaded is None:
            raise UnavailableError("no production model is loaded yet")
        proba = loaded.model.predict_proba(texts, self.encoder.encode, fast_path=self.fast_path)
        return [self._one(loaded, row) for row in proba]

    def _one(self, loaded: LoadedModel, row: np.ndarray) -> Scored:
        model = loaded.model
        by_class = dict(zip(model.classes, row.tolist(), strict=True))
        scores = {t: round(float(by_class.get(t, 0.0)), 6) for t in self.tags.names}
        best = int(row.argmax())
        confidence = float(row[best])
        status = PredictionStatus.AUTO if confidence >= model.threshold else PredictionStatus.REVIEW
        return Scored(
            tag=model.classes[best],
            confidence=round(confidence, 6),
            scores=scores,
            status=status,
            model_version=loaded.version,
        )


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future[list[Scored]]


class MicroBatcher:
    """Coalesces concurrent `predict` calls into batches scored in a thread pool."""

    def __init__(
        self, predictor: Predictor, *, max_items: int, wait_ms: float, threads: int = 1
    ) -> None:
        self.predictor = predictor
        self.max_items = max_items
        self.wait_s = wait_ms / 1000.0
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="score")
        self._slots = asyncio.Semaphore(threads)
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="microbatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=True)

    async def predict(self, texts: list[str]) -> list[Scored]:
        """Score `texts` (one request's items), possibly together with other requests'."""
        if self.max_items <= 1 or len(texts) >= self.max_items:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self.predictor.score, texts)
        future: asyncio.Future[list[Scored]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(texts, future))
        return await future

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            # Wait for a free scorer before forming the batch: everything that queued up while
            # the scorers were busy then joins this batch instead of waiting for the next one.
            await self._slots.acquire()
            batch, size = [first], len(first.texts)
            deadline = time.perf_counter() + self.wait_s
            while size < self.max_items:
                if not self._queue.empty():
                    item = self._queue.get_nowait()
                else:
                    timeout = deadline - time.perf_counter()
                    if timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), timeout)
                    except TimeoutError:
                        break
                batch.append(item)
                size += len(item.texts)
            task = asyncio.create_task(self._score(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _score(self, batch: list[_Pending]) -> None:
        try:
            texts = [t for p in batch for t in p.texts]
            loop = asyncio.get_running_loop()
            try:
                results = await loop.run_in_executor(self._pool, self.predictor.score, texts)
            except Exception as exc:  # handed to every waiting request, which re-raises it
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                return
            start = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result(results[start : start + len(p.texts)])
                start += len(p.texts)
        finally:
            self._slots.release()
