"""A test-only TCP proxy that can freeze: what a hung database server looks like to a client.

Frozen, it keeps its connections open and its kernel takes (ACKs) what is sent, but nothing is
passed on or answered, and new connections are accepted by the kernel and never served: as a
server that is stopped (SIGSTOP), swapping or stuck on its disk, which keepalives,
tcp_user_timeout and the server's own statement_timeout cannot tell.

Armed (`lose_commit_answer`), it passes the next PostgreSQL COMMIT on and loses its answer,
closing that connection: the commit took effect, and the client sees the connection lost, as
when the server stops (an immediate shutdown, a crash) or the network fails right after it.
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
        self.lose_commit_answer = threading.Event()  # armed: see the module's docstring
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
            cut = threading.Event()  # this connection's COMMIT went on: its answer is lost
            for src, dst, to_server in ((client, server, True), (server, client, False)):
                threading.Thread(
                    target=self._pipe, args=(src, dst, cut, to_server), daemon=True
                ).start()

    def _pipe(
        self, src: socket.socket, dst: socket.socket, cut: threading.Event, to_server: bool
    ) -> None:
        try:
            while data := src.recv(65536):
                self.thawed.wait()  # frozen: read by the kernel, never passed on
                if not to_server and cut.is_set():  # the COMMIT's answer: lost
                    for each in (src, dst):  # a close alone waits for the other pipe's recv
                        each.shutdown(socket.SHUT_RDWR)
                    return
                if to_server and b"COMMIT" in data and self.lose_commit_answer.is_set():
                    self.lose_commit_answer.clear()
                    cut.set()  # before it goes on, so that its answer cannot slip through
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for each in (src, dst):
                each.close()

    def close(self) -> None:
        self.thawed.set()
        self.listener.close()
