"""What every load phase uses: the bridge config, triggering calls at a rate, reading
statuses and metrics, matching INVITEs at the SIPp carrier."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from sipbridge.devtools.bridge import AUTH, Bridge, bridge_config
from sipbridge.devtools.sipp import SippUas

NUMBER = "+12125550123"
SID_HDR = "X-PolyAI-Call-SID"


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
    number: str = NUMBER,
) -> dict[str, Any]:
    """Trigger ``n`` calls at ``rate`` per second (paced, not waiting for responses),
    stopping after ``max_s`` s. Returns sids with send/200 wall times, errors, the 503
    refusals (send time, error text) and, per sid, when the request's last byte went
    to the socket (``on_wire``)."""
    sent: list[tuple[str, float, float]] = []
    refused: list[tuple[float, str]] = []
    errors: Counter[str] = Counter()
    on_wire: dict[str, float] = {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=10, limits=limits) as client:

        async def one(i: int) -> None:
            t_send = time.time()
            t_wire: list[float] = []

            async def trace(event: str, _info: dict[str, Any]) -> None:
                # the request's last byte handed to the kernel: where a packet capture
                # on the node would see the trigger (the client's own scheduling before
                # this, on a machine it shares with SIPp and tshark, is not the node's)
                if event == "http11.send_request_body.complete":
                    t_wire.append(time.time())

            try:
                r = await client.post(
                    "/v1/outbound-calling/trigger",
                    json={"to_number": number},
                    extensions={"trace": trace},
                )
            except httpx.HTTPError as e:
                errors[f"http error {type(e).__name__}"] += 1
                return
            t_ok = time.time()
            if r.status_code != 200:
                errors[f"HTTP {r.status_code}"] += 1
                if r.status_code == 503:
                    refused.append((t_send, r.text))
                return
            sid = r.json()["callSid"]
            sent.append((sid, t_send, t_ok))
            if t_wire:
                on_wire[sid] = t_wire[0]
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
        if tasks:  # a starved node: requests still unanswered 30 s on are errors
            _, late = await asyncio.wait(tasks, timeout=30)
            for t in late:
                t.cancel()
            if late:
                errors["no answer 30 s after the last send"] += len(late)
        elapsed = time.monotonic() - t0
    return {
        "sent": sent,
        "errors": errors,
        "elapsed": elapsed,
        "refused": refused,
        "on_wire": on_wire,
    }


async def statuses(base: str, sids: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    sem = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=10) as client:

        async def one(sid: str) -> None:
            async with sem:
                try:
                    r = await client.get(f"/v1/outbound-calling/{sid}/status")
                except httpx.HTTPError as e:  # a starved node: count it, don't stop the phase
                    out.append({"callSid": sid, "status": type(e).__name__, "reason": ""})
                    return
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
