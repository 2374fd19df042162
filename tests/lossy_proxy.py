"""A test-only HTTP proxy that loses answers: what an unreliable network does to a page.

The browser loads the page through the proxy, so every request the page makes goes through it
too. A request matched by a rule is either forwarded and its answer dropped (the server did
the work; the browser sees the connection close with nothing read), or dropped before it
reaches the server. Every answer is sent with `Connection: close`, so the browser never reuses
a connection and never resends a request by itself: what it sees is what the page must cope
with.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclass
class Rule:
    """What happens to the next `count` requests `method path`: `forward` True loses only the
    answer (the server still gets the request), False loses the request itself. With `hold`
    set, the connection stays open, unanswered, until the event is set (a network that went
    silent), and then closes."""

    method: str
    path: str
    forward: bool
    count: int
    hold: threading.Event | None = None


class LossyProxy:
    """Forwards HTTP/1.1 requests to `upstream` and loses the ones its rules match."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname and parts.port
        self.upstream = (parts.hostname, parts.port)
        self.rules: list[Rule] = []
        self.lost: list[str] = []  # "METHOD path [answer|request]", in the order lost
        self.seen: list[str] = []  # "METHOD path" of every request, in the order they came
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def lose_answers(self, method: str, path: str, count: int = 1) -> None:
        """The next `count` requests reach the server; their answers are lost."""
        with self.lock:
            self.rules.append(Rule(method, path, forward=True, count=count))

    def lose_requests(self, method: str, path: str, count: int = 1) -> None:
        """The next `count` requests are lost on the way: the server never sees them."""
        with self.lock:
            self.rules.append(Rule(method, path, forward=False, count=count))

    def hold_answers(self, method: str, path: str, count: int = 1) -> threading.Event:
        """The next `count` requests reach the server; their answers never come, and their
        connections stay open until the event returned is set."""
        released = threading.Event()
        with self.lock:
            self.rules.append(Rule(method, path, forward=True, count=count, hold=released))
        return released

    def hold_requests(self, method: str, path: str, count: int = 1) -> threading.Event:
        """The next `count` requests never reach the server, and their connections stay open,
        unanswered, until the event returned is set (a request lost in a silent network)."""
        released = threading.Event()
        with self.lock:
            self.rules.append(Rule(method, path, forward=False, count=count, hold=released))
        return released

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def _rule_for(self, method: str, path: str) -> Rule | None:
        with self.lock:
            self.seen.append(f"{method} {path}")
            for rule in self.rules:
                if rule.count > 0 and (rule.method, rule.path) == (method, path):
                    rule.count -= 1
                    kind = "answer" if rule.forward else "request"
                    self.lost.append(f"{method} {path} {kind}")
                    return rule
        return None

    def serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with client:
            request = _read_request(client)
            if request is None:
                return
            method, path, headers, body = request
            rule = self._rule_for(method, urlsplit(path).path)
            if rule is not None and not rule.forward:
                if rule.hold is not None:
                    rule.hold.wait(timeout=120)
                return  # closed unanswered; the server never heard of it
            status, reason, answer_headers, answer = self._forward(method, path, headers, body)
            if rule is not None:
                if rule.hold is not None:
                    rule.hold.wait(timeout=120)
                return  # the server did the work; the answer goes nowhere
            lines = [f"HTTP/1.1 {status} {reason}"]
            lines += [f"{k}: {v}" for k, v in answer_headers if k.lower() not in HOP_BY_HOP]
            lines += [f"Content-Length: {len(answer)}", "Connection: close", "", ""]
            client.sendall("\r\n".join(lines).encode("latin-1") + answer)

    def _forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            sent = {k: v for k, v in headers if k.lower() not in HOP_BY_HOP}
            upstream.request(method, path, body=body or None, headers=sent)
            response = upstream.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            upstream.close()


def _read_request(
    client: socket.socket,
) -> tuple[str, str, list[tuple[str, str]], bytes] | None:
    """One request off the connection: method, path, headers, body (None: nothing came)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = [tuple(line.split(": ", 1)) for line in header_lines if ": " in line]
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
    while len(body) < length:
        chunk = client.recv(65536)
        if not chunk:
            return None
        body += chunk
    return method, path, headers, body  # type: ignore[return-value]


@contextmanager
def lossy_proxy(upstream: str) -> Iterator[LossyProxy]:
    """A `LossyProxy` in front of `upstream`, serving in a thread until the block ends."""
    proxy = LossyProxy(upstream)
    thread = threading.Thread(target=proxy.serve, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        with suppress(OSError):
            proxy.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        proxy.listener.close()
        thread.join(timeout=5)
