"""The mixed phase (issue 13 item 11): one node with admission control on, holding 150
analysed calls (the carrier loops a greeting, as in the conc phase) while 20 CPS of new
short calls arrive on top; run twice on the same node: alone, then with a CPU burner
beside it (2 busy loops at nice 0, started and stopped by the bench, each bounded in
time). Per run: trigger->INVITE of accepted calls, API errors (anything but 200/503),
503 refusals and when they started, status reads, late RTP streams at the agent, and
/readyz transitions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from loadkit.common import SID_HDR, carrier_invites, drive, pct
from loadkit.conc import conc_config, hangup_all, hold_calls, rtp_sample
from loadkit.procs import TICK, cpu_ticks
from loadkit.stages import breakdown, fmt, read_stages
from loadkit.wire import InviteCapture
from sipbridge.admissionconfig import AdmissionConfig
from sipbridge.devtools.bridge import AUTH, Bridge, Stack
from sipbridge.devtools.sipp import SippUas

HELD = 150
CPS = 20.0
SHORT_NUMBER = "+14155550123"  # routed to the short-call carrier
# A rated node: 200 analysed calls took ~82 % of 2 cores in the conc phase. CPU, loop
# lag, enter/resume times and Retry-After are the defaults (README "Admission control").
ADMISSION = {"enabled": True, "max_analysed_calls": 200}
BURNERS = 2


def _burn(seconds: float) -> list[subprocess.Popen[bytes]]:
    """BURNERS busy loops at nice 0 ending by themselves after ``seconds``: one neighbour
    service in a session of its own (its own CPU group where the kernel groups sessions,
    as another service's would be), not in the bench's. One process, forked into
    BURNERS (a session can't be joined from outside)."""
    code = (
        "import os, time\n"
        f"end = time.time() + {seconds:.1f}\n"
        f"for _ in range({BURNERS} - 1):\n"
        "    if os.fork() == 0:\n"
        "        break\n"
        "while time.time() < end:\n"
        "    pass\n"
    )
    return [
        subprocess.Popen([sys.executable, "-c", code], preexec_fn=_nice0, start_new_session=True)
    ]


def _psi_cpu_some_us() -> int | None:
    """Linux PSI: total µs some runnable task waited for a CPU (None without PSI)."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some "):
                return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _nice0() -> None:
    """In a burner: nice 0 whatever the bench runs at (--peers-nice)."""
    os.setpriority(os.PRIO_PROCESS, 0, 0)


class _Watch(threading.Thread):
    """Polls /readyz (5/s) and one held call's status (10/s) until stopped: /readyz
    transitions and status-read latency and errors."""

    def __init__(self, base: str, sid: str, t0: float) -> None:
        super().__init__(daemon=True)
        self.base, self.sid, self.t0 = base, sid, t0
        self.stop = threading.Event()
        self.ready: list[tuple[float, int, str]] = []  # (s from start, code, error)
        self.status_ms: list[float] = []
        self.status_errors: Counter[str] = Counter()

    def run(self) -> None:
        with httpx.Client(base_url=self.base, headers=AUTH, timeout=5) as c:
            i = 0
            while not self.stop.wait(0.1):
                t = time.time()
                try:
                    r = c.get(f"/v1/outbound-calling/{self.sid}/status")
                    self.status_ms.append(1000 * (time.time() - t))
                    if r.status_code != 200:
                        self.status_errors[f"HTTP {r.status_code}"] += 1
                    if i % 2 == 0:
                        rr = c.get("/readyz")
                        err = rr.json().get("error", "") if rr.status_code != 200 else ""
                        if not self.ready or self.ready[-1][1] != rr.status_code:
                            self.ready.append((time.time() - self.t0, rr.status_code, err))
                except httpx.HTTPError as e:
                    self.status_errors[type(e).__name__] += 1
                i += 1


def _run(
    b: Bridge,
    short: SippUas,
    agent: SippUas,
    held_sid: str,
    log_dir: Path,
    dur: float,
    burn: tuple[float, float] | None,
) -> dict[str, Any]:
    """One run of ``dur`` s of CPS short calls; ``burn``: burner from/to (s into the run)."""
    load1 = os.getloadavg()[0]
    log_path = b.log_dir / "bridge.log"
    log_offset = log_path.stat().st_size
    sup_ticks = cpu_ticks(b.proc.pid)  # the supervisor's own CPU (not its workers')
    psi0 = _psi_cpu_some_us()
    t0 = time.time()
    watch = _Watch(b.base, held_sid, t0)
    watch.start()
    burners: list[subprocess.Popen[bytes]] = []
    timer = None
    if burn is not None:

        def start_burn() -> None:
            burners.extend(_burn(burn[1] - burn[0]))

        timer = threading.Timer(burn[0], start_burn)
        timer.start()
    # RTP at the agent over the middle of the run (the burner's time in the second run)
    win = (burn[0] + 2, burn[1]) if burn else (dur * 0.2, dur * 0.7)
    rtp: dict[str, Any] = {}

    def sample() -> None:
        time.sleep(win[0])  # the capture window starts this far into the run
        rtp.update(rtp_sample(agent.media_port, win[1] - win[0], log_dir))

    th = threading.Thread(target=sample)
    th.start()
    cap = InviteCapture(short.port, log_dir)
    try:
        with cap:
            d = asyncio.run(drive(b.base, int(CPS * dur), CPS, dur + 1, number=SHORT_NUMBER))
            # calls accepted while the node was about to refuse wait in the queue
            sids = [s for s, _, _ in d["sent"]]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(set(sids) - set(carrier_invites(short))):
                time.sleep(0.5)  # polling SIPp's log for the queued calls' INVITEs, bounded
    finally:
        if timer is not None:
            timer.cancel()
        for p in burners:
            p.kill()
            p.wait(5)
    th.join(120)
    # per call (sid, sent, 200 at), for looking at a run's tail afterwards (--keep)
    (log_dir / f"sent_{'burner' if burn else 'alone'}.json").write_text(json.dumps(d["sent"]))
    elapsed = time.time() - t0
    sup_cpu_pct = 100 * (cpu_ticks(b.proc.pid) - sup_ticks) / TICK / elapsed
    psi1 = _psi_cpu_some_us()
    psi_pct = None if psi0 is None or psi1 is None else (psi1 - psi0) / 1e4 / elapsed
    watch.stop.set()
    watch.join(10)
    inv = carrier_invites(short)
    lat = [1000 * (inv[s] - t_send) for s, t_send, _ in d["sent"] if s in inv]
    # from the request's last byte in the socket to the INVITE in a capture on lo: what
    # a capture at the node would show, without the bench's client or SIPp waiting for CPU
    on_wire = cap.times()
    lat_wire = [1000 * (on_wire[s] - t) for s, t in d["on_wire"].items() if s in on_wire]
    refused = [t - t0 for t, _ in d["refused"]]
    reasons = Counter(
        json.loads(body).get("error", "?").split(":")[0] for _, body in d["refused"] if body
    )
    api_errors = {k: v for k, v in d["errors"].items() if k != "HTTP 503"}
    return {
        "burner": list(burn) if burn else None,
        "loadavg_1m": load1,
        "supervisor_cpu_pct": round(sup_cpu_pct, 1),
        "psi_cpu_some_pct": None if psi_pct is None else round(psi_pct, 1),
        "duration_s": dur,
        "triggered": len(d["sent"]) + sum(d["errors"].values()),
        "accepted": len(sids),
        "refused_503": len(refused),
        "refused_first_s": min(refused) if refused else None,
        "refused_last_s": max(refused) if refused else None,
        "refused_reasons": dict(reasons),
        "refused_example": json.loads(d["refused"][0][1]).get("error") if refused else None,
        "api_errors": api_errors,
        "status_errors": dict(watch.status_errors),
        "status_p99_ms": pct(watch.status_ms, 99),
        "not_dialled": len(sids) - len(lat),
        "lat_p50_ms": pct(lat, 50),
        "lat_p99_ms": pct(lat, 99),
        "lat_max_ms": max(lat) if lat else float("nan"),
        "waited_over_1s": sum(1 for x in lat if x > 1000),
        "lat_wire_p50_ms": pct(lat_wire, 50),
        "lat_wire_p99_ms": pct(lat_wire, 99),
        "lat_wire_max_ms": max(lat_wire) if lat_wire else float("nan"),
        "stages": breakdown(d["sent"], inv, read_stages(log_path, log_offset), d["on_wire"]),
        "rtp_window_s": list(win),
        "rtp": rtp,
        "readyz": [[round(t, 1), c, e] for t, c, e in watch.ready],
    }


def phase_mixed(
    work: Path,
    quick: bool,
    admission: dict[str, Any] | None = None,
    held_target: int = HELD,
    seconds: float | None = None,
    peers_nice: int | None = None,
) -> dict[str, Any]:
    """``admission``: keys that replace the phase's admission section (e.g. to compare
    with admission control off, or without the CPU signal on a shared machine).
    ``held_target``, ``seconds``: a smaller variant (e.g. 80 held calls, 20 s runs) for
    A/B comparisons on a shared machine. ``peers_nice``: the nice value of the bench
    itself and what it starts (API client, SIPp, tshark; the burners stay at 0): the
    client and the carrier stand for other machines, so with the node's value they are
    not slowed by the burner more than the node is."""
    admission = {**ADMISSION, **(admission or {})}
    if peers_nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, peers_nice)
        # where the kernel groups sessions, the bench's own session's group too (the
        # node's group gets its process_nice: sipbridge.priority.set_session_nice)
        with contextlib.suppress(OSError):
            Path("/proc/self/autogroup").write_text(f"{peers_nice}\n")
    dur = seconds or (30.0 if quick else 60.0)
    # room to see the node trip, and resume before the end
    burn = (5.0, dur - 15.0) if dur >= 45 else (5.0, dur - 5.0)
    log_dir = work / "mixed"
    log_dir.mkdir()
    out: dict[str, Any] = {"held_target": held_target, "cps": CPS, "admission": admission}
    out["peers_nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    with Stack(log_dir) as st:
        _loop_carrier, agent, cfg = conc_config(st, log_dir, held_target + 50, admission=admission)
        short = st.sipp("uas_answer_then_bye.xml")
        cfg["trunks"].append(
            {
                "name": "short",
                "address": short.uri_hostport,
                "caller_id": "+14155550100",
                "header_templates": {SID_HDR: "{call_sid}"},
            }
        )
        cfg["routes"].insert(0, {"prefix": SHORT_NUMBER[:5], "trunk": "short"})
        # the node leads its own session, as under a service manager: with autogroup
        # scheduling its session's CPU group then gets its nice value too (the burners
        # run in the bench's session, at nice 0)
        b = st.bridge(cfg, own_session=True)
        sids: list[str] = []
        ramp_until = time.monotonic() + 120
        refused = 0
        while len(sids) < held_target and time.monotonic() < ramp_until:
            d = hold_calls(b.base, sids, held_target - len(sids))
            refused += d["errors"].get("HTTP 503", 0)
            if len(sids) < held_target:
                time.sleep(5.0)  # refused during the ramp: wait out Retry-After
        out["held"] = len(sids)
        out["ramp_refused"] = refused
        print(f"  mixed: {len(sids)} held calls ({refused} refused on the way)", flush=True)
        try:
            time.sleep(8.0)  # the admission resume time, so the first run starts clean
            for name, bw in (("alone", None), ("burner", burn)):
                out[name] = _run(b, short, agent, sids[0], log_dir, dur, bw)
                print(f"  mixed {name}: {json.dumps(out[name], default=str)}", flush=True)
                time.sleep(8.0)
        finally:
            hangup_all(b, sids)
    return out


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} s"


def report_mixed(r: dict[str, Any]) -> str:
    """The "load-mixed" section of bench/RESULTS.md."""
    a = r["admission"]
    lines = [
        "## Load: mixed, held analysed calls plus new calls, with and without a CPU burner "
        "(`bench/load --mixed`)",
        "",
        f"One node, `admission: {json.dumps(a)}` (other keys default; the node runs at nice "
        f"{a.get('process_nice', AdmissionConfig().process_nice)}): {r['held']} "
        f"held calls of {r['held_target']} (carrier loops a greeting, detector on; "
        f"{r['ramp_refused']} triggers refused during the ramp), then {r['cps']:g} CPS of "
        "short calls (answered, BYE after 0.5 s) for each run. Burner: "
        f"{BURNERS} busy loops at nice 0, in a session of their own (another service), over "
        "the seconds shown; API client, SIPp and tshark (standing for other machines) at "
        f"nice {r.get('peers_nice', 0)}, their session's CPU group too. Latency = trigger sent to "
        "the INVITE at SIPp, accepted calls only: from the client's send call to SIPp's log, "
        "and from the request's last byte in the socket to the INVITE in a capture on lo "
        "(what a capture at the node would show; the difference is the bench's client and "
        "SIPp waiting for CPU on the shared machine). "
        "Late RTP = a stream at the agent with a gap over 60 ms (tshark). "
        "Machine load = 1-minute load average at the run's start "
        f"({os.cpu_count()} cores; other work on the machine counts).",
        "",
        "| run | machine load | triggers: accepted / 503 | 503 first–last (reason) | "
        "API errors | trigger→INVITE p50 / p99 / max | from the socket p50 / p99 / max | "
        "accepted, waited > 1 s / "
        "not dialled | status read p99 | RTP window: late streams / streams, lost | "
        "/readyz transitions (s: code) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("alone", "burner"):
        x = r.get(name)
        if not x:
            continue
        burn = x["burner"]
        label = name if not burn else f"burner {burn[0]:g}–{burn[1]:g} s"
        p = x["rtp"]
        ready = ", ".join(f"{t:g}: {c}" for t, c, _ in x["readyz"]) or "-"
        errors = {**x["api_errors"], **x["status_errors"]} or "none"
        lines.append(
            f"| {label} | {x['loadavg_1m']:.1f} | {x['accepted']} / {x['refused_503']} | "
            f"{_fmt_s(x['refused_first_s'])}–{_fmt_s(x['refused_last_s'])} "
            f"({', '.join(x['refused_reasons']) or '-'}) | {errors} | "
            f"{x['lat_p50_ms']:.1f} / {x['lat_p99_ms']:.1f} / {x['lat_max_ms']:.0f} ms | "
            f"{x.get('lat_wire_p50_ms', float('nan')):.1f} / "
            f"{x.get('lat_wire_p99_ms', float('nan')):.1f} / "
            f"{x.get('lat_wire_max_ms', float('nan')):.0f} ms | "
            f"{x['waited_over_1s']} / {x['not_dialled']} | {x['status_p99_ms']:.1f} ms | "
            f"{p.get('late_streams')} / {p.get('streams')}, {p.get('lost')} "
            f"({x['rtp_window_s'][0]:g}–{x['rtp_window_s'][1]:g} s) | {ready} |"
        )
    example = next(
        (
            r[n]["refused_example"]
            for n in ("burner", "alone")
            if r.get(n, {}).get("refused_example")
        ),
        None,
    )
    if example:
        lines += ["", f'A refusal\'s body: `{{"error": "{example}"}}` with `Retry-After`.']
    lines += ["", "Trigger→INVITE by stage (bench/loadkit/stages.py):", ""]
    lines += [f"- {n}: {fmt(r[n].get('stages', {}))}" for n in ("alone", "burner") if r.get(n)]
    return "\n".join(lines).rstrip() + "\n"


__all__ = ["phase_mixed", "report_mixed"]
