"""Write-behind logging loses nothing: not on shutdown, not in an outage (rows wait for the next
try), and a row the database refuses neither blocks the others nor vanishes (dead letter)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, func, select

from service.db import is_outage, make_engine
from service.entities import (
    OutboxItem,
    Prediction,
    PredictionCreate,
    PredictionStatus,
    ShadowPrediction,
)
from service.entities.common import id_made_at, new_id
from service.jsonl_files import append_lines, lock_replay
from service.prediction_log import PredictionLog
from tests.conftest import POSTGRES_URL, _reset_postgres, auth, make_prediction
from tests.freezable_proxy import FreezableProxy
from tests.waiting import wait_until


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


def _unreachable(engine: Engine) -> Engine:
    """An engine of the same kind whose database cannot be reached: a real outage."""
    if engine.dialect.name == "sqlite":
        return make_engine("sqlite:////nonexistent-dir/tagflow.db")
    return make_engine("postgresql+psycopg://postgres@127.0.0.1:1/test")


def test_an_outage_keeps_rows_for_the_next_try(engine: Engine) -> None:
    log = PredictionLog(_unreachable(engine), interval_s=60, batch_size=2)
    rows = [make_prediction(new_id()) for _ in range(3)]
    for row in rows:
        log.record(row)
    with pytest.raises(OperationalError):
        log.flush()
    assert log.failures == 1 and log.dead_lettered == 0
    assert all(log.pending(row.id) is not None for row in rows)  # kept, not dropped
    log.engine = engine  # the database is back
    assert log.flush() == 3
    assert _count(engine, Prediction) == 3


def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_flow(
    engine: Engine, tmp_path: Path
) -> None:
    """A value no database can store and a duplicate id: refused alone, written to the
    dead-letter file, while the rows around them (and their shadow scores) are written."""
    dead = tmp_path / "dead-letter" / "predictions.jsonl"
    log = PredictionLog(engine, interval_s=60, batch_size=100, dead_letter=dead)
    good, bad, after = (make_prediction(new_id()) for _ in range(3))
    bad.title = "lone \ud800 surrogate"
    clash = make_prediction(new_id())
    clash.id = good.id
    for row in (good, bad, clash, after):
        log.record(row)
        if row is clash:
            continue  # its shadow could not be told from the first row's: same id
        log.record_shadow(
            ShadowPrediction(
                prediction_id=row.id, model_version="v2", tag=row.tag, confidence=0.5, agrees=True
            )
        )
    assert log.flush() == 2
    assert (log.dead_lettered, log.failures, log.buffered) == (2, 0, 0)
    with Session(engine) as session:
        assert set(session.exec(select(Prediction.id))) == {good.id, after.id}
        assert _count(engine, ShadowPrediction) == 2
    lines = [json.loads(line) for line in dead.read_text().splitlines()]
    assert [line["prediction"]["id"] for line in lines] == [bad.id, clash.id]
    assert lines[0]["prediction"]["title"] == bad.title  # kept as sent, escaped in the file
    assert [len(line["shadows"]) for line in lines] == [1, 0]
    assert "UNIQUE" in lines[1]["error"] or "unique" in lines[1]["error"]
    log.record(make_prediction(new_id()))  # nothing is held back behind them
    assert log.flush() == 1 and _count(engine, Prediction) == 3


@pytest.fixture
def proxied_postgres() -> Iterator[tuple[Engine, Engine, FreezableProxy]]:
    """An engine to the test PostgreSQL database (emptied) through a `FreezableProxy`, and one
    straight to it, to see what the server has."""
    direct = _reset_postgres(POSTGRES_URL)
    url = make_url(POSTGRES_URL)
    proxy = FreezableProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = make_engine(
        url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    )
    yield proxied, direct, proxy
    proxied.dispose()
    direct.dispose()
    proxy.close()


def test_rows_whose_commit_answer_was_lost_are_written_once_not_dead_lettered(
    proxied_postgres: tuple[Engine, Engine, FreezableProxy], tmp_path: Path
) -> None:
    """PostgreSQL took a flush's COMMIT and the connection was lost before its answer (a QA
    chaos run's `pg_ctlcluster restart -m immediate` under load): the rows are stored, but the
    log saw an outage and kept them. The next flush's batch, those rows and the ones answered
    since, was refused for their duplicate ids, written row by row, and the stored rows were
    dead-lettered with an ERROR each (3 in that run), waiting to be replayed and raising
    `tagflow_prediction_log_dead_letters_waiting`, though nothing was lost. Now they are
    found stored and counted written, and the rest go as a batch. PostgreSQL only: a SQLite
    commit has no answer to lose."""
    proxied, direct, proxy = proxied_postgres
    dead = tmp_path / "dead-letter" / "predictions.jsonl"
    log = PredictionLog(proxied, interval_s=60, batch_size=100, dead_letter=dead)
    stored = [make_prediction(new_id(), status=PredictionStatus.REVIEW) for _ in range(3)]
    for row in stored:
        log.record(row)
    log.record_shadow(_shadow(stored[0].id))
    proxy.lose_commit_answer.set()
    with pytest.raises(OperationalError) as lost:
        log.flush()
    assert is_outage(lost.value)
    assert log.buffered == 3  # kept: the log cannot tell that the commit took effect
    assert _count(direct, Prediction) == 3  # it did
    since = [make_prediction(new_id(), status=PredictionStatus.REVIEW) for _ in range(2)]
    for row in since:
        log.record(row)
    assert log.flush() == 5
    assert (log.dead_lettered, log.buffered, log.written) == (0, 0, 5)
    assert not dead.exists()
    with Session(direct) as session:
        assert set(session.exec(select(Prediction.id))) == {r.id for r in stored + since}
        outbox = session.exec(select(OutboxItem.payload)).all()
    assert sorted(p["prediction_id"] for p in outbox) == sorted(r.id for r in stored + since)
    assert _count(direct, ShadowPrediction) == 1


def test_a_batch_a_hung_flush_holds_counts_as_unwritten(
    proxied_postgres: tuple[Engine, Engine, FreezableProxy],
) -> None:
    """A flush waiting on a database that hangs holds its batch out of the buffer (up to the
    read bound): `unwritten_since`, which other API processes are told of
    (`service.unwritten`), counts those rows too; and so does `buffered`, the gauge
    tagflow_prediction_log_buffered, which counted the buffer alone: a scrape during a flush
    (seconds, with the database slow or hung) under-reported what was not stored."""
    proxied, direct, proxy = proxied_postgres
    log = PredictionLog(proxied, interval_s=60, batch_size=1)
    log.record(make_prediction(new_id()))
    assert log.flush() == 1 and log.unwritten_since() is None  # a connection in the pool
    row, behind = make_prediction(new_id()), make_prediction(new_id())
    log.record(row)
    log.record(behind)
    proxy.thawed.clear()
    flushing = threading.Thread(target=log.flush, daemon=True)
    flushing.start()
    try:
        wait_until(lambda: log.pending(row.id) is None, what="the flush taking the first batch")
        assert log.unwritten_since() == id_made_at(row.id)
        assert log.buffered == 2  # the row being written, and the one behind it
    finally:
        proxy.thawed.set()
    flushing.join(60)
    assert log.written == 3 and log.unwritten_since() is None and log.buffered == 0
    assert _count(direct, Prediction) == 3


def _shadow(prediction_id: str) -> ShadowPrediction:
    return ShadowPrediction(
        prediction_id=prediction_id, model_version="v2", tag="mlops", confidence=0.4, agrees=False
    )


def _spill_in_an_outage(
    engine: Engine, spill: Path, rows: list[PredictionCreate], shadows: list[ShadowPrediction]
) -> None:
    """Log `rows` and `shadows` while the database is unreachable, then shut down: no exception,
    and everything is in the spill file."""
    down = PredictionLog(_unreachable(engine), interval_s=60, batch_size=10, spill=spill)
    for row in rows:
        down.record(row)
    for shadow in shadows:
        down.record_shadow(shadow)
    asyncio.run(down.close())
    assert down.buffered == 0


def test_an_outage_at_shutdown_spills_and_the_next_start_writes_it(
    engine: Engine, tmp_path: Path
) -> None:
    spill = tmp_path / "spill" / "predictions.jsonl"
    rows = [make_prediction(new_id()) for _ in range(3)]
    _spill_in_an_outage(engine, spill, rows, [_shadow(rows[0].id)])
    assert len(spill.read_text().splitlines()) == 4

    up = PredictionLog(engine, interval_s=60, batch_size=10, spill=spill)
    assert up.take_back_spill() == 3
    assert not spill.exists() and up.pending(rows[1].id) is not None
    assert up.flush() == 3
    with Session(engine) as session:
        assert set(session.exec(select(Prediction.id))) == {r.id for r in rows}
        assert _count(engine, ShadowPrediction) == 1
    assert list(spill.parent.iterdir()) == []  # the replay file goes once written
    assert PredictionLog(engine, interval_s=60, batch_size=10, spill=spill).take_back_spill() == 0


def test_a_replay_cut_short_is_finished_without_duplicates(engine: Engine, tmp_path: Path) -> None:
    """The process died after writing part of the replay: the next start writes only the rest,
    so nothing is dead-lettered as a duplicate and no shadow score is stored twice."""
    spill = tmp_path / "spill" / "predictions.jsonl"
    rows = [make_prediction(new_id()) for _ in range(4)]
    _spill_in_an_outage(engine, spill, rows, [_shadow(r.id) for r in rows])
    cut_short = PredictionLog(engine, interval_s=60, batch_size=2, spill=spill)
    assert cut_short.take_back_spill() == 4
    # What its first flush writes (the first rows and their shadow scores) ...
    cut_short._save(rows[:2], [_shadow(r.id) for r in rows[:2]])
    cut_short._release_replay()  # ... and then the process dies: the kernel lets go of the lock

    dead = tmp_path / "dead-letter" / "predictions.jsonl"
    up = PredictionLog(engine, interval_s=60, batch_size=10, spill=spill, dead_letter=dead)
    assert up.take_back_spill() == 4  # the file's rows, two of them written already
    assert up.flush() == 2
    assert up.dead_lettered == 0 and not dead.exists()
    with Session(engine) as session:
        assert set(session.exec(select(Prediction.id))) == {r.id for r in rows}
    assert _count(engine, ShadowPrediction) == 4
    assert list(spill.parent.iterdir()) == []


def test_api_processes_starting_together_write_back_a_spill_once(
    engine: Engine, tmp_path: Path
) -> None:
    """API processes sharing a data directory start together (a deploy, a host reboot) after
    one of them spilled: one takes the spill file back and the other leaves it to it, so no
    row is written twice, none is dead-lettered as a duplicate and no shadow score doubles."""
    spill = tmp_path / "spill" / "predictions.jsonl"
    rows = [make_prediction(new_id()) for _ in range(3)]
    _spill_in_an_outage(engine, spill, rows, [_shadow(rows[0].id)])
    dead = tmp_path / "dead-letter" / "predictions.jsonl"
    first, second = (
        PredictionLog(engine, interval_s=60, batch_size=10, spill=spill, dead_letter=dead)
        for _ in range(2)
    )
    assert first.take_back_spill() == 3
    assert second.take_back_spill() == 0
    assert (first.flush(), second.flush()) == (3, 0)
    assert first.dead_lettered == second.dead_lettered == 0 and not dead.exists()
    assert _count(engine, Prediction) == 3 and _count(engine, ShadowPrediction) == 1
    assert list(spill.parent.iterdir()) == []
    # Once the first has written it back, a later start finds nothing left to take.
    assert PredictionLog(engine, interval_s=60, batch_size=10, spill=spill).take_back_spill() == 0


def test_without_a_spill_file_a_failed_final_flush_raises(engine: Engine) -> None:
    down = PredictionLog(_unreachable(engine), interval_s=60, batch_size=10)
    down.record(make_prediction(new_id()))
    with pytest.raises(OperationalError):
        asyncio.run(down.close())


def test_an_outage_is_a_line_when_it_starts_and_one_when_it_ends(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """The flush loop logged a traceback at every interval of an outage (75 tracebacks, over
    4,000 lines, in 9 s of PostgreSQL away in the QA pass): now one line, no traceback, then
    one when the rows are written."""
    log = PredictionLog(_unreachable(engine), interval_s=0.01, batch_size=50)
    rows = [make_prediction(new_id()) for _ in range(3)]

    async def scenario() -> None:
        log.start()
        for row in rows:
            log.record(row)
        while log.failures < 20:  # 20 failed flushes: far more than one a minute
            await asyncio.sleep(0.01)
        log.engine = engine  # the database is back
        # Until the loop has said so: the buffer empties while the flush still runs, and a
        # close then would cancel the loop before it logs the recovery.
        deadline = time.monotonic() + 10
        while not any("works again" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the recovery was never logged"
            await asyncio.sleep(0.01)
        await log.close()

    with caplog.at_level(logging.INFO, logger="service.prediction_log"):
        asyncio.run(scenario())
    said = [(r.levelname, r.getMessage(), r.exc_info) for r in caplog.records]
    assert len(said) == 2, said
    (level, failed, tb), (back_level, back, _) = said
    assert level == "ERROR" and tb is None
    assert failed.startswith("prediction log flush failed: OperationalError")
    assert failed.endswith("; 3 rows kept for retry")
    assert back_level == "INFO" and back.startswith("prediction log flush works again after")
    assert back.endswith("failed rounds; 3 rows written")
    assert _count(engine, Prediction) == 3


def _outbox_order(engine: Engine) -> list[str]:
    """The prediction ids of the outbox rows, in the order they were written."""
    with Session(engine) as session:
        items = session.exec(select(OutboxItem).order_by(col(OutboxItem.id))).all()
    return [item.payload["prediction_id"] for item in items]


def _review(n: int) -> list[PredictionCreate]:
    """Review predictions: each writes an outbox row, whose id shows the order of writing."""
    return [make_prediction(new_id(), status=PredictionStatus.REVIEW) for _ in range(n)]


def test_a_long_outage_moves_the_oldest_rows_to_disk_and_writes_them_back_in_order(
    engine: Engine, tmp_path: Path
) -> None:
    """While the database is away, memory holds at most `max_buffered` rows: the oldest go to
    the spill file (without a bound, an hour at 300 req/s was 2-3 GB, lost to an OOM kill).
    Once it answers, every row is written once, the spilled ones oldest first (a few batches
    a flush, beside the rows in memory, which are not held back behind a long write-back)."""
    spill = tmp_path / "spill" / "predictions.jsonl"
    dead = tmp_path / "dead-letter" / "predictions.jsonl"
    log = PredictionLog(
        _unreachable(engine),
        interval_s=60,
        batch_size=10,
        spill=spill,
        dead_letter=dead,
        max_buffered=10,
    )
    rows = _review(35)
    for row in rows[:25]:
        log.record(row)
        log.record_shadow(_shadow(row.id))
    with pytest.raises(OperationalError):
        log.flush()
    assert (log.buffered, log.spilled) == (5, 20)  # down to half the bound, the oldest out
    assert len(spill.read_text().splitlines()) == 20 + 25  # and every shadow score
    assert log.pending(rows[0].id) is not None and log.pending(rows[24].id) is not None
    for row in rows[25:]:
        log.record(row)
    with pytest.raises(OperationalError):  # the write-back is tried first, and fails too
        log.flush()
    assert (log.buffered, log.spilled, log.failures) == (5, 30, 2)

    log.engine = engine  # the database is back
    written = 0
    while log.buffered or spill.exists() or log._replaying is not None:
        written += log.flush()
    assert written == 35 and log.dead_lettered == 0 and not dead.exists()
    order = _outbox_order(engine)
    assert sorted(order) == sorted(r.id for r in rows)  # each once
    assert [i for i in order if i in {r.id for r in rows[:30]}] == [r.id for r in rows[:30]]
    assert _count(engine, ShadowPrediction) == 25
    assert list(spill.parent.iterdir()) == []


def test_rows_one_process_spills_are_written_back_once_by_another(
    engine: Engine, tmp_path: Path
) -> None:
    """API processes share the data directory's spill file: a process whose database is away
    spills, another that reaches it writes those rows back (holding the replay lock), and
    neither writes a row twice."""
    spill = tmp_path / "spill" / "predictions.jsonl"
    dead = tmp_path / "dead-letter" / "predictions.jsonl"
    cut_off = PredictionLog(
        _unreachable(engine), interval_s=60, batch_size=5, spill=spill, max_buffered=4
    )
    rows = _review(12)
    for row in rows[:10]:
        cut_off.record(row)
    with pytest.raises(OperationalError):
        cut_off.flush()
    assert (cut_off.buffered, cut_off.spilled) == (2, 8)
    other = PredictionLog(engine, interval_s=60, batch_size=5, spill=spill, dead_letter=dead)
    other.record(rows[10])
    assert other.flush() == 9  # the spilled rows, oldest first, then its own
    cut_off.engine = engine
    cut_off.record(rows[11])
    assert cut_off.flush() == 3  # its buffer only: the spilled rows are written
    assert _outbox_order(engine) == [r.id for r in rows[:8] + rows[10:11] + rows[8:10] + rows[11:]]
    assert other.dead_lettered == cut_off.dead_lettered == 0 and not dead.exists()
    assert list(spill.parent.iterdir()) == []


def test_a_prediction_still_spilled_is_a_503_to_retry_not_a_404(
    sqlite_client: TestClient,
) -> None:
    """After an outage, spilled predictions are written back a few batches a flush (here by
    another API process, which holds the spill's replay lock): until one is, looking it up
    says to retry, where it said 404, as for an id never answered."""
    state = sqlite_client.app.state.tagflow  # type: ignore[attr-defined]
    spill = state.settings.spill_path
    row = make_prediction("answered while the database was away")
    row.id = f"{int((time.time() - 3600) * 1000):012x}{row.id[12:]}"  # an hour ago: no wait
    append_lines(spill, [{"prediction": row.model_dump(mode="json")}])
    other_process = lock_replay(spill)
    assert other_process is not None
    try:
        waiting = sqlite_client.get(f"/predictions/{row.id}", headers=auth("client"))
    finally:
        other_process.close()
    assert waiting.status_code == 503, waiting.text
    assert "still being written" in waiting.json()["detail"]
    assert sqlite_client.get(f"/predictions/{row.id}", headers=auth("client")).status_code == 200
    assert not state.log.writing_back
    unknown = f"{row.id[:12]}{'0' * 20}"
    assert sqlite_client.get(f"/predictions/{unknown}", headers=auth("client")).status_code == 404


def test_a_spill_file_that_cannot_be_written_keeps_the_rows_in_memory(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A spill the disk refuses (here its directory is a file) loses no row: they stay in
    memory, and the refusal is one line, not one per flush (four a second)."""
    (tmp_path / "spill").write_text("not a directory")
    spill = tmp_path / "spill" / "predictions.jsonl"
    log = PredictionLog(
        _unreachable(engine), interval_s=60, batch_size=10, spill=spill, max_buffered=4
    )
    rows = [make_prediction(new_id()) for _ in range(10)]
    for row in rows:
        log.record(row)
    with caplog.at_level(logging.ERROR, logger="service.prediction_log"):
        for _ in range(3):
            with pytest.raises(OperationalError):
                log.flush()
    assert (log.buffered, log.spilled) == (10, 0)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(f"prediction log: cannot spill to {spill}: ")
    log.engine = engine
    assert log.flush() == 10 and _count(engine, Prediction) == 10


def test_a_stop_during_the_write_back_leaves_the_rest_to_another_process(
    engine: Engine, tmp_path: Path
) -> None:
    """The write-back goes a few batches a flush: a process that stops halfway lets go of the
    spill, and another process writes the rest, skipping what was written (not dead-lettered
    as duplicates)."""
    spill = tmp_path / "spill" / "predictions.jsonl"
    dead = tmp_path / "dead-letter" / "predictions.jsonl"
    rows = _review(50)
    _spill_in_an_outage(engine, spill, rows, [])
    stopping = PredictionLog(engine, interval_s=60, batch_size=5, spill=spill, dead_letter=dead)
    assert stopping.take_back_spill() == 50
    assert stopping.flush() == 20  # 4 batches of 5 a flush
    asyncio.run(stopping.close())  # its last flush writes 4 more, then it lets go
    assert _count(engine, Prediction) == 40 and stopping.writing_back
    other = PredictionLog(engine, interval_s=60, batch_size=5, spill=spill, dead_letter=dead)
    assert other.flush() == 10
    assert other.dead_lettered == 0 and not dead.exists() and not other.writing_back
    assert _outbox_order(engine) == [r.id for r in rows]
