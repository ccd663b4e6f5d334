"""Each shipped carrier profile (config/carriers/*.yaml) on the wire: its trunk, pointed
at a SIPp carrier on loopback (UDP, no credentials: SIPp does not challenge), dials
through a real `sipbridge run`; the INVITE SIPp receives must have the Request-URI form,
From, identity headers, codec order, telephone-event payload type and session timers the
carrier needs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipbridge.devtools.bridge import Stack, bridge_config
from sipbridge.sip.sdp import audio_codecs

pytestmark = pytest.mark.integration

CARRIERS = Path(__file__).parents[2] / "config" / "carriers"
# What each carrier gets, per its profile: Request-URI user part and ;user=phone, From,
# identity headers, audio codecs in order, Session-Expires.
EXPECTED: dict[str, dict[str, Any]] = {
    "twilio": {
        "ruri": r"sip:\+12125550100@[^;]+$",
        "from": r"^<sip:\+14155550100@127\.0\.0\.1>",
        "headers": {},
        "codecs": ["PCMU/8000", "PCMA/8000"],
        "se": "1800",
    },
    "telnyx": {
        "ruri": r"sip:\+12125550101@[^;]+$",
        "from": r'^"Example Clinic" <sip:\+14155550123@127\.0\.0\.1>',
        "headers": {"P-Asserted-Identity": '"Example Clinic" <sip:+14155550123@127.0.0.1>'},
        "codecs": ["G722/8000", "PCMU/8000", "PCMA/8000"],
        "se": "1800",
    },
    "vonage": {
        "ruri": r"sip:12125550102@[^;]+$",
        "from": r"^<sip:447700900100@127\.0\.0\.1>",
        "headers": {},
        "codecs": ["PCMU/8000", "PCMA/8000"],
        "se": "1800",
    },
    "bandwidth": {
        "ruri": r"sip:\+12125550103@[^;]+;user=phone$",
        "from": r"^<sip:\+14155550123@sip\.example\.com;user=phone>",
        "headers": {"P-Asserted-Identity": "<sip:+14155550123@sip.example.com;user=phone>"},
        "codecs": ["PCMU/8000", "PCMA/8000", "G722/8000"],
        "se": "600",
    },
    "plivo": {
        "ruri": r"sip:\+12125550104@[^;]+$",
        "from": r'^"Example Support" <sip:\+14155550123@127\.0\.0\.1>',
        "headers": {"P-Preferred-Identity": '"Example Support" <sip:+14155550123@127.0.0.1>'},
        "codecs": ["PCMU/8000", "PCMA/8000"],
        "se": "1800",
    },
}


def _profile_trunk(carrier: str, address: str) -> dict[str, Any]:
    trunk: dict[str, Any] = yaml.safe_load((CARRIERS / f"{carrier}.yaml").read_text())["trunks"][0]
    for key in ("auth", "tls", "health_check"):
        trunk.pop(key, None)
    trunk.update(address=address, transport="udp", encryption="UDP/RTP")
    return trunk


def test_each_carrier_profile_invite_on_the_wire(stack: Stack) -> None:
    peers = {name: stack.sipp("uas_busy.xml") for name in EXPECTED}
    trunks = [_profile_trunk(name, peer.uri_hostport) for name, peer in peers.items()]
    routes = [{"prefix": f"+1212555010{i}", "trunk": t["name"]} for i, t in enumerate(trunks)]
    bridge = stack.bridge(bridge_config(stack.tmp, trunks=trunks, routes=routes))
    sids = {
        name: bridge.trigger(to_number=f"+1212555010{i}", from_number="+14155550123")
        for i, name in enumerate(EXPECTED)
    }
    for name, want in EXPECTED.items():
        invite = peers[name].wait_for(
            lambda m: m.direction == "received" and m.is_request and m.method == "INVITE",
            timeout=15,
        )
        assert re.match(want["ruri"], invite.request_uri), (name, invite.request_uri)
        assert re.match(want["from"], invite.header("From") or ""), (name, invite)
        for header, value in want["headers"].items():
            assert invite.header(header) == value, (name, header, invite)
        for header in (
            "P-Asserted-Identity",
            "P-Preferred-Identity",
            "Remote-Party-ID",
            "Privacy",
            "Diversion",
        ):
            if header not in want["headers"]:
                assert invite.header(header) is None, (name, header)
        codecs = audio_codecs(invite.body)[1]
        assert [c for c in codecs if not c.startswith("telephone-event")] == want["codecs"]
        assert "telephone-event/8000" in codecs
        assert re.search(r"a=rtpmap:101 telephone-event/8000", invite.body), name
        se = (invite.header("Session-Expires") or "").split(";")[0].strip()
        assert se == want["se"], (name, se)
    for name, sid in sids.items():
        body = bridge.wait_terminal(sid, timeout=20)
        assert body["status"] == "failure" and "busy" in str(body).lower(), (name, body)
