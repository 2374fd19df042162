"""`tagflow up` as a user runs it: a real process with an embedded Redis, a worker and the API;
stopped by SIGTERM or killed, it leaves nothing running; one per data directory."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import typer
from redis import Redis
from rq import Queue, Worker
from rq.job import JobStatus
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from service.cli import app
from service.cli.up import production_model_once_answered, production_model_unless_away
from service.config import Settings
from service.outbox import LABELING_QUEUE
from service.processes import sole_owner
from service.redis_server import free_port
from service.retention import PRUNE_JOB
from tests.conftest import KEYS, MISCONFIGURED_POSTGRES, POSTGRES_URL, auth
from tests.freezable_proxy import FreezableProxy
from tests.held_job import HELD_JOB
from tests.postgres_away import DatabaseComesBack, refused_postgres_url
from tests.waiting import wait_until

ITEM = b'{"title": "Tracking experiments with MLflow", "description": "Model registry."}'


@pytest.fixture
def up_env(tmp_path: Path, encoder_dir: Path) -> dict[str, str]:
    """A user's environment: keys, a data directory, and no Redis URL (so `up` embeds one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGFLOW_")}
    return {
        **env,
        "HF_HUB_OFFLINE": "1",
        "TAGFLOW_API_KEYS": ",".join(f"{role}:{key}" for role, key in KEYS.items()),
        "TAGFLOW_DATA_DIR": str(tmp_path / "var"),
        "TAGFLOW_ENCODER_DIR": str(encoder_dir),
    }


def _start(
    env: dict[str, str], log: Path, *, terminal: bool = False, port: int | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`up` on a free port (`port`: that one); with `terminal`, leading a process group of its
    own, as a shell starts a foreground command, so that a test can send it Ctrl-C's SIGINT
    as a terminal does (to the whole group)."""
    port = free_port() if port is None else port
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "up", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=terminal,
        )
    return process, f"http://127.0.0.1:{port}"


def _printed_url(process: subprocess.Popen[bytes], log: Path, *, after: int) -> str:
    """The API's address as `up` prints it, in what `log` got past byte `after`."""
    deadline = time.monotonic() + 180  # printed once the seed model is trained
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        with log.open("rb") as out:
            out.seek(after)
            found = re.search(rb"API on (http://127\.0\.0\.1:\d+) ", out.read())
        if found:
            return found.group(1).decode()
        time.sleep(0.2)
    raise AssertionError(f"no address printed:\n{log.read_text()}")


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 180  # the first start trains the seed model
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"not ready in time:\n{log.read_text()}")


def _children(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The worker and the embedded redis-server, both started by `up`."""
    children = psutil.Process(process.pid).children(recursive=True)
    names = sorted(" ".join(c.cmdline()) for c in children)
    assert any("redis-server" in n for n in names) and any("worker" in n for n in names), names
    return children


def _gone(processes: list[psutil.Process], within_s: float) -> list[str]:
    """The processes still running after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    alive = processes
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _running(p)]
    return [" ".join(p.cmdline()) for p in alive if _running(p)]


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _predict(url: str) -> dict[str, str]:
    request = urllib.request.Request(
        f"{url}/predict",
        data=ITEM,
        headers={**auth("client"), "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(response.headers) | {"status": str(response.status)}


@pytest.fixture
def started(up_env: dict[str, str], tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The `up` processes a test starts, killed (with their children) if the test fails."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            process.wait()


def test_up_stops_cleanly_on_sigterm_and_leaves_nothing_behind_when_killed(
    up_env: dict[str, str], tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    log = tmp_path / "up.log"
    first, url = _start(up_env, log)
    started.append(first)
    _wait_ready(first, url, log)
    assert _predict(url)["status"] == "200"

    # A second `up` on the same data directory would train and promote beside the first, and
    # start a second Redis on the same files: refused at once.
    second = subprocess.run(
        [sys.executable, "-m", "service.cli", "up", "--port", str(free_port())],
        env=up_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"is in use by tagflow up (pid {first.pid})" in " ".join(second.stderr.split())

    # SIGTERM (a service manager's stop) ends it as Ctrl-C does: worker and Redis stopped too,
    # in that order, however many times it is sent (an impatient operator, a supervisor).
    children = _children(first)
    logged = log.stat().st_size
    for _ in range(3):
        first.send_signal(signal.SIGTERM)
        time.sleep(0.3)
    assert first.wait(timeout=60) == 0, "died by the signal: no cleanup ran"
    assert _gone(children, within_s=5) == []
    with log.open("rb") as out:
        out.seek(logged)
        shutdown = out.read().decode(errors="replace")
    # Redis stopped last: the worker never lost it while stopping.
    assert "Error 111" not in shutdown and "ConnectionError" not in shutdown, shutdown

    # SIGKILL runs no cleanup at all: the children go with it, and a restart is not refused.
    again, url = _start(up_env, log)
    started.append(again)
    _wait_ready(again, url, log)
    children = _children(again)
    again.kill()
    again.wait(timeout=10)
    assert _gone(children, within_s=15) == []

    # Development mode (no keys anywhere), stopped with Ctrl-C from a terminal: SIGINT to the
    # whole process group. The keys are printed once it owns the data directory, and the
    # worker stops after the API, told by `up`, not by the terminal at the same moment.
    # With `--port 0`, the address it prints is the port the system picked, and served.
    dev_env = {k: v for k, v in up_env.items() if k != "TAGFLOW_API_KEYS"}
    began = log.stat().st_size
    last, _ = _start(dev_env, log, terminal=True, port=0)
    started.append(last)
    url = _printed_url(last, log, after=began)
    assert not url.endswith(":0"), url
    _wait_ready(last, url, log)
    children = _children(last)
    # Neither child is in the terminal's process group, so Ctrl-C reaches `up` alone.
    assert [os.getpgid(c.pid) == last.pid for c in children] == [False] * len(children)
    logged = log.stat().st_size
    os.killpg(last.pid, signal.SIGINT)
    assert last.wait(timeout=60) == 0
    assert _gone(children, within_s=5) == []
    output = log.read_bytes()
    text = output.decode(errors="replace")
    assert "generated keys, new at every start" in text and "client:client-" in text
    shutdown = output[logged:].decode(errors="replace")  # the size is in bytes
    assert shutdown.index("Shutting down") < shutdown.index("warm shut down requested"), shutdown


def _up_with_its_port_held(env: dict[str, str | None]) -> str:
    """`tagflow up`'s output when its port is taken: it stops right after deciding on
    development mode, before any start-up work."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        result = CliRunner().invoke(app, ["up", "--port", port], env=env)
    assert result.exit_code == 2 and "cannot listen" in result.output, result.output
    return result.output


@pytest.mark.parametrize("key_file", [False, True])
def test_up_runs_in_development_mode_only_without_keys(
    key_file: bool, tmp_path: Path, encoder_dir: Path
) -> None:
    """A key file is keys: `up` then neither generates keys nor announces development mode."""
    path = tmp_path / "keys"
    path.write_text("client/search:k-search\n")
    output = _up_with_its_port_held(
        {
            "TAGFLOW_API_KEYS": "",
            "TAGFLOW_DEV": "0",
            "TAGFLOW_API_KEYS_FILE": str(path) if key_file else "",
            "TAGFLOW_DATA_DIR": str(tmp_path / "var"),
            "TAGFLOW_ENCODER_DIR": str(encoder_dir),
        }
    )
    assert ("development mode" in output) is not key_file
    assert "client:client-" not in output  # keys are printed only by an `up` that starts


def test_an_up_refused_for_a_busy_data_directory_prints_no_keys(
    tmp_path: Path, encoder_dir: Path
) -> None:
    """Keys printed by an `up` that then does not start would be keys nothing accepts."""
    env = {
        "TAGFLOW_API_KEYS": "",
        "TAGFLOW_DEV": "0",
        "TAGFLOW_DATA_DIR": str(tmp_path / "var"),
        "TAGFLOW_ENCODER_DIR": str(encoder_dir),
    }
    with sole_owner((tmp_path / "var").resolve(), what="tagflow up"):
        result = CliRunner().invoke(app, ["up", "--port", str(free_port())], env=env)
    assert result.exit_code == 2 and "is in use by tagflow up" in result.output, result.output
    assert "development mode" in result.output and "client:client-" not in result.output


def test_up_uses_the_keys_in_a_dot_env_file(
    tmp_path: Path, encoder_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys in `.env` are keys: no development mode, no generated keys."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("TAGFLOW_API_KEYS=admin:from-dot-env-0123456789\n")
    output = _up_with_its_port_held(
        {
            "TAGFLOW_API_KEYS": None,
            "TAGFLOW_API_KEYS_FILE": None,
            "TAGFLOW_DEV": None,
            "TAGFLOW_DATA_DIR": str(tmp_path / "var"),
            "TAGFLOW_ENCODER_DIR": str(encoder_dir),
        }
    )
    assert "development mode" not in output and "client:client-" not in output


def _post(url: str, path: str, role: str) -> dict[str, object]:
    request = urllib.request.Request(f"{url}{path}", data=b"", headers=auth(role), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def _job_state(url: str, job_id: object) -> str:
    request = urllib.request.Request(f"{url}/jobs/{job_id}", headers=auth("admin"))
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["status"])


def _retraining_started(url: str) -> None:
    """Ask for a retraining and return once the worker runs it."""
    # Forced: with nothing new since the seed model, a retraining trains nothing and ends.
    job_id = _post(url, "/models/retrain?force=true", "admin")["job_id"]
    deadline = time.monotonic() + 60
    while (state := _job_state(url, job_id)) == "queued" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state == "started", state


def _versions(env: dict[str, str]) -> list[str]:
    listed = CliRunner().invoke(app, ["models", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    return sorted(m["version"] for m in json.loads(listed.stdout)["models"])


def test_up_lets_the_workers_job_finish_unless_asked_twice(
    up_env: dict[str, str],
    tmp_path: Path,
    started: list[subprocess.Popen[bytes]],
) -> None:
    """Stopped during a retraining, `up` waits for it (a cut retraining would be lost work
    and a failed job); a second Ctrl-C stops the worker at once."""
    log = tmp_path / "up.log"
    first, url = _start(up_env, log, terminal=True)
    started.append(first)
    _wait_ready(first, url, log)
    _retraining_started(url)
    children = _children(first)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=600) == 0
    assert _gone(children, within_s=5) == []
    assert "the worker is finishing its job" in log.read_text()
    assert _versions(up_env) == ["v0001", "v0002"]  # the retraining's candidate is registered

    # The job to cut must outlast the stop on any machine: one held until the test releases
    # it, which it never does. (A retraining on the shared dataset, used before, had to
    # outlast the 3.5 s between the two Ctrl-C: a machine fast enough would register it.)
    logged = log.stat().st_size
    again, url = _start(up_env, log, terminal=True)
    started.append(again)
    _wait_ready(again, url, log)
    found = re.search(r"embedded Redis at (redis://\S+) ", _said_since(log, logged))
    assert found, log.read_text()
    release = tmp_path / "never-released"
    with Redis.from_url(found.group(1)) as redis:
        held = Queue(LABELING_QUEUE, connection=redis).enqueue(HELD_JOB, str(release))
        wait_until(
            lambda: held.get_status(refresh=True) == JobStatus.STARTED,
            what="the worker to run the held job",
        )
    children = _children(again)
    logged = log.stat().st_size
    os.killpg(again.pid, signal.SIGINT)
    wait_until(
        lambda: (
            "the worker is finishing its job" in _said_since(log, logged)
            or again.poll() is not None
        ),
        what="up to wait for the worker's job",
        timeout_s=30,
    )
    assert again.poll() is None, log.read_text()
    os.killpg(again.pid, signal.SIGINT)
    assert again.wait(timeout=20) == 0  # the held job would hold it for 120 s
    assert _gone(children, within_s=5) == []
    assert "stopping the worker now" in _said_since(log, logged)


def _said_since(log: Path, offset: int) -> str:
    return log.read_bytes()[offset:].decode(errors="replace")


def _worker_of(process: subprocess.Popen[bytes]) -> psutil.Process:
    [worker] = [
        c
        for c in psutil.Process(process.pid).children()
        if _running(c) and "worker" in " ".join(c.cmdline())  # a zombie has no command line
    ]
    return worker


def test_up_starts_another_worker_when_its_worker_stops_on_its_own(
    up_env: dict[str, str], tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """A worker that crashed, or ended on a Redis lost between jobs (exit 1, for a supervisor
    to restart it), left `up` serving without one and saying nothing: review work piled up
    in Redis unseen. `up` now says so and starts another."""
    log = tmp_path / "up.log"
    process, url = _start(up_env, log)
    started.append(process)
    _wait_ready(process, url, log)
    first = _worker_of(process)
    first.kill()
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, log.read_text()
        try:
            second = _worker_of(process)
            if second.pid != first.pid:
                break
        except ValueError:  # none running between the two
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    assert "the worker stopped on its own (exit -9): starting another in 2 s" in log.read_text()
    assert _predict(url)["status"] == "200"
    children = _children(process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, log.read_text()
    assert _gone(children, within_s=5) == []
    assert "starting another" not in log.read_text().split("Shutting down")[-1]


def _said_within(log: Path, text: str, process: subprocess.Popen[bytes], within_s: float) -> str:
    """`log` once it has `text` (the process still running)."""
    deadline = time.monotonic() + within_s
    while text not in (said := log.read_text()):
        assert time.monotonic() < deadline and process.poll() is None, said[-3000:]
        time.sleep(0.1)
    return said


def test_a_stop_while_up_trains_the_seed_starts_no_worker_and_ends_up(
    up_env: dict[str, str], tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """A SIGTERM while `up` trained the seed model was taken only after the worker had been
    started, and the stop then ignored the signal (a stopping `up` ignores further stops),
    which the worker inherited across exec: its SIGTERM was lost, and `up` waited for it as
    for a job running (the longest job's timeout), with nothing left to serve."""
    log = tmp_path / "up.log"
    process, _ = _start(up_env, log)
    started.append(process)
    _said_within(log, "training the bundled seed", process, 60)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, log.read_text()
    assert "finishing its job" not in log.read_text()


def test_up_started_while_its_postgres_is_away_waits_for_it(
    up_env: dict[str, str], tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """`tagflow up` on a PostgreSQL server that was away exited 2 at start ("cannot open the
    database"), where `tagflow worker` waits: under a supervisor, started again and again. Now
    it says so once, starts nothing (no Redis, no worker) and waits, goes on once the server
    answers (here: a proxy to the test PostgreSQL listening on the refused port), and a
    SIGTERM stops it, exit 0."""
    with socket.socket() as probe:  # a port nothing listens on, yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = make_url(POSTGRES_URL).set(host="127.0.0.1", port=port)
    env = {**up_env, "TAGFLOW_DATABASE_URL": url.render_as_string(hide_password=False)}
    log = tmp_path / "up.log"
    process, _ = _start(env, log)
    started.append(process)
    target = make_url(POSTGRES_URL)
    proxy: FreezableProxy | None = None
    try:
        _said_within(log, "waiting for it before starting anything", process, 60)
        time.sleep(3)  # a retry or two: still waiting, said once, nothing started
        assert process.poll() is None, log.read_text()
        assert psutil.Process(process.pid).children(recursive=True) == []
        proxy = FreezableProxy(target.host or "127.0.0.1", target.port or 5432, listen_on=port)
        _said_within(log, "up: the database answers after", process, 30)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if proxy is not None:
            proxy.close()
    said = log.read_text()
    assert process.returncode == 0, said[-3000:]
    assert "cannot open the database" not in said
    assert said.count("the database is unavailable") == 1, said[-3000:]


def test_ups_first_look_at_a_postgres_server_away_is_none_to_wait_for(
    make_settings: Callable[..., Settings],
) -> None:
    """`up` asked whether the server answered, then, in a second connection, whether a model is
    in production: a server gone between the two was "cannot open the database", exit 2. One
    connection now answers both, and a server away is None (waited for), never exit 2."""
    url, _ = refused_postgres_url()
    assert production_model_unless_away(make_settings(database_url=url)) is None


@pytest.mark.parametrize(("url", "reason"), MISCONFIGURED_POSTGRES)
def test_ups_first_look_at_a_misconfigured_postgres_is_exit_2(
    make_settings: Callable[..., Settings],
    capsys: pytest.CaptureFixture[str],
    url: str,
    reason: str,
) -> None:
    with pytest.raises(typer.Exit) as exited:
        production_model_unless_away(make_settings(database_url=url))
    assert exited.value.exit_code == 2
    assert f"refused the connection: {reason}" in capsys.readouterr().err


def test_a_postgres_server_gone_after_ups_wait_is_waited_for_again(
    make_settings: Callable[..., Settings], empty_postgres_url: str
) -> None:
    """After its wait, `up` looked for a production model in a new connection: a server gone
    in between was exit 2. Now it waits again, and reads the answer once the server is back."""
    url, port = refused_postgres_url()
    wait = DatabaseComesBack(port, after=1)
    try:
        assert production_model_once_answered(make_settings(database_url=url), wait=wait) is False
    finally:
        wait.close()
    assert wait.calls == 2 and wait.proxy is not None


@pytest.mark.parametrize(("url", "reason"), MISCONFIGURED_POSTGRES)
def test_up_on_a_misconfigured_database_exits_2_at_once(
    up_env: dict[str, str],
    tmp_path: Path,
    started: list[subprocess.Popen[bytes]],
    url: str,
    reason: str,
) -> None:
    """A database or role that does not exist: psycopg gives it no SQLSTATE, as for a refused
    port, and `up` waited for it as for a server away, without end. Now one line naming the
    database (no password) and the server's reason, exit 2, with nothing started."""
    log = tmp_path / "up.log"
    process, _ = _start({**up_env, "TAGFLOW_DATABASE_URL": url}, log)
    started.append(process)
    process.wait(timeout=30)  # a waiting `up` never ends by itself
    said = log.read_text()
    assert process.returncode == 2, said[-3000:]
    shown = make_url(url).render_as_string(hide_password=True)
    assert f"the database at {shown} refused the connection: {reason}" in said, said
    assert "s3cret-pw" not in said
    assert "unavailable" not in said and "embedded Redis" not in said, said[-3000:]


@pytest.fixture
def throwaway_postgres() -> Iterator[str]:
    """A database of its own on the test PostgreSQL server, for a test to drop (its URL);
    dropped at the end in any case."""
    name = f"tagflow_up_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def test_up_stops_with_exit_2_when_its_worker_meets_a_configuration_refusal(
    up_env: dict[str, str],
    tmp_path: Path,
    started: list[subprocess.Popen[bytes]],
    throwaway_postgres: str,
) -> None:
    """The database dropped under a running `up`: its worker stops on the refusal (exit 2),
    and `up` started it again, each time to the same line, once a minute without end, while
    it looked alive. Now `up` says so, pointing at the worker's line, and stops everything as
    on Ctrl-C (the API shut down cleanly, the worker and Redis gone), exit 2.

    Dropped (WITH (FORCE): `up`'s connections closed) once `up` is ready, so the refusal is
    met by the worker, not by `up`'s own check at start; a job sent to the worker's queue in
    the embedded Redis then makes it use the database."""
    log = tmp_path / "up.log"
    process, url = _start({**up_env, "TAGFLOW_DATABASE_URL": throwaway_postgres}, log)
    started.append(process)
    _wait_ready(process, url, log)
    children = _children(process)
    found = re.search(r"embedded Redis at (redis://\S+) ", log.read_text())
    assert found, log.read_text()
    database = make_url(throwaway_postgres).database
    with Redis.from_url(found.group(1)) as redis:
        # The API is ready before its worker is: dropped before, the worker's start-up check
        # met the refusal instead (also exit 2), not a running worker.
        deadline = time.monotonic() + 60
        while Worker.count(connection=redis) == 0:
            assert time.monotonic() < deadline and process.poll() is None, log.read_text()
            time.sleep(0.2)
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE "{database}" WITH (FORCE)'))
        finally:
            admin.dispose()
        Queue(LABELING_QUEUE, connection=redis).enqueue(PRUNE_JOB, 30)
    process.wait(timeout=120)  # an `up` restarting its worker never ends by itself
    said = log.read_text()
    assert process.returncode == 2, said[-3000:]
    shown = make_url(throwaway_postgres).render_as_string(hide_password=True)
    worker_said = (
        f'worker: the database at {shown} refused the connection: database "{database}" '
        "does not exist (TAGFLOW_DATABASE_URL); stopping (exit 2)"
    )
    up_said = (
        "the worker stopped on a configuration error (exit 2; its line above says which: a "
        "database that refuses the connection is fixed in TAGFLOW_DATABASE_URL), which "
        "starting it again would repeat: stopping tagflow up"
    )
    assert worker_said in said and up_said in said, said[-3000:]
    assert "starting another" not in said, said[-3000:]
    # In that order, then the API's clean shutdown (its lifespan ran to the end).
    shutdown = said[said.index(worker_said) :]
    assert shutdown.index(up_said) < shutdown.index("Shutting down"), shutdown
    assert "Application shutdown complete" in shutdown, shutdown
    assert _gone(children, within_s=5) == []


def test_an_embedded_redis_that_cannot_have_its_folder_is_one_line(
    up_env: dict[str, str], tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """A file where the embedded Redis keeps its files (or a folder `up` may not write in)
    ended `up` in a FileExistsError or PermissionError traceback; now one line naming the data
    directory, exit 2, before the seed is trained."""
    redis_dir = tmp_path / "var" / "redis"
    redis_dir.parent.mkdir()
    redis_dir.write_text("not a folder")
    log = tmp_path / "up.log"
    process, _ = _start(up_env, log)
    started.append(process)
    assert process.wait(timeout=60) == 2, log.read_text()
    said = log.read_text()
    assert said.endswith(
        f"cannot use the data directory {tmp_path / 'var'}: File exists: {redis_dir} "
        "(TAGFLOW_DATA_DIR)\n"
    ), said
    assert list((tmp_path / "var" / "models").iterdir()) == []  # no seed trained


def test_a_tag_file_without_the_seeds_tags_stops_up_in_a_few_lines(
    up_env: dict[str, str], tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    """A team's own tag list and no model yet: training the bundled seed, whose tags it does
    not approve, was a DatasetError traceback of a hundred lines. Now the validation report
    under one line saying what to do, exit 2, with the embedded Redis stopped."""
    tags = tmp_path / "tags.csv"
    tags.write_text("tag,description\nsports,Games\nother,The rest\n")
    log = tmp_path / "up.log"
    process, _ = _start({**up_env, "TAGFLOW_TAGS_FILE": str(tags)}, log)
    started.append(process)
    assert process.wait(timeout=120) == 2, log.read_text()
    said = log.read_text()
    assert "Traceback" not in said and "│" not in said, said
    assert (
        "cannot train the bundled seed (promote a model trained on a file of yours first: "
        "tagflow train --data FILE --promote):\nvalidation of "
    ) in said, said
    assert "tag 'mlops' is not in the approved list" in said
    redis_dir = str((tmp_path / "var" / "redis").resolve())
    left = [p for p in psutil.process_iter(["cmdline"]) if redis_dir in (p.info["cmdline"] or [])]
    assert _gone(left, within_s=10) == []
