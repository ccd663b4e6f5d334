"""Carrier-trunk features of the SIP worker against SIPp on loopback.

Digest authentication (401/407), per-trunk transport (UDP/TCP/TLS), SRTP offers and
Retry-After on final responses. Reuses the pool harness of ``test_sip_pool``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sipbridge.devtools.ports import free_port
from sipbridge.devtools.sipp import SipMessage, SippUas
from sipbridge.plan import DialPlan
from sipbridge.sip.pool import WorkerPool
from tests.doubles import EventRecorder as Recorder
from tests.integration import harness
from tests.integration.harness import CALLEE, CALLER, SippHarness, run
from tests.tlspeer import TlsTerminator, self_signed

pytestmark = pytest.mark.integration

USER, PASSWORD = "carrier-user", "s3cret-pw"


def with_pool(body: Callable[[WorkerPool, Recorder], Awaitable[None]]) -> WorkerPool:
    """One worker is enough here (and starts faster)."""
    return run(harness.with_pool(body, workers=1))


def plan(
    hostport: str,
    leg_id: str,
    *,
    transport: str = "udp",
    auth: tuple[str, str, str] | None = None,
    srtp: str = "off",
    scheme: str = "sip",
    tls_verify: bool = True,
    tls_ca_file: str = "",
) -> DialPlan:
    return DialPlan(
        call_sid=leg_id.split("/")[0],
        leg_id=leg_id,
        trunk="carrier",
        request_uri=f"{scheme}:{CALLEE}@{hostport};transport={transport}",
        from_uri=f"<sip:{CALLER}@127.0.0.1>",
        to_uri=f"<{scheme}:{CALLEE}@{hostport}>",
        headers=(),
        ring_timeout_s=10,
        max_duration_s=30,
        transport=transport,
        auth=auth,
        srtp=srtp,
        tls_verify=tls_verify,
        tls_ca_file=tls_ca_file,
    )


def received(uas: SippUas, method: str) -> list[SipMessage]:
    return uas.received(method)


def digest_params(value: str) -> dict[str, str]:
    """Parameters of a ``Digest k="v", k=v`` credentials header value."""
    assert value.startswith("Digest "), value
    return {
        k.lower(): v.strip('"')
        for k, v in re.findall(r'(\w+)=("[^"]*"|[^\s,]+)', value[len("Digest ") :])
    }


# status -> (scenario, credentials header the UAC must send)
CHALLENGES = {
    401: ("uas_auth_challenge.xml", "Authorization"),  # WWW-Authenticate (RFC 3261 22.2)
    407: ("uas_proxy_auth_challenge.xml", "Proxy-Authorization"),  # RFC 3261 22.3
}


PROXY_NONCE = "7c3e1a9b5d2f4e6a"  # fixed in uas_proxy_auth_challenge.xml


def md5_digest(user: str, password: str, realm: str, method: str, uri: str, nonce: str) -> str:
    """RFC 2617 3.2.2.1 response without qop (what pjsip sends to a qop-less challenge)."""

    def h(x: str) -> str:
        return hashlib.md5(x.encode()).hexdigest()

    return h(f"{h(f'{user}:{realm}:{password}')}:{nonce}:{h(f'{method}:{uri}')}")


def auth_uas(h: SippHarness, code: int, transport: str = "udp") -> SippUas:
    scenario = CHALLENGES[code][0]
    keys = {"auth_user": USER, "auth_pass": PASSWORD}
    port = free_port(socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM)
    uas = SippUas(scenario, h.tmp_path, transport=transport, port=port)
    if code == 407:
        # SIPp's verifyauth cannot read Proxy-Authorization: the scenario compares the
        # response with the one computed here, for the Request-URI (SIPp's fixed port).
        uri = f"sip:{CALLEE}@127.0.0.1:{port};transport={transport}"
        want = md5_digest(USER, PASSWORD, "carrier.test", "INVITE", uri, PROXY_NONCE)
        extra = ["-set", "want_response", want]
    else:
        extra = []
    for k, v in keys.items():
        extra += ["-key", k, v]
    uas.extra_args = extra
    h.track(uas)
    return uas.start()


# --------------------------------------------------------------------------- digest auth


@pytest.mark.parametrize("code", [401, 407])
def test_digest_challenge_answered_with_right_password(h: SippHarness, code: int) -> None:
    uas = auth_uas(h, code)
    cred_hdr = CHALLENGES[code][1]

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas.uri_hostport, "a1/b1", auth=(USER, PASSWORD, "carrier.test")))
        ans = await rec.state("a1/b1", "answered")
        assert ans.sip_status == 200
        invs = received(uas, "INVITE")
        assert len(invs) == 2
        assert invs[0].header("Authorization") is None
        assert invs[0].header("Proxy-Authorization") is None
        cred = invs[1].header(cred_hdr)
        assert cred is not None, invs[1].headers
        p = digest_params(cred)
        assert p["username"] == USER
        assert p["realm"] == "carrier.test"
        assert p["uri"] == invs[1].request_uri
        assert p.get("algorithm", "MD5") == "MD5"
        assert p["response"] == md5_digest(
            USER, PASSWORD, "carrier.test", "INVITE", p["uri"], p["nonce"]
        )
        assert PASSWORD not in cred
        # Same dialog attempt: same Call-ID, CSeq incremented (RFC 3261 22.2).
        assert invs[1].call_id == invs[0].call_id == ans.sip_call_id
        assert pool.hangup("a1/b1")
        end = await rec.state("a1/b1", "ended")
        assert (end.cause, end.answered) == ("local_hangup", True)
        await uas.async_wait_for(lambda m: m.direction == "received" and m.method == "BYE", 2)

    with_pool(body)


@pytest.mark.parametrize("code", [401, 407])
def test_digest_wrong_password_ends_with_carrier_status(h: SippHarness, code: int) -> None:
    uas = auth_uas(h, code)

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas.uri_hostport, "a2/b1", auth=(USER, "wrong", "*")))
        end = await rec.state("a2/b1", "ended")
        # SIPp's verifyauth rejected the digest: the carrier answers 403.
        assert (end.cause, end.sip_status, end.answered) == ("remote_final", 403, False)
        assert rec.states("a2/b1") == ["trying", "ended"]
        assert len(received(uas, "INVITE")) == 2

    with_pool(body)


def test_repeated_challenge_gives_up_after_one_retry(h: SippHarness) -> None:
    """Challenged again with the same nonce (credentials rejected): pjsua stops at once."""
    uas = h.sipp("uas_auth_always.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas.uri_hostport, "a3/b1", auth=(USER, "wrong", "carrier.test")))
        end = await rec.state("a3/b1", "ended")
        assert (end.cause, end.sip_status, end.answered) == ("remote_final", 401, False)
        assert rec.states("a3/b1") == ["trying", "ended"]
        # Both challenges were ACKed (RFC 3261 17.1.1.3); no third INVITE.
        assert len(await _wait_count(uas, "ACK", 2)) == 2
        assert len(received(uas, "INVITE")) == 2

    with_pool(body)


def test_rotating_nonce_challenges_are_bounded(h: SippHarness) -> None:
    """Challenged again with a fresh nonce each time: pjsip takes it as a stale nonce and
    retries, but at most PJSIP_MAX_STALE_COUNT (3) times: 4 INVITEs, then the 401."""
    uas = h.sipp("uas_auth_rotating_nonce.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas.uri_hostport, "a6/b1", auth=(USER, "wrong", "carrier.test")))
        end = await rec.state("a6/b1", "ended")
        assert (end.cause, end.sip_status, end.answered) == ("remote_final", 401, False)
        assert len(await _wait_count(uas, "ACK", 4)) == 4
        invs = received(uas, "INVITE")
        assert len(invs) == 4
        nonces = [
            digest_params(i.header("Authorization") or "Digest x=y").get("nonce") for i in invs
        ]
        assert nonces == [None, "rotating01", "rotating11", "rotating21"]

    with_pool(body)


def test_challenge_without_credentials_ends_401(h: SippHarness) -> None:
    uas = auth_uas(h, 401)

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas.uri_hostport, "a4/b1"))
        end = await rec.state("a4/b1", "ended")
        assert (end.cause, end.sip_status) == ("remote_final", 401)
        assert len(received(uas, "INVITE")) == 1

    with_pool(body)


def test_challenge_with_other_realm_credentials_ends_401(h: SippHarness) -> None:
    """Credentials for another realm are not sent (RFC 3261 22.2: realm selects them)."""
    uas = auth_uas(h, 401)

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas.uri_hostport, "a5/b1", auth=(USER, PASSWORD, "other.test")))
        end = await rec.state("a5/b1", "ended")
        assert (end.cause, end.sip_status) == ("remote_final", 401)
        assert len(received(uas, "INVITE")) == 1

    with_pool(body)


async def _wait_count(uas: SippUas, method: str, n: int, timeout: float = 3.0) -> list[SipMessage]:
    await uas.async_wait_for(lambda m: len(received(uas, method)) >= n, timeout)
    return received(uas, method)


# --------------------------------------------------------------------------- accounts


def test_accounts_are_cached_and_evicted(h: SippHarness, caplog: pytest.LogCaptureFixture) -> None:
    """More credential sets than PJSUA_MAX_ACC (8): idle accounts are evicted LRU."""
    uas = h.sipp("uas_answer_wait_bye.xml")
    caplog.set_level(logging.DEBUG, logger="sipbridge.sip.pool")

    def creds(i: int) -> tuple[str, str, str]:
        return (f"user{i}", f"pw{i}", "carrier.test")

    async def call(pool: WorkerPool, rec: Recorder, leg: str, i: int) -> None:
        pool.dial(plan(uas.uri_hostport, leg, auth=creds(i)))
        await rec.state(leg, "answered")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        # 6 sequential calls, 6 accounts (idle once hung up).
        for i in range(6):
            await call(pool, rec, f"e{i}/b1", i)
            assert pool.hangup(f"e{i}/b1")
            await rec.state(f"e{i}/b1", "ended")
        # 4 concurrent live calls (the worker's maximum) on 4 new accounts: 10 > 8, so the
        # two least recently used idle accounts (user0, user1) go; live ones never do.
        live = [f"e{i}/b1" for i in range(6, 10)]
        await asyncio.gather(
            *(call(pool, rec, leg, i) for i, leg in zip(range(6, 10), live, strict=True))
        )
        for leg in live:
            assert pool.hangup(leg)
        ends = await asyncio.gather(*(rec.state(leg, "ended") for leg in live))
        assert {e.cause for e in ends} == {"local_hangup"}
        # An evicted credential set works again (recreated; user2 is now the LRU idle one).
        await call(pool, rec, "e0b/b1", 0)
        assert pool.hangup("e0b/b1")
        await rec.state("e0b/b1", "ended")
        # The reused account (user5, cached) needs no eviction.
        await call(pool, rec, "e5b/b1", 5)
        assert pool.hangup("e5b/b1")
        await rec.state("e5b/b1", "ended")

    with_pool(body)
    evictions = [
        r.getMessage() for r in caplog.records if "evicted idle pjsua account" in r.getMessage()
    ]
    users = [re.search(r"user='(\w+)'", e).group(1) for e in evictions]  # type: ignore[union-attr]
    assert users == ["user0", "user1", "user2"], evictions
    assert not any("pw" in e for e in evictions)  # passwords never logged


def test_unknown_transport_is_a_dial_error(h: SippHarness) -> None:
    uas = h.sipp("uas_answer_wait_bye.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas.uri_hostport, "t0/b1", transport="sctp"))
        end = await rec.state("t0/b1", "ended")
        assert end.cause == "dial_error" and "sctp" in end.detail
        assert received(uas, "INVITE") == []

    with_pool(body)


# --------------------------------------------------------------------------- transports


def test_tcp_trunk_answered(h: SippHarness) -> None:
    uas = h.sipp("uas_answer_wait_bye.xml", transport="tcp")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas.uri_hostport, "t1/b1", transport="tcp"))
        ans = await rec.state("t1/b1", "answered")
        inv = received(uas, "INVITE")[0]
        assert inv.call_id == ans.sip_call_id
        assert (inv.header("Via") or "").startswith("SIP/2.0/TCP "), inv.header("Via")
        assert "transport=tcp" in (inv.header("Contact") or "").lower()
        assert pool.hangup("t1/b1")
        end = await rec.state("t1/b1", "ended")
        assert (end.cause, end.answered) == ("local_hangup", True)
        bye = await uas.async_wait_for(lambda m: m.direction == "received" and m.method == "BYE")
        assert (bye.header("Via") or "").startswith("SIP/2.0/TCP ")

    with_pool(body)


def test_tcp_trunk_with_digest_auth(h: SippHarness) -> None:
    uas = auth_uas(h, 407, transport="tcp")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas.uri_hostport, "t2/b1", transport="tcp", auth=(USER, PASSWORD, "*")))
        await rec.state("t2/b1", "answered")
        invs = received(uas, "INVITE")
        assert len(invs) == 2
        assert all((i.header("Via") or "").startswith("SIP/2.0/TCP ") for i in invs)
        assert pool.hangup("t2/b1")
        await rec.state("t2/b1", "ended")

    with_pool(body)


# --------------------------------------------------------------------------- TLS


def test_tls_trunk_answered(h: SippHarness, tmp_path: Path) -> None:
    """sips: over TLS to a self-signed carrier (verifyServer off), relayed to SIPp/TCP."""
    cert, key = self_signed(tmp_path)

    async def go() -> None:
        tls = TlsTerminator(cert, key, target_port=0)
        await tls.start()
        uas = h.sipp("uas_answer_tls.xml", transport="tcp", keys={"tls_port": str(tls.port)})
        tls.target_port = uas.port
        try:

            async def body(pool: WorkerPool, rec: Recorder) -> None:
                hostport = f"127.0.0.1:{tls.port}"
                pool.dial(plan(hostport, "t3/b1", transport="tls", scheme="sips", tls_verify=False))
                ans = await rec.state("t3/b1", "answered")
                inv = received(uas, "INVITE")[0]
                assert inv.call_id == ans.sip_call_id
                assert inv.request_uri.startswith(f"sips:{CALLEE}@{hostport}")
                assert (inv.header("Via") or "").startswith("SIP/2.0/TLS "), inv.header("Via")
                # pjsua writes sip:...;transport=tls (PJSUA_SECURE_SCHEME is "sip").
                assert "transport=tls" in (inv.header("Contact") or "").lower()
                assert pool.hangup("t3/b1")
                end = await rec.state("t3/b1", "ended")
                assert (end.cause, end.answered) == ("local_hangup", True)
                bye = await uas.async_wait_for(
                    lambda m: m.direction == "received" and m.method == "BYE"
                )
                assert (bye.header("Via") or "").startswith("SIP/2.0/TLS ")

            await harness.with_pool(body, workers=1)
        finally:
            await tls.stop()
        assert tls.handshakes >= 1
        assert all(v.startswith("TLSv1.") for v in tls.tls_versions), tls.tls_versions

    run(go())


# --------------------------------------------------------------------------- SRTP


def _audio_line(sdp: str) -> str:
    return next(ln for ln in sdp.splitlines() if ln.startswith("m=audio"))


def test_srtp_mandatory_offer_answered(h: SippHarness) -> None:
    uas = h.sipp("uas_answer_srtp.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas.uri_hostport, "s1/b1", srtp="mandatory"))
        await rec.state("s1/b1", "answered")
        inv = received(uas, "INVITE")[0]
        assert _audio_line(inv.body).split()[2] == "RTP/SAVP", inv.body
        cryptos = [ln for ln in inv.body.splitlines() if ln.startswith("a=crypto:")]
        assert cryptos and any("AES_CM_128_HMAC_SHA1_80 inline:" in c for c in cryptos), cryptos
        assert pool.hangup("s1/b1")
        end = await rec.state("s1/b1", "ended")
        assert (end.cause, end.answered) == ("local_hangup", True)

    with_pool(body)


def test_srtp_off_offers_plain_rtp(h: SippHarness) -> None:
    uas = h.sipp("uas_answer_wait_bye.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas.uri_hostport, "s2/b1"))
        await rec.state("s2/b1", "answered")
        inv = received(uas, "INVITE")[0]
        assert _audio_line(inv.body).split()[2] == "RTP/AVP"
        assert "a=crypto" not in inv.body
        assert pool.hangup("s2/b1")
        await rec.state("s2/b1", "ended")

    with_pool(body)


def test_srtp_mandatory_rejects_plain_rtp_answer(h: SippHarness) -> None:
    """The carrier answers the SAVP offer with plain RTP/AVP: the call must not go on.

    pjsua ACKs the 200 (the dialog is confirmed, so an ``answered`` event is sent) and at
    once sends BYE with ``Reason: SIP ;cause=488 ;text="Unable to create media session"``;
    the worker reports ``media_error`` (not ``remote_bye``) naming the codecs and that text.
    """
    uas = h.sipp("uas_answer_wait_bye.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas.uri_hostport, "s3/b1", srtp="mandatory"))
        end = await rec.state("s3/b1", "ended")
        assert (end.cause, end.answered, end.sip_status) == ("media_error", True, 488), end
        assert "media" in end.detail and "answered PCMU/8000" in end.detail, end.detail
        bye = await uas.async_wait_for(lambda m: m.direction == "received" and m.method == "BYE")
        assert "cause=488" in (bye.header("Reason") or "")

    with_pool(body)


# --------------------------------------------------------------------------- Retry-After


def test_503_retry_after(h: SippHarness) -> None:
    uas = h.sipp("uas_unavailable_retry_after.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas.uri_hostport, "r1/b1"))
        end = await rec.state("r1/b1", "ended")
        assert (end.cause, end.sip_status) == ("remote_final", 503)
        assert end.retry_after_s == 30.0

    with_pool(body)


def test_503_without_retry_after(h: SippHarness) -> None:
    uas = h.sipp("uas_unavailable.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas.uri_hostport, "r2/b1"))
        end = await rec.state("r2/b1", "ended")
        assert (end.cause, end.sip_status, end.retry_after_s) == ("remote_final", 503, None)

    with_pool(body)


# --------------------------------------------------------------------------- worker logic
# Paths a loopback SIPp cannot provoke, on a Worker without an Endpoint (no pj calls are
# reached: the dial is refused before any pjsua object is created).


class _Conn:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, msg: Any) -> None:
        self.sent.append(msg)


def _bare_worker() -> tuple[Any, _Conn]:
    from sipbridge.sip import worker as w
    from sipbridge.sipconfig import SipConfig

    conn = _Conn()
    wk = w.Worker(0, SipConfig(port_min=0, port_max=0), conn, 0)  # type: ignore[arg-type]
    wk.transports.ids = {"udp": 0, "tcp": 1}
    wk.transports.ports = {"udp": 5080, "tcp": 5080}
    wk.transports.errors = {"tls": "Unsupported transport (PJSIP_EUNSUPTRANSPORT)"}
    return wk, conn


def _ended(conn: _Conn) -> Any:
    from sipbridge import ipc

    evs = [ipc.decode(m) for m in conn.sent]
    ends = [e for e in evs if isinstance(e, ipc.LegEvent) and e.state == "ended"]
    assert len(ends) == 1, evs
    return ends[0]


def test_missing_transport_is_a_dial_error_naming_it() -> None:
    wk, conn = _bare_worker()
    wk.dial(plan("127.0.0.1:5061", "m1/b1", transport="tls", scheme="sips"))
    end = _ended(conn)
    assert end.cause == "dial_error"
    assert "'tls'" in end.detail and "PJSIP_EUNSUPTRANSPORT" in end.detail
    assert wk.legs == {} and wk.accounts.accounts == {}


def test_all_accounts_busy_is_a_dial_error() -> None:
    from sipbridge.sip.accounts import MAX_ACCOUNTS
    from sipbridge.sip.leg import Leg

    wk, conn = _bare_worker()
    for i in range(MAX_ACCOUNTS):
        key = ("udp", "off", (f"u{i}", "p", "*"), None, "")
        wk.accounts.accounts[key] = object()
        wk.legs[f"busy{i}"] = Leg(plan=plan("h:1", f"busy{i}"), call=None, started=0, acc_key=key)
    wk.dial(plan("127.0.0.1:5060", "m2/b1", auth=("new", "pw", "*")))
    end = _ended(conn)
    assert end.cause == "dial_error" and "PJSUA_MAX_ACC" in end.detail
    assert len(wk.accounts.accounts) == MAX_ACCOUNTS  # nothing evicted


def test_bad_srtp_mode_is_a_dial_error() -> None:
    wk, conn = _bare_worker()
    wk.dial(plan("127.0.0.1:5060", "m3/b1", srtp="optional"))
    end = _ended(conn)
    assert end.cause == "dial_error" and "optional" in end.detail
