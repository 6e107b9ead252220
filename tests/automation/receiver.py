"""A real HTTP receiver on a thread, for webhook tests: it records every request and answers as told."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    # Status codes to answer, in order; the last one repeats.
    answers: list[int] = field(default_factory=lambda: [200])


@contextmanager
def receiver(*answers: int) -> Iterator[Receiver]:
    """Serve on 127.0.0.1 (a free port) until the block ends; ``answers`` are the statuses given, in order."""
    state = Receiver(url="", answers=list(answers) or [200])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            state.requests.append(Received(self.path, dict(self.headers.items()), body))
            index = min(len(state.requests), len(state.answers)) - 1
            self.send_response(state.answers[index])
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/baton?from=test"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def trickler(*, head: bytes, tail: bytes, every: float) -> Iterator[str]:
    """A receiver that sends ``head`` at once, then ``tail`` one byte each ``every`` seconds (a slow or hostile
    answer: each byte well within a socket timeout, the whole far past it); yields its URL on 127.0.0.1."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.recv(65536)
                    conn.sendall(head)
                    for byte in tail:
                        if stop.wait(every):
                            break
                        conn.sendall(bytes([byte]))
                except OSError:
                    pass  # the sender gave up and closed: what the test wants

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    finally:
        stop.set()
        listener.close()
