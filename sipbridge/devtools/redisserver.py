"""A throwaway redis-server for tests and benchmarks: a free loopback port, a temp folder
as its working directory, no persistence (no RDB snapshots, no AOF) unless asked, no
Unix socket. :meth:`RedisServer.stop` then :meth:`RedisServer.restart` brings it back on
the same port (with persistence off, empty: what a crashed Redis without disk state
looks like to the nodes)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from sipbridge.devtools.ports import ADDRESS, free_port

BINARY = "redis-server"


def available() -> str | None:
    """None when a server can be started here, else why not."""
    if shutil.which(BINARY) is None:
        return "redis-server not installed (run scripts/install)"
    return None


class RedisServer:
    def __init__(self, persist: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sipbridge-redis-"))
        self.port = 0
        self.persist = persist
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{ADDRESS}:{self.port}/0"

    def start(self) -> RedisServer:
        self.port = free_port(socket.SOCK_STREAM)
        self._launch()
        return self

    def _launch(self, timeout_s: float = 10.0) -> None:
        argv = [
            BINARY,
            "--bind",
            ADDRESS,
            "--port",
            str(self.port),
            "--dir",
            str(self.dir),
            "--logfile",
            str(self.dir / "redis.log"),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--save",
            "60 1" if self.persist else "",
            "--appendonly",
            "yes" if self.persist else "no",
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited ({self.proc.returncode}): {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)  # polling a starting process: it has no event to wait on

    def _answers(self) -> bool:
        try:
            with socket.create_connection((ADDRESS, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGKILL with ``kill``: a crash, no final save)."""
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        """Start again after :meth:`stop`, on the same port."""
        self._launch()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.stop(kill=True)
        shutil.rmtree(self.dir, ignore_errors=True)


__all__ = ["RedisServer", "available"]
