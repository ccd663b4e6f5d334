"""The idle, cps and memory phases."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from loadkit.common import (
    carrier_invites,
    drive,
    fmt_failures,
    make_config,
    metric_sum,
    metrics,
    pct,
    statuses,
    wait_terminal_total,
)
from loadkit.procs import TICK, cpu_ticks, cpu_window, forkserver_of, mem_kb, rss_kb, workers_of
from sipbridge.devtools.bridge import Bridge, Stack


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
