"""What the SIP stack exposes to a carrier: ICE, STUN and TURN off, SRTP only where
configured (README "Security"). The carrier's answer carries the input those disabled
code paths would parse (a 1024-character ice-ufrag, candidates, an SDES crypto line):
the call goes on and the worker survives."""

from __future__ import annotations

import pytest

from sipbridge.sip.pool import WorkerPool
from tests.doubles import EventRecorder
from tests.integration import harness as base
from tests.integration.harness import SippHarness
from tests.integration.test_sip_trunks import _bare_worker, plan

pytestmark = pytest.mark.integration


def test_plain_trunk_offer_has_no_ice_and_no_srtp(h: SippHarness) -> None:
    uas = h.sipp("uas_answer_ice_crypto.xml")
    # by name: resolved by the OS (pjsip has no nameserver, so no resolver of its own)
    hostport = f"localhost:{uas.port}"

    async def body(pool: WorkerPool, rec: EventRecorder) -> None:
        pool.dial(plan(hostport, "x1/b1"))
        await rec.state("x1/b1", "answered")
        (inv,) = uas.received("INVITE")
        sdp = inv.body.splitlines()
        m_audio = next(ln for ln in sdp if ln.startswith("m=audio"))
        assert m_audio.split()[2] == "RTP/AVP", inv.body
        for prefix in ("a=ice-", "a=candidate", "a=crypto", "a=remote-candidates"):
            assert not any(ln.startswith(prefix) for ln in sdp), (prefix, inv.body)
        assert pool.hangup("x1/b1")
        end = await rec.state("x1/b1", "ended")
        assert (end.cause, end.answered) == ("local_hangup", True)

    pool = base.run(base.with_pool(body, workers=1))
    assert pool.exit_codes == {0: 0}  # the worker lived through the answer and exited cleanly


def test_accounts_disable_ice_stun_turn_and_optional_srtp() -> None:
    import pjsua2 as pj

    wk, _ = _bare_worker()
    for srtp, use in (("off", pj.PJMEDIA_SRTP_DISABLED), ("mandatory", pj.PJMEDIA_SRTP_MANDATORY)):
        acfg = wk.accounts.config("udp", srtp, None)
        nat = acfg.natConfig
        assert (nat.iceEnabled, nat.turnEnabled) == (False, False)
        assert nat.sipStunUse == nat.mediaStunUse == pj.PJSUA_STUN_USE_DISABLED
        assert acfg.mediaConfig.srtpUse == use != pj.PJMEDIA_SRTP_OPTIONAL
