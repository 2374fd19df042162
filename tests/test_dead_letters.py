"""Redriving the dead-letter file: what the database takes now is written (with its shadow
scores and its review task's outbox row), what it still refuses stays in the file with the new
reason, a replay cut short is finished without duplicates, and an outage keeps every line."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, select
from typer.testing import CliRunner

from service.cli import app
from service.dead_letters import WaitingCount, replay_dead_letters
from service.entities import OutboxItem, Prediction, PredictionStatus, ShadowPrediction
from service.jsonl_files import append_lines
from service.prediction_log import PredictionLog
from tests.conftest import make_prediction
from tests.test_metrics import scrape, total
from tests.test_prediction_log import _count, _shadow, _unreachable


def _dead_letters(engine: Engine, path: Path) -> dict[str, str]:
    """Four dead letters as the log writes them, by what a replay should do with each:
    a row refused for a cause since fixed, one a cut-short replay wrote already, one whose id
    another prediction has, and a line nobody can read."""
    log = PredictionLog(engine, interval_s=60, batch_size=10, dead_letter=path)
    fixed = make_prediction("refused then", status=PredictionStatus.REVIEW)
    written, clash = make_prediction("written before"), make_prediction("a clash")
    log.record(written)
    log.flush()
    clash.id = written.id
    refusal = IntegrityError("INSERT", {}, Exception("value too long"))
    log._dead_letter(fixed, [_shadow(fixed.id)], refusal)
    log._dead_letter(written, [], refusal)
    log._dead_letter(clash, [], refusal)
    append_lines(path, ["{not json"])
    return {"fixed": fixed.id, "written": written.id, "clash": clash.id}


def test_a_replay_writes_what_the_database_takes_now(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "dead-letter" / "predictions.jsonl"
    ids = _dead_letters(engine, path)
    report = replay_dead_letters(engine, path)
    assert (report.written, report.already_there, report.kept) == (1, 1, 2)
    with Session(engine) as session:
        assert set(session.exec(select(Prediction.id))) == {ids["fixed"], ids["written"]}
        assert session.exec(select(ShadowPrediction.prediction_id)).all() == [ids["fixed"]]
    assert _count(engine, OutboxItem) == 1  # the review row goes to the queue as it would have
    kept = path.read_text().splitlines()
    assert kept[1] == "{not json"
    assert json.loads(kept[0])["prediction"]["title"] == "a clash"
    assert (
        json.loads(kept[0])["error"] == f"ValueError: another prediction has the id {ids['clash']}"
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["predictions.jsonl"]
    again = replay_dead_letters(engine, path)  # what is kept stays kept, and no more
    assert (again.written, again.already_there, again.kept) == (0, 0, 2)


def test_a_line_that_is_not_utf8_is_kept_and_the_others_replayed(
    engine: Engine, tmp_path: Path
) -> None:
    """A byte that is not UTF-8 in the file (a line fixed by hand in a Latin-1 editor) was a
    UnicodeDecodeError traceback before any line was tried, at every replay, and the file
    stayed moved aside. Now that line is kept as unreadable, its byte escaped, and the rest
    replayed."""
    path = tmp_path / "dead-letter" / "predictions.jsonl"
    ids = _dead_letters(engine, path)
    with path.open("ab") as out:
        out.write(b'{"prediction": {"title": "caf\xe9"}}\n')
    report = replay_dead_letters(engine, path)
    assert (report.written, report.already_there, report.kept) == (1, 1, 3)
    with Session(engine) as session:
        assert set(session.exec(select(Prediction.id))) == {ids["fixed"], ids["written"]}
    assert (
        path.read_text(encoding="ascii").splitlines()[-1] == '{"prediction": {"title": "caf\\xe9"}}'
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["predictions.jsonl"]


def test_a_replay_cut_short_is_taken_first_by_the_next(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "dead-letter" / "predictions.jsonl"
    ids = _dead_letters(engine, path)
    path.rename(path.with_name("predictions.jsonl.replaying"))  # left by a replay that died
    newer = make_prediction("dead-lettered since")
    PredictionLog(engine, interval_s=60, batch_size=1, dead_letter=path)._dead_letter(
        newer, [], IntegrityError("INSERT", {}, Exception("value too long"))
    )
    report = replay_dead_letters(engine, path)
    assert (report.written, report.already_there, report.kept) == (2, 1, 2)
    with Session(engine) as session:
        assert set(session.exec(select(Prediction.id))) == {ids["fixed"], ids["written"], newer.id}


def test_an_outage_keeps_every_line(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "dead-letter" / "predictions.jsonl"
    _dead_letters(engine, path)
    before = path.read_text().splitlines()
    with pytest.raises(OperationalError):
        replay_dead_letters(_unreachable(engine), path)
    assert sorted(path.read_text().splitlines()) == sorted(before)
    assert sorted(p.name for p in path.parent.iterdir()) == ["predictions.jsonl"]


def test_replay_from_the_command_line(
    engine: Engine, database_url: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**cli_env, "TAGFLOW_DATABASE_URL": database_url, "TAGFLOW_DATA_DIR": str(tmp_path)}
    runner = CliRunner()
    nothing = runner.invoke(app, ["db", "replay-dead-letters"], env=env)
    assert nothing.exit_code == 0 and "no dead letters" in nothing.output
    _dead_letters(engine, tmp_path / "dead-letter" / "predictions.jsonl")
    done = runner.invoke(app, ["db", "replay-dead-letters"], env=env)
    assert done.exit_code == 1  # what is kept still needs a person
    assert "1 written, 1 written before, 2 kept" in done.output


def test_dead_letters_written_during_replays_are_all_kept(engine: Engine, tmp_path: Path) -> None:
    """The API appends while replays move the file aside: every dead letter ends up written
    or in the file, none in a moved-aside file that was already read."""
    path = tmp_path / "dead-letter" / "predictions.jsonl"
    log = PredictionLog(engine, interval_s=60, batch_size=1, dead_letter=path)
    rows = [make_prediction(f"refused {i}") for i in range(1500)]
    refusal = IntegrityError("INSERT", {}, Exception("value too long"))

    def append_all() -> None:
        for row in rows:
            log._dead_letter(row, [], refusal)

    writer = threading.Thread(target=append_all)
    writer.start()
    while writer.is_alive():
        replay_dead_letters(engine, path)
    writer.join()
    replay_dead_letters(engine, path)
    assert _count(engine, Prediction) == len(rows)


def test_waiting_dead_letters_are_counted_from_what_was_appended(tmp_path: Path) -> None:
    path = tmp_path / "dead-letter" / "predictions.jsonl"
    waiting = WaitingCount(path)
    assert waiting() == 0  # no file yet
    append_lines(path, ["{}", "{}"])
    assert waiting() == 2
    append_lines(path, ["{}"])
    assert waiting() == 3 and waiting._seen[path][1] == 9  # 3 lines of 3 bytes read, once
    path.rename(path.with_name("predictions.jsonl.replaying"))  # a replay has started
    append_lines(path, ["{}"])  # and the API went on refusing
    assert waiting() == 4
    path.with_name("predictions.jsonl.replaying").unlink()  # the replay is done
    assert waiting() == 1


def test_metrics_show_the_dead_letters_waiting(sqlite_client: TestClient) -> None:
    state = sqlite_client.app.state.tagflow  # type: ignore[attr-defined]
    assert total(scrape(sqlite_client), "tagflow_prediction_log_dead_letters_waiting") == 0
    refusal = IntegrityError("INSERT", {}, Exception("value too long"))
    state.log._dead_letter(make_prediction("refused"), [], refusal)
    samples = scrape(sqlite_client)
    assert total(samples, "tagflow_prediction_log_dead_letters_waiting") == 1
    assert total(samples, "tagflow_prediction_log_dead_letters_total") == 1
    assert replay_dead_letters(state.engine, state.settings.dead_letter_path).written == 1
    assert total(scrape(sqlite_client), "tagflow_prediction_log_dead_letters_waiting") == 0
