"""Retention of the prediction log (`tagflow db prune`): old predictions and their shadow
scores go, in batches; recent ones and those a user report points at stay."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from service.cli import app
from service.crud.predictions import prune_predictions, save_predictions
from service.entities import Feedback, Prediction, ShadowPrediction
from service.entities.common import utcnow
from tests.conftest import make_prediction

DAY = timedelta(days=1)


def log_predictions(engine: Engine, *, old: int, recent: int) -> list[str]:
    """`old` predictions 100 days old and `recent` ones from now, each with a shadow score;
    returns the old ones' ids."""
    rows = [make_prediction(f"old {i}") for i in range(old)]
    for row in rows:
        row.created_at = utcnow() - 100 * DAY
    rows += [make_prediction(f"recent {i}") for i in range(recent)]
    shadows = [
        ShadowPrediction(
            prediction_id=r.id, model_version="v2", tag=r.tag, confidence=0.5, agrees=True
        )
        for r in rows
    ]
    with Session(engine) as session:
        save_predictions(session, predictions=rows, shadows=shadows)
    return [r.id for r in rows[:old]]


def remaining(engine: Engine) -> tuple[set[str], set[str]]:
    with Session(engine) as session:
        predictions = set(session.exec(select(Prediction.id)))
        shadows = set(session.exec(select(ShadowPrediction.prediction_id)))
    return predictions, shadows


def test_old_predictions_go_in_batches_and_reported_ones_stay(engine: Engine) -> None:
    old = log_predictions(engine, old=7, recent=3)
    with Session(engine) as session:
        report = Feedback(
            prediction_id=old[0], correct_tag="mlops", reporter="u1", text_hash="0" * 64
        )
        session.add(report)
        session.commit()
    before = utcnow() - 90 * DAY
    with Session(engine) as session:
        dry = prune_predictions(session, before=before, dry_run=True)
    assert dry == {"predictions": 6, "shadow_predictions": 6}
    assert len(remaining(engine)[0]) == 10  # a dry run deletes nothing

    with Session(engine) as session:
        gone = prune_predictions(session, before=before, batch=4)  # two batches: 4 + 2
    assert gone == {"predictions": 6, "shadow_predictions": 6}
    predictions, shadows = remaining(engine)
    assert predictions == shadows and len(predictions) == 4
    assert old[0] in predictions and not set(old[1:]) & predictions
    with Session(engine) as session:
        assert prune_predictions(session, before=before) == {
            "predictions": 0,
            "shadow_predictions": 0,
        }
        ages = session.exec(select(Prediction.created_at).where(col(Prediction.id) != old[0]))
        assert all(t.replace(tzinfo=None) > before.replace(tzinfo=None) for t in ages)


def test_prune_from_the_command_line(
    engine: Engine, database_url: str, cli_env: dict[str, str]
) -> None:
    log_predictions(engine, old=3, recent=2)
    env = {**cli_env, "TAGFLOW_DATABASE_URL": database_url}
    runner = CliRunner()
    dry = runner.invoke(app, ["db", "prune", "--older-than-days", "30", "--dry-run"], env=env)
    assert dry.exit_code == 0 and "would delete 3 predictions and 3 shadow scores" in dry.output
    done = runner.invoke(app, ["db", "prune", "--older-than-days", "30"], env=env)
    assert done.exit_code == 0 and "deleted 3 predictions and 3 shadow scores" in done.output
    assert len(remaining(engine)[0]) == 2
    refused = runner.invoke(app, ["db", "prune", "--older-than-days", "0"], env=env)
    assert refused.exit_code == 2  # at least a day: never the predictions still being answered
