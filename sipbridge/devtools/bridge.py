"""Run `sipbridge run` as a real subprocess against a config and talk to its API.

Used by the integration tests, ``bench/load.py`` and ``scripts/demo.py``::

    with Stack(log_dir) as st:
        carrier = st.sipp("uas_answer_then_bye.xml")
        bridge = st.bridge(bridge_config(log_dir, trunks=[...], routes=[...]))
        sid = bridge.trigger(to_number="+12125550123")
        body = bridge.wait_terminal(sid)
    # every process stopped, in reverse order; logs stay in log_dir

The API token reaches the bridge through the environment variable :data:`TOKEN_ENV`
(``api.tokens: [{env: ...}]`` in the config), never through the config file.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from sipbridge.devtools.ports import free_port
from sipbridge.devtools.sipp import SippUas

TOKEN = "integration-token"
TOKEN_ENV = "SIPBRIDGE_DEV_TOKEN"
AUTH = {"X-PolyAi-Auth-Token": TOKEN}


@dataclass
class Bridge:
    """A running bridge process; ``log_dir`` holds its config, database and log."""

    base: str
    log_dir: Path
    proc: subprocess.Popen[bytes]
    cfg_path: Path
    # SIPp carriers the test started for this bridge, by a name the test chooses.
    carriers: dict[str, Any] = field(default_factory=dict)
    token: str = TOKEN
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(
            base_url=self.base, timeout=5, headers={"X-PolyAi-Auth-Token": self.token}
        )

    def trigger(self, **body: Any) -> str:
        r = self.client.post("/v1/outbound-calling/trigger", json=body)
        assert r.status_code == 200, r.text
        sid: str = r.json()["callSid"]
        return sid

    def status(self, sid: str) -> dict[str, Any]:
        r = self.client.get(f"/v1/outbound-calling/{sid}/status")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def wait_status(self, sid: str, pred: Any, timeout: float = 15.0) -> dict[str, Any]:
        """Poll the status API until ``pred(body)`` holds (the API is the event source)."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.status(sid)
            if pred(body):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{sid}: condition not met within {timeout}s: {body}")
            time.sleep(0.05)

    def wait_terminal(self, sid: str, timeout: float = 15.0) -> dict[str, Any]:
        return self.wait_status(sid, lambda b: b["status"] in ("success", "failure"), timeout)

    def wait_event(self, sid: str, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        return self.wait_status(sid, lambda b: any(e["kind"] == kind for e in b["events"]), timeout)

    def log(self) -> str:
        return self.cfg_path.with_suffix(".log").read_text(errors="replace")

    def stop(self, sig_kill: bool = False) -> int:
        """Stop the process (SIGTERM, or SIGKILL to simulate a crash); return its code."""
        self.client.close()
        if sig_kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


_AGENTS: list[SippUas] = []


def _stop_agents() -> None:
    for uas in _AGENTS:
        uas.stop()


atexit.register(_stop_agents)


def default_agent(log_dir: Path) -> str:
    """A SIPp UAS that answers every agent INVITE and waits for BYE: the AI agent's SIP
    endpoint for tests that are not about the agent leg. Lives until the test run ends
    (a bridge restarted with the same config finds it again)."""
    uas = SippUas("uas_answer_wait_bye.xml", log_dir).start()
    _AGENTS.append(uas)
    return f"sip:agent@{uas.uri_hostport}"


def sip_section(**overrides: Any) -> dict[str, Any]:
    """The ``sip`` section of :func:`bridge_config` (loopback, ports chosen by the OS, 2
    workers of 4 calls) with some keys replaced: ``sip_section(workers=1)``."""
    sip: dict[str, Any] = {
        "listen_address": "127.0.0.1",
        "port_min": 0,
        "port_max": 0,
        "workers": 2,
        "calls_per_worker": 4,
    }
    return sip | overrides


def one_trunk_config(log_dir: Path, carrier_hostport: str, **sections: Any) -> dict[str, Any]:
    """:func:`bridge_config` with one trunk ``t`` to ``carrier_hostport`` (caller ID
    +14155550100) that every ``+1`` number takes."""
    return bridge_config(
        log_dir,
        trunks=[{"name": "t", "address": carrier_hostport, "caller_id": "+14155550100"}],
        routes=[{"prefix": "+1", "trunk": "t"}],
        **sections,
    )


def bridge_config(
    log_dir: Path, trunks: list[dict[str, Any]], routes: list[dict[str, Any]], **sections: Any
) -> dict[str, Any]:
    """A test config; without an ``agent`` section, agent legs go to :func:`default_agent`."""
    cfg: dict[str, Any] = {
        "sip": sip_section(),
        "api": {
            "listen_address": "127.0.0.1",
            "port": free_port(socket.SOCK_STREAM),
            "tokens": [{"env": TOKEN_ENV}],
        },
        "trunks": trunks,
        "routes": routes,
        "store": {"path": str(log_dir / "calls.db")},
        # SIGTERM drains live calls this long (30 s in production) before hanging up
        "shutdown": {"grace_s": 2},
        # Tests share a busy 2-core machine: CPU and loop lag would refuse their calls.
        # Admission tests pass their own admission section.
        "admission": {"enabled": False},
    }
    cfg.update(sections)
    if "agent" not in cfg:
        cfg["agent"] = {"uri": default_agent(log_dir)}
    return cfg


def start_bridge(
    log_dir: Path,
    cfg: dict[str, Any],
    name: str = "bridge",
    own_session: bool = False,
    token: str = TOKEN,
    log_level: str = "debug",
) -> Bridge:
    """Write the config to <name>.yaml in ``log_dir``, start the bridge, wait for /healthz.
    Appends to <name>.log. ``own_session``: the bridge leads its own session and process
    group (as under a service manager), so a test can signal the whole group."""
    cfg_path = log_dir / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, **{TOKEN_ENV: token})
    with open(log_dir / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sipbridge",
                "run",
                "-c",
                str(cfg_path),
                "--log-level",
                log_level,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=own_session,
        )
    base = f"http://127.0.0.1:{cfg['api']['port']}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(
                "bridge did not start:\n" + (log_dir / f"{name}.log").read_text(errors="replace")
            )
        time.sleep(0.1)  # polling a port another process opens
    return Bridge(base, log_dir, proc, cfg_path, token=token)


class Stack:
    """The processes one run starts — SIPp peers, bridges, receivers — stopped in reverse
    order by :meth:`close` (the tests' ``stack`` fixture; a ``with`` block in the bench and
    the demo). Every stop runs even if an earlier one raises; the first error is raised."""

    def __init__(self, log_dir: Path) -> None:
        self.tmp = log_dir
        self._stops = contextlib.ExitStack()

    def add(self, item: Any, stop: Any) -> Any:
        self._stops.callback(stop)
        return item

    def sipp(
        self, scenario: str | Path, extra_args: list[str] | None = None, transport: str = "udp"
    ) -> SippUas:
        s = SippUas(scenario, self.tmp, extra_args=extra_args, transport=transport).start()
        return self.add(s, s.stop)

    def bridge(self, cfg: dict[str, Any], own_session: bool = False, **kw: Any) -> Bridge:
        """:func:`start_bridge` in this stack's folder (``kw``: its other arguments)."""
        b = start_bridge(self.tmp, cfg, own_session=own_session, **kw)

        def stop() -> None:
            if b.proc.poll() is None:
                b.stop()

        return self.add(b, stop)

    def close(self) -> None:
        self._stops.close()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
