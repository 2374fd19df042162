"""The `tagflow` command line: train, evaluate, manage models, run the API and the worker."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.config import SEED_DATASET, Settings, UnsafeSettingsError, generate_dev_keys
from service.db import init_db, make_engine
from service.errors import TagflowError
from service.ml import registry
from service.ml.dataset import DatasetError, load_dataset

app = typer.Typer(
    help="tagflow: content classification with a human in the loop.", no_args_is_help=True
)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")
db_app = typer.Typer(help="The database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console()
TRAIN_STEPS = ["validate", "encode", "select", "fit", "evaluate", "register"]


def _settings() -> Settings:
    try:
        return Settings()
    except (UnsafeSettingsError, ValueError) as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None


def _session(settings: Settings) -> Session:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    return Session(engine, expire_on_commit=False)


def _encoder(settings: Settings):  # type: ignore[no-untyped-def]
    from service.ml.encoder import load_encoder

    return load_encoder(settings.resolved_encoder_dir, settings.encoder, threads=2, cache_size=0)


def _tags(settings: Settings):  # type: ignore[no-untyped-def]
    from service.tags import load_tags

    return load_tags(settings.tags_file)


def metrics_table(metrics: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("tag", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="right" if col != "tag" else "left")
    for tag, m in metrics["per_class"].items():
        table.add_row(
            tag, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"])
        )
    auto = metrics["auto"]
    table.caption = (
        f"weighted F1 {metrics['weighted_f1']:.3f}  accuracy {metrics['accuracy']:.3f}  "
        f"auto: {auto['coverage']:.0%} accepted at precision "
        f"{auto['precision'] if auto['precision'] is None else round(auto['precision'], 3)}  "
        + "  ".join(f"{k} {v['weighted_f1']:.3f}" for k, v in metrics.get("baselines", {}).items())
    )
    return table


SUSPECTS_SHOWN = 10


def suspects_table(report: dict) -> Table | str:
    """The training rows whose label the out-of-fold model most confidently denies."""
    if not report["count"]:
        return f"no labels to check: out of fold, every label got more than {report['max_p_label']}"
    table = Table(
        "title",
        "label",
        "model says",
        "p(label)",
        title=(
            f"{report['count']} labels to check ({report['share']:.1%} of the training rows: "
            f"out of fold, p(label) <= {report['max_p_label']}); "
            "all in report.json, cv.suspect_labels"
        ),
    )
    for item in report["items"][:SUSPECTS_SHOWN]:
        title = item["title"] if len(item["title"]) <= 60 else item["title"][:57] + "..."
        table.add_row(
            title,
            item["tag"],
            f"{item['predicted']} {item['confidence']:.2f}",
            f"{item['p_label']:.2f}",
        )
    return table


def train_with_progress(settings: Settings, data: Path, promote: bool) -> registry.ModelVersion:
    from service.ml.pipeline import train_file

    with (
        _session(settings) as session,
        Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
        ) as bar,
    ):
        task = bar.add_task("training", total=len(TRAIN_STEPS))

        def step(name: str) -> None:
            done = TRAIN_STEPS.index(name) if name in TRAIN_STEPS else 0
            bar.update(task, completed=done, description=f"training: {name}")

        outcome = train_file(
            session,
            path=data,
            settings=settings,
            tags=_tags(settings),
            encoder=_encoder(settings),
            promote=promote,
            progress=step,
        )
        bar.update(task, completed=len(TRAIN_STEPS), description="training: done")
    console.print(outcome.validation.render())
    console.print(metrics_table(outcome.result.metrics, f"{outcome.version.version} (held out)"))
    console.print(suspects_table(outcome.result.cv["suspect_labels"]))
    console.print(
        f"{outcome.version.version}: {outcome.version.status.value}, "
        f"trained in {outcome.result.seconds:.1f}s, artifact {outcome.version.artifact_path}"
    )
    return outcome.version


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="CSV or JSON Lines with title, description, tag")],
    promote: Annotated[bool, typer.Option(help="Promote the new version to production")] = False,
) -> None:
    """Validate a training file, train, evaluate on a held-out split, register the version."""
    settings = _settings()
    try:
        load_dataset(data, tags=_tags(settings))  # a bad file fails fast, before the encoder loads
        train_with_progress(settings, data, promote)
    except (DatasetError, TagflowError) as exc:
        console.print(f"[red]cannot train:[/red]\n{exc}")
        raise typer.Exit(1) from None


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option(help="Labelled file to evaluate on")],
    version: Annotated[str | None, typer.Option(help="Version (default: production)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Evaluate a registered version on a labelled file."""
    from service.ml.training import evaluate as run_evaluation

    settings = _settings()
    try:
        examples, _ = load_dataset(data, tags=_tags(settings))
        with _session(settings) as session:
            row = (
                registry.get_version(session, version=version)
                if version
                else registry.get_production(session)
            )
            if row is None:
                raise TagflowError("no production model; pass --version")
            report = run_evaluation(registry.load_model(row), _encoder(settings), examples)
    except (DatasetError, TagflowError) as exc:
        console.print(f"[red]cannot evaluate:[/red]\n{exc}")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps({"version": row.version, **report}, indent=2))
    else:
        console.print(metrics_table(report, f"{row.version} on {data}"))


def _gate_table(outcome: dict) -> Table:
    table = Table(
        "check",
        "candidate",
        "production",
        "limit",
        "passed",
        title=f"{outcome['candidate']}: {outcome['outcome']}",
    )

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for check in outcome["checks"]:
        table.add_row(
            check["name"],
            fmt(check["candidate"]),
            fmt(check["production"]),
            fmt(check["limit"]),
            "yes" if check["passed"] else "[red]NO[/red]",
        )
    table.caption = (
        f"train rows {outcome['train_rows']} ({outcome['train_labels']} labels), "
        f"eval rows {outcome['eval_rows']} ({outcome['holdout_labels']} held-out labels), "
        f"snapshot {outcome['snapshot_id']}"
    )
    return table


@app.command()
def retrain(
    enqueue: Annotated[bool, typer.Option(help="Queue it for the worker instead")] = False,
) -> None:
    """Retrain on the base dataset plus reviewer labels, behind the quality gate."""
    from service import retraining

    settings = _settings()
    try:
        if enqueue:
            from redis import Redis
            from rq import Queue

            from service.outbox import TRAINING_QUEUE

            if not settings.redis_url:
                raise TagflowError("TAGFLOW_REDIS_URL is not set: cannot queue")
            queue = Queue(TRAINING_QUEUE, connection=Redis.from_url(settings.redis_url))
            job_id = retraining.enqueue_retrain(queue, reason="cli")
            console.print(f"queued retraining job {job_id} (GET /jobs/{job_id})")
            return
        with _session(settings) as session, console.status("retraining..."):
            outcome = retraining.retrain(
                session,
                settings=settings,
                tags=_tags(settings),
                encoder=_encoder(settings),
                reason="cli",
            )
    except (DatasetError, TagflowError) as exc:
        console.print(f"[red]cannot retrain:[/red]\n{exc}")
        raise typer.Exit(1) from None
    console.print(_gate_table(outcome))


@models_app.command("list")
def models_list(
    where: Annotated[
        list[str] | None, typer.Option(help="e.g. per_class.mlops.precision>=0.95")
    ] = None,
) -> None:
    """List versions, newest first, optionally filtered by metric criteria."""
    settings = _settings()
    try:
        criteria = [registry.Criterion.parse(w) for w in where or []]
    except TagflowError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    table = Table("version", "status", "created", "rows", "weighted F1", "auto cov", "auto prec")
    with _session(settings) as session:
        for row in registry.list_versions(session, criteria=criteria):
            auto = row.metrics.get("auto", {})
            table.add_row(
                row.version,
                row.status.value,
                f"{row.created_at:%Y-%m-%d %H:%M}",
                str(row.data_rows),
                f"{row.metrics.get('weighted_f1', 0):.3f}",
                f"{auto.get('coverage') or 0:.0%}",
                f"{auto.get('precision') or 0:.3f}",
            )
    console.print(table)


def _registry_action(action: str, version: str | None = None) -> None:
    settings = _settings()
    try:
        with _session(settings) as session:
            row = (
                registry.promote(session, version=version)
                if version
                else registry.rollback(session)
            )
    except TagflowError as exc:
        console.print(f"[red]cannot {action}:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(f"{row.version} is production; running APIs switch within seconds")


@models_app.command("promote")
def models_promote(version: str) -> None:
    """Promote a version to production (its artifact checksum must match)."""
    _registry_action("promote", version)


@models_app.command("rollback")
def models_rollback() -> None:
    """Promote the previous production version again."""
    _registry_action("roll back")


@models_app.command("recalibrate")
def models_recalibrate(
    version: str,
    dry_run: Annotated[bool, typer.Option(help="Only report what the audit says")] = False,
) -> None:
    """Move a version's auto-acceptance cut where its audit sample shows it should be."""
    from service.calibration import recalibrate

    settings = _settings()
    try:
        with _session(settings) as session:
            outcome = recalibrate(
                session,
                version=version,
                target=settings.target_precision,
                min_audited=settings.recalibrate_min_audited,
                lower=settings.recalibrate_lower,
                apply=not dry_run,
            )
    except TagflowError as exc:
        console.print(f"[red]cannot recalibrate:[/red] {exc}")
        raise typer.Exit(1) from None
    verb = "moved to" if outcome.applied else "would be" if dry_run else "stays at"
    console.print(
        f"{version}: {outcome.action.value}; cut {outcome.current:.4f} {verb} "
        f"{outcome.proposed:.4f}\n{outcome.reason}"
    )


@models_app.command("threshold")
def models_threshold(version: str, threshold: float, note: str = "") -> None:
    """Set the auto-acceptance cut a version is served with (1.01: everything to review)."""
    settings = _settings()
    try:
        with _session(settings) as session:
            registry.set_serving_threshold(
                session,
                version=version,
                threshold=threshold,
                evidence={"source": "manual", "note": note},
            )
    except TagflowError as exc:
        console.print(f"[red]cannot set the threshold:[/red] {exc}")
        raise typer.Exit(1) from None
    console.print(f"{version} is served with cut {threshold}; running APIs switch within seconds")


def _database(settings: Settings, action: Callable[[Engine], str]) -> None:
    """Run a schema command; an unreachable database is a one-line error, not a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    try:
        console.print(action(engine))
    except SQLAlchemyError as exc:
        console.print(f"[red]database error:[/red] {exc.__class__.__name__}: {exc.orig or exc}")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


@db_app.command("current")
def db_current() -> None:
    """The schema revision the database is at, and the newest one this code knows."""
    from service.db import current_revision, head_revision

    _database(
        _settings(),
        lambda engine: f"database: {current_revision(engine) or 'none'}; code: {head_revision()}",
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Upgrade the database to the newest revision (the API, worker and CLI also do it at start)."""
    from service.db import current_revision

    def run(engine: Engine) -> str:
        init_db(engine)
        return f"database at {current_revision(engine)}"

    _database(_settings(), run)


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the API (one process; model scoring runs in its thread pool)."""
    import uvicorn

    from service.api.main import create_app

    # No access log: it cost ~7% of the event loop per request; predictions are logged anyway.
    uvicorn.run(create_app(_settings()), host=host, port=port, log_level="info", access_log=False)


@app.command()
def worker(burst: bool = False) -> None:
    """Run an RQ worker on the labelling and training queues."""
    from workers.worker import run

    run(_settings(), burst=burst)


@app.command()
def up(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Everything on one machine: Redis (embedded if none configured), a worker and the API."""
    from service.redis_server import EmbeddedRedis

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not os.environ.get("TAGFLOW_API_KEYS"):
        os.environ["TAGFLOW_DEV"] = "1"
        os.environ["TAGFLOW_API_KEYS"] = generate_dev_keys()
        console.print("[yellow]development mode[/yellow]: no TAGFLOW_API_KEYS set; generated keys:")
        for pair in os.environ["TAGFLOW_API_KEYS"].split(","):
            console.print(f"  {pair}")
    settings = _settings()
    embedded = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.redis_dir)
        os.environ["TAGFLOW_REDIS_URL"] = embedded.start()
        console.print(f"embedded Redis at {embedded.url} (files in {settings.redis_dir})")
        settings = _settings()
    with _session(settings) as session:
        has_model = registry.get_production(session) is not None
    if not has_model:
        console.print(f"no production model: training the bundled seed {SEED_DATASET.name}")
        train_with_progress(settings, SEED_DATASET, promote=True)
    worker_proc = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"])
    try:
        console.print(f"API on http://{host}:{port}  (docs: /docs, reviewer page: /review)")
        serve(host=host, port=port)
    finally:
        worker_proc.terminate()
        worker_proc.wait(timeout=30)
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    app()
