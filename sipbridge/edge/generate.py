"""The edge's files from the bridge's config (``sipbridge edge-config``): kamailio.cfg,
dispatcher.list, tls.cfg and rtpengine.conf. Pure: :func:`render` maps a validated
:class:`Config` to file texts; :func:`write_files` writes them.

Trunks and nodes are defined once, in the bridge's config: the edge learns each trunk's
address, transport, TLS settings and CPS from ``trunks``, and the nodes' worker ports from
``edge.nodes`` (default: the ``sip`` section's worker ports).
"""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from sipbridge.edge.kamcfg import KamailioParams, TrunkRoute, kamailio_cfg
from sipbridge.edge.model import EdgeConfig, EdgeNode

if TYPE_CHECKING:
    from sipbridge.config import Config, TrunkConfig

# Destinations in the dispatcher list (nodes x worker ports).
MAX_DESTINATIONS = 1024
FILES = ("kamailio.cfg", "dispatcher.list", "tls.cfg", "carriers-ca.pem", "rtpengine.conf")
# How a node marks the carrier INVITEs ("<trunk>;srtp=yes|no") and the trunk OPTIONS
# probes ("<trunk>") it sends the edge.
TRUNK_HEADER = "X-Sipbridge-Trunk"


def node_ports(cfg: Config, node: EdgeNode) -> list[int]:
    """The worker SIP ports of ``node``: its own range, else the ``sip`` section's
    (workers take ``port_min + worker id``: ``max_workers`` ports from ``port_min``)."""
    if node.port_min is not None and node.port_max is not None:
        return list(range(node.port_min, node.port_max + 1))
    sip = cfg.sip
    hi = sip.max_workers if sip.max_workers is not None else max(sip.workers, sip.min_workers or 0)
    return list(range(sip.port_min, min(sip.port_max, sip.port_min + hi - 1) + 1))


def check_edge(cfg: Config) -> None:
    """Cross-section checks of ``edge``; raises ``ValueError("edge.<key>: reason")``."""
    edge = cfg.edge
    if edge is None:
        return
    total = 0
    for i, node in enumerate(edge.nodes):
        if node.port_min is None and cfg.sip.port_min == 0:
            raise ValueError(
                f"edge.nodes.{i}.port_min: required when sip.port_min is 0 "
                "(workers on free ports cannot be dispatcher destinations)"
            )
        total += len(node_ports(cfg, node))
    if total > MAX_DESTINATIONS:
        raise ValueError(f"edge.nodes: {total} worker ports in all; at most {MAX_DESTINATIONS}")
    tls_trunks = [t.name for t in cfg.trunks if t.transport == "tls"]
    for i, t in enumerate(cfg.trunks):
        if t.transport == "tls" and not t.tls.verify:
            raise ValueError(
                f"trunks.{i}.tls.verify: false is not supported behind the edge "
                "(the edge always verifies a carrier's certificate and name)"
            )
    if tls_trunks and edge.tls is None:
        raise ValueError(
            f"edge.tls: required: trunk {tls_trunks[0]!r} uses TLS (a carrier "
            "may open a TLS connection to the edge for in-dialog requests)"
        )
    if cfg.inbound.enabled and edge.agent_allow:
        inside = ipaddress.ip_address(edge.inside_address)
        if not any(inside in ipaddress.ip_network(n, strict=False) for n in cfg.sip.inbound_allow):
            raise ValueError(
                f"sip.inbound_allow: must hold the edge's inside_address "
                f"{edge.inside_address} (SIP-triggered INVITEs come through "
                "the edge)"
            )


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, _, port = address.partition(":")
    return host, int(port) if port else default_port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def trunk_route(trunk: TrunkConfig) -> TrunkRoute:
    """How the edge reaches one trunk (mirrors :func:`sipbridge.routing.resolve_plan`)."""
    default = 5061 if trunk.transport == "tls" else 5060
    host, port = _host_port(trunk.address, default)
    hp = f"{_uri_host(host)}:{port}"
    params = "" if trunk.transport == "udp" else f";transport={trunk.transport}"
    scheme = "sips" if trunk.transport == "tls" else "sip"
    return TrunkRoute(
        name=trunk.name,
        transport=trunk.transport,
        host=host,
        port=port,
        dst_uri=f"sip:{hp}{params}",
        ruri_host=hp,
        ruri_scheme=scheme,
        ruri_params=params,
        cps_per_s=max(1, int(-(-trunk.cps // 1))) if trunk.cps is not None else 0,
        tls_verify=trunk.tls.verify,
        tls_ca_file=trunk.tls.ca_list(),
        sni=host if trunk.transport == "tls" and not _is_ip(host) else "",
    )


def _socket(ip: str, port: int, proto: str) -> str:
    return f"{proto}:{_uri_host(ip)}:{port}"


def dispatcher_list(cfg: Config) -> str:
    """Set 1: every worker port of every node, interleaved node by node so that round
    robin alternates nodes and the destination after a failed one is on another node."""
    edge = cfg.edge
    assert edge is not None
    per_node = [(n.address, node_ports(cfg, n)) for n in edge.nodes]
    inside = _socket(edge.inside_address, edge.inside_port, "udp")
    lines = [
        "# setid destination flags priority attributes",
        "# generated by `sipbridge edge-config`: one line per node worker port",
    ]
    for i in range(max(len(p) for _, p in per_node)):
        for n, (addr, ports) in enumerate(per_node):
            if i < len(ports):
                lines.append(
                    f"1 sip:{_uri_host(addr)}:{ports[i]} 0 0 "
                    f"duid=node{n}-{ports[i]};socket={inside}"
                )
    # Set 2: TLS trunks, probed with OPTIONS from the public TLS socket: the probes open
    # the TLS connections whose certificates kamailio.cfg checks (route TLS_PEER).
    tls_socket = _socket(edge.public_address, edge.public_tls_port, "tls")
    for t in cfg.trunks:
        if t.transport == "tls":
            r = trunk_route(t)
            lines.append(f"2 {r.dst_uri} 0 0 duid=trunk-{t.name};socket={tls_socket}")
    return "\n".join(lines) + "\n"


def carriers_ca(routes: list[TrunkRoute]) -> str:
    """The CA list of the client profile: every distinct CA file of the TLS trunks (their
    tls.ca_file, else the OS bundle), concatenated (PEM)."""
    files = sorted(
        {r.tls_ca_file for r in routes if r.transport == "tls" and r.tls_verify and r.tls_ca_file}
    )
    parts = []
    for f in files:
        try:
            parts.append(Path(f).read_text(encoding="ascii", errors="replace"))
        except OSError as e:
            raise ValueError(f"{f}: cannot read: {e.strerror}") from None
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


def tls_cfg(cfg: Config, routes: list[TrunkRoute], install_dir: str) -> str:
    """Kamailio tls.cfg: the edge's server profile and one client profile for every
    carrier (the probes that open carrier connections cannot pick a per-trunk profile in
    Kamailio 5.6): its CA list holds every TLS trunk's CA list (carriers-ca.pem). OpenSSL
    checks the chain during the handshake; Kamailio 5.6 does not check a server's name:
    kamailio.cfg does, per trunk (route TLS_PEER), and INVITEs use checked connections
    only."""
    edge = cfg.edge
    assert edge is not None
    method = "TLSv1.2+" if edge.tls is None or edge.tls.min_version == "TLSv1.2" else "TLSv1.3+"
    own = []
    if edge.tls is not None:
        own = [f"certificate = {edge.tls.certificate}", f"private_key = {edge.tls.private_key}"]
    out = ["# generated by `sipbridge edge-config`", ""]
    if edge.tls is not None:
        out += [
            "[server:default]",
            f"method = {method}",
            *own,
            "verify_certificate = no",
            "require_certificate = no",
            "",
        ]
    out += [
        "[client:default]",
        f"method = {method}",
        *own,
        "verify_certificate = yes",
        "require_certificate = yes",
    ]
    if carriers_ca(routes):
        out.append(f"ca_list = {install_dir}/carriers-ca.pem")
    out.append("")
    return "\n".join(out)


def rtpengine_conf(edge: EdgeConfig) -> str:
    """rtpengine options: the inside and public interfaces, ng control on loopback,
    userspace forwarding only (table -1: no kernel module)."""
    rtp = edge.rtpengine
    return "\n".join(
        [
            "# generated by `sipbridge edge-config`; run: rtpengine --config-file=THIS "
            "--config-section=rtpengine --foreground",
            "[rtpengine]",
            f"interface = internal/{edge.inside_address};external/{edge.public_address}",
            f"listen-ng = 127.0.0.1:{rtp.control_port}",
            f"port-min = {rtp.port_min}",
            f"port-max = {rtp.port_max}",
            "table = -1",
            f"timeout = {rtp.media_timeout_s}",
            f"silent-timeout = {rtp.media_timeout_s * 2}",
            "tos = 184",
            "delete-delay = 0",
            "log-level = 6",
            "",
        ]
    )


def render(cfg: Config, install_dir: str, mask_key: str, source: str = "") -> dict[str, str]:
    """The edge's files by name; paths inside them point at ``install_dir`` (where the
    files will live on the edge host)."""
    edge = cfg.edge
    if edge is None:
        raise ValueError("edge: this config has no edge section")
    routes = [trunk_route(t) for t in cfg.trunks]
    node_ips = sorted({n.address for n in edge.nodes})
    params = KamailioParams(
        source=source,
        inside=_socket(edge.inside_address, edge.inside_port, "udp"),
        inside_ip=edge.inside_address,
        inside_port=edge.inside_port,
        public_ip=edge.public_address,
        public_udp=_socket(edge.public_address, edge.public_udp_port, "udp"),
        public_tcp=_socket(edge.public_address, edge.public_udp_port, "tcp"),
        public_tls=_socket(edge.public_address, edge.public_tls_port, "tls"),
        tls_enabled=edge.tls is not None or any(r.transport == "tls" for r in routes),
        node_ips=node_ips,
        agent_cidrs=list(edge.agent_allow),
        trunks=routes,
        tls_cfg=f"{install_dir}/tls.cfg",
        dispatcher_list=f"{install_dir}/dispatcher.list",
        probe_interval_s=edge.probe_interval_s,
        probe_failures=edge.probe_failures,
        node_fr_ms=int(edge.node_timeout_s * 1000),
        carrier_fr_ms=int(edge.carrier_timeout_s * 1000),
        flood_window_s=edge.flood.window_s,
        flood_max=edge.flood.max_requests,
        flood_block_s=edge.flood.block_s,
        rtpengine_port=edge.rtpengine.control_port,
        mask_key=mask_key,
    )
    return {
        "kamailio.cfg": kamailio_cfg(params),
        "dispatcher.list": dispatcher_list(cfg),
        "tls.cfg": tls_cfg(cfg, routes, install_dir),
        "carriers-ca.pem": carriers_ca(routes),
        "rtpengine.conf": rtpengine_conf(edge),
    }


def write_files(
    cfg: Config, outdir: Path, install_dir: str | None = None, source: str = ""
) -> list[Path]:
    """Render and write the edge's files into ``outdir``. The topology-hiding key is kept
    in ``outdir/topoh.key`` (made once, reused on every run, so in-dialog requests of
    live calls still decode after a regeneration)."""
    outdir.mkdir(parents=True, exist_ok=True)
    key_file = outdir / "topoh.key"
    if key_file.exists():
        key = key_file.read_text().strip()
    else:
        key = secrets.token_hex(16)
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
    texts = render(cfg, install_dir or str(outdir.resolve()), key, source)
    paths = []
    for name, text in texts.items():
        p = outdir / name
        p.write_text(text)
        paths.append(p)
    return paths


__all__ = [
    "FILES",
    "TRUNK_HEADER",
    "carriers_ca",
    "check_edge",
    "dispatcher_list",
    "node_ports",
    "render",
    "rtpengine_conf",
    "tls_cfg",
    "trunk_route",
    "write_files",
]
