"""A TLS peer on loopback for tests: certificates made at test time (``openssl`` CLI) and
a TLS terminator relaying each connection to SIPp's TCP port (this SIPp has no OpenSSL).

Usage in asyncio tests: ``await TlsTerminator(cert, key).start()``; in synchronous tests
(a bridge subprocess): ``TlsTerminator(cert, key).start_in_thread()``.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest


def _openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def self_signed(dir_: Path, cn: str = "carrier.test") -> tuple[Path, Path]:
    """A self-signed server certificate and its key (no CA)."""
    cert, key = dir_ / f"{cn}-self.crt", dir_ / f"{cn}-self.key"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        f"/CN={cn}",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    )
    return cert, key


def make_ca(dir_: Path, name: str) -> tuple[Path, Path]:
    """A CA certificate (basicConstraints CA:TRUE) and its key."""
    cert, key = dir_ / f"{name}.crt", dir_ / f"{name}.key"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        f"/CN={name}",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    return cert, key


def make_leaf(
    dir_: Path, ca: tuple[Path, Path], name: str, cn: str, sans: list[str]
) -> tuple[Path, Path]:
    """A server certificate for ``cn`` with subjectAltNames ``sans`` (e.g.
    ``["IP:127.0.0.1", "DNS:localhost"]``), signed by ``ca``; and its key."""
    cert, key, csr = dir_ / f"{name}.crt", dir_ / f"{name}.key", dir_ / f"{name}.csr"
    ext = dir_ / f"{name}.ext"
    lines = ["basicConstraints=CA:FALSE", "extendedKeyUsage=serverAuth"]
    if sans:
        lines.append("subjectAltName=" + ",".join(sans))
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={cn}",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-set_serial",
        str(abs(hash(name)) % 10**9 + 1),
        "-days",
        "1",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    return cert, key


class TlsTerminator:
    """A TLS server on loopback relaying each connection to SIPp's TCP port. Lets the
    worker's TLS transport reach a real SIP peer. Records each handshake's TLS version
    and the SNI host name the client sent (None: no SNI)."""

    def __init__(self, cert: Path, key: Path, target_port: int = 0) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.sni_callback = self._sni
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.handshakes = 0
        self.tls_versions: list[str] = []
        self.sni: list[str | None] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _sni(self, sock: Any, name: str | None, ctx: Any) -> None:
        self.sni.append(name)

    async def start(self) -> TlsTerminator:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        obj = w.get_extra_info("ssl_object")
        if obj is not None:
            self.tls_versions.append(str(obj.version()))
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                dst.close()

        for t in (pipe(r, uw), pipe(ur, w)):
            task = asyncio.ensure_future(t)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self._tasks):
            t.cancel()

    # ---- for synchronous tests: the relay's own event loop in a thread ----------------
    def start_in_thread(self) -> TlsTerminator:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="tls-relay", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.start(), loop).result(10)
        return self

    def stop_thread(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = None
