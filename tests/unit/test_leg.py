"""A worker's leg (sipbridge.sip.leg) without pjsua2: its own deadlines."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.plan import DialPlan
from sipbridge.sip.leg import InboundState, Leg, next_deadline


def _leg(**kw: Any) -> Leg:
    plan = DialPlan(
        call_sid="c1",
        leg_id="c1/b1",
        trunk="t",
        request_uri="sip:+1@h",
        from_uri="sip:a@h",
        to_uri="",
        headers=(),
        ring_timeout_s=30.0,
        max_duration_s=600.0,
    )
    return Leg(plan=plan, call=None, started=100.0, **kw)


def test_ringing_leg_ends_at_its_ring_timeout() -> None:
    assert next_deadline(_leg(), 60.0) == (130.0, "ring_timeout")


def test_answered_leg_checks_media_then_ends_at_max_duration() -> None:
    leg = _leg(answered_at=110.0)
    assert next_deadline(leg, 60.0) == (710.0, "max_duration")  # no live audio yet
    leg.rtp.live, leg.rtp.check_at = True, 125.0
    assert next_deadline(leg, 60.0) == (125.0, "media_timeout")
    assert next_deadline(leg, 0.0) == (710.0, "max_duration")  # media timeout off
    leg.rtp.check_at = 800.0  # the call ends before the next check
    assert next_deadline(leg, 60.0) == (710.0, "max_duration")


def test_inbound_leg_waits_for_respond() -> None:
    leg = _leg(inbound=InboundState(deadline=130.0))
    assert next_deadline(leg, 60.0) == (130.0, "ring_timeout")
    leg.inbound = InboundState(deadline=None, final_sent=True)  # 200 sent, not yet ACKed
    assert next_deadline(leg, 60.0) is None
    leg.answered_at = 140.0
    assert next_deadline(leg, 60.0) == (740.0, "max_duration")


def test_ended_or_ending_legs_have_no_deadline() -> None:
    assert next_deadline(_leg(ended=True), 60.0) is None
    assert next_deadline(_leg(end_cause="local_hangup"), 60.0) is None


@settings(max_examples=200, deadline=None)
@given(
    answered=st.one_of(st.none(), st.floats(100, 1e6)),
    live=st.booleans(),
    check_at=st.floats(0, 2e6),
    timeout_s=st.floats(0, 3600),
    inbound=st.booleans(),
)
def test_deadline_never_later_than_the_call_limit(
    answered: float | None, live: bool, check_at: float, timeout_s: float, inbound: bool
) -> None:
    leg = _leg(answered_at=answered, inbound=InboundState(deadline=150.0) if inbound else None)
    leg.rtp.live, leg.rtp.check_at = live, check_at
    got = next_deadline(leg, timeout_s)
    assert got is not None
    if answered is None:
        assert got == ((150.0 if inbound else 130.0), "ring_timeout")
    else:
        assert got[0] <= answered + leg.plan.max_duration_s
        assert got[1] in ("media_timeout", "max_duration")
        assert (got[1] == "media_timeout") == (
            live and timeout_s > 0 and check_at < answered + 600.0
        )
