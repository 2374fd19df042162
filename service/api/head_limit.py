"""A bound on a request's head (its request line and headers): 431 once it passes 64 KiB.

uvicorn's httptools protocol, which `tagflow serve` runs on, sets no bound of its own: the
parser gathers a header's value whole, however long, before the app (and its body bound, its
key check) sees the request. One connection that sent a 100 MB header, with no key, held 103
and 148 MB more of the API's memory and kept its event loop for 12.1 and 13.9 s (two runs;
httptools joins the pieces of a value one by one, so the time grows with the square of its
length): /healthz on another connection waited up to 10.0 s meanwhile (9.1 and 32.2 ms with
this bound), and nothing bounded how many such heads the process held at once. HTTP servers
bound a head to 8-64 KiB (nginx: 32 KiB; h11, uvicorn's other protocol: 16 KiB), and
tagflow's own headers are a key and a few short values, so 64 KiB refuses no real client.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
# Where a head ends; httptools' parser takes no other line ending (a bare LF is a 400).
END_OF_HEAD = b"\r\n\r\n"


class HeadLimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, counting the bytes of each request's head as they arrive
    and answering 431 (then closing the connection) once they pass `MAX_HEAD_BYTES`, before
    the parser sees the piece that passes it.

    A piece the transport delivers while a head is being read counts up to the blank line
    that ends the head, if it holds it: a body, however large, is never counted. The head of
    a request that arrives in the same piece as the end of the one before (pipelining) is
    counted from the next piece on, so it may be held one piece (256 KiB) longer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._tail = b""  # the head's last bytes so far: its blank line may span two pieces

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            seen = self._tail + data
            end = seen.find(END_OF_HEAD)
            self._head_bytes += len(data) if end < 0 else end + len(END_OF_HEAD) - len(self._tail)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse_head()
                return
            self._tail = seen[-(len(END_OF_HEAD) - 1) :]
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes, self._tail = True, 0, b""

    def _refuse_head(self) -> None:
        detail = f"request line and headers over {MAX_HEAD_BYTES} bytes"
        body = json.dumps({"detail": detail}).encode()
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        for name, value in self.server_state.default_headers:  # date, server
            head.append(name + b": " + value + b"\r\n")
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            # The rest of the head was not read: the connection cannot carry another request.
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
