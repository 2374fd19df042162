"""A test-only TCP proxy that can freeze: what a hung database server looks like to a client.

Frozen, it keeps its connections open and its kernel takes (ACKs) what is sent, but nothing is
passed on or answered, and new connections are accepted by the kernel and never served: as a
server that is stopped (SIGSTOP), swapping or stuck on its disk, which keepalives,
tcp_user_timeout and the server's own statement_timeout cannot tell.
"""

from __future__ import annotations

import socket
import threading


class FreezableProxy:
    """Forwards TCP connections to `host:port` (listening on `listen_on`, any free port by
    default) until `thawed` is cleared, and again once it is set."""

    def __init__(self, host: str, port: int, *, listen_on: int = 0) -> None:
        self.target = (host, port)
        self.thawed = threading.Event()
        self.thawed.set()
        self.listener = socket.create_server(("127.0.0.1", listen_on))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.thawed.wait()  # frozen: taken by the kernel, never served
            server = socket.create_connection(self.target)
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.thawed.wait()  # frozen: read by the kernel, never passed on
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for each in (src, dst):
                each.close()

    def close(self) -> None:
        self.thawed.set()
        self.listener.close()
