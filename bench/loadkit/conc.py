"""The concurrent-answered-calls phase: the carrier loops a greeting, calls are added in
steps and held; per step CPU, memory and the RTP the agent receives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import statistics
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from loadkit.common import drive, fmt_failures, make_config, pct, statuses, wait_terminal_total
from loadkit.procs import cpu_window, forkserver_of, mem_kb, rss_kb, workers_of
from sipbridge.devtools.bridge import AUTH, Bridge, Stack
from sipbridge.devtools.sipp import SippUas, render_scenario, ulaw_wav


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


def conc_config(
    st: Stack, log_dir: Path, max_calls: int, **extra: Any
) -> tuple[SippUas, SippUas, dict[str, Any]]:
    """SIPp carrier looping a greeting, SIPp agent, and a bridge config for up to
    ``max_calls`` held calls whose detectors stay on (``extra``: more config sections)."""
    audio = _speech_wav(log_dir)
    scen = render_scenario(
        "uas_answer_stream.xml.in", log_dir / "uas_answer_loop.xml", AUDIO=str(audio)
    )
    carrier = st.sipp(scen, extra_args=["-rtp_threadtasks", "50"])
    agent = st.sipp("uas_answer_infos_bye.xml")  # held: answers detection INFOs
    # The SIPp agent sends no RTP: no media timeout, or the calls would end after 30 s.
    sip = {
        "workers": 2,
        "min_workers": 2,
        "max_workers": max_calls // 2 + 8,
        "spare_slots": 16,
        "idle_worker_ttl_s": 600.0,
        "media_timeout_s": 0,
    }
    # No beep ever comes and the wait for it (the config's upper bound, 5 min) outlasts
    # the measurement (a step takes ~10-20 s): every call's detector stays on (tap
    # connected, every frame analysed) for the whole measurement.
    detection = {"wait_for_beep": True, "thresholds": {"max_beep_wait_ms": 300_000}}
    timers = {"max_call_duration_s": 900, "ring_timeout_s": 30}
    cfg = make_config(log_dir, carrier, agent, sip, detection=detection, timers=timers, **extra)
    return carrier, agent, cfg


def hold_calls(base: str, sids: list[str], add: int, rate: float = 20.0) -> dict[str, Any]:
    """Trigger ``add`` more held calls at ``rate``, appended to ``sids``; wait (up to 60 s)
    until every call is answered or terminal. Returns the drive result."""
    d = asyncio.run(drive(base, add, rate, 60))
    sids += [s for s, _, _ in d["sent"]]
    t_wait = time.monotonic() + 60
    while time.monotonic() < t_wait:
        sts = asyncio.run(statuses(base, sids))
        up = [
            s
            for s in sts
            if s["status"] == "calling"
            and any(e["kind"] == "carrier.answered" for e in s.get("events", []))
        ]
        term = [s for s in sts if s["status"] in ("success", "failure")]
        if len(up) + len(term) >= len(sids):
            break
        time.sleep(1.0)  # polling call status, bounded by t_wait
    return d


def hangup_all(b: Bridge, sids: list[str]) -> None:
    """Hang up every call (16 at a time) and wait for them to end."""

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


def phase_conc(work: Path, quick: bool, steps: list[int] | None = None) -> list[dict[str, Any]]:
    steps = steps or ([20, 50] if quick else [25, 50, 100, 150, 200])
    window = 4.0 if quick else 6.0
    log_dir = work / "conc"
    log_dir.mkdir()
    out: list[dict[str, Any]] = []
    with Stack(log_dir) as st:
        carrier, agent, cfg = conc_config(st, log_dir, steps[-1])
        b = st.bridge(cfg)
        sids: list[str] = []
        deadline_all = time.monotonic() + (240 if quick else 600)
        try:
            for target in steps:
                if time.monotonic() > deadline_all:
                    break
                hold_calls(b.base, sids, target - len(sids))
                time.sleep(2.0)  # let detection of the newest calls run a little
                ws = workers_of(b.proc.pid)
                pids = [b.proc.pid, *ws]
                res_rtp: dict[str, Any] = {}

                def sample(res_rtp: dict[str, Any] = res_rtp) -> None:
                    res_rtp.update(rtp_sample(agent.media_port, window - 1, log_dir))

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
            hangup_all(b, sids)
    return out
