"""The embedded Redis (service/redis_server.py): the real redis-server binary, reachable only
with the password in its URL."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from service.redis_server import EmbeddedRedis


def test_the_embedded_redis_needs_its_password_and_does_not_show_it(tmp_path: Path) -> None:
    """RQ jobs are pickles the worker runs: another local account must not be able to queue
    one. Nor read the password off the process list."""
    server = EmbeddedRedis(tmp_path / "redis")
    url = server.start()
    try:
        anyone = redis.Redis(host="127.0.0.1", port=server.port)
        with pytest.raises(redis.AuthenticationError):
            anyone.rpush("rq:queue:labeling", "a job")
        assert redis.Redis.from_url(url).ping()
        assert server.process is not None
        cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        assert server.password.encode() not in cmdline
        config = next((tmp_path / "redis").glob("*.conf"))
        assert config.stat().st_mode & 0o077 == 0  # readable by this user alone
    finally:
        server.stop()
    assert EmbeddedRedis(tmp_path / "redis").password != server.password  # new at each start
