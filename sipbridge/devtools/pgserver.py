"""A throwaway PostgreSQL 15 server for tests and benchmarks: ``initdb`` in a temp folder,
``pg_ctl`` on a free loopback port (no Unix socket), trust auth for one user, stopped and
deleted at the end. PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` user Debian's package creates (``runuser``)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

from sipbridge.devtools.ports import ADDRESS, free_port

BIN = Path(os.environ.get("SIPBRIDGE_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "sipbridge"


def available() -> str | None:
    """None when a server can be started here, else why not."""
    if not (BIN / "pg_ctl").exists():
        return f"PostgreSQL not installed ({BIN}/pg_ctl missing: run scripts/install)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server"
    return None


class PgServer:
    def __init__(self, settings: dict[str, str] | None = None) -> None:
        # extra server settings (``-c name=value``), e.g. shared_preload_libraries
        self.settings = dict(settings or {})
        self.dir = Path(tempfile.mkdtemp(prefix="sipbridge-pg-"))
        self.data = self.dir / "data"
        self.port = 0
        self._as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str, timeout_s: float = 60) -> None:
        subprocess.run(
            [*self._as, *argv],
            check=True,
            timeout=timeout_s,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def start(self) -> PgServer:
        self._run(
            str(BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        )
        self.port = free_port(socket.SOCK_STREAM)
        self._pg_ctl_start()
        return self

    def _pg_ctl_start(self) -> None:
        opts = (
            f"-c listen_addresses={ADDRESS} -c port={self.port} "
            "-c unix_socket_directories='' -c fsync=off -c max_connections=200"
        ) + "".join(f" -c {k}={v}" for k, v in self.settings.items())
        self._run(
            str(BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        if self.port:
            self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Start again after :meth:`stop` (same port and data)."""
        self._pg_ctl_start()

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def postmaster_pid(self) -> int | None:
        """The server's main process (None when it is not running)."""
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://{USER}@{ADDRESS}:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh empty database; its DSN."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.dsn(name)


__all__ = ["PgServer", "available"]
