"""kamailio.cfg for the edge (Kamailio 5.6), rendered from :class:`KamailioParams`.

What the script does, in order (README "Edge proxy"):

- every request from a source that is neither a node nor the agent platform passes the
  flood guard (pike) first, then every request the sanity checks (RFC 3261 syntax,
  Content-Length, CSeq, Max-Forwards); failures are dropped unanswered;
- INVITEs from a node carrying ``X-Sipbridge-Trunk`` go to that trunk: the trunk's CPS
  backstop (pipelimit; new calls only), its transport (TLS: the trunk's CA list, SNI, and a
  host name check on the certificate), rtpengine (SRTP to the carrier if asked, plain RTP
  inside); a Request-URI that names the trunk already is kept (a digest answer covers it);
- OPTIONS from a node carrying ``X-Sipbridge-Trunk`` (trunk health checks) go to that
  trunk the same way, statefully (no answer: 408 to the node);
- INVITEs from the agent platform (SIP-triggered calls) are spread over the nodes' worker
  ports by the dispatcher (round robin, OPTIONS probing); a node that answers 408 or 5xx
  before ringing, or not at all, is replaced by the next one; every other answer (486,
  603, ...) is relayed as it is;
- everything else is refused (403), in-dialog requests follow the Record-Route;
- topoh masks Via, Record-Route and Contact on every message the edge sends.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrunkRoute:
    name: str
    transport: str
    host: str
    port: int
    dst_uri: str  # where the edge sends: sip:host:port;transport=...
    ruri_host: str  # host:port of the Request-URI the carrier gets
    ruri_scheme: str
    ruri_params: str
    cps_per_s: int  # 0: no backstop
    tls_verify: bool
    tls_ca_file: str
    sni: str  # "" for an IP address


@dataclass(frozen=True)
class KamailioParams:
    source: str
    inside: str  # udp:IP:PORT
    inside_ip: str
    inside_port: int
    public_ip: str
    public_udp: str
    public_tcp: str
    public_tls: str
    tls_enabled: bool
    node_ips: list[str]
    agent_cidrs: list[str]
    trunks: list[TrunkRoute]
    tls_cfg: str
    dispatcher_list: str
    probe_interval_s: int
    probe_failures: int
    node_fr_ms: int
    carrier_fr_ms: int
    flood_window_s: int
    flood_max: int
    flood_block_s: int
    rtpengine_port: int
    mask_key: str


_MODULES = (
    "kex",
    "tm",
    "tmx",
    "sl",
    "rr",
    "pv",
    "maxfwd",
    "textops",
    "siputils",
    "xlog",
    "sanity",
    "pike",
    "pipelimit",
    "htable",
    "ipops",
    "dispatcher",
    "rtpengine",
    "topoh",
    "tcpops",
)

# rtpengine flags. The carrier side gets SRTP (RFC 4568 SDES) when the call asks for it;
# the node side always gets plain RTP/AVP: pjsua never sees a carrier's crypto lines.
_RTP_COMMON = "replace-origin replace-session-connection ICE=remove"
# SDES only (no DTLS fingerprint), and only suites that encrypt (RFC 4568 6.2: no NULL
# cipher, no F8 mode).
_OFFER = (
    "direction=internal direction=external DTLS=off SDES-no-NULL_HMAC_SHA1_80 "
    "SDES-no-NULL_HMAC_SHA1_32 SDES-no-F8_128_HMAC_SHA1_80 SDES-no-F8_128_HMAC_SHA1_32 "
    + _RTP_COMMON
)


def _trunk_case(t: TrunkRoute, sockets: dict[str, str]) -> str:
    lines = [f'        case "{t.name}":']
    if t.cps_per_s:
        # new calls only: not OPTIONS probes, not the re-sent INVITE that answers a
        # digest challenge (RFC 3261 22.2: the same call, already counted)
        lines.append(
            "            if ($var(newcall) == 1 && "
            f'!pl_check("trunk-{t.name}", "TAILDROP", {t.cps_per_s})) '
            "{ route(CPS_LIMIT); }"
        )
    lines += [
        f'            $var(scheme) = "{t.ruri_scheme}";',
        f'            $var(hostpart) = "{t.ruri_host}{t.ruri_params}";',
        f'            $du = "{t.dst_uri}";',
        f'            $avp(carrier) = "{t.host}:{t.port}";',
        f"            force_send_socket({sockets[t.transport]});",
    ]
    if t.transport != "tls":  # (TLS: the carrier gets sips:, RFC 5630)
        host = f"[{t.host}]" if ":" in t.host else t.host
        lines.append(f'            if ($rd == "{host}" && $rp == {t.port}) {{ $var(keep) = 1; }}')
    if t.transport == "tls" and t.tls_verify:
        # only over a connection whose certificate was checked (route TLS_PEER); never
        # a new, unchecked one
        lines += ["            route(TLS_CONNECTION);"]
    lines.append("            break;")
    return "\n".join(lines)


def _tls_expect(trunks: list[TrunkRoute]) -> str:
    """The name the certificate of the peer ``$si:$sp`` must carry: the host of the TLS
    trunk at that address (a DNS name: any of its addresses)."""
    out = []
    for t in trunks:
        if t.transport != "tls" or not t.tls_verify:
            continue
        if not t.sni:
            out.append(f'    if ($var(peer) == "{t.host}:{t.port}") {{ $var(want) = "{t.host}"; }}')
            continue
        out += [
            f'    if ($var(want) == "" && $sp == {t.port} && dns_query("{t.host}", "dq")) {{',
            "        $var(i) = 0;",
            "        while ($var(i) < $dns(dq=>count)) {",
            f'            if ($dns(dq=>addr[$var(i)]) == $si) {{ $var(want) = "{t.host}"; }}',
            "            $var(i) = $var(i) + 1;",
            "        }",
            "    }",
        ]
    return "\n".join(out) or "    # (no verified TLS trunk)"


def _or(tests: list[str]) -> str:
    return " || ".join(tests) if tests else "0"


def kamailio_cfg(p: KamailioParams) -> str:
    sockets = {"udp": p.public_udp, "tcp": p.public_tcp, "tls": p.public_tls}
    node_test = _or([f'$si == "{ip}"' for ip in p.node_ips])
    agent_test = _or([f'is_in_subnet("$si", "{c}")' for c in p.agent_cidrs])
    inside_test = f'($Ri == "{p.inside_ip}" && $Rp == {p.inside_port})'
    modules = ['loadmodule "tls.so"'] if p.tls_enabled else []
    modules += [f'loadmodule "{m}.so"' for m in _MODULES]
    listens = [f"listen={p.inside}", f"listen={p.public_udp}", f"listen={p.public_tcp}"]
    if p.tls_enabled:
        listens.append(f"listen={p.public_tls}")
    cases = "\n".join(_trunk_case(t, sockets) for t in p.trunks)
    tls_params = f'modparam("tls", "config", "{p.tls_cfg}")\n' if p.tls_enabled else ""
    tls_route = _TLS_ROUTE.replace("@@EXPECT@@", _tls_expect(p.trunks)) if p.tls_enabled else ""
    text = _TEMPLATE
    for key, value in {
        "SOURCE": p.source or "the bridge's config",
        "ENABLE_TLS": "yes" if p.tls_enabled else "no",
        "LISTENS": "\n".join(listens),
        "MODULES": "\n".join(modules),
        "TLS_PARAMS": tls_params,
        "DISPATCHER_LIST": p.dispatcher_list,
        "PROBE_S": str(p.probe_interval_s),
        "PROBE_FAILURES": str(p.probe_failures),
        "PING_FROM": f"sip:edge@{p.inside.split(':', 1)[1]}",
        "FLOOD_WINDOW": str(p.flood_window_s),
        "FLOOD_MAX": str(p.flood_max),
        "FLOOD_BLOCK": str(p.flood_block_s),
        "RTPENGINE": str(p.rtpengine_port),
        "MASK_KEY": p.mask_key,
        "MASK_IP": p.public_ip,
        "NODE_FR": str(p.node_fr_ms),
        "CARRIER_FR": str(p.carrier_fr_ms),
        "NODE_TEST": node_test,
        "AGENT_TEST": agent_test,
        "INSIDE_TEST": inside_test,
        "INSIDE_SOCKET": p.inside,
        "TRUNK_CASES": cases,
        "OFFER": _OFFER,
        "RTP_COMMON": _RTP_COMMON,
        "TLS_ROUTE": tls_route,
    }.items():
        text = text.replace(f"@@{key}@@", value)
    return text


_TLS_ROUTE = r"""
# RFC 5922 7.2: a carrier's certificate must chain to the trunk's CA list and name the
# host we dial (subjectAltName DNS or IP; the subject CN only when there is no DNS
# name). OpenSSL checks the chain in the handshake (tls.cfg verify_certificate) but
# Kamailio 5.6 does not check the name, so: TLS connections to carriers are opened by
# the OPTIONS probes only (dispatcher set 2); every reply over TLS is checked here, and
# a connection whose certificate passes is marked by its id. INVITEs go only over a
# marked connection (route TLS_CONNECTION): a carrier whose certificate fails gets
# probes, never a call.
onreply_route {
    if ($pr == "tls") {
        route(TLS_PEER);
    }
}

route[TLS_PEER] {
    $var(peer) = $si + ":" + $sp;
    $var(want) = "";
@@EXPECT@@
    if ($var(want) == "") {
        return;  # not a verified trunk (tls.verify: false)
    }
    if ($tls_peer_verified != 1) {
        $var(why) = "TLS certificate of " + $var(peer) + " not verified (untrusted CA, "
            + "expired or malformed)";
    } else if ($tls_peer_san_hostname == $var(want) || $tls_peer_san_ip == $var(want)) {
        $sht(tlsok=>$conid) = $var(want);
        return;
    } else if (($tls_peer_san_hostname == $null || $tls_peer_san_hostname == "")
            && $tls_peer_subject_cn == $var(want)) {
        $sht(tlsok=>$conid) = $var(want);
        return;
    } else {
        $var(why) = "TLS certificate of " + $var(peer) + " does not name " + $var(want);
    }
    $sht(tlsfail=>$var(peer)) = $var(why);
    $sht(tlsok=>$conid) = $null;
    xlog("L_ERR", "edge: $var(why): connection closed\n");
    tcp_close_connection();
    drop;
}

route[TLS_CONNECTION] {
    $var(cid) = 0;
    if (tcp_get_conid("$avp(carrier)", "$var(cid)") && $sht(tlsok=>$var(cid)) != $null) {
        tcp_set_otcpid("$var(cid)");
        set_forward_no_connect();
        return;
    }
    if ($sht(tlsfail=>$avp(carrier)) != $null) {
        $var(why) = $sht(tlsfail=>$avp(carrier));
    } else {
        $var(why) = "No verified TLS connection to carrier " + $avp(carrier)
            + ": TLS handshake refused (certificate not trusted) or carrier down";
    }
    xlog("L_ERR", "edge: INVITE for trunk $var(trunk) refused: $var(why)\n");
    sl_send_reply("503", "$var(why)");
    exit;
}
"""


_TEMPLATE = r"""#!KAMAILIO
#
# sipbridge edge (Kamailio 5.6). Generated by `sipbridge edge-config` from @@SOURCE@@:
# do not edit; change the bridge's config and generate again (README "Edge proxy").
# Run: kamailio -f THIS -DD -E   (foreground, log to stderr)

debug=2
log_stderror=yes
children=4
tcp_children=2
auto_aliases=no
server_signature=no
user_agent_header="User-Agent: sipbridge-edge"
server_header="Server: sipbridge-edge"
sip_warning=0
enable_tls=@@ENABLE_TLS@@
tcp_connection_lifetime=3605
tcp_max_connections=4096
tcp_accept_no_cl=no

@@LISTENS@@

@@MODULES@@

@@TLS_PARAMS@@modparam("tm", "fr_timer", @@NODE_FR@@)
modparam("tm", "fr_inv_timer", 120000)
modparam("rr", "enable_double_rr", 1)
modparam("htable", "htable", "tlsfail=>size=8;autoexpire=120;")
modparam("htable", "htable", "tlsok=>size=8;autoexpire=86400;")
modparam("dispatcher", "list_file", "@@DISPATCHER_LIST@@")
modparam("dispatcher", "flags", 2)
modparam("dispatcher", "ds_ping_interval", @@PROBE_S@@)
modparam("dispatcher", "ds_probing_mode", 1)
modparam("dispatcher", "ds_probing_threshold", @@PROBE_FAILURES@@)
modparam("dispatcher", "ds_inactive_threshold", 1)
modparam("dispatcher", "ds_ping_from", "@@PING_FROM@@")
modparam("dispatcher", "ds_ping_reply_codes", "class=2")
modparam("pike", "sampling_time_unit", @@FLOOD_WINDOW@@)
modparam("pike", "reqs_density_per_unit", @@FLOOD_MAX@@)
modparam("pike", "remove_latency", @@FLOOD_BLOCK@@)
modparam("pipelimit", "timer_interval", 1)
modparam("rtpengine", "rtpengine_sock", "udp:127.0.0.1:@@RTPENGINE@@")
modparam("topoh", "mask_key", "@@MASK_KEY@@")
modparam("topoh", "mask_ip", "@@MASK_IP@@")
modparam("topoh", "sanity_checks", 1)
modparam("sanity", "autodrop", 0)

request_route {
    route(GUARD);
    if (is_method("CANCEL")) {
        if (t_check_trans()) {
            route(RELAY);
        }
        exit;
    }
    if (has_totag()) {
        route(IN_DIALOG);
        exit;
    }
    if (is_method("ACK")) {
        if (t_check_trans()) {
            t_relay();
        }
        exit;
    }
    t_check_trans();
    remove_hf("Route");
    if (is_method("OPTIONS") && is_present_hf("X-Sipbridge-Trunk")) {
        route(FROM_NODE);
    }
    if (is_method("OPTIONS") && uri == myself && $rU == $null) {
        sl_send_reply("200", "OK");
        exit;
    }
    if (!is_method("INVITE")) {
        sl_send_reply("405", "Method Not Allowed");
        exit;
    }
    route(FROM_NODE);
    route(FROM_AGENT);
    xlog("L_NOTICE", "edge: INVITE from $si:$sp refused: not a node or agent source\n");
    sl_send_reply("403", "Forbidden");
    exit;
}

# Flood guard for untrusted sources, then RFC 3261 sanity for everyone; both drop
# silently (an answer would only feed a flood).
route[GUARD] {
    $var(trusted) = 0;
    if (@@INSIDE_TEST@@ && (@@NODE_TEST@@ || @@AGENT_TEST@@)) {
        $var(trusted) = 1;
    }
    if ($var(trusted) == 0 && !pike_check_req()) {
        xlog("L_WARN", "edge: flood from $si: $rm dropped\n");
        exit;
    }
    if (!mf_process_maxfwd_header("10")) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }
    if (!sanity_check("17895", "7")) {
        xlog("L_WARN", "edge: malformed $rm from $si:$sp dropped\n");
        exit;
    }
    if ($var(trusted) == 0) {
        remove_hf_re("^X-Sipbridge-");
    }
}

# A node's carrier INVITE, or its OPTIONS probe of a trunk (README "Carrier profiles",
# health checks): "X-Sipbridge-Trunk: <trunk>;srtp=yes|no".
route[FROM_NODE] {
    if (!(@@INSIDE_TEST@@ && (@@NODE_TEST@@) && is_present_hf("X-Sipbridge-Trunk"))) {
        return;
    }
    $var(trunk) = $(hdr(X-Sipbridge-Trunk){s.select,0,;});
    $var(srtp) = $(hdr(X-Sipbridge-Trunk){param.value,srtp});
    remove_hf("X-Sipbridge-Trunk");
    $var(newcall) = 0;
    if (is_method("INVITE") && !is_present_hf("Authorization")
            && !is_present_hf("Proxy-Authorization")) {
        $var(newcall) = 1;
    }
    $var(user) = $(ru{uri.param,user});
    $var(keep) = 0;
    switch ($var(trunk)) {
@@TRUNK_CASES@@
        default:
            xlog("L_ERR", "edge: $rm from node $si for unknown trunk '$var(trunk)'\n");
            sl_send_reply("404", "Unknown trunk at the edge");
            exit;
    }
    # The carrier's Request-URI. A node sends the carrier's own (the edge is its first
    # hop, a Route): it stays as it is, since a digest answer covers it (RFC 2617
    # 3.2.2.5). Otherwise (TLS: sips:) the trunk's host with the node's user part and
    # user=phone (RFC 3261 19.1.6); an OPTIONS probe has no user part.
    if ($var(keep) == 0 && ($rU == $null || $rU == "")) {
        $ru = $var(scheme) + ":" + $var(hostpart);
    } else if ($var(keep) == 0) {
        $ru = $var(scheme) + ":" + $rU + "@" + $var(hostpart);
    }
    if ($var(keep) == 0 && $var(user) != "" && $var(user) != $null) {
        $ru = $ru + ";user=" + $var(user);
    }
    if (is_method("OPTIONS")) {
        # a trunk health probe, relayed statefully: a carrier that does not answer
        # within carrier_timeout_s gets the node a 408 from tm (RFC 3261 17.1.2.2)
        t_set_fr(120000, @@CARRIER_FR@@);
        if (!t_relay()) {
            sl_reply_error();
        }
        exit;
    }
    record_route();
    if (has_body("application/sdp")) {
        if ($var(srtp) == "yes") {
            $var(ok) = rtpengine_offer("@@OFFER@@ RTP/SAVP");
        } else {
            $var(ok) = rtpengine_offer("@@OFFER@@ RTP/AVP");
        }
        if ($var(ok) != 1) {
            sl_send_reply("503", "Media relay unavailable at the edge");
            exit;
        }
    }
    t_set_fr(120000, @@CARRIER_FR@@);
    t_on_reply("CARRIER_REPLY");
    t_on_failure("CARRIER_FAILURE");
    if (!t_relay()) {
        rtpengine_delete();
        sl_reply_error();
    }
    exit;
}

route[CPS_LIMIT] {
    xlog("L_WARN", "edge: trunk $var(trunk) over its CPS backstop: 503 to node $si\n");
    append_to_reply("Retry-After: 1\r\n");
    sl_send_reply("503", "Trunk CPS limit at the edge");
    exit;
}

onreply_route[CARRIER_REPLY] {
    if (has_body("application/sdp")) {
        rtpengine_answer("@@RTP_COMMON@@");
    }
}

failure_route[CARRIER_FAILURE] {
    rtpengine_delete();
    if (t_is_canceled()) {
        exit;
    }
    if (t_branch_timeout() && !t_branch_replied()) {
        if ($sht(tlsfail=>$avp(carrier)) != $null) {
            $var(why) = $sht(tlsfail=>$avp(carrier));
            t_reply("503", "$var(why)");
            exit;
        }
        $var(why) = "No response from carrier " + $avp(carrier);
        t_reply("408", "$var(why)");
        exit;
    }
}

# A SIP-triggered INVITE from the agent platform: to a node worker (dispatcher set 1).
route[FROM_AGENT] {
    if (!(@@INSIDE_TEST@@ && (@@AGENT_TEST@@))) {
        return;
    }
    if (!ds_select_dst("1", "4")) {
        xlog("L_ERR", "edge: no bridge node available for an INVITE from $si\n");
        sl_send_reply("503", "No bridge node available");
        exit;
    }
    record_route();
    force_send_socket(@@INSIDE_SOCKET@@);
    t_set_fr(120000, @@NODE_FR@@);
    t_on_reply("NODE_REPLY");
    t_on_failure("NODE_FAILURE");
    if (!t_relay()) {
        sl_reply_error();
    }
    exit;
}

onreply_route[NODE_REPLY] {
    if (status =~ "^18[0-9]$") {
        setbflag(1);  # the node rang the callee: a later failure is the callee's
    }
}

# RFC 3261 21.4.9 / 21.5: 408 and 5xx from a node (or no answer at all) mean it could
# not take the call: the next node is tried, unless the node already rang (18x: the
# callee's outcome). 486, 603 and every other final answer are relayed as they are.
failure_route[NODE_FAILURE] {
    if (t_is_canceled() || isbflagset(1)) {
        exit;
    }
    if (t_branch_timeout() && !t_branch_replied()) {
        xlog("L_WARN", "edge: node $du did not answer: marked down, trying the next\n");
        ds_mark_dst("ip");
    } else if (!t_check_status("408|5[0-9][0-9]")) {
        exit;
    }
    if (ds_next_dst()) {
        t_on_reply("NODE_REPLY");
        t_on_failure("NODE_FAILURE");
        t_relay();
        exit;
    }
}

route[IN_DIALOG] {
    if (!loose_route()) {
        if (is_method("ACK") && t_check_trans()) {
            t_relay();
            exit;
        }
        sl_send_reply("404", "Not Here");
        exit;
    }
    if (is_method("BYE")) {
        rtpengine_delete();
    } else if (has_body("application/sdp")) {
        rtpengine_manage("@@RTP_COMMON@@");
    }
    route(RELAY);
}

route[RELAY] {
    if (is_method("INVITE|UPDATE")) {
        t_on_reply("DIALOG_REPLY");
    }
    if (!t_relay()) {
        sl_reply_error();
    }
    exit;
}

onreply_route[DIALOG_REPLY] {
    if (has_body("application/sdp")) {
        rtpengine_manage("@@RTP_COMMON@@");
    }
}

event_route[core:worker-one-init] {
    xlog("L_NOTICE", "edge: ready\n");
}

event_route[dispatcher:dst-down] {
    xlog("L_WARN", "edge: destination $ru is down\n");
}

event_route[dispatcher:dst-up] {
    xlog("L_NOTICE", "edge: destination $ru is up\n");
}
@@TLS_ROUTE@@"""
