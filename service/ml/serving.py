"""The serving path: the production model behind an atomic swap, fed by a micro-batcher.

Concurrent requests are gathered into a batch and triaged in one call on a worker thread: the
TF-IDF fast path scores every item, and the requests it settles are answered at once. Gathering
waits for batch mates only when one is likely: callers are concurrent and have lately been
arriving often (`MicroBatcher._company_likely`); a lone or rare caller's request is triaged at
once. Each item the fast path leaves unsettled is then encoded as a task of its own on the
scorer threads, so two cores encode two items at a time and a request waits only for its own
items. (Scoring whole batches on one thread each made every request wait for its batch mates'
encodes and kept the clients in lockstep: p99 61 ms vs 47 at concurrency 8 here.) The event
loop never runs model code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from service.entities import PredictionStatus
from service.errors import ArtifactError, OverloadedError, UnavailableError
from service.ml.classifier import TagModel
from service.ml.encoder import Encoder
from service.ml.workpool import BULK, URGENT, PriorityPool
from service.tags import TagSet

log = logging.getLogger(__name__)
T = TypeVar("T")

# The gathering window opens only when a batch mate is likely within it: requests arriving,
# lately, at least once every COMPANY_WINDOWS windows on average. (Arrival gaps are averaged
# with weight ARRIVAL_WEIGHT for the newest, each capped at MAX_GAP_S so that an idle spell
# weighs no more than one long gap.)
COMPANY_WINDOWS = 3.0
ARRIVAL_WEIGHT = 0.1
MAX_GAP_S = 1.0
# What /predict's 503 says while no model serves and no production version was refused; with
# what makes one, as a new deployment (compose, `serve` on an empty registry) has none.
NO_MODEL = (
    "no production model is loaded yet: promote a version (POST /models/{version}/promote), "
    "or train one with tagflow train --data FILE --promote"
)


@dataclass(frozen=True)
class LoadedModel:
    """A verified model, the registry version it came from, and the cut it is served with."""

    version: str
    model: TagModel
    # Set after training (audit recalibration or by hand); None: the one training chose.
    threshold: float | None = None

    @property
    def accept_at(self) -> float:
        return self.model.threshold if self.threshold is None else self.threshold


@dataclass(frozen=True)
class Scored:
    """One item's prediction, before it gets an id and is logged."""

    tag: str
    confidence: float
    scores: dict[str, float]
    status: PredictionStatus
    model_version: str


@dataclass
class Triage:
    """A batch after the fast path; `proba` rows listed in `unsettled` are TF-IDF only until
    `Predictor.finish` completes them."""

    loaded: LoadedModel
    texts: list[str]
    proba: np.ndarray
    unsettled: list[int]


class Predictor:
    """Scores texts with whatever model is current; `swap` changes it between two batches."""

    def __init__(self, encoder: Encoder, tags: TagSet, *, fast_path: bool = True) -> None:
        self.encoder = encoder
        self.tags = tags
        self.fast_path = fast_path
        self._current: LoadedModel | None = None
        self._shadow: LoadedModel | None = None
        # Why nothing serves, for /predict's 503 (read only then: no cost while a model serves).
        self._unavailable = NO_MODEL

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    @property
    def shadow(self) -> LoadedModel | None:
        return self._shadow

    def check(self, loaded: LoadedModel) -> None:
        """Refuse a model that could return a tag outside the approved list."""
        unknown = self.tags.unapproved(loaded.model.classes)
        if unknown:
            raise ArtifactError(
                f"model {loaded.version} predicts unapproved tags {unknown}: refused"
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

    def refused(self, version: str | None) -> None:
        """Note that production `version` was refused at load (None: no version is, any more),
        so that while nothing serves the 503 names it instead of promising a model "yet"; the
        reason, which may hold a server path, is /readyz's to give."""
        self._unavailable = (
            NO_MODEL
            if version is None
            else f"production version {version} was refused at load; GET /readyz says why"
        )

    def set_shadow(self, loaded: LoadedModel | None) -> None:
        if loaded is not None:
            self.check(loaded)
        self._shadow = loaded

    def score(self, texts: list[str], loaded: LoadedModel | None = None) -> list[Scored]:
        """Score a batch synchronously (CPU work; call it from a worker thread)."""
        triage = self.triage(texts, loaded)
        self.finish(triage, triage.unsettled)
        return self.results(triage, range(len(texts)))

    def triage(self, texts: list[str], loaded: LoadedModel | None = None) -> Triage:
        """The fast path over a batch: which rows are settled, which need the encoder."""
        loaded = loaded or self._current
        if loaded is None:
            raise UnavailableError(self._unavailable)
        proba, unsettled = loaded.model.fast_proba(texts, fast_path=self.fast_path)
        return Triage(loaded, texts, proba, [int(i) for i in unsettled])

    def finish(self, triage: Triage, rows: Sequence[int]) -> None:
        """Encode `rows` of a triaged batch and mix in the embedding head (a worker thread)."""
        triage.loaded.model.complete(triage.texts, triage.proba, rows, self.encoder.encode)

    def results(self, triage: Triage, rows: Iterable[int]) -> list[Scored]:
        return [self._one(triage.loaded, triage.proba[i]) for i in rows]

    def _one(self, loaded: LoadedModel, row: np.ndarray) -> Scored:
        model = loaded.model
        by_class = dict(zip(model.classes, row.tolist(), strict=True))
        scores = {t: round(float(by_class.get(t, 0.0)), 6) for t in self.tags.names}
        best = int(row.argmax())
        # Decided on the confidence as answered, logged and audited: on the unrounded one, an
        # item could be `review` while the confidence it reports is the cut itself.
        confidence = round(float(row[best]), 6)
        status = (
            PredictionStatus.AUTO if confidence >= loaded.accept_at else PredictionStatus.REVIEW
        )
        return Scored(
            tag=model.classes[best],
            confidence=confidence,
            scores=scores,
            status=status,
            model_version=loaded.version,
        )


@dataclass
class BatchStats:
    """Running totals of what the micro-batcher did (read by /metrics). Updated only on the
    event loop, so plain integers are exact."""

    batches: int = 0
    items: int = 0
    encoded: int = 0
    refused_requests: int = 0
    refused_items: int = 0
    # CPU seconds the worker threads spent triaging and encoding (measured on each thread,
    # added here on the loop): how much of the machine scoring takes, and what an item costs.
    triage_cpu_s: float = 0.0
    encode_cpu_s: float = 0.0


def _on_thread_cpu(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """`fn(*args)` and the CPU seconds the calling thread spent in it."""
    start = time.thread_time()
    result = fn(*args)
    return result, time.thread_time() - start


def _future() -> asyncio.Future[list[Scored]]:
    """A future on the running loop (a `_Pending` is made inside a coroutine)."""
    return asyncio.get_running_loop().create_future()


class _Open:
    """The model of a batch not started yet: any request may open it."""


_OPEN = _Open()


@dataclass
class _Pending:
    texts: list[str]
    priority: int = URGENT  # BULK for the chunks of a request larger than a batch
    # The model a large request's chunks are all scored with: the one current when it came,
    # so a promotion while it is scored does not answer it with two versions. None: whatever
    # is current when the batch is triaged.
    loaded: LoadedModel | None = None
    future: asyncio.Future[list[Scored]] = field(default_factory=_future)


class MicroBatcher:
    """Coalesces concurrent `predict` calls, answers what the fast path settles at once, and
    encodes the rest item by item on `threads` scorer threads."""

    def __init__(
        self,
        predictor: Predictor,
        *,
        max_items: int,
        wait_ms: float,
        threads: int = 1,
        max_waiting: int = 0,
    ) -> None:
        self.predictor = predictor
        self.max_items = max_items
        self.wait_s = wait_ms / 1000.0
        # Admission: a request is refused when more than `max_waiting` items (0: no bound)
        # would be ahead of it or with it. Small requests go before large ones' chunks, so
        # only the small lane counts for them: a burst of large batches never refuses them.
        self.max_waiting = max_waiting
        self._waiting = {URGENT: 0, BULK: 0}
        # Two lanes: requests that fit in a batch, and chunks of larger ones (see `predict`).
        self._interactive: deque[_Pending] = deque()
        self._bulk: deque[_Pending] = deque()
        self._arrived = asyncio.Event()
        self._last_batch = 0  # requests in the last batch gathered
        self._last_arrival: float | None = None
        self._mean_gap: float | None = None  # running mean of the gaps between requests, s
        # Triage has a thread of its own so it never queues behind encodes.
        self._triage_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="triage")
        self._pool = PriorityPool(threads, name="score")
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self.stats = BatchStats()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="microbatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._triage_pool.shutdown(wait=True)
        self._pool.shutdown()

    async def predict(self, texts: list[str]) -> list[Scored]:
        """Score `texts` (one request's items), possibly together with other requests'.

        A request larger than a batch is cut into batch-sized chunks on a lane of their own,
        which is served only when no small request waits: a 256-item call is about 80 ms of
        triage, and single requests arriving meanwhile go between its chunks, not behind it.
        """
        self._note_arrival()
        lane = URGENT if len(texts) <= self.max_items else BULK
        self._admit(lane, len(texts))
        self._waiting[lane] += len(texts)
        try:
            if lane == URGENT:
                return await self._submit(_Pending(texts))
            size = self.max_items
            chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
            pinned = self.predictor.current
            parts = await asyncio.gather(
                *(self._submit(_Pending(c, BULK, loaded=pinned)) for c in chunks)
            )
            return [scored for part in parts for scored in part]
        finally:
            self._waiting[lane] -= len(texts)

    def _admit(self, lane: int, n: int) -> None:
        """Refuse a request that would wait behind more than `max_waiting` items: a fast 503
        and a retry serve a client better than a queue that only grows."""
        ahead = self._waiting[URGENT] + (self._waiting[BULK] if lane == BULK else 0)
        if not self.max_waiting or ahead == 0 or ahead + n <= self.max_waiting:
            return
        self.stats.refused_requests += 1
        self.stats.refused_items += n
        raise OverloadedError(
            f"overloaded: {ahead} items are waiting to be scored (bound {self.max_waiting}); "
            "retry shortly"
        )

    async def _submit(self, pending: _Pending) -> list[Scored]:
        """Queue `pending` on its priority's lane and wait for its answer."""
        (self._bulk if pending.priority == BULK else self._interactive).append(pending)
        self._arrived.set()
        return await pending.future

    async def _run(self) -> None:
        triage_free = asyncio.Event()
        triage_free.set()
        while True:
            batch, loaded = await self._gather()
            # One triage at a time, and the next batch handed over only when the thread is
            # free: batches queued in the executor could not be overtaken by small requests.
            await triage_free.wait()
            triage_free.clear()
            self._dispatch(batch, loaded, triage_free.set)
            # Nothing of the batch stays referenced here while the next one gathers: its
            # triage holds the model that scored it, which a swap may replace meanwhile.
            del batch, loaded

    def _dispatch(
        self, batch: list[_Pending], loaded: LoadedModel | None, triaged: Callable[[], None]
    ) -> None:
        """Triage `batch` on the triage thread, calling `triaged` once it is done, and answer
        its requests from a task of their own."""
        texts = [t for p in batch for t in p.texts]
        triaging = asyncio.get_running_loop().run_in_executor(
            self._triage_pool, _on_thread_cpu, self.predictor.triage, texts, loaded
        )
        triaging.add_done_callback(lambda _: triaged())
        task = asyncio.create_task(self._score(batch, texts, triaging))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _take(self, room: int, pin: LoadedModel | None | _Open = _OPEN) -> _Pending | None:
        """The next waiting request that fits in `room` items and can be scored by the same
        model as the batch so far (`pin`: its pinned model, None for the current one, _OPEN
        for a batch not started): small requests first."""
        for lane in (self._interactive, self._bulk):
            if lane and len(lane[0].texts) <= room and self._joins(lane[0], pin):
                return lane.popleft()
        return None

    def _joins(self, pending: _Pending, pin: LoadedModel | None | _Open) -> bool:
        if isinstance(pin, _Open) or pending.loaded is pin:
            return True
        current = self.predictor.current
        # A request that waits for the current model cannot join a batch pinned to one just
        # swapped away from, nor a pinned chunk a batch of another model.
        return (pending.loaded or current) is (pin or current)

    def _note_arrival(self) -> None:
        now = time.perf_counter()
        if self._last_arrival is not None:
            gap = min(now - self._last_arrival, MAX_GAP_S)
            mean = gap if self._mean_gap is None else self._mean_gap
            self._mean_gap = mean + ARRIVAL_WEIGHT * (gap - mean)
        self._last_arrival = now

    def _company_likely(self, size: int) -> bool:
        """Whether waiting `wait_s` is likely to bring batch mates: callers are concurrent
        (other requests are being scored, or the last batch held several, whose callers send
        again together) and requests arrive often enough for one to be expected soon. Traffic
        of independent callers at a low rate is triaged at once."""
        concurrent = self._in_flight() > size or self._last_batch > 1
        frequent = self._mean_gap is not None and self._mean_gap < COMPANY_WINDOWS * self.wait_s
        return concurrent and frequent

    def _in_flight(self) -> int:
        """Items of every request not yet answered: waiting, being gathered or being scored."""
        return self._waiting[URGENT] + self._waiting[BULK]

    async def _gather(self) -> tuple[list[_Pending], LoadedModel | None]:
        """The next batch: what waits now, then up to `wait_s` more for up to `max_items`, but
        only while a batch mate is likely (`_company_likely`); and the model its requests are
        pinned to (None: the current one)."""
        while not (self._interactive or self._bulk):
            self._arrived.clear()
            await self._arrived.wait()
        first = self._take(self.max_items)
        assert first is not None  # every waiting request holds at most max_items texts
        batch, size, pin = [first], len(first.texts), first.loaded
        deadline = time.perf_counter() + self.wait_s
        while size < self.max_items:
            item = self._take(self.max_items - size, pin)
            if item is None:
                if self._bulk:  # the next chunk does not fit: do not wait for what cannot join
                    break
                if not self._company_likely(size):
                    break
                timeout = deadline - time.perf_counter()
                if timeout <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), timeout)
                except TimeoutError:
                    break
                continue
            batch.append(item)
            size += len(item.texts)
            pin = pin or item.loaded
        self._last_batch = len(batch)
        return batch, pin

    async def _score(
        self,
        batch: list[_Pending],
        texts: list[str],
        triaging: asyncio.Future[tuple[Triage, float]],
    ) -> None:
        try:
            triage, cpu_s = await triaging
        except Exception as exc:  # handed to every waiting request, which re-raises it
            for p in batch:
                _fail(p.future, exc)
            return
        self.stats.triage_cpu_s += cpu_s
        unsettled = set(triage.unsettled)
        self.stats.batches += 1
        self.stats.items += len(texts)
        self.stats.encoded += len(unsettled)
        waits, start = [], 0
        for p in batch:
            rows = range(start, start + len(p.texts))
            start += len(p.texts)
            mine = [r for r in rows if r in unsettled]
            if not mine:
                _succeed(p.future, self.predictor.results(triage, rows))
            else:
                waits.append(self._complete(p, triage, rows, mine))
        await asyncio.gather(*waits)

    async def _complete(
        self, pending: _Pending, triage: Triage, rows: range, unsettled: list[int]
    ) -> None:
        """Encode one request's unsettled rows, each a scorer task of its own, then answer."""
        try:
            done = await asyncio.gather(
                *(
                    asyncio.wrap_future(
                        self._pool.submit(
                            pending.priority, _on_thread_cpu, self.predictor.finish, triage, [r]
                        )
                    )
                    for r in unsettled
                )
            )
        except Exception as exc:
            _fail(pending.future, exc)
            return
        self.stats.encode_cpu_s += sum(cpu_s for _, cpu_s in done)
        _succeed(pending.future, self.predictor.results(triage, rows))


def _succeed(future: asyncio.Future[list[Scored]], results: list[Scored]) -> None:
    if not future.done():  # the request may have been cancelled (client gone)
        future.set_result(results)


def _fail(future: asyncio.Future[list[Scored]], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
