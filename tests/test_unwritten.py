"""What an API process tells the others, through Redis, of the predictions it holds unwritten:
an entry while its rows are late, none once they are written or once it is gone."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import redis

from service.db import make_engine
from service.entities.common import id_made_at, new_id
from service.prediction_log import PredictionLog
from service.unwritten import (
    KEY,
    LATE_S,
    RENEW_S,
    TTL_S,
    Announcer,
    held_since,
    late_since,
    may_be_held,
    update_quietly,
)
from tests.conftest import make_prediction


def test_an_entry_while_rows_are_late_and_none_once_written(redis_conn: redis.Redis) -> None:
    first, second = Announcer(redis_conn), Announcer(redis_conn)
    now = time.time()
    assert held_since(redis_conn, now=now) is None
    assert not may_be_held(redis_conn, made=now)
    first.update(100.5, now=now)
    second.update(90.25, now=now)
    assert held_since(redis_conn, now=now) == 90.25  # the oldest of all processes'
    assert may_be_held(redis_conn, made=90.25) and may_be_held(redis_conn, made=95.0)
    assert not may_be_held(redis_conn, made=90.24)  # made before anything held: unknown
    second.update(None, now=now)
    assert held_since(redis_conn, now=now) == 100.5
    first.update(None, now=now)
    assert held_since(redis_conn, now=now) is None and not redis_conn.exists(KEY)


def test_redis_is_asked_only_when_the_entry_changes_or_is_due_for_renewal(
    redis_conn: redis.Redis,
) -> None:
    """`due` says what `update` would do, so the announce loop skips its thread hop four times
    a second when there is nothing to say."""
    announcer, now = Announcer(redis_conn), time.time()
    assert not announcer.due(None, now=now)  # nothing late, nothing said
    assert announcer.due(100.5, now=now) and announcer.update(100.5, now=now)
    assert not announcer.due(100.5, now=now + RENEW_S / 2)
    assert not announcer.update(100.5, now=now + RENEW_S / 2)
    assert announcer.due(100.5, now=now + RENEW_S)  # renew before the entry lapses
    assert announcer.due(99.0, now=now + 0.1)  # an older row is late now
    assert announcer.due(None, now=now + 0.1) and announcer.update(None, now=now + 0.1)
    assert not announcer.due(None, now=now + 0.2) and not redis_conn.exists(KEY)


def test_the_entry_of_a_process_killed_outright_lapses(redis_conn: redis.Redis) -> None:
    """A process killed with late rows never removes its entry: it lapses TTL_S after its last
    renewal, and the first reader after that drops it."""
    gone, alive = Announcer(redis_conn), Announcer(redis_conn)
    now = time.time()
    gone.update(50.0, now=now)
    alive.update(80.0, now=now + TTL_S)  # renewed later
    assert held_since(redis_conn, now=now + TTL_S - 1) == 50.0
    assert held_since(redis_conn, now=now + TTL_S + 1) == 80.0
    assert redis_conn.hkeys(KEY) == [alive.field.encode()]


def test_redis_away_cannot_tell_so_it_may_be_held() -> None:
    away = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    assert may_be_held(away, made=time.time())


def test_a_redis_outage_is_logged_once_and_its_end_only_once_redis_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A round with nothing to tell Redis asks it nothing: it is no sign that Redis is back
    (in a QA run with Redis frozen, such rounds logged "works again", then "failed" again)."""
    away = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    announcer = Announcer(away)
    with caplog.at_level(logging.INFO, logger="service.unwritten"):
        update_quietly(announcer, 5.0)
        update_quietly(announcer, None)  # nothing said yet: nothing to take back
        update_quietly(announcer, 6.0)
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert announcer.failures.count == 2


def test_a_row_is_late_past_its_flush_interval(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'tagflow.db'}")
    log = PredictionLog(engine, interval_s=0.1, batch_size=10)
    assert log.unwritten_since() is None
    row = make_prediction(new_id())
    log.record(row)
    made = id_made_at(row.id)
    assert made is not None and log.unwritten_since() == made
    assert late_since(log, now=made + 0.1) is None  # within its flush interval
    assert late_since(log, now=made + 0.1 + LATE_S + 0.01) == made
    engine.dispose()
