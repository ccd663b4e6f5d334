"""A real HTTP receiver for status callbacks: ``http.server`` in a thread on 127.0.0.1:0.
It records every request and answers with the codes it is told to (then 200)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int
    at: float

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.body)
        return out


class Receiver:
    def __init__(
        self, fail_first: list[int] | None = None, port: int = 0, delay_s: float = 0.0
    ) -> None:
        """``delay_s``: how long each POST takes to answer (a slow receiver)."""
        self.requests: list[Received] = []
        self.fail_codes = list(fail_first or [])
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(delay_s)  # the receiver's own processing time
                with outer._lock:
                    code = outer.fail_codes.pop(0) if outer.fail_codes else 200
                    outer.requests.append(
                        Received(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            code,
                            time.time(),
                        )
                    )
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if 200 <= r.answered < 300]

    def wait(self, pred: Any, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.accepted()):
                return self.accepted()
            time.sleep(0.02)
        raise AssertionError(
            f"receiver: condition not met in {timeout}s: "
            f"{[(r.answered, r.body[:80]) for r in self.requests]}"
        )
