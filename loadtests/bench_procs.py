"""Child processes of the benchmark: servers under test, timed one-shot commands, machine load."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages: how busy the machine was (other jobs disturb timings)."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def memory_mb(pid: int) -> dict[str, float]:
    """Resident set size now (VmRSS) and its peak so far (VmHWM) of one process, in MB."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            fields[key] = round(int(value.split()[0]) / 1024.0, 1)
    return {"rss_mb": fields["VmRSS"], "peak_rss_mb": fields["VmHWM"]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_env(overrides: dict[str, str]) -> dict[str, str]:
    """This process's environment without any inherited TAGFLOW_* setting, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAGFLOW_")}
    env.update({"HF_HUB_OFFLINE": "1", "COLUMNS": "200"})
    env.update(overrides)
    return env


@dataclass
class Timed:
    """A finished one-shot command."""

    seconds: float
    returncode: int
    output: str


def run_timed(cmd: list[str], *, env: dict[str, str], cwd: Path, log_path: Path) -> Timed:
    """Run `cmd` to completion, wall-clock timed, output kept in `log_path`."""
    start = time.perf_counter()
    done = subprocess.run(
        cmd,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    log_path.write_text(done.stdout)
    return Timed(seconds=round(seconds, 2), returncode=done.returncode, output=done.stdout)


class ServerError(RuntimeError):
    """A server under test exited or never became ready."""


@dataclass
class Server:
    """A server process under test, listening on 127.0.0.1:`port`."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    started: float
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, *, path: str = "/readyz", timeout_s: float = 300.0) -> float:
        """Seconds from process start until `path` first answered 200."""
        deadline = self.started + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.perf_counter() < deadline:
                if self.process.poll() is not None:
                    raise ServerError(
                        f"{self.name} exited with {self.process.returncode}; see {self.log_path}"
                    )
                try:
                    if client.get(self.url + path).status_code == 200:
                        return round(time.perf_counter() - self.started, 2)
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
        self.stop()
        raise ServerError(f"{self.name} not ready after {timeout_s}s; see {self.log_path}")

    def memory(self) -> dict[str, float]:
        return memory_mb(self.process.pid)

    def scoring_totals(self, headers: dict[str, str]) -> dict[str, float] | None:
        """tagflow's scoring counters from /metrics (items, encoded, triage and encoder CPU
        seconds); None for a server without them (the naive reference)."""
        with httpx.Client(timeout=5.0) as client:
            response = client.get(self.url + "/metrics", headers=headers)
        if response.status_code != 200:
            return None
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                key = SCORING_SAMPLES.get((sample.name, sample.labels.get("stage", "")))
                if key:
                    totals[key] = sample.value
        return totals if len(totals) == len(SCORING_SAMPLES) else None

    def stop(self) -> None:
        """SIGINT (uvicorn's graceful shutdown), then SIGKILL if it does not exit in 30 s."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# (sample name, stage label) -> key in `Server.scoring_totals`
SCORING_SAMPLES = {
    ("tagflow_scored_items_total", ""): "items",
    ("tagflow_encoded_items_total", ""): "encoded",
    ("tagflow_scoring_cpu_seconds_total", "triage"): "triage_cpu_s",
    ("tagflow_scoring_cpu_seconds_total", "encode"): "encode_cpu_s",
}


def start_server(
    name: str, cmd: list[str], *, env: dict[str, str], port: int, cwd: Path, log_dir: Path
) -> Server:
    """Start `cmd` in the background, its output in `log_dir/<name>.log`."""
    log_path = log_dir / f"{name}.log"
    handle = log_path.open("wb")
    started = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)
    handle.close()
    return Server(name=name, process=process, port=port, started=started, log_path=log_path)
