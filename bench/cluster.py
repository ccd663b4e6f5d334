"""Cluster benchmark: three `sipbridge run` nodes on one real PostgreSQL and one Redis,
and in the same run a single node on SQLite, against the same kind of SIPp carrier,
everything on 127.0.0.1.

    python bench/cluster.py [--rates 20,40] [--seconds 8] [--no-write] [--keep]

PostgreSQL 15 (initdb in a temp folder, with pg_stat_statements preloaded) and
redis-server are started on free loopback ports and stopped at the end
(sipbridge.devtools.pgserver / redisserver). Per offered rate, ``rate x seconds`` calls
are triggered (round-robin across the three nodes in the cluster); the carrier answers
and hangs up after 0.5 s. Reported per setup and rate:

- achieved CPS: from the INVITE timestamps in SIPp's message log, with the failures;
- trigger->INVITE p50/p99: from the client sending the trigger to SIPp receiving the
  INVITE (matched by the X-PolyAI-Call-SID header);
- CPU per call: CPU seconds of every process the setup needs (bridge supervisors, SIP
  workers, PostgreSQL backends, Redis) divided by the calls;
- PostgreSQL statements per call: pg_stat_statements' ``calls`` for the cluster's
  database (every statement, BEGIN and COMMIT included, is one client round trip),
  minus the idle rate (heartbeats, queue polls) measured before the calls.

The machine has 2 cores shared by every process: what scales is argued from the
per-call cost, not from wall time. Results go to bench/RESULTS.md (cluster section).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from loadkit.common import (
    carrier_invites,
    drive,
    fmt_failures,
    make_config,
    metric_sum,
    pct,
    statuses,
)
from loadkit.phases import _cps_sip
from loadkit.procs import _children, _stat
from results import write_section

from sipbridge.devtools.bridge import Bridge, Stack
from sipbridge.devtools.pgserver import PgServer
from sipbridge.devtools.pgserver import available as pg_available
from sipbridge.devtools.redisserver import RedisServer
from sipbridge.devtools.redisserver import available as redis_available

TICK = os.sysconf("SC_CLK_TCK")
NODES = 3
IDLE_WINDOW_S = 5.0
SATURATED = 0.9  # machine CPU busy share from which failures are put down to this machine
NOTE_2_CORES = (
    "All processes share this machine's {cores} cores: what scales is argued from the "
    "per-call cost (CPU and PostgreSQL round trips per call), not from wall time."
)


# --------------------------------------------------------------------------- CPU
def _tree(pid: int) -> Iterator[int]:
    yield pid
    for c in _children(pid):
        yield from _tree(c)


def tree_ticks(pids: list[int]) -> int:
    """CPU ticks of the processes, their live descendants, and the children they reaped
    (utime + stime + cutime + cstime: nothing counted twice)."""
    total = 0
    for root in pids:
        for p in _tree(root):
            f = _stat(p)
            if f:
                total += sum(int(x) for x in f[11:15])
    return total


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat (every process, this
    bench's and anyone else's: the 2 cores are shared)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals) - idle, sum(vals)


# --------------------------------------------------------------------------- PostgreSQL
class PgStatements:
    """Statements the bridge ran on one database, from pg_stat_statements."""

    def __init__(self, pg: PgServer, dsn: str) -> None:
        import psycopg

        self.db = dsn.rsplit("/", 1)[1]
        self.conn = psycopg.connect(pg.dsn(), autocommit=True)
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    def _where(self) -> str:
        return "dbid = (SELECT oid FROM pg_database WHERE datname = %s)"

    def total(self) -> int:
        row = self.conn.execute(
            f"SELECT COALESCE(SUM(calls), 0) FROM pg_stat_statements WHERE {self._where()}",
            (self.db,),
        ).fetchone()
        return int(row[0]) if row else 0

    def control(self) -> int:
        """How many of the statements were BEGIN or COMMIT (a round trip each)."""
        row = self.conn.execute(
            "SELECT COALESCE(SUM(calls), 0) FROM pg_stat_statements "
            f"WHERE {self._where()} AND query IN ('BEGIN', 'COMMIT')",
            (self.db,),
        ).fetchone()
        return int(row[0]) if row else 0

    def top(self, n: int = 12) -> list[tuple[int, str]]:
        rows = self.conn.execute(
            f"SELECT calls, query FROM pg_stat_statements WHERE {self._where()} "
            "ORDER BY calls DESC LIMIT %s",
            (self.db, n),
        ).fetchall()
        return [(int(c), " ".join(str(q).split())[:90]) for c, q in rows]

    def reset(self) -> None:
        self.conn.execute("SELECT pg_stat_statements_reset()")

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- setups
def node_config(
    log_dir: Path, carrier: Any, agent: Any, rate: float, i: int, **extra: Any
) -> dict[str, Any]:
    """make_config (bench/load.py) for node ``i`` of a setup: its own quarter of the RTP
    range, SIP workers sized for its share of ``rate``."""
    base = 20000 + (os.getpid() % 40) * 800 + i * 2000
    sip = {**_cps_sip(rate), "rtp_port_min": base, "rtp_port_max": base + 1999}
    return make_config(log_dir, carrier, agent, sip, **extra)


def terminal_total(nodes: list[Bridge]) -> int:
    return int(
        sum(
            metric_sum(httpx.get(n.base + "/metrics", timeout=10).text, "sipbridge_calls_total")
            for n in nodes
        )
    )


def wait_terminal(nodes: list[Bridge], n: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if terminal_total(nodes) >= n:
            return True
        time.sleep(0.5)  # polling the nodes' counters, bounded by the deadline
    return False


async def drive_round_robin(nodes: list[Bridge], n: int, rate: float) -> dict[str, Any]:
    """``n`` triggers at ``rate`` per second in all, call k to node k mod len(nodes):
    each node gets every len(nodes)-th slot of one evenly paced sequence."""
    k = len(nodes)

    async def lane(j: int) -> dict[str, Any]:
        await asyncio.sleep(j / rate)
        count = len(range(j, n, k))
        return await drive(nodes[j].base, count, rate / k, n / rate + 1)

    parts = await asyncio.gather(*(lane(j) for j in range(k)))
    errors: Counter[str] = Counter()
    for p in parts:
        errors.update(p["errors"])
    return {
        "sent": [s for p in parts for s in p["sent"]],
        "errors": errors,
        "elapsed": max(p["elapsed"] for p in parts),
    }


def run_rate(
    nodes: list[Bridge],
    carrier: Any,
    rate: float,
    seconds: float,
    cpu: dict[str, list[int]],
    before_total: int,
    pgs: PgStatements | None,
    idle: dict[str, float],
) -> dict[str, Any]:
    n = int(rate * seconds)
    if pgs:
        pgs.reset()
    ticks0 = {g: tree_ticks(pids) for g, pids in cpu.items()}
    busy0 = machine_busy()
    t0 = time.monotonic()
    d = asyncio.run(drive_round_robin(nodes, n, rate))
    busy1 = machine_busy()  # while the calls were placed (not the wait for the last ones)
    sids = [s for s, _, _ in d["sent"]]
    done = wait_terminal(nodes, before_total + len(sids), 60 + seconds)
    wall_s = time.monotonic() - t0
    cpu_s = {
        g: (tree_ticks(pids) - ticks0[g]) / TICK - idle[f"cpu_{g}_s_per_s"] * wall_s
        for g, pids in cpu.items()
    }
    # before the status reads below (not a call's cost)
    stmts, control = (pgs.total(), pgs.control()) if pgs else (0, 0)
    sts = asyncio.run(statuses(nodes[0].base, sids))  # any node answers for any call
    nfail, reasons = fmt_failures(sts)
    inv = carrier_invites(carrier)
    times = sorted(inv[s] for s in sids if s in inv)
    achieved = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    lat = [1000 * (inv[s] - t_send) for s, t_send, _ in d["sent"] if s in inv]
    res: dict[str, Any] = {
        "rate": rate,
        "triggered": len(sids),
        "api_errors": dict(d["errors"]),
        "all_terminal": done,
        "failed": nfail + sum(d["errors"].values()),
        "failure_reasons": reasons,
        "invites": len(times),
        "achieved_cps": achieved,
        "lat_p50_ms": pct(lat, 50),
        "lat_p99_ms": pct(lat, 99),
        "cpu_ms_per_call": 1000 * sum(cpu_s.values()) / max(1, len(sids)),
        **{f"cpu_{g}_ms_per_call": 1000 * v / max(1, len(sids)) for g, v in cpu_s.items()},
        "wall_s": wall_s,
        "machine_busy": (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]),
    }
    if pgs:
        res["pg_statements"] = stmts
        res["pg_begin_commit_share"] = control / max(1, stmts)
        res["pg_per_call"] = (stmts - idle["pg_per_s"] * wall_s) / max(1, len(sids))
        res["pg_top"] = pgs.top()
    print(f"  {res}", flush=True)
    return res


def idle_rates(cpu: dict[str, list[int]], pgs: PgStatements | None) -> dict[str, float]:
    """CPU seconds per second and statements per second of a setup with no calls (its
    heartbeats, queue polls, idle workers): subtracted from each run's totals."""
    time.sleep(1.0)  # let the nodes' first heartbeats, LISTENs and worker starts settle
    if pgs:
        pgs.reset()
    ticks0 = {g: tree_ticks(pids) for g, pids in cpu.items()}
    time.sleep(IDLE_WINDOW_S)  # a window with no calls
    out = {
        f"cpu_{g}_s_per_s": (tree_ticks(pids) - ticks0[g]) / TICK / IDLE_WINDOW_S
        for g, pids in cpu.items()
    }
    out["cpu_s_per_s"] = sum(out.values())
    out["pg_per_s"] = pgs.total() / IDLE_WINDOW_S if pgs else 0.0
    return out


def bench_single(
    work: Path, rates: list[float], seconds: float
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    log_dir = work / "single"
    log_dir.mkdir()
    with Stack(log_dir) as st:
        carrier = st.sipp("uas_answer_then_bye.xml")
        agent = st.sipp("uas_answer_wait_bye.xml")
        b = st.bridge(node_config(log_dir, carrier, agent, max(rates), 0), name="single")
        cpu = {"nodes": [b.proc.pid]}
        idle = idle_rates(cpu, None)
        out, total = [], 0
        for rate in rates:
            print(f"single SQLite node, {rate:g} CPS", flush=True)
            out.append(run_rate([b], carrier, rate, seconds, cpu, total, None, idle))
            total += out[-1]["triggered"]
    return out, idle


def bench_cluster(
    work: Path, rates: list[float], seconds: float, pg: PgServer, redis: RedisServer
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    log_dir = work / "cluster"
    log_dir.mkdir()
    dsn = pg.new_database()
    pgs = PgStatements(pg, dsn)
    try:
        with Stack(log_dir) as st:
            carrier = st.sipp("uas_answer_then_bye.xml")
            agent = st.sipp("uas_answer_wait_bye.xml")
            nodes = []
            for i in range(NODES):
                cfg = node_config(
                    log_dir,
                    carrier,
                    agent,
                    max(rates) / NODES,
                    i,
                    store={"backend": "postgresql", "dsn": {"value": dsn}},
                    cluster={"node_id": f"n{i}", "redis": {"url": {"value": redis.url}}},
                )
                nodes.append(st.bridge(cfg, name=f"node{i}"))
            server_pids = [p for p in (pg.postmaster_pid(), redis.proc and redis.proc.pid) if p]
            cpu = {"nodes": [n.proc.pid for n in nodes], "servers": server_pids}
            idle = idle_rates(cpu, pgs)
            out, total = [], 0
            for rate in rates:
                print(f"cluster of {NODES} nodes, {rate:g} CPS", flush=True)
                out.append(run_rate(nodes, carrier, rate, seconds, cpu, total, pgs, idle))
                total += out[-1]["triggered"]
    finally:
        pgs.close()
    return out, idle


# --------------------------------------------------------------------------- report
def report(
    single: tuple[list[dict[str, Any]], dict[str, float]],
    cluster: tuple[list[dict[str, Any]], dict[str, float]],
    seconds: float,
) -> str:
    (s_rows, s_idle), (c_rows, c_idle) = single, cluster
    cores = os.cpu_count() or 0
    lines = [
        "## Cluster (bench/cluster)",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {cores} cores, "
        f"Python {platform.python_version()}. Three nodes (separate `sipbridge run` "
        "processes) on one PostgreSQL 15 and one Redis, and one node on SQLite, run one "
        f"after the other on this machine; per offered rate, rate x {seconds:g} s calls "
        "(carrier answers, hangs up after 0.5 s; agent leg bridged), triggered "
        "round-robin across the nodes.",
        "",
        NOTE_2_CORES.format(cores=cores),
        "",
        "| setup | offered CPS | calls | failures | achieved CPS | trigger→INVITE p50 / p99 "
        "| CPU per call | machine CPU busy | PG statements per call |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in (("1 node, SQLite", s_rows), (f"{NODES} nodes, PostgreSQL", c_rows)):
        for r in rows:
            pgc = f"{r['pg_per_call']:.1f}" if "pg_per_call" in r else "-"
            cpu = f"{r['cpu_ms_per_call']:.0f} ms" + (
                f" (nodes {r['cpu_nodes_ms_per_call']:.0f}, PG+Redis "
                f"{r['cpu_servers_ms_per_call']:.0f})"
                if "cpu_servers_ms_per_call" in r
                else ""
            )
            fails = f"{r['failed']}" + (f" ({r['failure_reasons']})" if r["failed"] else "")
            lines.append(
                f"| {name} | {r['rate']:g} | {r['triggered']} | {fails} | "
                f"{r['achieved_cps']:.1f} | {r['lat_p50_ms']:.0f} / {r['lat_p99_ms']:.0f} ms | "
                f"{cpu} | {100 * r['machine_busy']:.0f} % | {pgc} |"
            )
    lines.append("")
    for name, rows in (("single node", s_rows), ("cluster", c_rows)):
        clean = [r["rate"] for r in rows if r["failed"] == 0 and r["all_terminal"]]
        best = max((r for r in rows if r["rate"] in clean), key=lambda r: r["rate"], default=None)
        lines.append(
            f"- {name}: highest offered rate with 0 failures "
            + (f"{best['rate']:g} CPS, achieved {best['achieved_cps']:.1f}." if best else "none.")
        )
    for name, rows in (("single node", s_rows), ("cluster", c_rows)):
        for r in rows:
            if r["failed"] and r["machine_busy"] >= SATURATED:
                lines.append(
                    f"- {name} at {r['rate']:g} CPS: the {r['failed']} failures came with the "
                    f"machine's {cores} cores {100 * r['machine_busy']:.0f} % busy (every "
                    "process on it) while the calls were placed: CPU-bound on this machine, "
                    "not a limit of the design; what scales is the cost per call below."
                )
            elif r["failed"]:
                lines.append(
                    f"- {name} at {r['rate']:g} CPS: {r['failed']} failures with the machine "
                    f"{100 * r['machine_busy']:.0f} % busy: not explained by CPU saturation."
                )
    for s, c in zip(s_rows, c_rows, strict=True):
        ratio_cps = c["achieved_cps"] / s["achieved_cps"] if s["achieved_cps"] else float("nan")
        ratio_p99 = c["lat_p99_ms"] / s["lat_p99_ms"] if s["lat_p99_ms"] else float("nan")
        ratio_cpu = c["cpu_ms_per_call"] / s["cpu_ms_per_call"]
        lines.append(
            f"- {s['rate']:g} CPS offered: cluster/single achieved CPS {ratio_cps:.2f}, "
            f"p99 {ratio_p99:.2f}, CPU per call {ratio_cpu:.2f}."
        )
    lines += [
        "",
        "PostgreSQL round trips: pg_stat_statements `calls` on the cluster's database "
        "(each statement, BEGIN and COMMIT included, is one round trip), minus the idle "
        f"rate of the three nodes ({c_idle['pg_per_s']:.1f} statements/s: heartbeats, queue "
        "polls) over the run's wall time; the status reads after the run are not counted. "
        + (
            f"BEGIN and COMMIT are {100 * c_rows[-1]['pg_begin_commit_share']:.0f} % of "
            "them (single statements autocommit; a new call or a status change is one "
            "statement). "
            if c_rows
            else ""
        )
        + "Most frequent statements at the highest rate:",
        "",
    ]
    if c_rows:
        lines += [f"    {c:6d}  {q}" for c, q in c_rows[-1].get("pg_top", [])]
    lines += [
        "",
        "CPU per call sums every process a setup needs (supervisors, SIP workers, and for "
        "the cluster the PostgreSQL backends and Redis) over the run, minus what the same "
        f"processes use idle (single {1000 * s_idle['cpu_s_per_s']:.0f} ms/s, cluster "
        f"{1000 * c_idle['cpu_s_per_s']:.0f} ms/s), divided by the calls. "
        "With 2 cores, three nodes contend for the same CPU as one, so the cluster's wall-"
        "clock CPS here is this machine's CPU ceiling (CPS x CPU per call reaching the 2 "
        "cores), not a cluster's capacity: with a machine per node, each node's ceiling "
        "scales from the single node's by (single CPU per call / the cluster's 'nodes' CPU "
        "per call), and the nodes add up until PostgreSQL, which serves the statements per "
        "call above times the cluster's CPS, becomes the limit.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="20,40", help="offered CPS, comma separated")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds of calls per rate")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args(argv)
    why = pg_available() or redis_available() or (shutil.which("sipp") is None and "no sipp")
    if why:
        print(why, file=sys.stderr)
        return 2
    rates = [float(x) for x in a.rates.split(",")]
    work = Path(tempfile.mkdtemp(prefix="sipbridge-cluster-"))
    print(f"work dir {work}", flush=True)
    t0 = time.monotonic()
    pg = PgServer({"shared_preload_libraries": "pg_stat_statements"})
    redis = RedisServer()
    try:
        pg.start()
        redis.start()
        single = bench_single(work, rates, a.seconds)
        cluster = bench_cluster(work, rates, a.seconds, pg, redis)
    finally:
        redis.close()
        pg.close()
        print(f"total {time.monotonic() - t0:.0f} s; logs in {work}", flush=True)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = report(single, cluster, a.seconds)
    print(text)
    if not a.no_write:
        write_section("cluster", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
