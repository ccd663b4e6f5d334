"""TLS trunks verify the carrier (RFC 5922): certificate chain and host name, by default.

A CA and certificates are made at test time; a TLS terminator on 127.0.0.1 relays to a
SIPp UAS on TCP. A call that fails verification never reaches SIPp: pjsip closes the
connection after the handshake, before sending the INVITE.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sipbridge.devtools.bridge import Stack, bridge_config
from sipbridge.devtools.sipp import SippUas
from sipbridge.ipc import LegEvent
from sipbridge.sip.pool import WorkerPool
from tests.doubles import EventRecorder
from tests.integration import harness as base
from tests.integration.harness import SippHarness
from tests.integration.test_sip_trunks import plan
from tests.tlspeer import TlsTerminator, make_ca, make_leaf

pytestmark = pytest.mark.integration

Pair = tuple[Path, Path]


@dataclass
class Pki:
    ca: Pair  # the CA the trunk trusts (tls.ca_file)
    good: Pair  # by ca, for 127.0.0.1 and localhost
    wrong_name: Pair  # by ca, for carrier.test only
    untrusted: Pair  # by another CA, for 127.0.0.1


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = make_ca(d, "Test Carrier CA"), make_ca(d, "Other CA")
    return Pki(
        ca=ca,
        good=make_leaf(d, ca, "good", "127.0.0.1", ["IP:127.0.0.1", "DNS:localhost"]),
        wrong_name=make_leaf(d, ca, "wrong-name", "carrier.test", ["DNS:carrier.test"]),
        untrusted=make_leaf(d, other, "untrusted", "127.0.0.1", ["IP:127.0.0.1"]),
    )


async def _with_carrier(
    h: SippHarness,
    cert: Pair,
    body: Callable[[WorkerPool, EventRecorder, TlsTerminator, object], Awaitable[None]],
) -> TlsTerminator:
    tls = await TlsTerminator(*cert).start()
    uas = h.sipp("uas_answer_tls.xml", transport="tcp", keys={"tls_port": str(tls.port)})
    tls.target_port = uas.port
    try:
        await base.with_pool(lambda pool, rec: body(pool, rec, tls, uas), workers=1)
    finally:
        await tls.stop()
    return tls


async def _answered_then_hangup(pool: WorkerPool, rec: EventRecorder, leg: str) -> None:
    await rec.state(leg, "answered")
    assert pool.hangup(leg)
    end = await rec.state(leg, "ended")
    assert (end.cause, end.answered) == ("local_hangup", True)


async def _refused(rec: EventRecorder, uas: object, leg: str) -> LegEvent:
    end = await rec.state(leg, "ended", timeout=10)
    assert "answered" not in rec.states(leg), rec.states(leg)
    assert (end.cause, end.answered) == ("transport_error", False), end
    await asyncio.sleep(0)  # let SIPp's log catch up with nothing to report
    assert uas.received("INVITE") == [], "an INVITE reached the carrier"  # type: ignore[attr-defined]
    return end


def test_trusted_certificate_with_the_right_name(h: SippHarness, pki: Pki) -> None:
    async def body(pool: WorkerPool, rec: EventRecorder, tls: TlsTerminator, uas: object) -> None:
        pool.dial(
            plan(
                f"127.0.0.1:{tls.port}",
                "v1/b1",
                transport="tls",
                scheme="sips",
                tls_ca_file=str(pki.ca[0]),
            )
        )
        await _answered_then_hangup(pool, rec, "v1/b1")

    tls = base.run(_with_carrier(h, pki.good, body))
    assert tls.handshakes >= 1
    assert set(tls.sni) == {None}  # an IP address is never sent as SNI (RFC 6066 3)


def test_host_name_is_checked_and_sent_as_sni(h: SippHarness, pki: Pki) -> None:
    """A trunk named by host: resolved by the OS (no pjsip resolver), the name is the
    SNI and must be in the certificate."""

    async def body(pool: WorkerPool, rec: EventRecorder, tls: TlsTerminator, uas: object) -> None:
        pool.dial(
            plan(
                f"localhost:{tls.port}",
                "v2/b1",
                transport="tls",
                scheme="sips",
                tls_ca_file=str(pki.ca[0]),
            )
        )
        await _answered_then_hangup(pool, rec, "v2/b1")

    tls = base.run(_with_carrier(h, pki.good, body))
    assert "localhost" in tls.sni


def test_untrusted_ca_is_refused(h: SippHarness, pki: Pki) -> None:
    async def body(pool: WorkerPool, rec: EventRecorder, tls: TlsTerminator, uas: object) -> None:
        pool.dial(
            plan(
                f"127.0.0.1:{tls.port}",
                "v3/b1",
                transport="tls",
                scheme="sips",
                tls_ca_file=str(pki.ca[0]),
            )
        )
        end = await _refused(rec, uas, "v3/b1")
        assert "TLS certificate of 127.0.0.1" in end.detail and "untrusted" in end.detail, (
            end.detail
        )

    tls = base.run(_with_carrier(h, pki.untrusted, body))
    assert tls.handshakes >= 1


def test_os_bundle_is_the_default_and_does_not_trust_a_private_ca(h: SippHarness, pki: Pki) -> None:
    async def body(pool: WorkerPool, rec: EventRecorder, tls: TlsTerminator, uas: object) -> None:
        pool.dial(plan(f"127.0.0.1:{tls.port}", "v4/b1", transport="tls", scheme="sips"))
        end = await _refused(rec, uas, "v4/b1")
        assert "untrusted" in end.detail, end.detail

    base.run(_with_carrier(h, pki.good, body))


def test_wrong_host_name_is_refused(h: SippHarness, pki: Pki) -> None:
    async def body(pool: WorkerPool, rec: EventRecorder, tls: TlsTerminator, uas: object) -> None:
        pool.dial(
            plan(
                f"127.0.0.1:{tls.port}",
                "v5/b1",
                transport="tls",
                scheme="sips",
                tls_ca_file=str(pki.ca[0]),
            )
        )
        end = await _refused(rec, uas, "v5/b1")
        assert "host name" in end.detail and "127.0.0.1" in end.detail, end.detail

    base.run(_with_carrier(h, pki.wrong_name, body))


def test_verify_false_accepts_any_certificate(h: SippHarness, pki: Pki) -> None:
    async def body(pool: WorkerPool, rec: EventRecorder, tls: TlsTerminator, uas: object) -> None:
        pool.dial(
            plan(f"127.0.0.1:{tls.port}", "v6/b1", transport="tls", scheme="sips", tls_verify=False)
        )
        await _answered_then_hangup(pool, rec, "v6/b1")

    base.run(_with_carrier(h, pki.wrong_name, body))


# --------------------------------------------------------------------------- the bridge


def test_bridge_trunk_tls_settings(tmp_path: Path, stack: Stack, pki: Pki) -> None:
    """Per-trunk TLS settings through the whole bridge: a pinned CA, an explicit
    ``verify: false`` (warned about at start-up) and the default (OS bundle)."""
    peers: dict[str, tuple[TlsTerminator, SippUas]] = {}
    for name, cert in (("pinned", pki.good), ("insecure", pki.untrusted), ("strict", pki.good)):
        tls = TlsTerminator(*cert).start_in_thread()
        stack.add(tls, tls.stop_thread)
        uas = stack.sipp(
            "uas_answer_tls.xml", extra_args=["-key", "tls_port", str(tls.port)], transport="tcp"
        )
        tls.target_port = uas.port
        peers[name] = (tls, uas)

    def trunk(name: str, **tls: Any) -> dict[str, Any]:
        t: dict[str, Any] = {
            "name": name,
            "address": f"127.0.0.1:{peers[name][0].port}",
            "transport": "tls",
            "encryption": "TLS/RTP",
            "caller_id": "+14155550100",
        }
        return t | ({"tls": tls} if tls else {})

    cfg = bridge_config(
        tmp_path,
        trunks=[
            trunk("pinned", ca_file=str(pki.ca[0])),
            trunk("insecure", verify=False),
            trunk("strict"),
        ],
        routes=[
            {"prefix": "+1212", "trunk": "pinned"},
            {"prefix": "+1313", "trunk": "insecure"},
            {"prefix": "+1414", "trunk": "strict"},
        ],
    )
    bridge = stack.bridge(cfg)
    log = bridge.log()
    assert "trunk insecure: TLS certificate verification is OFF" in log, log
    assert "trunk pinned: TLS" not in log and "trunk strict: TLS" not in log

    ok = [bridge.trigger(to_number="+12125550100"), bridge.trigger(to_number="+13135550100")]
    refused = bridge.trigger(to_number="+14145550100")
    for sid in ok:
        bridge.wait_event(sid, "carrier.answered")
    body = bridge.wait_terminal(refused)
    assert body["status"] == "failure", body
    assert "TLS certificate of 127.0.0.1" in json.dumps(body) and "untrusted" in json.dumps(body)
    assert [len(uas.received("INVITE")) for _, uas in peers.values()] == [1, 1, 0]
    assert bridge.stop() == 0
