"""The `tagflow` command line: train, evaluate, retrain, run the API, the worker, or
everything at once (`up`). The registry and schema commands are in `models` and `db`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text
from sqlmodel import Session

from service.cli.common import (
    REDIS_URL_UNSET,
    CommandGroup,
    cli_actor,
    cli_encoder,
    cli_tags,
    console,
    input_file_or_exit,
    metrics_table,
    open_session,
    port_free_or_exit,
    preflight_or_exit,
    print_error,
    print_redis_refusal,
    print_warning,
    session_stopped_as_interrupt,
    settings_or_exit,
    version_name_or_exit,
    warn_dropped,
    warn_seen_in_training,
)
from service.cli.db import db_app
from service.cli.jobs import jobs_app
from service.cli.keys import keys_app
from service.cli.models import models_app
from service.config import Settings
from service.errors import RefusedError, TagflowError, UnavailableError
from service.ml import registry
from service.ml.dataset import DatasetError, load_dataset, load_training_file
from service.processes import stop_signals_as_exit

app = typer.Typer(
    help="tagflow: content classification with a human in the loop.",
    no_args_is_help=True,
    cls=CommandGroup,
)
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(jobs_app, name="jobs")
TRAIN_STEPS = ["validate", "encode", "select", "fit", "evaluate", "register"]

SUSPECTS_SHOWN = 10


def suspects_table(report: dict) -> Table | str:
    """The training rows whose label the out-of-fold model most confidently denies."""
    if not report["count"]:
        return f"no labels to check: out of fold, every label got more than {report['max_p_label']}"
    # Tags and figures whole, the title wraps: at 80 columns rich cut the tags instead. The
    # label and the model's answer share a column, one above the other: side by side, two
    # long tags ("natural-language-processing 0.93") left the title no room at all.
    table = Table(
        Column("title", min_width=20),
        Column("label\nmodel says", no_wrap=True),
        Column("p(label)", no_wrap=True),
        title=(
            f"{report['count']} labels to check ({report['share']:.1%} of the training rows: "
            f"out of fold, p(label) <= {report['max_p_label']}); "
            "all in report.json, cv.suspect_labels"
        ),
    )
    from service.logs import ESCAPES

    for item in report["items"][:SUSPECTS_SHOWN]:
        # A title is anyone's text (a label export's rows come from API clients): a terminal
        # escape in it (ESC, which rich passes through) would rewrite the admin's terminal.
        title = item["title"].translate(ESCAPES)
        title = title if len(title) <= 60 else title[:57] + "..."
        table.add_row(
            title,
            f"{item['tag']}\n{item['predicted']} {item['confidence']:.2f}",
            f"{item['p_label']:.2f}",
        )
    return table


def _no_cut_warning(target: float, rows: int) -> str:
    """Why a freshly trained version accepts nothing on its own, and what changes that."""
    from service.ml.evaluation import acceptance_support

    # What the cut is judged on (20 below 0.95, not `min_evidence`'s 10 at 0.9), and the
    # errors those answers may hold within the target.
    support = acceptance_support(target)
    wrong = math.floor(support * (1 - target) + 1e-9)
    return (
        f"no confidence cut reaches the target precision {target} out of fold, so this "
        f"version sends every item to review; a cut needs at least {support} training rows' "
        f"out-of-fold answers above it, at most {wrong} of them wrong ({rows} rows in all "
        "here): more labelled rows, or cleaner ones (the labels to check above), give one"
    )


def train_with_progress(
    session: Session, *, settings: Settings, data: Path, promote_by: str | None
) -> registry.ModelVersion:
    """Train on `data` and register the version in `session`, showing the steps as they go,
    then the reports."""
    from service.ml.pipeline import train_file

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        task = bar.add_task("training", total=len(TRAIN_STEPS))

        def step(name: str) -> None:
            done = TRAIN_STEPS.index(name) if name in TRAIN_STEPS else 0
            bar.update(task, completed=done, description=f"training: {name}")

        outcome = train_file(
            session,
            path=data,
            settings=settings,
            tags=cli_tags(settings),
            encoder=cli_encoder(settings),
            promote_by=promote_by,
            progress=step,
        )
        bar.update(task, completed=len(TRAIN_STEPS), description="training: done")
    console.print(outcome.validation.render())
    console.print(metrics_table(outcome.result.metrics, f"{outcome.version.version} (held out)"))
    console.print(suspects_table(outcome.result.cv["suspect_labels"]))
    if outcome.result.model.threshold > 1.0:
        print_warning(_no_cut_warning(settings.target_precision, outcome.result.data_rows))
    console.print(
        f"{outcome.version.version}: {outcome.version.status.value}, "
        f"trained in {outcome.result.seconds:.1f}s, artifact "
        f"{registry.artifact_folder(outcome.version, artifacts_dir=settings.artifacts_dir)}"
    )
    return outcome.version


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="CSV or JSON Lines with title, description, tag")],
    promote: Annotated[bool, typer.Option(help="Promote the new version to production")] = False,
) -> None:
    """Validate a training file, train, evaluate on a held-out split, register the version."""
    settings = settings_or_exit()
    tags = cli_tags(settings)
    input_file_or_exit(data, action="train", name="--data", recorded=True)
    try:
        # A bad file fails fast, before the encoder loads.
        load_training_file(data, tags=tags)
        with session_stopped_as_interrupt(settings) as session:
            train_with_progress(
                session,
                settings=settings,
                data=data,
                promote_by=cli_actor("tagflow train --promote") if promote else None,
            )
    except (DatasetError, TagflowError) as exc:
        print_error("cannot train:", exc)
        raise typer.Exit(1) from None


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option(help="Labelled file to evaluate on")],
    version: Annotated[str | None, typer.Option(help="Version (default: production)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Evaluate a registered version on a labelled file."""
    from service.ml.training import evaluate as run_evaluation
    from service.ml.training import seen_in_training

    # --version "" (a script's --version "$V" with V unset) evaluated production, exit 0.
    version_name_or_exit(version, action="evaluate", shown=f"--version {version!r}")
    settings = settings_or_exit()
    tags = cli_tags(settings)
    input_file_or_exit(data, action="evaluate", name="--data")
    try:
        examples, checked = load_dataset(data, tags=tags)
        with open_session(settings) as session:
            row = registry.version_or_production(session, version=version)
            model = registry.load_model(row, artifacts_dir=settings.artifacts_dir)
            report = run_evaluation(
                model,
                cli_encoder(settings),
                examples,
                threshold=registry.serving_threshold(row),  # as it serves, as compare scores it
            )
    except (DatasetError, TagflowError) as exc:
        print_error("cannot evaluate:", exc)
        raise typer.Exit(1) from None
    warn_dropped(checked)
    seen = seen_in_training(model, examples)
    warn_seen_in_training(row.version, seen, len(examples))
    if as_json:
        print(json.dumps({"version": row.version, "seen_in_training": seen, **report}, indent=2))
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
            Text("yes") if check["passed"] else Text("NO", style="red"),
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
    force: Annotated[
        bool, typer.Option(help="Train even with nothing new since the production model")
    ] = False,
) -> None:
    """Retrain on the base dataset plus reviewer labels, behind the quality gate. With nothing
    new since the production model (the same training rows and settings), it says so and
    registers nothing, unless --force."""
    from service import retraining, training_sets

    settings = settings_or_exit()
    if enqueue and not settings.redis_url:
        # A setting, as for `serve` and `worker`: one line, exit code 2.
        print_error("cannot queue a retraining:", REDIS_URL_UNSET)
        raise typer.Exit(2)
    if enqueue and settings.redis_url:
        _enqueue_retrain(settings, force=force)
        return
    try:
        with session_stopped_as_interrupt(settings) as session, console.status("retraining..."):
            outcome = retraining.retrain(
                session,
                settings=settings,
                tags=cli_tags(settings),
                encoder=cli_encoder(settings),
                reason="cli",
                force=force,
            )
    except (DatasetError, TagflowError) as exc:
        print_error("cannot retrain:", exc)
        raise typer.Exit(1) from None
    if outcome["candidate"] is None:  # nothing new: no gate, no table
        console.print(
            f"{outcome['outcome']} (train rows {outcome['train_rows']}, "
            f"{outcome['train_labels']} label(s)); --force trains anyway"
        )
    else:
        console.print(_gate_table(outcome))
    for warning in training_sets.scarce_tag_warnings(outcome):
        print_warning(warning)


def _enqueue_retrain(settings: Settings, *, force: bool) -> None:
    """Queue a retraining for a worker. Redis not answering is one line, exit code 2, worth a
    retry; Redis refusing the connection (a wrong password, a database it does not have) is
    one line saying so, exit code 2, as `worker` says it."""
    from redis import Redis
    from rq import Queue

    from service import retrain_queue
    from service.outbox import TRAINING_QUEUE

    url = settings.redis_url or ""
    queue = Queue(TRAINING_QUEUE, connection=Redis.from_url(url))
    try:
        with open_session(settings) as session:
            job_id = retrain_queue.enqueue_retrain(session, queue=queue, reason="cli", force=force)
    except RefusedError as exc:
        print_redis_refusal(url, exc.__cause__ or exc, action="queue a retraining")
        raise typer.Exit(2) from None
    except UnavailableError as exc:
        print_error("cannot queue a retraining:", exc)
        raise typer.Exit(2) from None
    console.print(f"queued retraining job {job_id} (GET /jobs/{job_id})")


# The address to serve on, from the command line or the environment, as every other setting
# can come (TAGFLOW_PORT was ignored: `up` served on 8000 where the team had set another port).
Host = Annotated[str, typer.Option(envvar="TAGFLOW_HOST", help="or TAGFLOW_HOST")]
Port = Annotated[
    int,
    typer.Option(
        min=0, max=65535, envvar="TAGFLOW_PORT", help="0: any free port (or TAGFLOW_PORT)"
    ),
]


@app.command()
def serve(host: Host = "127.0.0.1", port: Port = 8000) -> None:
    """Run the API (one process; model scoring runs in its thread pool)."""
    from service.cli.up import no_keys_configured, print_generated_keys, with_generated_keys

    settings = settings_or_exit(serving=True)
    generated: list[str] = []
    if settings.dev and no_keys_configured(settings):
        # An API that accepts no key answers 401 to every request but /healthz and /readyz:
        # in development mode, keys are generated as `up` makes them.
        settings, generated = with_generated_keys()
    port = port_free_or_exit(host, port)
    preflight_or_exit(settings, action="serve")
    if generated:  # only now: a refused `serve` would print keys nothing accepts
        print_generated_keys(generated)
    console.print(f"API on http://{host}:{port}  (docs: /docs, reviewer page: /review)")
    # uvicorn shuts down cleanly on SIGTERM, then raises the signal again for the handler it
    # found: with the default one, `serve` died by it (exit 143), which systemd, Docker or
    # Kubernetes read as a failed stop. Here that second raise ends it with 0, as `up` ends.
    with stop_signals_as_exit():
        run_api(settings, host=host, port=port)


def run_api(settings: Settings, *, host: str, port: int) -> None:
    """Serve the API with `settings` until stopped; the caller has checked them."""
    import uvicorn

    from service.api.head_limit import HeadLimitedHttpTools
    from service.api.main import create_app
    from service.logs import configure_logging

    configure_logging(settings)
    # log_config=None: uvicorn's loggers go to our handler. No access log: it cost ~7% of the
    # event loop per request, and every prediction is logged anyway. The protocol: uvicorn's
    # httptools one with a bound on request heads, which it has none of.
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        http=HeadLimitedHttpTools,
        log_config=None,
        access_log=False,
    )


@app.command()
def worker(burst: bool = False) -> None:
    """Run an RQ worker on the labelling and training queues. Started while the database
    server is away, it waits for it (a line, then one a minute) instead of exiting; one that
    refuses it for its configuration (no such database or role) is one line, exit 2."""
    from workers.worker import run, wait_for_the_database

    settings = settings_or_exit()
    preflight_or_exit(
        settings, action="work", reach_redis=True, before_database=wait_for_the_database
    )
    run(settings, burst=burst)


@app.command()
def up(host: Host = "127.0.0.1", port: Port = 8000) -> None:
    """Everything on one machine: Redis (embedded if none configured), a worker and the API."""
    from service.cli.up import run_up

    run_up(host, port)
