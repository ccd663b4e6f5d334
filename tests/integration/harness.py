"""What the SIP engine's integration tests share: a WorkerPool run with an EventRecorder
(:func:`with_pool`), its loopback config (:func:`sip_cfg`), an overall deadline
(:func:`run`), and :class:`SippHarness` — the SIPp peers, tshark captures and tone files
of one test, stopped when it ends (the ``h`` fixture in conftest.py)."""

from __future__ import annotations

import asyncio
import random
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol, TypeVar

from sipbridge.devtools.sipp import SCENARIOS, SippUas
from sipbridge.sip.pool import WorkerPool
from sipbridge.sipconfig import SipConfig
from tests.doubles import EventRecorder
from tests.rtp import TsharkCapture

T = TypeVar("T")
CALLER = "+15557654321"
CALLEE = "+15551234567"


def run(coro: Awaitable[T], timeout: float = 40.0) -> T:
    """Run one test coroutine with an overall deadline."""

    async def _guard() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(_guard())


def sip_cfg(workers: int = 2, inbound_allow: list[str] | None = None) -> SipConfig:
    # A random RTP slice so concurrent test runs on this host rarely collide.
    base = random.randrange(30000, 58000, 200)
    return SipConfig(
        listen_address="127.0.0.1",
        port_min=0,
        port_max=0,
        workers=workers,
        calls_per_worker=4,
        rtp_port_min=base,
        rtp_port_max=base + 199,
        log_level=1,
        inbound_allow=inbound_allow or [],
    )


async def with_pool(
    body: Callable[[WorkerPool, EventRecorder], Awaitable[None]],
    cfg: SipConfig | None = None,
    *,
    workers: int = 2,
) -> WorkerPool:
    """Start a pool (``cfg``, or ``workers`` on loopback), run ``body``, stop it; the
    workers must exit cleanly (no pjsua2 assertion or crash at libDestroy)."""
    rec = EventRecorder()
    cfg = cfg or sip_cfg(workers)
    pool = WorkerPool(cfg, rec)
    await pool.start()
    try:
        await body(pool, rec)
    finally:
        await pool.stop()
    assert pool.exit_codes == {i: 0 for i in range(cfg.workers)}, pool.exit_codes
    return pool


def tone_wav(
    path: Path, hz: float, seconds: float, encoding: str = "u-law", vol: float = 0.3
) -> Path:
    """A sine WAV made by sox: u-law for SIPp's rtp_stream, signed-integer (16-bit PCM) for
    the bridge's own players."""
    subprocess.run(
        [
            "sox",
            "-n",
            "-r",
            "8000",
            "-c",
            "1",
            "-e",
            encoding,
            *(["-b", "16"] if encoding == "signed-integer" else []),
            str(path),
            "synth",
            str(seconds),
            "sine",
            str(hz),
            "vol",
            str(vol),
        ],
        check=True,
        capture_output=True,
    )
    return path


class _Stoppable(Protocol):
    def stop(self) -> object: ...


class SippHarness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = self.tmp_path = tmp_path
        self.procs: list[_Stoppable] = []

    def sipp(
        self,
        scenario: str | Path,
        *,
        transport: str = "udp",
        keys: dict[str, str] | None = None,
        **subst: str,
    ) -> SippUas:
        """A SIPp UAS; ``subst`` fills ``@NAME@`` in a ``.xml.in`` scenario, ``keys``
        are SIPp ``-key`` values."""
        path = Path(scenario)
        if subst:
            text = (SCENARIOS / scenario).read_text()
            for k, v in subst.items():
                text = text.replace(f"@{k}@", v)
            path = self.tmp / str(scenario).removesuffix(".in")
            path = path.with_name(f"{path.stem}-{len(self.procs)}{path.suffix}")
            path.write_text(text)
        args: list[str] = []
        for k, v in (keys or {}).items():
            args += ["-key", k, v]
        return self.track(SippUas(path, self.tmp, extra_args=args, transport=transport).start())

    def uac(self, scenario: str, target_port: int) -> SippUas:
        return self.track(
            SippUas(
                scenario,
                self.tmp,
                extra_args=[f"127.0.0.1:{target_port}", "-m", "1", "-s", "agent"],
            ).start()
        )

    def capture(self, port: int, name: str) -> TsharkCapture:
        return self.track(TsharkCapture(port, self.tmp / f"{name}.pcap").start())

    def track(self, proc: T) -> T:
        """Stop ``proc`` with the harness."""
        self.procs.append(proc)  # type: ignore[arg-type]
        return proc

    def tone(self, freq: int, seconds: float, encoding: str = "u-law") -> Path:
        """A tone WAV: u-law for SIPp's rtp_stream, signed-integer (PCM) for PlayAudio."""
        out = self.tmp / f"tone-{freq}-{encoding}.wav"
        return out if out.exists() else tone_wav(out, freq, seconds, encoding, vol=0.5)

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


__all__ = ["CALLEE", "CALLER", "SippHarness", "run", "sip_cfg", "with_pool"]
