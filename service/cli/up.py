"""`tagflow up`: everything on one machine, in one command. Redis (embedded when none is
configured), the bundled seed model when there is no production one, a worker and the API."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING

import typer
from rich.text import Text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.cli.common import (
    cli_actor,
    cli_tags,
    console,
    encoder_or_exit,
    engine_or_exit,
    engine_unless_away,
    open_session,
    port_free_or_exit,
    print_error,
    settings_or_exit,
)
from service.config import SEED_DATASET, Settings, generate_dev_keys
from service.errors import TagflowError
from service.jobs import LONGEST_JOB_TIMEOUT_S
from service.ml import registry
from service.ml.dataset import DatasetError
from service.processes import DataDirBusyError, die_with_parent, sole_owner, stop_signals_as_exit

if TYPE_CHECKING:  # imported when used: `up` with a configured Redis starts none
    from service.redis_server import EmbeddedRedis

IDLE_STOP_S = 3  # an idle worker stops within a poll (1 s); longer, and it is running a job
# A worker that stopped on its own is started again after the first delay, doubled at each
# stop up to the last; one that ran that long before stopping starts from the first again.
WORKER_RESTART_S = (2.0, 60.0)
# The worker's exit status for a configuration error (a setting, the tag file, the data
# directory, a database refusing the connection): not restarted, as a restart repeats it.
CONFIGURATION_ERROR = 2

log = logging.getLogger(__name__)


def up_settings() -> tuple[Settings, list[str]]:
    """The settings `up` serves with, and the keys it generated. Keys from the environment,
    `.env` or a key file are used as they are; with none anywhere, development mode with
    generated keys, announced (the keys are printed once this `up` owns the data directory)."""
    configured = settings_or_exit()  # reads .env as well; keys optional here
    if no_keys_configured(configured):
        os.environ["TAGFLOW_DEV"] = "1"
        console.print(Text.assemble(("development mode", "yellow"), ": no API keys configured"))
        return with_generated_keys()
    return settings_or_exit(serving=True), []


def no_keys_configured(settings: Settings) -> bool:
    """No key in the environment, `.env` or a key file: an API would accept none."""
    return not settings.keys and settings.api_keys_file is None


def with_generated_keys() -> tuple[Settings, list[str]]:
    """Serving settings with a generated key per role (development mode), and the keys, to be
    printed once the command is sure to start."""
    os.environ["TAGFLOW_API_KEYS"] = generate_dev_keys()
    return settings_or_exit(serving=True), os.environ["TAGFLOW_API_KEYS"].split(",")


def print_generated_keys(generated: list[str]) -> None:
    console.print(
        "generated keys, new at every start (to keep keys, set TAGFLOW_API_KEYS or "
        "TAGFLOW_API_KEYS_FILE; `tagflow keys new` makes them):"
    )
    for pair in generated:
        console.print(f"  {pair}")


def run_up(host: str, port: int) -> None:
    """Start everything, serve until stopped (Ctrl-C or SIGTERM), then stop the worker and
    Redis, in that order. Its children die with it even if it is killed (SIGKILL)."""
    from service.cli.main import run_api, train_with_progress
    from service.logs import configure_logging

    settings, generated = up_settings()
    port = port_free_or_exit(host, port)  # `--port 0`: the port printed below is served
    # The tag file, the data directory and the database, checked before any work. (A second
    # `up` that reads "no model" while the first trains one is refused at the lock below.)
    # A PostgreSQL server that is away is waited for instead, once this `up` owns the data
    # directory: under a supervisor, exit 2 only made it start `up` again and again.
    cli_tags(settings)
    has_model = production_model_unless_away(settings)  # None: a server away
    encoder_or_exit(settings, action="start")
    with ExitStack() as stack:
        try:
            stack.enter_context(sole_owner(settings.data_dir.resolve(), what="tagflow up"))
        except DataDirBusyError as exc:
            print_error("cannot start:", exc)
            raise typer.Exit(2) from None
        configure_logging(settings)  # only an `up` that starts takes over the process's logs
        if generated:  # only now: a refused `up` would print keys nothing accepts
            print_generated_keys(generated)
        stop = stack.enter_context(stop_signals_as_exit())
        if has_model is None:
            has_model = production_model_once_answered(settings, wait=_wait_for_the_database)
        settings = _with_redis(settings, stack)
        stop.check()  # each start of a child process is a place where a stop can be lost
        if not has_model:
            console.print(f"no production model: training the bundled seed {SEED_DATASET.name}")
            try:
                with open_session(settings) as session:
                    train_with_progress(
                        session,
                        settings=settings,
                        data=SEED_DATASET,
                        promote_by=cli_actor("tagflow up, seed model"),
                    )
            except (DatasetError, TagflowError) as exc:
                # A tag file of the team's own, without the seed's tags: it was a traceback.
                print_error(
                    "cannot train the bundled seed (promote a model trained on a file of "
                    "yours first: tagflow train --data FILE --promote):",
                    exc,
                )
                raise typer.Exit(2) from None
            stop.check()  # a stop during training (its exception lost) starts no worker
        worker = SupervisedWorker()
        stack.callback(worker.stop)
        stop.check()  # from here uvicorn's own handlers take the signals
        try:
            console.print(f"API on http://{host}:{port}  (docs: /docs, reviewer page: /review)")
            run_api(settings, host=host, port=port)
        except SystemExit:  # the stop `up` asked for itself: its own status below
            if not worker.refused.is_set():
                raise
    if worker.refused.is_set():  # the API, the worker and Redis are stopped by now
        raise typer.Exit(2)


def production_model_unless_away(settings: Settings) -> bool | None:
    """Whether a model is in production, asked in one connection; None when the database is a
    PostgreSQL server that is away (refused, unreachable, not answering), for `up` to wait for
    once it owns the data directory. Any other failure is a configuration error, one line and
    exit 2 before anything starts (`engine_or_exit`): a file that cannot be opened, a server
    refusing the connection for good (no such database or role, failed authentication).

    One connection, not a check then a query: with two, a server gone between them was "cannot
    open the database", exit 2, which a supervisor answers by starting `up` again and again."""
    engine = engine_unless_away(settings, upgrade=True)
    return None if engine is None else _production_model_in(engine)


def production_model_once_answered(settings: Settings, *, wait: Callable[[Settings], None]) -> bool:
    """Whether a model is in production, once the database answers: `wait` first, and again if
    the server is gone between its answer and the connection (`engine_or_exit`)."""
    return _production_model_in(engine_or_exit(settings, upgrade=True, wait=wait))


def _production_model_in(engine: Engine) -> bool:
    try:
        with Session(engine) as session:
            return registry.get_production(session) is not None
    finally:
        engine.dispose()


def _wait_for_the_database(settings: Settings) -> None:
    from workers.worker import wait_for_the_database

    wait_for_the_database(settings, who="up", before="starting anything")


def _with_redis(settings: Settings, stack: ExitStack) -> Settings:
    """`settings` with a Redis: the configured one, else an embedded one stopped on exit."""
    if settings.redis_url:
        return settings
    from service.redis_server import EmbeddedRedis

    embedded = EmbeddedRedis(settings.redis_dir)
    # The worker, a child, finds it through the environment.
    os.environ["TAGFLOW_REDIS_URL"] = _started(embedded, settings)
    stack.callback(embedded.stop)
    console.print(f"embedded Redis at {embedded.url} (files in {settings.redis_dir})")
    return settings_or_exit(serving=True)


def _started(embedded: EmbeddedRedis, settings: Settings) -> str:
    """The embedded Redis's URL once it answers. Its folder not writable, or a file where it
    goes, is one line naming the data directory, exit 2; a server that did not start, one line
    naming its log, exit 1 (both were a traceback)."""
    try:
        return embedded.start()
    except OSError as exc:
        print_error(
            f"cannot use the data directory {settings.data_dir}:",
            f"{exc.strerror or exc}: {settings.redis_dir} (TAGFLOW_DATA_DIR)",
        )
        raise typer.Exit(2) from None
    except RuntimeError as exc:
        print_error("cannot start the embedded Redis:", f"{exc} (or set TAGFLOW_REDIS_URL)")
        raise typer.Exit(1) from None


def _start_worker() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker"],
        preexec_fn=die_with_parent(),
        # Out of the terminal's process group: Ctrl-C reaches `up` alone, which stops the
        # API first and then the worker (SIGTERM below), not both at once.
        start_new_session=True,
    )


class SupervisedWorker:
    """`up`'s worker, started again when it stops on its own: a crash, or a Redis lost
    between jobs (the worker then ends with exit 1, for a supervisor to restart it). `up` is
    that supervisor: before, it served on without a worker and said nothing, and review
    work piled up in Redis unseen. A worker that keeps stopping is restarted less and less
    often, up to once a minute.

    Except one that exits 2 (`CONFIGURATION_ERROR`): a configuration error, such as its
    database refusing the connection for good (no such database or role), which every
    restart repeated, once a minute without end, while `up` looked alive. Then `up` stops as
    on Ctrl-C (SIGTERM to itself: the API shuts down cleanly) and exits 2 (`refused`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = threading.Event()  # set by `stop`: no restart from then on
        self.refused = threading.Event()  # set when the worker exited on a configuration error
        self.process = _start_worker()
        threading.Thread(target=self._watch, name="worker-watch", daemon=True).start()

    def _watch(self) -> None:
        delay = WORKER_RESTART_S[0]
        while True:
            started = time.monotonic()
            code = self.process.wait()
            if self._stopped.is_set():
                return
            if code == CONFIGURATION_ERROR:
                with self._lock:  # not once `stop` came: a second SIGTERM cuts uvicorn short
                    if not self._stopped.is_set():
                        self._stop_up()
                return
            if time.monotonic() - started >= WORKER_RESTART_S[-1]:
                delay = WORKER_RESTART_S[0]  # it had been working: a fresh failure
            log.error(
                "the worker stopped on its own (exit %s): starting another in %g s", code, delay
            )
            if self._stopped.wait(delay):
                return
            with self._lock:  # `stop` may have come meanwhile: never start one after it
                if self._stopped.is_set():
                    return
                self.process = _start_worker()
            delay = min(delay * 2, WORKER_RESTART_S[-1])

    def _stop_up(self) -> None:
        """Stop `up` (exit 2) on the worker's configuration error, which its own line names."""
        log.error(
            "the worker stopped on a configuration error (exit %d; its line above says which: "
            "a database that refuses the connection is fixed in TAGFLOW_DATABASE_URL), which "
            "starting it again would repeat: stopping tagflow up",
            CONFIGURATION_ERROR,
        )
        self.refused.set()  # before the signal: `run_up` reads it once the API has stopped
        os.kill(os.getpid(), signal.SIGTERM)  # as a Ctrl-C: the API stops cleanly, then the rest

    def stop(self) -> None:
        """Stop the worker as `_stop` does; no restart from then on."""
        with self._lock:
            self._stopped.set()
        _stop(self.process)


def _stop(worker: subprocess.Popen[bytes]) -> None:
    """Stop the worker as RQ expects: SIGTERM, and it finishes the job it is running. A
    retraining can take minutes, so `up` waits for it, as long as the longest job may run
    (compose gives the worker as long), unless a second Ctrl-C asks to cut it short."""
    worker.terminate()
    try:
        worker.wait(timeout=IDLE_STOP_S)
        return
    except subprocess.TimeoutExpired:
        pass
    console.print(
        "the worker is finishing its job (a retraining takes minutes): waiting; "
        "Ctrl-C again stops it now, and the job is cut"
    )
    cut = _wait_or_interrupt(worker, within_s=LONGEST_JOB_TIMEOUT_S)
    if worker.poll() is None:
        console.print("stopping the worker now" if cut else "the worker overran its job timeout")
        worker.kill()
        worker.wait()


def _wait_or_interrupt(worker: subprocess.Popen[bytes], *, within_s: float) -> bool:
    """Wait up to `within_s` for the worker to exit; True if a Ctrl-C (SIGINT) came first.
    (SIGTERM stays ignored: a supervisor repeating its stop must not cut a job.)"""
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: interrupted.set())
    try:
        deadline = time.monotonic() + within_s
        while worker.poll() is None and not interrupted.is_set():
            if time.monotonic() >= deadline:
                break
            interrupted.wait(0.2)
    finally:
        signal.signal(signal.SIGINT, previous)
    return interrupted.is_set()
