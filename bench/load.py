"""Load benchmark: a real `sipbridge run` driven through its HTTP API, SIPp as the carrier
(and as the agent), everything on 127.0.0.1.

    python bench/load.py [--quick] [--phases idle,cps,conc,memory] [--no-write]

Phases (each bounded in calls and in time, each with its own bridge process):

- idle:   cost of an idle SIP worker (RSS, CPU over a window) and its start-up time.
- cps:    sustained calls per second at 10, 20, 50 CPS (60 s each; --quick 10 s): the
          carrier answers and hangs up after 0.5 s; achieved CPS counted from the INVITEs
          SIPp logged; failures by reason; trigger-to-INVITE latency (client's HTTP 200 to
          the INVITE's arrival at SIPp, matched by the X-PolyAI-Call-SID header).
- conc:   concurrent answered calls with detection: the carrier loops a voicemail greeting
          as RTP (G.711), calls are added in steps and held; per step the bridge's CPU,
          RSS, failures, and the RTP the agent receives (tshark: packets, loss, max
          inter-packet delta per stream).
- memory: RSS of the supervisor and workers after 1,000 and after 10,000 calls
          (--quick: 200 and 2,000).

Results are printed and written to bench/RESULTS.md between the load markers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from results import write_section

from sipbridge.devtools.bridge import AUTH, Bridge, Stack, bridge_config
from sipbridge.devtools.sipp import SippUas, render_scenario, ulaw_wav

TICK = os.sysconf("SC_CLK_TCK")
NUMBER = "+12125550123"
SID_HDR = "X-PolyAI-Call-SID"


# --------------------------------------------------------------------------- /proc
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


# --------------------------------------------------------------------------- SIPp logs
def carrier_invites(sipp: SippUas) -> dict[str, float]:
    """call_sid -> wall time SIPp received its (first) INVITE."""
    out: dict[str, float] = {}
    for m in sipp.received("INVITE"):
        sid = m.header(SID_HDR)
        if sid and m.ts is not None:
            out.setdefault(sid, m.ts)
    return out


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


# --------------------------------------------------------------------------- bridge
def make_config(
    log_dir: Path,
    carrier: SippUas,
    agent: SippUas,
    sip: dict[str, Any],
    detection: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    # an RTP range of 8000 ports inside 20000-59999, spread by pid (parallel runs)
    base = 20000 + (os.getpid() % 40) * 800
    sip_cfg = {
        "listen_address": "127.0.0.1",
        "port_min": 0,
        "port_max": 0,
        "calls_per_worker": 4,
        "log_level": 1,
        "rtp_port_min": base,
        "rtp_port_max": base + 7999,
        **sip,
    }
    cfg = bridge_config(
        log_dir,
        trunks=[
            {
                "name": "carrier",
                "address": carrier.uri_hostport,
                "caller_id": "+14155550100",
                "header_templates": {SID_HDR: "{call_sid}"},
            }
        ],
        routes=[
            {"prefix": "+1", "trunk": "carrier", **({"detection": detection} if detection else {})}
        ],
        sip=sip_cfg,
        agent={"uri": f"sip:agent@{agent.uri_hostport}"},
        limits={"api_rate_per_s": 10000.0, "api_burst": 10000},
        shutdown={"grace_s": 1},
        **extra,
    )
    return cfg


def metric_sum(text: str, name: str, label_filter: str = "") -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not label_filter or label_filter in line):
            rest = line[len(name) :]
            if rest[:1] in ("{", " "):
                with contextlib.suppress(ValueError):
                    total += float(line.rsplit(" ", 1)[1])
    return total


def metrics(b: Bridge) -> str:
    return httpx.get(b.base + "/metrics", timeout=10).text


def terminal_count(b: Bridge) -> int:
    return int(metric_sum(metrics(b), "sipbridge_calls_total"))


def wait_terminal_total(b: Bridge, n: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if terminal_count(b) >= n:
            return True
        time.sleep(0.5)  # polling the bridge's counters, bounded by the deadline
    return False


async def drive(
    base: str,
    n: int,
    rate: float,
    max_s: float,
    on_sid: Callable[[str, float, float], None] | None = None,
) -> dict[str, Any]:
    """Trigger ``n`` calls at ``rate`` per second (paced, not waiting for responses),
    stopping after ``max_s`` s. Returns sids with send/200 wall times and errors."""
    sent: list[tuple[str, float, float]] = []
    errors: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=10, limits=limits) as client:

        async def one(i: int) -> None:
            t_send = time.time()
            try:
                r = await client.post("/v1/outbound-calling/trigger", json={"to_number": NUMBER})
            except httpx.HTTPError as e:
                errors[f"http error {type(e).__name__}"] += 1
                return
            t_ok = time.time()
            if r.status_code != 200:
                errors[f"HTTP {r.status_code}"] += 1
                return
            sid = r.json()["callSid"]
            sent.append((sid, t_send, t_ok))
            if on_sid:
                on_sid(sid, t_send, t_ok)

        t0 = time.monotonic()
        tasks = []
        for i in range(n):
            at = t0 + i / rate
            if at - t0 > max_s:
                break
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        elapsed = time.monotonic() - t0
    return {"sent": sent, "errors": errors, "elapsed": elapsed}


async def statuses(base: str, sids: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    sem = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=10) as client:

        async def one(sid: str) -> None:
            async with sem:
                r = await client.get(f"/v1/outbound-calling/{sid}/status")
                out.append(
                    r.json()
                    if r.status_code == 200
                    else {"callSid": sid, "status": f"HTTP {r.status_code}", "reason": ""}
                )

        await asyncio.wait_for(asyncio.gather(*(one(s) for s in sids)), 120)
    return out


def fmt_failures(sts: list[dict[str, Any]]) -> tuple[int, str]:
    bad = Counter(
        f"{s['status']}: {s.get('reason') or '-'}" for s in sts if s["status"] != "success"
    )
    return sum(bad.values()), ", ".join(f"{k} ×{v}" for k, v in bad.most_common(4)) or "none"


# --------------------------------------------------------------------------- phases
def phase_idle(work: Path, quick: bool) -> dict[str, Any]:
    """Idle worker cost, from a bridge with a fixed pool of 2 workers, and start-up time
    of one worker (pool.start() of a 1-worker pool, in-process)."""
    window = 5.0 if quick else 10.0
    log_dir = work / "idle"
    log_dir.mkdir()
    with Stack(log_dir) as st:
        carrier = st.sipp("uas_answer_then_bye.xml")
        agent = st.sipp("uas_answer_wait_bye.xml")
        b = st.bridge(make_config(log_dir, carrier, agent, {"workers": 2}))
        time.sleep(2.0)
        ws = workers_of(b.proc.pid)
        cpu = cpu_window([b.proc.pid, *ws], window)
        res = {
            "window_s": window,
            "workers": len(ws),
            "worker_rss_mb": [rss_kb(p) / 1024 for p in ws],
            "worker_pss_mb": [mem_kb(p)["pss"] / 1024 for p in ws],
            "worker_uss_mb": [mem_kb(p)["uss"] / 1024 for p in ws],
            "forkserver_pss_mb": mem_kb(forkserver_of(b.proc.pid) or 0)["pss"] / 1024,
            "worker_cpu_pct": [cpu[p] for p in ws],
            "supervisor_rss_mb": rss_kb(b.proc.pid) / 1024,
            "supervisor_cpu_pct": cpu[b.proc.pid],
        }
    res["spawn_s"] = asyncio.run(_spawn_time())
    return res


async def _spawn_time() -> list[float]:
    from sipbridge.sip.pool import WorkerPool
    from sipbridge.sipconfig import SipConfig

    out = []
    for _ in range(3):
        pool = WorkerPool(SipConfig(port_min=0, port_max=0, workers=1), lambda ev: None)
        t0 = time.monotonic()
        await pool.start()
        out.append(time.monotonic() - t0)
        await pool.stop()
    return out


def _cps_sip(rate: float) -> dict[str, Any]:
    # ~1.5 s per call (answer, 0.5 s, BYE, agent leg) x rate, 2 legs per call, 4 per worker
    need = int(rate * 1.5 * 2 / 4) + 4
    return {
        "workers": 2,
        "min_workers": 2,
        "max_workers": max(8, need),
        "spare_slots": max(8, int(rate * 2 * 0.6)),
        "idle_worker_ttl_s": 30.0,
    }


def phase_cps(work: Path, quick: bool, rates: list[float]) -> list[dict[str, Any]]:
    dur = 10.0 if quick else 60.0
    out = []
    for rate in rates:
        log_dir = work / f"cps-{rate:g}"
        log_dir.mkdir()
        with Stack(log_dir) as st:
            carrier = st.sipp("uas_answer_then_bye.xml")
            agent = st.sipp("uas_answer_wait_bye.xml")
            b = st.bridge(make_config(log_dir, carrier, agent, _cps_sip(rate)))
            n = int(rate * dur)
            pids0 = [b.proc.pid]
            cpu0 = cpu_ticks(b.proc.pid)
            t0 = time.monotonic()
            peak_workers = 0

            async def run(b: Bridge, n: int, rate: float) -> dict[str, Any]:
                nonlocal peak_workers
                task = asyncio.create_task(drive(b.base, n, rate, dur + 1))
                while not task.done():
                    peak_workers = max(peak_workers, len(workers_of(b.proc.pid)))
                    await asyncio.sleep(1.0)
                return await task

            d = asyncio.run(run(b, n, rate))
            sids = [s for s, _, _ in d["sent"]]
            done = wait_terminal_total(b, len(sids), 60)
            cpu_sup = 100.0 * (cpu_ticks(b.proc.pid) - cpu0) / TICK / (time.monotonic() - t0)
            del pids0
            sts = asyncio.run(statuses(b.base, sids))
            nfail, reasons = fmt_failures(sts)
            inv = carrier_invites(carrier)
            times = sorted(inv[s] for s in sids if s in inv)
            achieved = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
            per_sec = Counter(int(t - times[0]) for t in times) if times else Counter()
            full_secs = [per_sec[i] for i in range(1, int(times[-1] - times[0]))] if times else []
            # From the moment the client sent the trigger (the INVITE often leaves before
            # the HTTP 200 reaches the client, so that is not the start to measure from).
            lat = [1000 * (inv[s] - t_send) for s, t_send, _ in d["sent"] if s in inv]
            # steady state: without the first 3 s (the elastic pool grows from 2 workers)
            t_first = min((t for _, t, _ in d["sent"]), default=0.0)
            lat_ss = [
                1000 * (inv[s] - t_send)
                for s, t_send, _ in d["sent"]
                if s in inv and t_send - t_first >= 3.0
            ]
            api = [1000 * (t_ok - t_send) for _, t_send, t_ok in d["sent"]]
            res = {
                "rate": rate,
                "duration_s": dur,
                "triggered": len(sids),
                "api_errors": dict(d["errors"]),
                "drive_s": d["elapsed"],
                "all_terminal": done,
                "failed": nfail,
                "failure_reasons": reasons,
                "invites": len(times),
                "achieved_cps": achieved,
                "min_cps_1s": min(full_secs) if full_secs else 0,
                "max_cps_1s": max(full_secs) if full_secs else 0,
                "lat_p50_ms": pct(lat, 50),
                "lat_p99_ms": pct(lat, 99),
                "lat_max_ms": max(lat) if lat else float("nan"),
                "lat_ss_p50_ms": pct(lat_ss, 50),
                "lat_ss_p99_ms": pct(lat_ss, 99),
                "api_p50_ms": pct(api, 50),
                "api_p99_ms": pct(api, 99),
                "supervisor_cpu_pct": cpu_sup,
                "peak_workers": peak_workers,
            }
            print(f"  cps {rate:g}: {json.dumps(res, default=str)}", flush=True)
            out.append(res)
    return out


def _speech_wav(work: Path) -> Path:
    """A voicemail greeting with no beep and no long pause (G.711 u-law WAV): looped by
    the carrier, it keeps every call's detector listening for a beep that never comes."""
    from sipbridge.corpus import detection

    cdir = work / "corpus"
    cdir.mkdir()
    detection.generate(cdir)
    labels = json.loads((cdir / "labels.json").read_text())
    name = min(
        Path(n).stem
        for n, lab in labels.items()
        if lab.get("answered_by") == "machine" and lab.get("beep_ms") is None
    )
    trimmed = work / "greeting_no_beep.wav"
    # drop the leading and trailing silence, keep 0.3 s between loops (under the
    # detector's 1.2 s "spoke again after a pause: IVR" gap and its 4 s beep timeout)
    subprocess.run(
        [
            "sox",
            str(cdir / f"{name}.wav"),
            str(trimmed),
            "silence",
            "1",
            "0.05",
            "0.5%",
            "reverse",
            "silence",
            "1",
            "0.05",
            "0.5%",
            "reverse",
            "pad",
            "0",
            "0.3",
        ],
        check=True,
        capture_output=True,
    )
    return ulaw_wav(trimmed, work / "greeting_no_beep_ulaw.wav")


def rtp_sample(port: int, seconds: float, out: Path) -> dict[str, Any]:
    """Capture RTP to ``port`` on lo for ``seconds``; per-stream packets/loss/max delta."""
    pcap = out / f"rtp-{port}-{int(time.time())}.pcap"
    subprocess.run(
        [
            "tshark",
            "-i",
            "lo",
            "-q",
            "-f",
            f"udp dst port {port}",
            "-a",
            f"duration:{seconds:g}",
            "-w",
            str(pcap),
        ],
        capture_output=True,
        timeout=seconds + 30,
    )
    r = subprocess.run(
        ["tshark", "-r", str(pcap), "-q", "-d", f"udp.port=={port},rtp", "-z", "rtp,streams"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    streams = []
    for line in r.stdout.splitlines():
        # Src IP  Port  Dst IP  Port  SSRC  Payload  Pkts  Lost  Min Delta  Mean Delta
        # Max Delta  Min Jitter  Mean Jitter  Max Jitter  Problem?
        m = re.search(
            r"0x[0-9A-Fa-f]+\s+(.+?)\s+(\d+)\s+(-?\d+)\s+\((-?[\d.]+)%\)\s+"
            r"([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)",
            line,
        )
        if m:
            streams.append(
                {
                    "pkts": int(m.group(2)),
                    "lost": int(m.group(3)),
                    "max_delta": float(m.group(7)),
                    "max_jitter": float(m.group(10)),
                }
            )
    pcap.unlink(missing_ok=True)
    return {
        "streams": len(streams),
        "pkts": sum(s["pkts"] for s in streams),
        "lost": sum(max(0, s["lost"]) for s in streams),
        "max_delta_p50": pct([s["max_delta"] for s in streams], 50),
        "max_delta_max": max((s["max_delta"] for s in streams), default=float("nan")),
        "late_streams": sum(1 for s in streams if s["max_delta"] > 60),
        "max_jitter": max((s["max_jitter"] for s in streams), default=float("nan")),
    }


def phase_conc(work: Path, quick: bool, steps: list[int] | None = None) -> list[dict[str, Any]]:
    steps = steps or ([20, 50] if quick else [25, 50, 100, 150, 200])
    window = 4.0 if quick else 6.0
    log_dir = work / "conc"
    log_dir.mkdir()
    audio = _speech_wav(log_dir)
    scen = render_scenario(
        "uas_answer_stream.xml.in", log_dir / "uas_answer_loop.xml", AUDIO=str(audio)
    )
    out: list[dict[str, Any]] = []
    with Stack(log_dir) as st:
        carrier = st.sipp(scen, extra_args=["-rtp_threadtasks", "50"])
        agent = st.sipp("uas_answer_wait_bye.xml")
        # The SIPp agent sends no RTP: no media timeout, or the calls would end after 30 s.
        sip = {
            "workers": 2,
            "min_workers": 2,
            "max_workers": steps[-1] // 2 + 8,
            "spare_slots": 16,
            "idle_worker_ttl_s": 600.0,
            "media_timeout_s": 0,
        }
        # No beep ever comes and the wait for it (the config's upper bound, 5 min) outlasts
        # the measurement (a step takes ~10-20 s): every call's detector stays on (tap
        # connected, every frame analysed) for the whole measurement.
        detection = {"wait_for_beep": True, "thresholds": {"max_beep_wait_ms": 300_000}}
        cfg = make_config(
            log_dir,
            carrier,
            agent,
            sip,
            detection=detection,
            timers={"max_call_duration_s": 900, "ring_timeout_s": 30},
        )
        b = st.bridge(cfg)
        sids: list[str] = []
        deadline_all = time.monotonic() + (240 if quick else 600)
        try:
            for target in steps:
                if time.monotonic() > deadline_all:
                    break
                add = target - len(sids)
                d = asyncio.run(drive(b.base, add, 20.0, 60))
                sids += [s for s, _, _ in d["sent"]]
                # wait until every call is answered (bridged) or terminal
                t_wait = time.monotonic() + 60
                while True:
                    sts = asyncio.run(statuses(b.base, sids))
                    up = [
                        s
                        for s in sts
                        if s["status"] == "calling"
                        and any(e["kind"] == "answered" for e in s.get("events", []))
                    ]
                    term = [s for s in sts if s["status"] in ("success", "failure")]
                    if len(up) + len(term) >= len(sids) or time.monotonic() > t_wait:
                        break
                    time.sleep(1.0)  # polling call status, bounded by t_wait
                time.sleep(2.0)  # let detection of the newest calls run a little
                ws = workers_of(b.proc.pid)
                pids = [b.proc.pid, *ws]
                res_rtp: dict[str, Any] = {}

                def sample(res_rtp: dict[str, Any] = res_rtp) -> None:
                    res_rtp.update(rtp_sample(agent.media_port, window - 1, log_dir))

                import threading

                th = threading.Thread(target=sample)
                th.start()
                cpu = cpu_window(pids, window)
                sipp_cpu = (
                    cpu_window([carrier.proc.pid, agent.proc.pid], 1.0)
                    if carrier.proc and agent.proc
                    else {}
                )
                th.join(60)
                sts = asyncio.run(statuses(b.base, sids))
                up_n = sum(1 for s in sts if s["status"] == "calling")
                nfail, reasons = fmt_failures([s for s in sts if s["status"] != "calling"])
                det = Counter(s.get("answered_by") or "-" for s in sts)
                # calls whose detector is still running: no final detection result yet
                detecting = sum(
                    1
                    for s in sts
                    if s["status"] == "calling"
                    and not any(
                        e["kind"] == "detection" and e["data"].get("final")
                        for e in s.get("events", [])
                    )
                )
                res: dict[str, Any] = {
                    "target": target,
                    "up": up_n,
                    "detecting": detecting,
                    "failed": nfail,
                    "failure_reasons": reasons,
                    "workers": len(ws),
                    "bridge_cpu_pct": sum(cpu.values()),
                    "supervisor_cpu_pct": cpu[b.proc.pid],
                    "worker_cpu_mean_pct": statistics.mean([cpu[p] for p in ws]) if ws else 0,
                    "sipp_cpu_pct": sum(sipp_cpu.values()),
                    "bridge_rss_mb": sum(rss_kb(p) for p in pids) / 1024,
                    "bridge_pss_mb": sum(
                        mem_kb(p)["pss"] for p in [*pids, forkserver_of(b.proc.pid) or 0]
                    )
                    / 1024,
                    "worker_uss_mean_mb": statistics.mean([mem_kb(p)["uss"] for p in ws]) / 1024
                    if ws
                    else 0,
                    "answered_by": dict(det),
                    "rtp": res_rtp,
                    "rtp_expected_pkts": up_n * 50 * (window - 1),
                }
                print(f"  conc {target}: {json.dumps(res, default=str)}", flush=True)
                out.append(res)
                if nfail or up_n < target or res["bridge_cpu_pct"] > 190:
                    break
        finally:

            async def hang() -> None:
                sem = asyncio.Semaphore(16)
                async with httpx.AsyncClient(base_url=b.base, headers=AUTH, timeout=10) as client:

                    async def one(sid: str) -> None:
                        async with sem:
                            await client.post(f"/v1/outbound-calling/{sid}/hangup")

                    await asyncio.wait_for(
                        asyncio.gather(*(one(s) for s in sids), return_exceptions=True), 120
                    )

            with contextlib.suppress(Exception):
                asyncio.run(hang())
                wait_terminal_total(b, len(sids), 30)
    return out


def phase_memory(work: Path, quick: bool, rate: float) -> dict[str, Any]:
    first, total = (200, 2000) if quick else (1000, 10000)
    log_dir = work / "memory"
    log_dir.mkdir()
    with Stack(log_dir) as st:
        carrier = st.sipp("uas_answer_then_bye.xml")
        agent = st.sipp("uas_answer_wait_bye.xml")
        sip = dict(_cps_sip(rate), idle_worker_ttl_s=3600.0)
        b = st.bridge(make_config(log_dir, carrier, agent, sip))

        def snapshot() -> dict[str, Any]:
            time.sleep(3.0)
            ws = workers_of(b.proc.pid)
            return {
                "supervisor_kb": rss_kb(b.proc.pid),
                "forkserver_kb": mem_kb(forkserver_of(b.proc.pid) or 0)["pss"],
                "workers_kb": {p: mem_kb(p)["pss"] for p in ws},
                "workers_rss_kb": {p: rss_kb(p) for p in ws},
            }

        t0 = time.monotonic()
        d1 = asyncio.run(drive(b.base, first, rate, first / rate + 5))
        ok1 = wait_terminal_total(b, len(d1["sent"]), 60)
        s1 = snapshot()
        d2 = asyncio.run(drive(b.base, total - first, rate, (total - first) / rate + 10))
        n = len(d1["sent"]) + len(d2["sent"])
        ok2 = wait_terminal_total(b, n, 120)
        s2 = snapshot()
        text = metrics(b)
        succ = metric_sum(text, "sipbridge_calls_total", 'status="success"')
        elapsed = time.monotonic() - t0
    common = [p for p in s1["workers_kb"] if p in s2["workers_kb"]]
    tot1 = s1["supervisor_kb"] + s1["forkserver_kb"] + sum(s1["workers_kb"].values())
    tot2 = s2["supervisor_kb"] + s2["forkserver_kb"] + sum(s2["workers_kb"].values())
    w1 = sum(s1["workers_kb"][p] for p in common)
    w2 = sum(s2["workers_kb"][p] for p in common)
    r1 = sum(s1["workers_rss_kb"][p] for p in common)
    r2 = sum(s2["workers_rss_kb"][p] for p in common)
    return {
        "common_workers_rss_mb": (r1 / 1024, r2 / 1024),
        "common_workers_rss_growth_pct": 100 * (r2 / r1 - 1) if r1 else float("nan"),
        "rate": rate,
        "first": first,
        "total": n,
        "success": int(succ),
        "all_terminal": ok1 and ok2,
        "elapsed_s": elapsed,
        "api_errors": dict(d1["errors"] + d2["errors"]),
        "sup_mb": (s1["supervisor_kb"] / 1024, s2["supervisor_kb"] / 1024),
        "sup_growth_pct": 100 * (s2["supervisor_kb"] / s1["supervisor_kb"] - 1),
        "workers": (len(s1["workers_kb"]), len(s2["workers_kb"])),
        "common_workers": len(common),
        "common_workers_mb": (w1 / 1024, w2 / 1024),
        "common_workers_growth_pct": 100 * (w2 / w1 - 1) if w1 else float("nan"),
        "total_mb": (tot1 / 1024, tot2 / 1024),
        "total_growth_pct": 100 * (tot2 / tot1 - 1),
    }


# --------------------------------------------------------------------------- report
def report(res: dict[str, Any], quick: bool) -> str:
    lines = [
        "## Load: calls through the API against SIPp (`bench/load.py`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}, {dt.date.today().isoformat()}. "
        "Bridge, SIPp carrier and SIPp agent all on this machine (loopback); "
        "PyPI pjsua2 wheel: 4 legs per worker, 2 calls per worker.",
        "",
    ]
    if "idle" in res:
        r = res["idle"]
        lines += [
            "### Idle SIP worker cost",
            "",
            "| metric | value |",
            "|---|---|",
            f"| RSS per idle worker | {', '.join(f'{x:.1f}' for x in r['worker_rss_mb'])} MB |",
            f"| PSS / USS (private) per idle worker | "
            f"{', '.join(f'{x:.1f}' for x in r.get('worker_pss_mb', []))} / "
            f"{', '.join(f'{x:.1f}' for x in r.get('worker_uss_mb', []))} MB |",
            f"| fork server (PSS) | {r.get('forkserver_pss_mb', float('nan')):.1f} MB |",
            f"| CPU per idle worker over {r['window_s']:g} s | "
            f"{', '.join(f'{x:.2f}' for x in r['worker_cpu_pct'])} % of a core |",
            f"| idle supervisor | {r['supervisor_rss_mb']:.1f} MB, "
            f"{r['supervisor_cpu_pct']:.2f} % |",
            f"| worker start-up (spawn to WorkerReady) | "
            f"{', '.join(f'{x:.2f}' for x in r['spawn_s'])} s |",
            "",
        ]
    if "cps" in res:
        lines += [
            "### Sustained calls per second",
            "",
            "Carrier answers and sends BYE 0.5 s after answer; every call is bridged to the "
            "agent (detection on). Achieved CPS = INVITEs SIPp received / their time span. "
            "Latency = the client sending the trigger request to the INVITE's arrival at "
            "SIPp (API, queue, dial plan, IPC, pjsip).",
            "",
            "| target CPS | calls | achieved CPS (min–max per 1 s) | failed | "
            "trigger→INVITE p50 / p99 / max (all calls) | p50 / p99 after the first 3 s | "
            "API p50 / p99 | supervisor CPU | peak workers |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["cps"]:
            fails = f"{r['failed']}" + (f" ({r['failure_reasons']})" if r["failed"] else "")
            if r["api_errors"]:
                fails += f"; API errors {r['api_errors']}"
            lines.append(
                f"| {r['rate']:g} | {r['triggered']} in {r['duration_s']:g} s | "
                f"{r['achieved_cps']:.1f} ({r['min_cps_1s']}–{r['max_cps_1s']}) | {fails} | "
                f"{r['lat_p50_ms']:.1f} / {r['lat_p99_ms']:.1f} / {r['lat_max_ms']:.1f} ms | "
                f"{r['lat_ss_p50_ms']:.1f} / {r['lat_ss_p99_ms']:.1f} ms | "
                f"{r['api_p50_ms']:.1f} / {r['api_p99_ms']:.1f} ms | "
                f"{r['supervisor_cpu_pct']:.0f} % | {r['peak_workers']} |"
            )
        lines.append("")
    if "conc" in res:
        lines += [
            "### Concurrent answered calls with detection",
            "",
            "Carrier loops a voicemail greeting (G.711, 50 packets/s) on every call; "
            "detection on; every call bridged to the agent. RTP sampled at the agent "
            "with tshark (late = a stream with a gap over 60 ms).",
            "",
            "| calls | up (detection running) | failed | workers | "
            "bridge CPU (sup / worker mean) | SIPp CPU | bridge PSS (worker USS mean) | "
            "RTP at agent: streams, pkts (expected), lost, late streams, max gap p50/max |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in res["conc"]:
            p = r["rtp"]
            lines.append(
                f"| {r['target']} | {r['up']} ({r.get('detecting', '?')}) | {r['failed']} | "
                f"{r['workers']} | "
                f"{r['bridge_cpu_pct']:.0f} % ({r['supervisor_cpu_pct']:.0f} / "
                f"{r['worker_cpu_mean_pct']:.1f}) | {r['sipp_cpu_pct']:.0f} % | "
                f"{r.get('bridge_pss_mb', r['bridge_rss_mb']):.0f} MB "
                f"({r.get('worker_uss_mean_mb', float('nan')):.1f} MB) | "
                f"{p.get('streams')}, {p.get('pkts')} "
                f"({r['rtp_expected_pkts']:.0f}), {p.get('lost')}, {p.get('late_streams')}, "
                f"{p.get('max_delta_p50', float('nan')):.0f}/"
                f"{p.get('max_delta_max', float('nan')):.0f} ms |"
            )
        lines.append("")
    if "memory" in res:
        r = res["memory"]
        lines += [
            "### Memory after many calls",
            "",
            f"{r['total']} calls at {r['rate']:g} CPS ({r['success']} success, "
            f"all terminal: {r['all_terminal']}, {r['elapsed_s']:.0f} s), "
            f"3 s after the first {r['first']} and after all calls ended. Supervisor: "
            "RSS; workers: RSS and PSS; fork server: PSS (PSS splits shared pages between the "
            "processes that map them, so the total is what the bridge really holds; it "
            "grows as workers write to pages shared copy-on-write with the fork server, "
            "which RSS does not count as growth).",
            "",
            f"| process | after {r['first']} | after {r['total']} | growth |",
            "|---|---|---|---|",
            f"| supervisor | {r['sup_mb'][0]:.1f} MB | {r['sup_mb'][1]:.1f} MB | "
            f"{r['sup_growth_pct']:+.1f} % |",
            f"| workers present at both points ({r['common_workers']}), RSS | "
            f"{r.get('common_workers_rss_mb', (0, 0))[0]:.1f} MB | "
            f"{r.get('common_workers_rss_mb', (0, 0))[1]:.1f} MB | "
            f"{r.get('common_workers_rss_growth_pct', float('nan')):+.1f} % |",
            f"| the same workers, PSS | "
            f"{r['common_workers_mb'][0]:.1f} MB | {r['common_workers_mb'][1]:.1f} MB | "
            f"{r['common_workers_growth_pct']:+.1f} % |",
            f"| total, supervisor + fork server + workers "
            f"({r['workers'][0]} / {r['workers'][1]} workers) "
            f"| {r['total_mb'][0]:.1f} MB | {r['total_mb'][1]:.1f} MB | "
            f"{r['total_growth_pct']:+.1f} % |",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short phases (about 4 minutes)")
    ap.add_argument("--phases", default="idle,cps,conc,memory")
    ap.add_argument("--rates", default="10,20,50")
    ap.add_argument(
        "--conc-steps", default="", help="concurrent-call steps (default 25,50,100,150,200)"
    )
    ap.add_argument(
        "--memory-rate",
        type=float,
        default=0.0,
        help="CPS of the memory phase (default: 20 quick, 40 full)",
    )
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument(
        "--merge",
        default="",
        help="JSON file of earlier phase results to "
        "merge with (and update), to run phases separately",
    )
    a = ap.parse_args(argv)
    for tool in ("sipp", "tshark", "sox"):
        if shutil.which(tool) is None:
            print(f"{tool} not found", file=sys.stderr)
            return 2
    phases = a.phases.split(",")
    work = Path(tempfile.mkdtemp(prefix="sipbridge-load-"))
    print(f"work dir {work}", flush=True)
    res: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        if "idle" in phases:
            res["idle"] = phase_idle(work, a.quick)
            print(f"  idle: {res['idle']}", flush=True)
        if "cps" in phases:
            res["cps"] = phase_cps(work, a.quick, [float(x) for x in a.rates.split(",")])
        if "conc" in phases:
            steps = [int(x) for x in a.conc_steps.split(",") if x.strip()]
            res["conc"] = phase_conc(work, a.quick, steps or None)
        if "memory" in phases:
            rate = a.memory_rate or (20.0 if a.quick else 40.0)
            res["memory"] = phase_memory(work, a.quick, rate)
            print(f"  memory: {res['memory']}", flush=True)
    finally:
        print(f"total {time.monotonic() - t0:.0f} s; logs in {work}", flush=True)
        if not a.keep and res:
            shutil.rmtree(work, ignore_errors=True)
    if a.merge:
        mp = Path(a.merge)
        prev = json.loads(mp.read_text()) if mp.exists() else {}
        prev.update(res)
        mp.write_text(json.dumps(prev, default=str))
        res = prev
    text = report(res, a.quick)
    print(text)
    if not a.no_write:
        write_section("load", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
