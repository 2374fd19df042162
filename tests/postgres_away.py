"""A PostgreSQL server away, then back: for the tests of what waits for it (the worker, `up`)."""

from __future__ import annotations

import socket

from sqlalchemy.engine import make_url

from service.config import Settings
from tests.conftest import POSTGRES_URL
from tests.freezable_proxy import FreezableProxy


def refused_postgres_url() -> tuple[str, int]:
    """A PostgreSQL URL on a port nothing listens on (yet), and the port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = make_url(POSTGRES_URL).set(host="127.0.0.1", port=port)
    return url.render_as_string(hide_password=False), port


class DatabaseComesBack:
    """A wait for the database, as the worker's: call `after` calls return at once (the
    server answered, and goes before the next connection: its URL is on a port nothing
    listens on); the call after that starts a proxy to the test PostgreSQL on that port, the
    server back, and returns."""

    def __init__(self, port: int, *, after: int) -> None:
        self.port, self.after = port, after
        self.calls = 0
        self.proxy: FreezableProxy | None = None

    def __call__(self, settings: Settings) -> None:
        self.calls += 1
        if self.calls > self.after and self.proxy is None:
            target = make_url(POSTGRES_URL)
            self.proxy = FreezableProxy(
                target.host or "127.0.0.1", target.port or 5432, listen_on=self.port
            )

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
