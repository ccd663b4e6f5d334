"""The "load" section of bench/RESULTS.md from the phases' results."""

from __future__ import annotations

import datetime as dt
import os
import platform
from typing import Any


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
