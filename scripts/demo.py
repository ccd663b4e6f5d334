"""End-to-end demo: SIPp as the carrier and as the AI agent, the bridge with the example
config, one call placed through the API and its status history printed.

Ports are picked free at run time and patched into a copy of config/example.yaml, so the
demo runs next to anything else on the machine. Everything stops by itself; the logs stay
in the folder it prints. The processes are started by :mod:`sipbridge.devtools`, the harness
the integration tests use.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from sipbridge.devtools.bridge import TOKEN_ENV, Bridge, Stack
from sipbridge.devtools.ports import free_port
from sipbridge.devtools.sipp import SCENARIOS, SippUas

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("success", "failure")


def demo_config(work: Path, carrier: SippUas, agent: SippUas) -> dict[str, Any]:
    """config/example.yaml with free ports, the SIPp carrier and agent, a store in ``work``."""
    cfg: dict[str, Any] = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    cfg["sip"].update(port_min=0, port_max=0)
    cfg["api"].update(port=free_port(socket.SOCK_STREAM), tokens=[{"env": TOKEN_ENV}])
    cfg["agent"]["uri"] = f"sip:agent@{agent.uri_hostport}"
    cfg["trunks"][0]["address"] = carrier.uri_hostport
    cfg["store"]["path"] = str(work / "sipbridge.db")
    return cfg


def follow(bridge: Bridge, sid: str, timeout_s: float) -> dict[str, Any]:
    """Print the call's events as they appear; return its status once terminal."""
    seen = 0

    def show(body: dict[str, Any]) -> bool:
        nonlocal seen
        for ev in body["events"][seen:]:
            print(f"  {ev['ts']}  {ev['kind']:<18} {json.dumps(ev['data'])}", flush=True)
        seen = len(body["events"])
        return body["status"] in TERMINAL

    return bridge.wait_status(sid, show, timeout_s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--to", default="+14155552671", help="number to call")
    ap.add_argument(
        "--scenario",
        default="uas_answer_then_bye.xml",
        help=f"SIPp carrier scenario, a file in {SCENARIOS.relative_to(ROOT)}/",
    )
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sipbridge-demo-"))
    try:
        with Stack(work) as st:
            carrier = st.sipp(args.scenario)
            agent = st.sipp("uas_answer_wait_bye.xml")
            cfg = demo_config(work, carrier, agent)
            print(
                f"== demo in {work}: carrier (SIPp) on udp/{carrier.port}, agent (SIPp) on "
                f"udp/{agent.port}, API on tcp/{cfg['api']['port']}",
                flush=True,
            )
            bridge = st.bridge(cfg, token=secrets.token_hex(16), log_level="info")
            body = {
                "to_number": args.to,
                "metadata": {"customer_id": "C-1001"},
                "polyai_call_id": "demo-call-1",
            }
            r = bridge.client.post("/v1/outbound-calling/trigger", json=body)
            print(f"POST /v1/outbound-calling/trigger -> {r.status_code} {r.json()}")
            if r.status_code != 200:
                return 1
            st_body = follow(bridge, r.json()["callSid"], 60.0)
            print(
                f"final: status={st_body['status']} reason={st_body['reason']!r} "
                f"sip_status={st_body.get('sip_status')}"
            )
            invites = carrier.received("INVITE")
            if invites:
                inv = invites[0]
                print(
                    "INVITE as the carrier received it:\n  "
                    + inv.first_line
                    + "\n  "
                    + "\n  ".join(f"{n}: {v}" for n, v in inv.headers)
                )
            return 0 if st_body["status"] == "success" else 1
    except (RuntimeError, AssertionError, TimeoutError) as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    finally:
        print(f"logs kept in {work}")


if __name__ == "__main__":
    sys.exit(main())
