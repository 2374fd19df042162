"""The micro-batcher: settled requests are answered at once, the rest item by item, and the
answers are exactly what the synchronous path computes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from service.errors import ArtifactError, OverloadedError, UnavailableError
from service.ml.encoder import Encoder
from service.ml.pipeline import base_split
from service.ml.serving import BatchStats, LoadedModel, MicroBatcher, Predictor, Scored
from service.ml.training import TrainResult
from service.tags import TagSet


class GatedEncoder:
    """The real encoder behind a gate: encoding waits until the test opens it, and texts in
    `broken` raise, so the tests decide when (and whether) encoding finishes."""

    def __init__(self, encoder: Encoder, *, open_: bool = True) -> None:
        self.encoder = encoder
        self.path = encoder.path
        self.gate = threading.Event()
        if open_:
            self.gate.set()
        self.broken: set[str] = set()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        assert self.gate.wait(10), "the test never opened the gate"
        if self.broken & set(texts):
            raise RuntimeError("encoder failed on purpose")
        return self.encoder.encode(texts)


@pytest.fixture
def texts(shared_result: TrainResult, shared_dataset: Path, tags: TagSet) -> dict[str, list[str]]:
    """Held-out texts the fast path settles, and ones it leaves to the encoder."""
    _, held_out, _ = base_split(shared_dataset, tags=tags)
    all_texts = [e.text for e in held_out]
    fast = shared_result.model.fast_mask(all_texts)
    return {
        "fast": [t for t, f in zip(all_texts, fast, strict=True) if f],
        "slow": [t for t, f in zip(all_texts, fast, strict=True) if not f],
    }


def _predictor(encoder: GatedEncoder, tags: TagSet, result: TrainResult) -> Predictor:
    predictor = Predictor(encoder, tags)  # type: ignore[arg-type]
    predictor.swap(LoadedModel("v-test", result.model))
    return predictor


def test_settled_request_does_not_wait_for_its_batch_mates_encode(
    encoder: Encoder, tags: TagSet, shared_result: TrainResult, texts: dict[str, list[str]]
) -> None:
    gated = GatedEncoder(encoder, open_=False)
    predictor = _predictor(gated, tags, shared_result)

    async def scenario() -> None:
        # A 20 ms gathering wait puts both requests in one batch.
        batcher = MicroBatcher(predictor, max_items=16, wait_ms=20, threads=2)
        batcher.start()
        slow = asyncio.create_task(batcher.predict([texts["slow"][0]]))
        fast = asyncio.create_task(batcher.predict([texts["fast"][0]]))
        answered = await asyncio.wait_for(fast, 5)  # while the encoder is still closed
        assert not slow.done()
        gated.gate.set()
        finished = await asyncio.wait_for(slow, 10)
        await batcher.stop()
        assert answered[0].tag in tags.names and finished[0].tag in tags.names

    asyncio.run(scenario())


def test_batched_answers_equal_the_synchronous_path(
    encoder: Encoder, tags: TagSet, shared_result: TrainResult, texts: dict[str, list[str]]
) -> None:
    predictor = _predictor(GatedEncoder(encoder), tags, shared_result)
    requests = [
        [texts["slow"][0]],
        [texts["fast"][0], texts["slow"][1], texts["fast"][1]],
        [texts["fast"][2]],
        texts["slow"][2:6],
        [texts["slow"][0]],
    ] * 3

    async def scenario() -> list[list[tuple[str, float, str]]]:
        batcher = MicroBatcher(predictor, max_items=4, wait_ms=2, threads=2)
        batcher.start()
        answers = await asyncio.gather(*(batcher.predict(r) for r in requests))
        await batcher.stop()
        return [[(s.tag, s.confidence, s.status.value) for s in a] for a in answers]

    expected = [
        [(s.tag, s.confidence, s.status.value) for s in predictor.score(r)] for r in requests
    ]
    assert asyncio.run(scenario()) == expected


def test_encoder_failure_fails_only_its_request(
    encoder: Encoder, tags: TagSet, shared_result: TrainResult, texts: dict[str, list[str]]
) -> None:
    gated = GatedEncoder(encoder)
    gated.broken.add(texts["slow"][0])
    predictor = _predictor(gated, tags, shared_result)

    async def scenario() -> list[object]:
        batcher = MicroBatcher(predictor, max_items=16, wait_ms=20, threads=2)
        batcher.start()
        outcome = await asyncio.gather(
            batcher.predict([texts["slow"][0]]),
            batcher.predict([texts["fast"][0]]),
            batcher.predict([texts["slow"][1]]),
            return_exceptions=True,
        )
        await batcher.stop()
        return outcome

    broken, fast, slow = asyncio.run(scenario())
    assert isinstance(broken, RuntimeError)
    assert isinstance(fast, list) and isinstance(slow, list)


def test_a_model_that_could_answer_an_unapproved_tag_is_never_served(
    encoder: Encoder, tags: TagSet, shared_result: TrainResult
) -> None:
    narrower = TagSet(tuple(t for t in tags.tags if t.name != "mlops"))
    predictor = Predictor(encoder, narrower)
    with pytest.raises(ArtifactError, match=r"predicts unapproved tags \['mlops'\]: refused"):
        predictor.swap(LoadedModel("v-test", shared_result.model))
    assert predictor.current is None
    with pytest.raises(ArtifactError, match="unapproved"):
        predictor.set_shadow(LoadedModel("v-test", shared_result.model))
    assert predictor.shadow is None


def test_no_model_fails_every_waiting_request(encoder: Encoder, tags: TagSet) -> None:
    predictor = Predictor(encoder, tags)

    async def scenario() -> list[object]:
        batcher = MicroBatcher(predictor, max_items=16, wait_ms=5, threads=2)
        batcher.start()
        outcome = await asyncio.gather(
            batcher.predict(["a"]), batcher.predict(["b", "c"]), return_exceptions=True
        )
        await batcher.stop()
        return outcome

    assert all(isinstance(o, UnavailableError) for o in asyncio.run(scenario()))


class RecordingPredictor(Predictor):
    """The real predictor, recording each triage call's texts; triage waits for `gate`, so
    the test decides when the triage thread is free."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.calls: list[list[str]] = []
        self.gate = threading.Event()

    def triage(self, texts: list[str], loaded: LoadedModel | None = None):  # type: ignore[no-untyped-def]
        assert self.gate.wait(10), "the test never opened the gate"
        self.calls.append(list(texts))
        return super().triage(texts, loaded)


def test_small_requests_go_between_the_chunks_of_a_large_one(
    encoder: Encoder, tags: TagSet, shared_result: TrainResult, texts: dict[str, list[str]]
) -> None:
    predictor = RecordingPredictor(encoder, tags)
    predictor.swap(LoadedModel("v-test", shared_result.model))
    pool = texts["fast"] + texts["slow"]
    large, small = pool[:64], [pool[64]]

    async def scenario() -> tuple[list[object], list[object]]:
        batcher = MicroBatcher(predictor, max_items=16, wait_ms=2, threads=2)
        batcher.start()
        big = asyncio.create_task(batcher.predict(large))
        await asyncio.sleep(0.1)  # chunk 1 is in triage (held), chunk 2 gathered behind it
        one = asyncio.create_task(batcher.predict(small))
        await asyncio.sleep(0.1)
        predictor.gate.set()
        answers = await asyncio.wait_for(asyncio.gather(big, one), 30)
        await batcher.stop()
        return answers[0], answers[1]

    big_answer, small_answer = asyncio.run(scenario())
    chunks = [large[i : i + 16] for i in range(0, 64, 16)]
    # Without the lanes, the small request would wait behind all four chunks.
    assert predictor.calls == [chunks[0], chunks[1], small, chunks[2], chunks[3]]
    expected = predictor.score(large)
    assert [(s.tag, s.confidence) for s in big_answer] == [(s.tag, s.confidence) for s in expected]
    assert len(small_answer) == 1


def test_a_large_request_is_answered_by_one_version_across_a_swap(
    encoder: Encoder, tags: TagSet, shared_result: TrainResult, texts: dict[str, list[str]]
) -> None:
    """A promotion while a 6-item request (two chunks of a 4-item batch) waits: both chunks
    are scored by the version that was production when it came. A request that comes after
    the swap gets the new version, and is not batched with the old version's chunk."""
    predictor = RecordingPredictor(encoder, tags)
    predictor.swap(LoadedModel("v-old", shared_result.model))
    pool = texts["fast"] + texts["slow"]
    first, large, small = [pool[70]], pool[:6], [pool[64]]

    async def scenario() -> tuple[list[Scored], list[Scored]]:
        batcher = MicroBatcher(predictor, max_items=4, wait_ms=20, threads=2)
        batcher.start()
        held = asyncio.create_task(batcher.predict(first))
        await asyncio.sleep(0.05)  # in triage, held by the gate
        big = asyncio.create_task(batcher.predict(large))
        await asyncio.sleep(0.05)  # chunk 1 gathered behind it, chunk 2 (2 items) waiting
        predictor.swap(LoadedModel("v-new", shared_result.model))
        one = asyncio.create_task(batcher.predict(small))
        await asyncio.sleep(0.05)
        predictor.gate.set()
        answers = await asyncio.wait_for(asyncio.gather(big, one, held), 30)
        await batcher.stop()
        return answers[0], answers[1]

    big_answer, small_answer = asyncio.run(scenario())
    assert [s.model_version for s in big_answer] == ["v-old"] * 6
    assert [s.model_version for s in small_answer] == ["v-new"]
    # The small request had room for the 2-item chunk, but not its model.
    assert predictor.calls == [first, large[:4], small, large[4:]]


def test_requests_beyond_the_waiting_bound_are_refused_until_it_clears(
    encoder: Encoder, tags: TagSet, shared_result: TrainResult, texts: dict[str, list[str]]
) -> None:
    """Admission: a request is refused when more than `max_waiting` items would be ahead of it
    or with it. Small requests count only the small lane, so large ones never refuse them."""
    gated = GatedEncoder(encoder, open_=False)  # encodes wait: admitted items stay waiting
    predictor = _predictor(gated, tags, shared_result)
    slow = texts["slow"]

    async def scenario() -> tuple[list[object], list[object], list[object], int, int]:
        batcher = MicroBatcher(predictor, max_items=16, wait_ms=2, threads=2, max_waiting=20)
        batcher.start()
        large = [asyncio.create_task(batcher.predict(slow[i : i + 18])) for i in (0, 18)]
        singles = [asyncio.create_task(batcher.predict([t])) for t in slow[36:57]]
        await asyncio.sleep(0.2)
        refused = sum(t.done() for t in large + singles)
        gated.gate.set()
        first = await asyncio.gather(*large, *singles, return_exceptions=True)
        after = await asyncio.gather(batcher.predict(slow[:18]), return_exceptions=True)
        stats = batcher.stats
        await batcher.stop()
        return first[:2], first[2:], after, refused, stats.refused_items

    large, singles, after, refused, refused_items = asyncio.run(scenario())
    # The second large request would have had 18 + 18 items > 20 ahead of or with it.
    assert isinstance(large[0], list) and isinstance(large[1], OverloadedError)
    assert "18 items are waiting" in str(large[1])
    # Singles count only singles: 20 fit beside the waiting large request, the 21st does not.
    assert [isinstance(s, list) for s in singles] == [True] * 20 + [False]
    assert isinstance(singles[-1], OverloadedError)
    assert refused == 2  # refused at once, while everything else still waited
    assert isinstance(after[0], list) and refused_items == 18 + 1  # cleared: admitted again


def test_a_request_that_finds_the_service_idle_does_not_wait_out_the_window(
    encoder: Encoder, tags: TagSet, shared_result: TrainResult, texts: dict[str, list[str]]
) -> None:
    predictor = _predictor(GatedEncoder(encoder), tags, shared_result)

    async def scenario() -> list[object]:
        # A 60 s window: waiting it out would fail the 10 s bound below.
        batcher = MicroBatcher(predictor, max_items=16, wait_ms=60_000, threads=2)
        batcher.start()
        answers = [await asyncio.wait_for(batcher.predict([t]), 10) for t in texts["fast"][:3]]
        answers.append(await asyncio.wait_for(batcher.predict(texts["slow"][:2]), 10))
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert [len(a) for a in answers] == [1, 1, 1, 2]


def test_while_others_are_scored_a_request_waits_for_batch_mates(
    encoder: Encoder, tags: TagSet, shared_result: TrainResult, texts: dict[str, list[str]]
) -> None:
    """The window is for load: with a request in flight, the next one waits up to `wait_ms`
    for company, and one arriving in that time joins its batch."""
    predictor = RecordingPredictor(GatedEncoder(encoder, open_=False), tags)
    predictor.swap(LoadedModel("v-test", shared_result.model))
    predictor.gate.set()  # triage runs freely; the encoder is closed
    slow, fast = texts["slow"][0], texts["fast"][:2]

    async def scenario() -> None:
        batcher = MicroBatcher(predictor, max_items=16, wait_ms=2_000, threads=2)
        batcher.start()
        held = asyncio.create_task(batcher.predict([slow]))  # in flight: its encode waits
        await asyncio.sleep(0.2)
        first = asyncio.create_task(batcher.predict([fast[0]]))
        await asyncio.sleep(0.2)  # well inside the window
        second = asyncio.create_task(batcher.predict([fast[1]]))
        answers = await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert not held.done() and all(len(a) == 1 for a in answers)
        predictor.encoder.gate.set()
        await asyncio.wait_for(held, 10)
        await batcher.stop()

    asyncio.run(scenario())
    assert predictor.calls == [[slow], fast]


def test_after_a_batch_of_several_the_next_request_waits_for_its_callers(
    encoder: Encoder, tags: TagSet, shared_result: TrainResult, texts: dict[str, list[str]]
) -> None:
    """Callers answered together send again together: the first to come back, finding the
    service idle, still waits for the others rather than being triaged alone."""
    predictor = RecordingPredictor(encoder, tags)
    predictor.swap(LoadedModel("v-test", shared_result.model))
    predictor.gate.set()
    together, first, second = texts["fast"][:3], texts["fast"][3], texts["fast"][4]

    async def scenario() -> None:
        batcher = MicroBatcher(predictor, max_items=16, wait_ms=2_000, threads=2)
        batcher.start()
        await asyncio.wait_for(asyncio.gather(*(batcher.predict([t]) for t in together)), 10)
        back = asyncio.create_task(batcher.predict([first]))
        await asyncio.sleep(0.2)  # well inside the window
        await asyncio.wait_for(asyncio.gather(back, batcher.predict([second])), 10)
        await batcher.stop()

    asyncio.run(scenario())
    assert predictor.calls == [together, [first, second]]


def test_callers_arriving_rarely_are_not_kept_waiting_even_under_load(
    encoder: Encoder, tags: TagSet, shared_result: TrainResult, texts: dict[str, list[str]]
) -> None:
    """Independent callers (an open loop) at a low rate: a request in flight says nothing
    about the next arrival, so with arrivals rarer than three windows apart no one waits."""
    predictor = RecordingPredictor(GatedEncoder(encoder, open_=False), tags)
    predictor.swap(LoadedModel("v-test", shared_result.model))
    predictor.gate.set()
    slow, fast = texts["slow"][0], texts["fast"][:2]

    async def scenario() -> None:
        batcher = MicroBatcher(predictor, max_items=16, wait_ms=100, threads=2)
        batcher.start()
        held = asyncio.create_task(batcher.predict([slow]))  # in flight: its encode waits
        await asyncio.sleep(0.5)  # arrivals 0.5 s apart, against a 0.1 s window
        first = asyncio.create_task(batcher.predict([fast[0]]))
        await asyncio.sleep(0.05)  # inside the window, had it opened
        second = asyncio.create_task(batcher.predict([fast[1]]))
        await asyncio.wait_for(asyncio.gather(first, second), 10)
        predictor.encoder.gate.set()
        await asyncio.wait_for(held, 10)
        await batcher.stop()

    asyncio.run(scenario())
    assert predictor.calls == [[slow], [fast[0]], [fast[1]]]


def test_scoring_cpu_is_counted_by_stage(
    encoder: Encoder, tags: TagSet, shared_result: TrainResult, texts: dict[str, list[str]]
) -> None:
    """Triage CPU for every batch; encoder CPU only for the items the fast path leaves, at an
    encode's cost (texts no test has encoded before, so the embedding cache cannot answer)."""
    predictor = _predictor(GatedEncoder(encoder), tags, shared_result)
    probe = [f"{t} (cpu probe)" for t in texts["slow"][:4]]
    slow = [t for t, f in zip(probe, shared_result.model.fast_mask(probe), strict=True) if not f]
    assert slow

    async def scenario() -> tuple[tuple[float, float], BatchStats]:
        batcher = MicroBatcher(predictor, max_items=4, wait_ms=0, threads=2)
        batcher.start()
        await batcher.predict(texts["fast"][:3])
        settled = (batcher.stats.triage_cpu_s, batcher.stats.encode_cpu_s)
        await batcher.predict(slow)
        await batcher.stop()
        return settled, batcher.stats

    (triage_cpu, encode_cpu), stats = asyncio.run(scenario())
    assert triage_cpu > 0
    assert encode_cpu == 0
    assert stats.encoded == len(slow)
    assert stats.triage_cpu_s > triage_cpu
    # MiniLM costs milliseconds of CPU per item on any machine we had; a cache hit, microseconds.
    assert stats.encode_cpu_s / len(slow) > 0.0005


def test_status_agrees_with_the_confidence_answered_at_the_cut(
    encoder: Encoder, tags: TagSet, shared_result: TrainResult, texts: dict[str, list[str]]
) -> None:
    """A cut between an item's exact confidence and the 6-place one it is answered (and
    logged, and audited) with: the status follows the answered one, for an item the fast path
    settles and one it encodes, through the batcher as /predict and /predict/batch score."""
    predictor = Predictor(GatedEncoder(encoder), tags)  # type: ignore[arg-type]

    async def scenario(batch: list[str]) -> list[Scored]:
        batcher = MicroBatcher(predictor, max_items=4, wait_ms=0, threads=2)
        batcher.start()
        scored = await batcher.predict(batch)
        await batcher.stop()
        return scored

    for text in (texts["fast"][0], texts["slow"][0]):
        triage = predictor.triage([text], LoadedModel("v-exact", shared_result.model))
        predictor.finish(triage, triage.unsettled)
        exact = float(triage.proba[0].max())
        answered = round(exact, 6)
        assert exact != answered
        for cut in (answered, (exact + answered) / 2):
            predictor.swap(LoadedModel("v-cut", shared_result.model, threshold=cut))
            for scored in asyncio.run(scenario([text, text])):
                assert scored.confidence == answered
                expected = "auto" if answered >= cut else "review"
                assert scored.status.value == expected, (exact, answered, cut)
