"""What every `tagflow` command shares: the console, settings, a database session, the
encoder and the tag list, and the metrics table."""

from __future__ import annotations

import getpass
import inspect
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session
from typer.core import TyperGroup

from service.config import Settings, describe_errors
from service.db import (
    configuration_refusal,
    init_db,
    is_outage,
    is_server_away,
    make_engine,
)
from service.entities import ModelVersion
from service.entities.common import is_utf8
from service.errors import is_redis_refusal
from service.migrations import UnknownRevisionError
from service.processes import Interruption, stop_signal_as_interrupt

if TYPE_CHECKING:  # imported when used: `tagflow --help` should not load ONNX Runtime
    from service.ml.dataset import ValidationReport
    from service.ml.encoder import Encoder
    from service.tags import TagSet

# soft_wrap: a message is one line however narrow the terminal (or 80 columns, when the output
# is a pipe or a log file); tables still fit the width. markup=False: what is printed holds
# people's text (paths, version names, tags, titles, key names), and rich would read "[/]" in
# it as a closing tag and raise, or drop "[red]" from a name; styles are given as Text.
console = Console(soft_wrap=True, markup=False)
# Errors go to stderr, so a script reading a command's output (`--json`) never parses one.
err_console = Console(stderr=True, soft_wrap=True, markup=False)
# What a command that queues work says without a Redis URL. Another shell beside `tagflow up`
# needs the URL `up` printed: its embedded Redis has a new port and password at each start.
REDIS_URL_UNSET = (
    "TAGFLOW_REDIS_URL is not set; the API and the workers share their queues through Redis "
    "(beside `tagflow up`, set it to the `embedded Redis at redis://...` URL `up` printed)"
)


def print_error(heading: str, detail: object = "") -> None:
    """An error on stderr: `heading` in red, then `detail` as it is, on the same line (an
    error is one line); a detail of several lines, a training file's validation report,
    starts on the next."""
    shown = str(detail)
    sep = "\n" if "\n" in shown else " " if shown else ""
    err_console.print(Text.assemble((heading, "red"), sep, shown), highlight=False)


def print_warning(text: str) -> None:
    """A warning on stderr, kept out of a command's output (`--json`) like an error."""
    err_console.print(Text.assemble(("warning:", "yellow"), f" {text}"), highlight=False)


def warn_seen_in_training(version: str, seen: int | None, items: int) -> None:
    """Warn that a version is scored on items it was trained on (`seen`: how many of `items`;
    None when the version does not record what it trained on)."""
    if seen:
        print_warning(
            f"{seen} of {items} items are in {version}'s training data: these figures "
            "overstate how it does on items it never saw"
        )


def warn_dropped(report: ValidationReport) -> None:
    """Warn of what validating a file to score dropped or cannot score (duplicates, one with
    another tag among them, a tag with no items): training shows the whole report, and
    `evaluate` and `models compare` said nothing of it, their support figures a row short."""
    if report.duplicates_dropped:
        print_warning(
            f"{report.duplicates_dropped} duplicate (title, description) pair(s) in "
            f"{report.source} dropped: each content is scored once, with its first row's tag"
        )
    for warning in report.warnings:
        print_warning(warning)


def version_name_or_exit(version: str | None, *, action: str, shown: str) -> None:
    """A version named on the command line must be a name: empty or with white space (an
    unset variable, a stray quote) it is a usage error (exit 2), never taken as "none named"."""
    if version is not None and (not version or any(ch.isspace() for ch in version)):
        print_error(f"cannot {action}:", f"{shown} is not a version name")
        raise typer.Exit(2)


def settings_or_exit(*, serving: bool = False) -> Settings:
    """The settings from the environment; bad ones are a line each (naming the variable) and
    exit code 2. API keys are required only when `serving` requests: other commands act on the
    data directory directly, so they also run beside `make run`, whose keys are generated."""
    try:
        return Settings() if serving else Settings(dev=True)
    except ValidationError as exc:
        print_error("configuration error:", describe_errors(exc))
        raise typer.Exit(2) from None
    except UnicodeDecodeError as exc:  # the environment is text already: the .env file
        print_error("configuration error:", f"{Path('.env').resolve()} is not UTF-8 text: {exc}")
        raise typer.Exit(2) from None
    except ValueError as exc:  # raised outside validation (UnsafeSettingsError is wrapped)
        print_error("configuration error:", exc)
        raise typer.Exit(2) from None


def port_free_or_exit(host: str, port: int) -> int:
    """The port to serve on: `port`, or for 0 a free one the system picks now, so that the
    address printed is the one served. Exit with a one-line error (code 2) when `host:port`
    cannot be listened on, before any start-up work: uvicorn would find out only after the
    model is loaded, in the middle of the log, and `tagflow up` after training the seed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except socket.gaierror as exc:  # the host, not the port
            print_error(f"cannot listen on {host}:", f"{exc.strerror}; pass --host")
            raise typer.Exit(2) from None
        except OSError as exc:
            print_error(
                f"cannot listen on {host}:{port}:",
                f"{exc.strerror}; pass --port, or stop what holds it",
            )
            raise typer.Exit(2) from None
        return int(probe.getsockname()[1])


def input_file_or_exit(
    path: Path, *, action: str, name: str, recorded: bool = False, piped: bool = False
) -> Path:
    """`path` as a file to read, for the argument or option `name`. Missing, a directory, or
    not readable is one line naming the path and what is wrong, exit code 2 (a usage error):
    said at once, before the command loads or asks anything. `recorded`: the path is kept in
    the registry (a version's `params.source`), so it must be text a database and a JSON answer
    can hold: a byte that is not UTF-8 in it (a Latin-1 file name) reaches Python as a lone
    surrogate, and a version recorded with one made every GET /models answer 500. `piped`: the
    command reads it once, so a pipe will do (`models import /dev/stdin`); training data is
    read more than once, and a FIFO with no writer held the command forever."""
    if recorded and not is_utf8(str(path.resolve())):
        reason = "its name is not UTF-8 text, which the registry records; rename the file"
    elif not path.exists():
        reason = "no such file"
    elif path.is_dir():
        reason = "a directory, not a file"
    elif not piped and not path.is_file():
        reason = "not a regular file (a FIFO, a device or a socket); save the data as a file"
    else:
        try:
            # Non-blocking: a FIFO with no writer yet is not waited for here.
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            return path
        except OSError as exc:  # no permission, a broken mount
            reason = f"cannot read it ({exc.strerror or exc})"
    _path_error(action, path, reason, name)


def output_file_or_exit(path: Path, *, action: str, name: str) -> Path:
    """`path` as a file to write, for the argument or option `name`: its folder exists and
    takes a new file, and it is not a directory itself. Otherwise one line naming the path and
    what is wrong, exit code 2 (a usage error), before anything is written."""
    folder = path.parent
    if path.is_dir():
        reason = "a directory, not a file"
    elif not folder.exists():
        reason = f"no such directory {folder}"
    elif not folder.is_dir():
        reason = f"{folder} is not a directory"
    elif not os.access(folder, os.W_OK | os.X_OK) or (
        path.exists() and not os.access(path, os.W_OK)
    ):
        # os.access also says a read-only file system is not writable, even for root.
        reason = "cannot write there (no permission, or a read-only file system)"
    else:
        return path
    _path_error(action, path, reason, name)


def _path_error(action: str, path: Path, reason: str, name: str) -> NoReturn:
    """The one line a path that cannot be used is, with exit code 2."""
    print_error(f"cannot {action}:", f"{path}: {reason} ({name})")
    raise typer.Exit(2)


def open_session(settings: Settings) -> Session:
    """A session on the configured database, upgraded to the newest schema first. A data
    directory that cannot be made or a database that cannot be opened is one line naming it,
    and exit code 2."""
    return Session(engine_or_exit(settings, upgrade=True), expire_on_commit=False)


@contextmanager
def session_stopped_as_interrupt(settings: Settings) -> Iterator[Session]:
    """A session (`open_session`) for a command that registers a model version (`train`,
    `retrain`, `models import`), within `stop_signal_as_interrupt`: a stop signal before the
    version's commit undoes it (nothing registered, exit 130); one from the commit on is held,
    so the command finishes, and then says the stop came once the version was registered.
    A stop just after the commit ended the command with exit 130, as for nothing registered,
    or, in the interpreter's last half second, by SIGTERM (143): the version registered all
    the same (39 of 40 imports signalled 0-80 ms after the version's folder appeared)."""
    _import_model_libraries()
    with stop_signal_as_interrupt() as stop, open_session(settings) as session:
        _hold_from_a_version_commit(session, stop)
        yield session
    if stop.requested and stop.held:
        print_warning(
            "a stop signal came once the version's commit was under way, too late to undo it: "
            "the version is registered, and the command finished"
        )


def _import_model_libraries() -> None:
    """Import what training or loading a model imports (scikit-learn, and scipy.stats with it)
    before stop signals interrupt. scipy.stats builds its distributions by exec() of source
    text at import; a KeyboardInterrupt raised in such an exec marks it unhandled for the
    interpreter, which then ended the process by SIGINT (-2 to a parent) instead of exit 130,
    whatever the command did with it: 5 of 20 imports signalled 5-40 ms after staging."""
    import service.ml.pipeline  # noqa: F401


def _hold_from_a_version_commit(session: Session, stop: Interruption) -> None:
    """Have `stop` hold stop signals (`Interruption.hold`) from the start of the commit of a
    new model version in `session` (flushed before it: `registry.new_version`)."""
    flushed: list[ModelVersion] = []

    def note(done: Session, _context: object) -> None:
        flushed.extend(each for each in done.new if isinstance(each, ModelVersion))

    def forget(_done: Session) -> None:
        flushed.clear()

    def hold(committing: Session) -> None:
        if flushed or any(isinstance(each, ModelVersion) for each in committing.new):
            stop.hold()

    event.listen(session, "after_flush", note)  # `new` is still what was flushed
    event.listen(session, "after_commit", forget)
    event.listen(session, "after_rollback", forget)
    event.listen(session, "before_commit", hold)


def engine_or_exit(
    settings: Settings, *, upgrade: bool, wait: Callable[[Settings], None] | None = None
) -> Engine:
    """An engine on the configured database, connected once (and upgraded to the newest
    schema, with `upgrade`). A data directory that cannot be made or a database that cannot
    be opened is one line naming it, and exit code 2.

    `wait` (the worker's wait for its database server) runs first, and again whenever the
    server turns out to be away once it returned: it may go between its answer and this
    connection, and the worker exited 2 there ("cannot open the database"), which `tagflow
    up` takes for a configuration error and stops on. A configuration refusal stays exit 2."""
    while True:
        if wait is not None:
            wait(settings)
        try:
            return _connected_engine(settings, upgrade=upgrade)
        except SQLAlchemyError as exc:
            if wait is not None and is_server_away(settings.resolved_database_url, exc):
                continue  # gone again since `wait` returned: wait for it again
            _database_error(settings, exc)


def engine_unless_away(settings: Settings, *, upgrade: bool) -> Engine | None:
    """`engine_or_exit`'s one try, with None for a PostgreSQL server that is away (refused,
    unreachable, not answering), for the caller to wait for; any other failure is the same
    one line and exit code 2."""
    try:
        return _connected_engine(settings, upgrade=upgrade)
    except SQLAlchemyError as exc:
        if is_server_away(settings.resolved_database_url, exc):
            return None
        _database_error(settings, exc)


def _connected_engine(settings: Settings, *, upgrade: bool) -> Engine:
    """`engine_or_exit`'s one try: a data directory that cannot be made is one line and exit
    code 2; a database error is raised, for the caller to wait or to name it."""
    engine: Engine | None = None
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # Its models folder too: a file there ended training and imports in a traceback.
        settings.artifacts_dir.mkdir(exist_ok=True)
        engine = make_engine(settings.resolved_database_url)
        if upgrade:
            init_db(engine)
        else:
            engine.connect().close()
        return engine
    except OSError as exc:
        if settings.data_dir.is_file():
            reason = "not a directory"
        elif settings.artifacts_dir.is_file():
            reason = f"{settings.artifacts_dir} is not a directory"
        else:
            reason = exc.strerror or str(exc)
        print_error(
            f"cannot use the data directory {settings.data_dir}:", f"{reason} (TAGFLOW_DATA_DIR)"
        )
        raise typer.Exit(2) from None
    except SQLAlchemyError:
        if engine is not None:
            engine.dispose()  # tried again, under the worker's wait: not a pool per try
        raise


def _database_error(settings: Settings, exc: SQLAlchemyError) -> NoReturn:
    """The one line a database that cannot be opened is, in the server's words when it refuses
    the connection for its configuration, with exit code 2."""
    shown = shown_url(settings.resolved_database_url)
    if reason := configuration_refusal(exc):  # the server's reason alone, not libpq's
        print_error(
            f"the database at {shown} refused the connection:",
            f"{reason} (TAGFLOW_DATABASE_URL)",
        )
    else:
        print_error(f"cannot open the database {shown}:", first_line(exc))
    raise typer.Exit(2) from None


class CommandGroup(TyperGroup):
    """The `tagflow` command group: a database that becomes unavailable while a command runs
    (locked past SQLite's busy timeout, PostgreSQL gone or not answering) is one line and
    exit code 2, as one that cannot be opened is, not a page of traceback; so is a database
    a newer tagflow has upgraded, and a server that starts refusing the connection for its
    configuration (the database dropped), in its words. Any other database error is a bug,
    and keeps its traceback. Its list of commands shows each one's summary as one sentence."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None and command.short_help is None and command.help:
            # Typer's rich help keeps the docstring's line breaks in the list of commands, so
            # a summary over two source lines broke mid-sentence there ("With nothing\n new").
            summary = inspect.cleandoc(command.help).split("\n\n")[0]
            command.short_help = " ".join(summary.split())
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UnknownRevisionError as exc:  # a configuration error: the code is too old
            print_error("cannot use the database:", exc)
            raise typer.Exit(2) from None
        except SQLAlchemyError as exc:
            if not is_outage(exc):
                raise
            if reason := configuration_refusal(exc):
                # Not "try again": no wait cures it (the worker's job context, built after
                # its check, met it so, and `tagflow up` reads the worker's exit 2 as this).
                print_error(
                    "the database refused the connection:", f"{reason} (TAGFLOW_DATABASE_URL)"
                )
            else:
                print_error("the database is unavailable:", f"{first_line(exc)}; try again")
            raise typer.Exit(2) from None


def shown_url(url: str) -> str:
    """`url` without its password."""
    return make_url(url).render_as_string(hide_password=True)


def first_line(exc: SQLAlchemyError) -> str:
    """The driver's own message (e.g. "connection refused"), without SQLAlchemy's background
    link and statement."""
    cause = getattr(exc, "orig", None) or exc
    return str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__


def preflight_or_exit(
    settings: Settings,
    *,
    action: str,
    reach_redis: bool = False,
    before_database: Callable[[Settings], None] | None = None,
) -> None:
    """What the API (`serve`) or a worker (`work`) checks at start, checked before it starts,
    each failure one line with exit code 2: a Redis URL, the tag file, the data directory and
    the database, and with `reach_redis` that Redis answers (a worker has nothing to do
    without it; the API serves predictions and keeps review work in its outbox): exit code 1
    if not, an outage, as for a worker that loses its Redis mid-job, so that 2 stays a
    configuration error, which `tagflow up` does not restart its worker for.
    `before_database` runs before the database is checked (the worker's wait for it), and
    again should the server be away by the time it is checked (`engine_or_exit`)."""
    if not settings.redis_url:
        print_error(
            f"cannot {action}:",
            REDIS_URL_UNSET,
        )
        raise typer.Exit(2)
    cli_tags(settings)
    encoder_or_exit(settings, action=action)
    engine_or_exit(settings, upgrade=True, wait=before_database).dispose()
    if reach_redis:
        _redis_answers_or_exit(settings.redis_url, action=action)


def _redis_answers_or_exit(url: str, *, action: str) -> None:
    """Exit 1 if the Redis at `url` does not answer (an outage: started again, it may); exit 2
    if it answers with a refusal, a wrong password or a database it does not have, which a
    restart repeats: as exit 1, `tagflow up` started its worker again once a minute for ever."""
    from redis import Redis
    from redis.exceptions import RedisError

    try:
        with Redis.from_url(url, socket_connect_timeout=5) as redis:
            redis.ping()
    except RedisError as exc:
        if is_redis_refusal(exc):
            print_redis_refusal(url, exc, action=action)
            raise typer.Exit(2) from None
        # RQ's own message for this was "worker stopped: lost its Redis connection", for
        # a worker that never had one.
        print_error(
            f"cannot {action}: Redis at {shown_url(url)} does not answer:",
            f"{exc} (TAGFLOW_REDIS_URL)",
        )
        raise typer.Exit(1) from None


def print_redis_refusal(url: str, exc: BaseException, *, action: str) -> None:
    """The one line for a Redis that refused the connection, naming it without its password."""
    print_error(
        f"cannot {action}: Redis at {shown_url(url)} refused the connection:",
        f"{exc} (TAGFLOW_REDIS_URL)",
    )


def cli_actor(command: str) -> str:
    """Who changes production from this shell, for the registry's production history."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user with no name and no LOGNAME/USER set
        user = "an unnamed user"
    actor = f"{command} ({user}@{socket.gethostname()})"
    # A byte that is not UTF-8 in LOGNAME or USER (a Latin-1 "é") reaches Python as a lone
    # surrogate, which no database stores: shown as its escape ("caf\\xe9") instead.
    return os.fsencode(actor).decode("utf-8", "backslashreplace")


def cli_encoder(settings: Settings) -> Encoder:
    """The configured sentence encoder, with two threads and no cache (batch work)."""
    from service.ml.encoder import load_encoder

    try:
        return load_encoder(
            settings.resolved_encoder_dir, settings.encoder, threads=2, cache_size=0
        )
    except OSError as exc:
        print_error("cannot export the encoder:", _encoder_dir_fault(settings, exc))
        raise typer.Exit(2) from None


def encoder_or_exit(settings: Settings, *, action: str) -> None:
    """The ONNX encoder in TAGFLOW_ENCODER_DIR, exported there first if it is not there yet
    (as the API and the worker would at start). A folder that cannot be made or written, or
    an export this installation cannot make, is one line and exit code 2: the API's start-up
    ended in a traceback (exit 3), and the worker's first job in one."""
    from service.errors import UnavailableError
    from service.ml.encoder import ensure_onnx

    try:
        ensure_onnx(settings.resolved_encoder_dir, settings.encoder)
    except OSError as exc:
        print_error(f"cannot {action}:", _encoder_dir_fault(settings, exc))
        raise typer.Exit(2) from None
    except UnavailableError as exc:
        print_error(f"cannot {action}:", exc)
        raise typer.Exit(2) from None


def _encoder_dir_fault(settings: Settings, exc: OSError) -> str:
    return (
        f"{exc.strerror or exc}: {exc.filename or settings.resolved_encoder_dir} "
        "(TAGFLOW_ENCODER_DIR)"
    )


def cli_tags(settings: Settings) -> TagSet:
    """The approved tags; a missing or malformed tag file is one line and exit code 2 (a
    configuration error, told apart from a refusal, which is exit code 1)."""
    from service.tags import TagFileError, load_tags

    try:
        return load_tags(settings.tags_file)
    except TagFileError as exc:
        print_error("configuration error:", f"TAGFLOW_TAGS_FILE: {exc}")
        raise typer.Exit(2) from None


def metrics_table(metrics: dict, title: str) -> Table:
    """Per-class figures of an evaluation report, the summary in the caption; "-" for a class
    with no figures (no item carries it and the model never answered it)."""
    table = Table(title=title)
    for col in ("tag", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="right" if col != "tag" else "left")
    for tag, m in metrics["per_class"].items():
        figures = ("-" if m[k] is None else f"{m[k]:.3f}" for k in ("precision", "recall", "f1"))
        table.add_row(tag, *figures, str(m["support"]))
    auto = metrics["auto"]
    accepted = (
        f"auto: {auto['coverage']:.0%} accepted, at precision {auto['precision']:.3f}"
        if auto["precision"] is not None
        else "auto: no item accepted"
    )
    # A line each, so the caption fits 80 columns.
    lines = [
        f"weighted F1 {metrics['weighted_f1']:.3f}  accuracy {metrics['accuracy']:.3f}",
        accepted,
    ]
    if baselines := metrics.get("baselines", {}):
        lines.append(
            "baselines: " + "  ".join(f"{k} {v['weighted_f1']:.3f}" for k, v in baselines.items())
        )
    table.caption = "\n".join(lines)
    return table
