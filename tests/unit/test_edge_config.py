"""The ``edge:`` section and the edge's generated files: validation (each problem names
its key), what the generator writes, the bridge's carrier plans through the edge, the
``edge-config`` command, and Kamailio's own syntax check of the generated script."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.cli import main
from sipbridge.config import ConfigError, parse_config
from sipbridge.edge.generate import dispatcher_list, node_ports, render, write_files
from sipbridge.routing import resolve_plan
from tests.tlspeer import make_ca, make_leaf


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("edge-pki")
    ca = make_ca(d, "unit-ca")
    cert, key = make_leaf(d, ca, "edge", "edge.test", ["IP:203.0.113.10"])
    return {"ca": ca[0], "cert": cert, "key": key}


def _cfg(pki: dict[str, Path], **edge: Any) -> dict[str, Any]:
    sec: dict[str, Any] = {
        "public_address": "203.0.113.10",
        "inside_address": "10.0.0.2",
        "nodes": [{"address": "10.0.0.11"}, {"address": "10.0.0.12"}],
        "agent_allow": ["10.0.1.0/24"],
        "tls": {"certificate": str(pki["cert"]), "private_key": str(pki["key"])},
    }
    sec.update(edge)
    return {
        "agent": {"uri": "sip:agent@10.0.1.5"},
        "api": {"tokens": [{"value": "secret"}]},
        "sip": {"port_min": 5080, "port_max": 5099, "workers": 2, "max_workers": 3},
        "trunks": [
            {
                "name": "tls1",
                "address": "198.51.100.7:5061",
                "transport": "tls",
                "encryption": "TLS/SRTP",
                "allowed_encryption": ["TLS/RTP"],
                "caller_id": "+14155550100",
                "cps": 1.5,
                "tls": {"ca_file": str(pki["ca"])},
            },
            {"name": "plain", "address": "198.51.100.8", "caller_id": "+14155550100"},
        ],
        "routes": [{"prefix": "+1", "trunk": "tls1"}, {"prefix": "+44", "trunk": "plain"}],
        "edge": sec,
    }


def _problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as ei:
        parse_config(data, "c.yaml")
    return dict(ei.value.problems)


def test_a_valid_edge_generates_every_file(pki: dict[str, Path]) -> None:
    cfg = parse_config(_cfg(pki), "c.yaml")
    files = render(cfg, "/etc/sipbridge-edge", "k" * 32, "c.yaml")
    assert set(files) == {
        "kamailio.cfg",
        "dispatcher.list",
        "tls.cfg",
        "carriers-ca.pem",
        "rtpengine.conf",
    }
    kam = files["kamailio.cfg"]
    for line in (
        "listen=udp:10.0.0.2:5060",
        "listen=udp:203.0.113.10:5060",
        "listen=tcp:203.0.113.10:5060",
        "listen=tls:203.0.113.10:5061",
        'modparam("tls", "config", "/etc/sipbridge-edge/tls.cfg")',
        'modparam("topoh", "mask_ip", "203.0.113.10")',
        'is_in_subnet("$si", "10.0.1.0/24")',
    ):
        assert line in kam, line
    # the trunk's CPS backstop (1.5/s -> 2 per 1 s interval), its Request-URI and socket
    assert 'pl_check("trunk-tls1", "TAILDROP", 2)' in kam
    assert '$var(scheme) = "sips";' in kam
    assert '$var(hostpart) = "198.51.100.7:5061;transport=tls";' in kam
    # new calls only count: not OPTIONS probes or a digest-challenge retry
    assert '!is_present_hf("Proxy-Authorization")' in kam
    assert "force_send_socket(tls:203.0.113.10:5061)" in kam
    assert 'pl_check("trunk-plain"' not in kam  # no cps: no backstop
    # a node's Request-URI naming the (non-TLS) trunk is kept: its digest covers it
    assert 'if ($rd == "198.51.100.8" && $rp == 5060) { $var(keep) = 1; }' in kam
    # failover only on 408/5xx (never 486/603), and not after the node rang
    assert 't_check_status("408|5[0-9][0-9]")' in kam and "isbflagset(1)" in kam
    assert "486" not in kam.split("failure_route[NODE_FAILURE]")[1].split("}\n\n")[0]
    tls = files["tls.cfg"]
    assert f"certificate = {pki['cert']}" in tls and "verify_certificate = yes" in tls
    assert "ca_list = /etc/sipbridge-edge/carriers-ca.pem" in tls
    assert files["carriers-ca.pem"] == pki["ca"].read_text()
    rtp = files["rtpengine.conf"]
    assert "interface = internal/10.0.0.2;external/203.0.113.10" in rtp
    assert "table = -1" in rtp  # userspace forwarding only
    assert (
        "2 sip:198.51.100.7:5061;transport=tls 0 0 duid=trunk-tls1;"
        "socket=tls:203.0.113.10:5061" in files["dispatcher.list"]
    )


def test_nodes_default_to_the_sip_sections_worker_ports(pki: dict[str, Path]) -> None:
    cfg = parse_config(_cfg(pki), "c.yaml")
    assert cfg.edge is not None
    assert node_ports(cfg, cfg.edge.nodes[0]) == [5080, 5081, 5082]  # max_workers 3
    lines = [ln.split()[1] for ln in dispatcher_list(cfg).splitlines() if ln.startswith("1 ")]
    assert lines == [
        "sip:10.0.0.11:5080",
        "sip:10.0.0.12:5080",
        "sip:10.0.0.11:5081",
        "sip:10.0.0.12:5081",
        "sip:10.0.0.11:5082",
        "sip:10.0.0.12:5082",
    ]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 8), min_size=1, max_size=5))
def test_dispatcher_lists_every_port_once_and_alternates_nodes(sizes: list[int]) -> None:
    nodes = [
        {"address": f"10.0.0.{10 + i}", "port_min": 6000, "port_max": 6000 + n - 1}
        for i, n in enumerate(sizes)
    ]
    data = {
        "agent": {"uri": "sip:a@10.0.1.5"},
        "api": {"tokens": [{"value": "x"}]},
        "trunks": [{"name": "t", "address": "198.51.100.8"}],
        "routes": [{"trunk": "t"}],
        "edge": {"public_address": "203.0.113.10", "inside_address": "10.0.0.2", "nodes": nodes},
    }
    cfg = parse_config(data, "c.yaml")
    dests = [ln.split()[1] for ln in dispatcher_list(cfg).splitlines() if ln.startswith("1 ")]
    assert len(dests) == len(set(dests)) == sum(sizes)
    hosts = [d.split(":")[1] for d in dests]
    # while two nodes still have ports left, neighbours are on different nodes
    for i in range(len(hosts) - 1):
        left = {h for h in hosts[i + 1 :]}
        if len(left | {hosts[i]}) > 1 and hosts[i + 1] == hosts[i]:
            assert left == {hosts[i]}, hosts


@pytest.mark.parametrize(
    "change, key, words",
    [
        ({"public_address": "edge.example"}, "edge.public_address", "not an IP address"),
        ({"agent_allow": ["10.0.1.0/33"]}, "edge.agent_allow", "is not an IP network"),
        ({"nodes": []}, "edge.nodes", "at least 1"),
        (
            {"nodes": [{"address": "10.0.0.11", "port_min": 5080}]},
            "edge.nodes.0",
            "both port_min and port_max",
        ),
        (
            {"nodes": [{"address": "10.0.0.11", "port_min": 5000, "port_max": 5100}]},
            "edge.nodes.0",
            "at most 64",
        ),
        ({"public_tls_port": 5060}, "edge.public_tls_port", "must differ"),
        ({"tls": None}, "edge.tls", "trunk 'tls1' uses TLS"),
        ({"node_timeout_s": float("nan")}, "edge.node_timeout_s", "finite"),
        ({"flood": {"window_s": 10**9}}, "edge.flood.window_s", "less than or equal"),
        (
            {"rtpengine": {"port_min": 30000, "port_max": 30001}},
            "edge.rtpengine.port_max",
            "at least 4 ports",
        ),
    ],
)
def test_bad_edge_settings_name_their_key(
    pki: dict[str, Path], change: dict[str, Any], key: str, words: str
) -> None:
    problems = _problems(_cfg(pki, **change))
    assert key in problems and words in problems[key], problems


def test_edge_cross_checks(pki: dict[str, Path], tmp_path: Path) -> None:
    data = _cfg(pki)
    data["sip"] = {"port_min": 0, "port_max": 0}
    assert "required when sip.port_min is 0" in _problems(data)["edge.nodes.0.port_min"]
    data = _cfg(pki)
    data["trunks"][0]["tls"]["verify"] = False
    assert "not supported behind the edge" in _problems(data)["trunks.0.tls.verify"]
    data = _cfg(pki)
    data["inbound"] = {"enabled": True}
    data["sip"]["inbound_allow"] = ["10.0.1.0/24"]
    assert "10.0.0.2" in _problems(data)["sip.inbound_allow"]
    data = _cfg(pki, tls={"certificate": str(pki["cert"]), "private_key": str(pki["ca"])})
    assert "no PEM private key" in _problems(data)["edge.tls.private_key"]


def _plan(cfg: Any, trunk: str, encryption: str | None = None) -> Any:
    return resolve_plan(
        cfg,
        call_sid="OUT-1",
        to_number="+12125550100",
        from_number="+14155550100",
        metadata={},
        polyai_call_id=None,
        attempt=1,
        bridge_host="10.0.0.11",
        trunk=cfg.trunk(trunk),
        encryption=encryption,
    )


def test_carrier_plans_go_to_the_edge_as_plain_sip(pki: dict[str, Path]) -> None:
    cfg = parse_config(_cfg(pki), "c.yaml")
    plan = _plan(cfg, "tls1")
    # the carrier's URI (a digest answer covers it), the edge's inside socket first
    assert plan.request_uri == "sip:+12125550100@198.51.100.7:5061"
    assert plan.next_hop == "sip:10.0.0.2:5060;lr"
    assert plan.to_uri == "<sip:+12125550100@198.51.100.7:5061>"
    assert plan.from_uri == "<sip:+14155550100@203.0.113.10>"  # the node stays hidden
    assert (plan.transport, plan.srtp) == ("udp", "off")
    assert ("X-Sipbridge-Trunk", "tls1;srtp=yes") in plan.headers
    assert ("X-Sipbridge-Trunk", "tls1;srtp=no") in _plan(cfg, "tls1", "TLS/RTP").headers
    plain = _plan(cfg, "plain")
    assert plain.request_uri == "sip:+12125550100@198.51.100.8" and plain.next_hop
    no_edge = {k: v for k, v in _cfg(pki).items() if k != "edge"}
    direct = _plan(parse_config(no_edge, "c.yaml"), "tls1")
    assert direct.request_uri.startswith("sips:") and direct.srtp == "mandatory"
    assert direct.next_hop == ""


def test_edge_config_command_writes_files_and_keeps_the_mask_key(
    pki: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(_cfg(pki)))
    out = tmp_path / "edge"
    assert main(["edge-config", "-c", str(conf), str(out)]) == 0
    key = (out / "topoh.key").read_text()
    assert f'"{key.strip()}"' in (out / "kamailio.cfg").read_text()
    assert main(["edge-config", "-c", str(conf), str(out), "--install-dir", "/etc/e"]) == 0
    assert (out / "topoh.key").read_text() == key
    assert "/etc/e/tls.cfg" in (out / "kamailio.cfg").read_text()
    plain = {k: v for k, v in _cfg(pki).items() if k != "edge"}
    conf.write_text(yaml.safe_dump(plain))
    assert main(["edge-config", "-c", str(conf), str(out)]) == 2
    assert "no edge section" in capsys.readouterr().err


@pytest.mark.skipif(
    shutil.which("kamailio") is None and not Path("/usr/sbin/kamailio").exists(),
    reason="kamailio is not installed (scripts/install)",
)
@pytest.mark.parametrize("shape", ["tls", "udp-only", "dns-tls"])
def test_kamailio_accepts_the_generated_script(
    pki: dict[str, Path], tmp_path: Path, shape: str
) -> None:
    data = _cfg(
        pki,
        public_address="127.0.0.1",
        inside_address="127.0.0.1",
        inside_port=15060,
        public_udp_port=15070,
        public_tls_port=15071,
    )
    if shape == "udp-only":
        data["trunks"] = [data["trunks"][1]]
        data["routes"] = [{"trunk": "plain"}]
        data["edge"].pop("tls")
    elif shape == "dns-tls":
        data["trunks"][0]["address"] = "carrier.example:5061"
    cfg = parse_config(data, "c.yaml")
    write_files(cfg, tmp_path)
    kam = shutil.which("kamailio") or "/usr/sbin/kamailio"
    r = subprocess.run(
        [kam, "-c", "-f", str(tmp_path / "kamailio.cfg")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    if shape == "dns-tls":
        assert 'dns_query("carrier.example", "dq")' in (tmp_path / "kamailio.cfg").read_text()


def test_compose_edge_file_parses_and_names_existing_files() -> None:
    import yaml

    root = Path(__file__).resolve().parents[2]
    doc = yaml.safe_load((root / "docker/compose.edge.yaml").read_text())
    services = doc["services"]
    assert {"edge-config", "kamailio", "rtpengine", "node"} <= set(services)
    for svc in ("kamailio", "rtpengine"):
        assert (root / "docker" / services[svc]["build"]["dockerfile"].split("/")[-1]).exists()
        assert services[svc]["network_mode"] == "host"
    assert services["edge-config"]["command"][0] == "edge-config"
    example = yaml.safe_load((root / "config/edge.yaml").read_text())
    assert example["edge"]["public_address"] and example["edge"]["nodes"]
