"""The Docker files, read as a reviewer who cannot run them must read them: every setting they
pass is one tagflow reads, every file the image copies is in the build context, PyTorch is the
pinned CPU build, and compose gives the worker time to finish the longest job it runs.
(deploy/prometheus is checked with promtool in tests/test_alerts.py.)"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import typer
import yaml
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import make_url

import service.jobs
from service.cli import app as cli_app
from service.config import SEED_DATASET, Settings
from service.db import POSTGRES_CONNECT_TIMEOUT_S
from service.jobs import LONGEST_JOB_TIMEOUT_S
from service.redis_server import free_port, redis_binary
from tests.conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
README = (ROOT / "README.md").read_text()
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
# Compose's own variables, read by compose or Prometheus, never by tagflow.
NOT_SETTINGS = {"TAGFLOW_METRICS_KEY"}


def _duration_s(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", text))


def test_every_tagflow_variable_the_deploy_files_set_is_a_setting() -> None:
    """A misspelt TAGFLOW_ variable is ignored without a word (extra="ignore")."""
    fields = {f"TAGFLOW_{name.upper()}" for name in Settings.model_fields}
    compose_env = {
        name
        for service in COMPOSE["services"].values()
        for name in service.get("environment", {})
        if name.startswith("TAGFLOW_")
    }
    named = set(re.findall(r"TAGFLOW_[A-Z_]+", DOCKERFILE)) | compose_env
    assert named and named - NOT_SETTINGS <= fields, sorted(named - NOT_SETTINGS - fields)


def test_the_image_copies_files_the_build_context_has() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [
        src
        for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE, flags=re.M)
        for src in line.split()[:-1]
    ]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert not any(fnmatch.fnmatch(src, pattern) for pattern in ignored), src


def test_the_image_installs_the_cpu_torch_the_makefile_pins() -> None:
    pinned = re.search(r"^TORCH \?= (torch==\S+)$", (ROOT / "Makefile").read_text(), re.M)
    installed = re.search(r"--index-url (\S+) (torch==\S+)", DOCKERFILE)
    assert pinned and installed
    assert installed.group(1) == "https://download.pytorch.org/whl/cpu"
    assert installed.group(2) == pinned.group(1)


def test_every_job_timeout_is_one_of_service_jobs() -> None:
    """The stop grace below is checked against the longest timeout service/jobs.py names: a
    job queued with a timeout of its own (a literal, a constant elsewhere) would escape it, as
    the prune's 60 min did the retraining's 30."""
    timeouts = []
    for path in sorted([*(ROOT / "service").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]):
        code = path.read_text()
        if "enqueue" in code or "prepare_data" in code:  # where RQ jobs are made
            found = re.findall(r"\b(?:job_)?timeout=([^,)\s]+)", code)
            timeouts += [(path.relative_to(ROOT).as_posix(), name) for name in found]
    # Retraining (by hand and automatic), comparison, prune, re-prioritisation, review.
    assert len(timeouts) >= 5, timeouts
    for path, name in timeouts:
        assert name.endswith("TIMEOUT_S") and hasattr(service.jobs, name), (path, name)
        assert getattr(service.jobs, name) <= LONGEST_JOB_TIMEOUT_S


def test_compose_lets_the_worker_finish_its_longest_job_and_runs_as_the_image_says() -> None:
    services = COMPOSE["services"]
    assert _duration_s(services["worker"]["stop_grace_period"]) > LONGEST_JOB_TIMEOUT_S
    # The API's last flush and outbox relay may each wait out a connection to a hanging
    # database before spilling; a SIGKILL before then loses the buffered predictions.
    assert _duration_s(services["api"]["stop_grace_period"]) > 2 * POSTGRES_CONNECT_TIMEOUT_S + 5
    # The API's schema comes first; the image's HTTP check means nothing without a server.
    assert services["worker"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["worker"]["healthcheck"] == {"disable": True}
    assert services["init"]["healthcheck"] == {"disable": True}
    # The database tagflow is given is the one the postgres service creates.
    url = services["api"]["environment"]["TAGFLOW_DATABASE_URL"]
    pg = services["postgres"]["environment"]
    expected = (
        f"postgresql+psycopg://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{pg['POSTGRES_DB']}"
    )
    assert url == expected
    assert services["api"]["command"][-4:] == ["--host", "0.0.0.0", "--port", "8000"]
    assert "8000:8000" in services["api"]["ports"]
    assert "127.0.0.1:8000/healthz" in DOCKERFILE
    # Secrets are given at run time, never baked into the image.
    assert not re.search(r"^ENV .*(API_KEYS|BUNDLE_KEY|PASSWORD)", DOCKERFILE, flags=re.M)


# Python with `import torch` failing as it does where PyTorch is not installed (the image's
# runtime): a finder ahead of the others refuses it, and it never enters sys.modules.
WITHOUT_TORCH = """
import sys

class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, _NoTorch())
"""
SERVE_AND_PREDICT = """
from fastapi.testclient import TestClient
from service.api.main import create_app
from service.config import Settings
import workers.maintenance_jobs, workers.review_jobs, workers.training_jobs, workers.worker
with TestClient(create_app(Settings())) as client:
    answer = client.post(
        "/predict",
        json={"title": "YOLO for counting cars", "description": "Object detection on video."},
        headers={"Authorization": "Bearer k"},
    )
    print(answer.status_code, answer.json()["tag"])
"""


def test_the_runtime_runs_without_pytorch_which_the_image_uninstalls(
    cli_env: dict[str, str], test_redis_url: str, tmp_path: Path
) -> None:
    """The image drops PyTorch after the ONNX export: training, the API and the worker's jobs
    must never import it, and a missing encoder must say why instead of a ModuleNotFoundError."""
    built = DOCKERFILE.split("FROM ${PYTHON_IMAGE} AS runtime")[0]
    assert built.index("ensure_onnx(") < built.index("pip uninstall --yes torch")
    env = {
        **os.environ,
        **cli_env,
        "TAGFLOW_API_KEYS": "client:k",
        "TAGFLOW_REDIS_URL": test_redis_url,
    }

    def run(code: str, *args: str, **changes: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", WITHOUT_TORCH + code, *args],
            env=env | changes,
            capture_output=True,
            text=True,
            timeout=300,
        )

    cli = "from service.cli import app\napp(prog_name='tagflow')"
    trained = run(cli, "train", "--data", str(SEED_DATASET), "--promote")
    assert trained.returncode == 0, trained.stderr
    served = run(SERVE_AND_PREDICT)
    assert served.returncode == 0, served.stderr
    assert served.stdout.split()[-2:] == ["200", "computer-vision"]

    no_encoder = run(cli, "train", "--data", str(SEED_DATASET), TAGFLOW_ENCODER_DIR=str(tmp_path))
    assert no_encoder.returncode == 1
    said = " ".join(no_encoder.stderr.split())
    assert "exporting it needs PyTorch, which this installation lacks" in said, said


def test_a_first_compose_run_is_told_how_to_set_the_api_keys() -> None:
    """Compose refuses to start without TAGFLOW_API_KEYS and prints the hint after `:?`
    ("required variable TAGFLOW_API_KEYS is missing a value: <hint>"): the hint says the form
    and where the command that makes keys is, and that command, run as the README shows it,
    gives keys the API accepts, one per role."""
    value = COMPOSE["services"]["api"]["environment"]["TAGFLOW_API_KEYS"]
    hint = re.fullmatch(r"\$\{TAGFLOW_API_KEYS:\?([^}$]+)\}", value)
    assert hint, value
    assert all(f"{role}:" in hint.group(1) for role in ("client", "reviewer", "admin"))
    assert "README.md, Docker" in hint.group(1)
    docker_section = README.split("\n## Docker\n", 1)[1]
    lines = re.findall(r"^export TAGFLOW_(?:API|METRICS)_KEYS?=.*$", docker_section, flags=re.M)
    assert len(lines) == 2, "the Docker section shows no way to set the keys"
    keys = subprocess.run(
        ["bash", "-c", f'{"; ".join(lines)}; printf %s "$TAGFLOW_API_KEYS"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    settings = Settings(_env_file=None, api_keys=keys)  # type: ignore[call-arg]
    assert sorted(caller.role.value for caller in settings.keys.values()) == [
        "admin",
        "client",
        "metrics",
        "reviewer",
    ]
    assert all(len(key) >= 32 for key in settings.keys)


def _stage(name: str) -> str:
    """The Dockerfile's stage `name` (builder, runtime), continuation lines joined."""
    stages = re.split(r"^FROM \S+ AS (\w+)$", DOCKERFILE.replace("\\\n", " "), flags=re.M)
    return dict(zip(stages[1::2], stages[2::2], strict=True))[name]


def _env(stage: str) -> dict[str, str]:
    """What the ENV instructions of `stage` set."""
    return {
        name: value
        for line in re.findall(r"^ENV (.+)$", stage, flags=re.M)
        for name, value in re.findall(r"(\w+)=(\S+)", line)
    }


def _runs(args: list[str]) -> bool:
    """Whether `tagflow ARGS...` names a command and options the CLI has (values are not
    checked: a compose variable or a shell substitution stands for them)."""
    command = typer.main.get_command(cli_app)
    words = iter(args)
    for word in words:
        if not hasattr(command, "commands"):  # a command, not a group
            if word.startswith("--"):
                option = next((p for p in command.params if word in p.opts), None)
                if option is None:
                    return False
                if not getattr(option, "is_flag", False):
                    next(words, None)
            continue
        if word not in command.commands:
            return False
        command = command.commands[word]
    return not hasattr(command, "commands")


def test_the_image_serves_what_it_builds_from_where_compose_keeps_it(
    sqlite_client: TestClient,
) -> None:
    """What test_deploy.py did not read: that the runtime looks for the encoder where the build
    exported it (else the first start exports again, which needs the PyTorch the image lacks),
    keeps its state in the directory its user owns and compose mounts for every tagflow
    service, runs offline, and that its commands and health checks are ones tagflow has."""
    builder, runtime = _stage("builder"), _stage("runtime")
    env = _env(runtime)
    exported = re.search(r"ensure_onnx\(Path\('([^']+)'\)", builder)
    assert exported, "the build exports no encoder"
    assert f"COPY --from=builder {exported.group(1)} {exported.group(1)}" in runtime
    assert env["TAGFLOW_ENCODER_DIR"] == exported.group(1)
    assert _env(builder)["HF_HUB_OFFLINE"] == env["HF_HUB_OFFLINE"] == "1"
    # State: the data directory is the non-root user's, and the volume compose mounts.
    data = env["TAGFLOW_DATA_DIR"]
    user = re.search(r"^USER (\w+)$", runtime, flags=re.M)
    assert user and f"chown {user.group(1)}:{user.group(1)} {data}" in runtime
    assert f'VOLUME ["{data}"]' in runtime
    tagflow = {name: service for name, service in COMPOSE["services"].items() if "build" in service}
    assert set(tagflow) == {"api", "worker", "init"}
    for name, spec in tagflow.items():
        assert spec["environment"].get("TAGFLOW_DATA_DIR", data) == data, name
        assert f"tagflow-data:{data}" in spec["volumes"], name
    # Commands: the image's and compose's are tagflow commands with options it has.
    cmd = re.search(r"^CMD (\[.+\])$", runtime, flags=re.M)
    assert cmd
    commands = [yaml.safe_load(cmd.group(1))] + [s["command"] for s in tagflow.values()]
    for command in commands:
        line = command[-1] if command[0] == "sh" else " ".join(command)
        args = re.search(r"\btagflow (.+?)(?: \"\$|$)", line)
        assert args and _runs(args.group(1).split()), command
    # Health: the image's and compose's checks ask a path that answers without a key.
    checks = [DOCKERFILE, *(str(s.get("healthcheck", {}).get("test")) for s in tagflow.values())]
    paths = {p for text in checks for p in re.findall(r"127\.0\.0\.1:8000(/\w+)", text)}
    assert paths == {"/healthz"}
    assert all(sqlite_client.get(path).status_code == 200 for path in paths)


def _interpolated(text: str, env: dict[str, str]) -> str:
    """`text` with compose's `${NAME}` and `${NAME:?hint}` replaced by `env`'s values (others
    kept)."""
    return re.sub(r"\$\{(\w+)(?::\?[^}]*)?\}", lambda m: env.get(m.group(1), m.group(0)), text)


def test_compose_guards_redis_and_postgres_with_the_passwords_the_readme_makes(
    tmp_path: Path,
) -> None:
    """Any container on compose's network could queue an RQ job (a pickle the worker runs) in a
    Redis without a password. The passwords the README's commands make are the ones the redis
    and postgres services are started with and the ones tagflow's URLs carry; a redis-server
    run with the compose file's own arguments refuses a client without it and answers one with
    the URL tagflow is given."""
    docker_section = README.split("\n## Docker\n", 1)[1]
    (line,) = re.findall(r"^export TAGFLOW_REDIS_PASSWORD=.*$", docker_section, flags=re.M)
    assert "TAGFLOW_POSTGRES_PASSWORD=" in line
    made = subprocess.run(
        [
            "bash",
            "-c",
            f'{line}; printf "%s %s" "$TAGFLOW_REDIS_PASSWORD" "$TAGFLOW_POSTGRES_PASSWORD"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    env = dict(zip(["TAGFLOW_REDIS_PASSWORD", "TAGFLOW_POSTGRES_PASSWORD"], made, strict=True))
    assert all(len(password) >= 32 for password in env.values())
    services = COMPOSE["services"]
    tagflow_env = {k: _interpolated(v, env) for k, v in services["api"]["environment"].items()}
    pg = {k: _interpolated(v, env) for k, v in services["postgres"]["environment"].items()}
    database = make_url(tagflow_env["TAGFLOW_DATABASE_URL"])
    assert database.password == pg["POSTGRES_PASSWORD"] == env["TAGFLOW_POSTGRES_PASSWORD"]
    assert services["worker"]["environment"] == services["api"]["environment"]
    redis_env = {k: _interpolated(v, env) for k, v in services["redis"]["environment"].items()}
    assert redis_env["REDISCLI_AUTH"] == env["TAGFLOW_REDIS_PASSWORD"]  # the health check's

    command = [_interpolated(word, env) for word in services["redis"]["command"]]
    assert command[0] == "redis-server"
    port = free_port()
    server = subprocess.Popen(
        [
            redis_binary(),
            *command[1:],
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = tagflow_env["TAGFLOW_REDIS_URL"].replace("@redis:6379", f"@127.0.0.1:{port}")
        with Redis.from_url(url, socket_timeout=5, retry_on_timeout=True) as client:
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert client.ping()
                    break
                except redis.exceptions.ConnectionError:
                    assert time.monotonic() < deadline, "the compose redis did not start"
                    time.sleep(0.05)
        with (
            Redis(port=port, socket_timeout=5) as anonymous,
            pytest.raises(redis.exceptions.AuthenticationError),
        ):
            anonymous.set("tagflow:job", "pickle")
    finally:
        server.terminate()
        server.wait(timeout=10)
