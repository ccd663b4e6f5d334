"""Load benchmark: a real `sipbridge run` driven through its HTTP API, SIPp as the carrier
(and as the agent), everything on 127.0.0.1.

    python bench/load.py [--quick] [--phases idle,cps,conc,memory,mixed] [--no-write]
    bench/load --mixed        # the mixed phase alone, a few minutes

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
- mixed:  150 held analysed calls plus 20 CPS of new calls on one node with admission
          control on, 60 s alone then 60 s with a CPU burner beside it (--quick 30 s):
          trigger-to-INVITE of accepted calls, API errors, 503 refusals, late RTP at the
          agent, /readyz transitions (bench/loadkit/mixed.py). Not in the default phases.

The phases live in bench/loadkit/. Results are printed and written to bench/RESULTS.md
between the load markers (the mixed phase: between the load-mixed markers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadkit.conc import phase_conc
from loadkit.mixed import phase_mixed, report_mixed
from loadkit.phases import phase_cps, phase_idle, phase_memory
from loadkit.report import report
from results import write_section


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
    ap.add_argument(
        "--mixed",
        action="store_true",
        help="run only the mixed phase (a few minutes; its own RESULTS.md section)",
    )
    ap.add_argument(
        "--admission",
        default="",
        help="mixed phase: JSON of admission keys to override, e.g. '{\"max_cpu_busy\": null}'",
    )
    ap.add_argument(
        "--held", type=int, default=150, help="mixed phase: held analysed calls (default 150)"
    )
    ap.add_argument(
        "--seconds", type=float, default=0.0, help="mixed phase: seconds per run (default 60)"
    )
    ap.add_argument(
        "--peers-nice",
        type=int,
        default=-5,
        help="mixed phase: nice value of the API client, SIPp and tshark, and of the "
        "bench session's CPU group (default -5, the node's: they stand for other "
        "machines, which the burner does not slow)",
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
    phases = ["mixed"] if a.mixed else a.phases.split(",")
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
        if "mixed" in phases:
            res["mixed"] = phase_mixed(
                work,
                a.quick,
                json.loads(a.admission or "{}"),
                a.held,
                a.seconds or None,
                a.peers_nice,
            )
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
    mixed = res.pop("mixed", None)
    if res:
        text = report(res, a.quick)
        print(text)
        if not a.no_write:
            write_section("load", text)
    if mixed is not None:
        text = report_mixed(mixed)
        print(text)
        if not a.no_write:
            write_section("load-mixed", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
