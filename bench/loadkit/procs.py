"""/proc readings of the bridge's processes: CPU ticks, RSS/PSS/USS, its SIP workers."""

from __future__ import annotations

import os
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def cpu_ticks(pid: int) -> int:
    f = _stat(pid)
    return int(f[11]) + int(f[12]) if f else 0


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            f = _stat(int(d.name))
            if f and int(f[1]) == pid:
                out.append(int(d.name))
    return sorted(out)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def forkserver_of(pid: int) -> int | None:
    """The multiprocessing fork server a bridge process starts its SIP workers from."""
    for c in _children(pid):
        if b"forkserver" in _cmdline(c):
            return c
    return None


def workers_of(pid: int) -> list[int]:
    """SIP worker processes of a bridge process (children of its fork server)."""
    fs = forkserver_of(pid)
    return _children(fs) if fs is not None else []


def mem_kb(pid: int) -> dict[str, int]:
    """RSS, PSS (shared pages split between their users) and USS (private) of a process."""
    out = {"rss": 0, "pss": 0, "uss": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            k, _, v = line.partition(":")
            if k == "Rss":
                out["rss"] = int(v.split()[0])
            elif k == "Pss":
                out["pss"] = int(v.split()[0])
            elif k in ("Private_Clean", "Private_Dirty"):
                out["uss"] += int(v.split()[0])
    except OSError:
        pass
    return out


def cpu_window(pids: list[int], seconds: float) -> dict[int, float]:
    """CPU % of one core per process over a window."""
    t0 = time.monotonic()
    a = {p: cpu_ticks(p) for p in pids}
    time.sleep(seconds)
    el = time.monotonic() - t0
    return {p: 100.0 * (cpu_ticks(p) - a[p]) / TICK / el for p in pids}
