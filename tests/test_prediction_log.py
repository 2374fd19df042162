"""Write-behind logging loses nothing: not on shutdown, not when the database fails a flush."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from service.entities import OutboxItem, Prediction, PredictionStatus
from service.entities.common import new_id
from service.prediction_log import PredictionLog
from tests.conftest import make_prediction


def _count(engine: Engine, table: type) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(table)).one()


def test_close_flushes_everything(engine: Engine) -> None:
    log = PredictionLog(engine, interval_s=60, batch_size=7)

    async def scenario() -> None:
        log.start()
        for _ in range(50):
            log.record(make_prediction(new_id()))
        log.record(make_prediction(new_id(), status=PredictionStatus.REVIEW))
        await log.close()

    asyncio.run(scenario())
    assert _count(engine, Prediction) == 51
    assert _count(engine, OutboxItem) == 1  # the review one, in the same transaction


def test_failed_flush_keeps_rows_for_the_next_try(engine: Engine) -> None:
    log = PredictionLog(engine, interval_s=60, batch_size=100)
    first, clash = make_prediction(new_id()), make_prediction(new_id())
    clash.id = first.id  # a primary-key clash makes the whole batch fail
    log.record(first)
    log.record(clash)
    try:
        log.flush()
    except Exception:
        pass
    else:
        raise AssertionError("the clashing batch should have failed")
    assert log.failures == 1 and _count(engine, Prediction) == 0
    assert log.pending(first.id) is not None  # kept, not dropped
    log._buffer.pop()  # remove the clash (a test-only repair), then the retry succeeds
    assert log.flush() == 1
    assert _count(engine, Prediction) == 1
