"""End-to-end demo: SIPp as the carrier, the bridge with the example config, one call.

Ports are picked free at run time and patched into a copy of config/example.yaml, so the
demo runs next to anything else on the machine. Everything stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "X-PolyAi-Auth-Token": token, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--to", default="+14155552671", help="number to call")
    ap.add_argument("--scenario", default="uas_answer_then_bye.xml",
                    help="SIPp carrier scenario under tests/scenarios/")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sipbridge-demo-"))
    token = secrets.token_hex(16)
    carrier_port, api_port = free_port(), free_port(socket.SOCK_STREAM)
    cfg = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    cfg["sip"].update(port_min=0, port_max=0)
    cfg["api"].update(port=api_port, tokens=[{"env": "SIPBRIDGE_API_TOKEN"}])
    cfg["trunks"][0]["address"] = f"127.0.0.1:{carrier_port}"
    cfg["store"]["path"] = str(work / "sipbridge.db")
    cfg_path = work / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, SIPBRIDGE_API_TOKEN=token,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))

    print(f"== demo in {work}: carrier (SIPp) on udp/{carrier_port}, API on tcp/{api_port}")
    with open(work / "sipp.err", "w") as sipp_err, open(work / "bridge.log", "w") as bridge_log:
        return run_call(args, work, token, env, cfg_path, carrier_port, api_port, sipp_err,
                        bridge_log)


def run_call(args: argparse.Namespace, work: Path, token: str, env: dict[str, str],
             cfg_path: Path, carrier_port: int, api_port: int, sipp_err: IO[str],
             bridge_log: IO[str]) -> int:
    sipp = subprocess.Popen(
        ["sipp", "-sf", str(ROOT / "tests" / "scenarios" / args.scenario), "-i", "127.0.0.1",
         "-p", str(carrier_port), "-mp", str(free_port()), "-nostdin", "-trace_msg",
         "-message_file", str(work / "sipp_messages.log"), "-timeout", "60s"],
        stdout=subprocess.DEVNULL, stderr=sipp_err, cwd=work)
    bridge = subprocess.Popen(
        [sys.executable, "-m", "sipbridge", "run", "-c", str(cfg_path)],
        stdout=bridge_log, stderr=subprocess.STDOUT, env=env, cwd=work)
    base = f"http://127.0.0.1:{api_port}"
    rc = 1
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1):
                    break
            except OSError:
                if bridge.poll() is not None or time.monotonic() > deadline:
                    print("bridge did not start; its log:\n" + (work / "bridge.log").read_text())
                    return 1
                time.sleep(0.2)
        code, body = http("POST", base + "/v1/outbound-calling/trigger", token,
                          {"to_number": args.to, "metadata": {"customer_id": "C-1001"},
                           "polyai_call_id": "demo-call-1"})
        print(f"POST /v1/outbound-calling/trigger -> {code} {body}")
        if code != 200:
            return 1
        sid = body["callSid"]
        deadline = time.monotonic() + 60
        seen = 0
        while time.monotonic() < deadline:
            code, st = http("GET", f"{base}/v1/outbound-calling/{sid}/status", token)
            for ev in st.get("events", [])[seen:]:
                print(f"  {ev['ts']}  {ev['kind']:<18} {json.dumps(ev['data'])}")
            seen = len(st.get("events", []))
            if st.get("status") in ("success", "failure"):
                break
            time.sleep(0.2)
        print(f"final: status={st.get('status')} reason={st.get('reason')!r} "
              f"sip_status={st.get('sip_status')}")
        log = (work / "sipp_messages.log").read_text(errors="replace")
        invite = log[log.find("INVITE sip:"):]
        print("INVITE as the carrier received it:\n  " +
              "\n  ".join(invite.split("\r\n\r\n")[0].splitlines()[:25]))
        rc = 0 if st.get("status") == "success" else 1
    finally:
        bridge.terminate()
        try:
            bridge.wait(15)
        except subprocess.TimeoutExpired:
            bridge.kill()
        sipp.terminate()
        sipp.wait(5)
    print(f"logs kept in {work}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
