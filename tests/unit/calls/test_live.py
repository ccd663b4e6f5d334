"""Where a call lives (sipbridge/calls/live.py): the registry finds a call by callSid and
by leg, and forgets it in one place once nothing about it is live: after an outbound
call, a SIP-triggered call, a failover hang-up, a retry, an internal error."""

from __future__ import annotations

from sipbridge.calls.live import Attempt, CallRegistry
from sipbridge.ipc import DetectionReport, InboundCall
from tests.doubles import MON_15_UTC, CallHarness
from tests.doubles import call_config as cfg


def test_registry_indexes_by_call_and_leg_and_drops_in_one_place():
    reg = CallRegistry()
    live = reg.open("OUT-1")
    assert reg.open("OUT-1") is live and "OUT-1" in reg
    reg.add_leg(live, "OUT-1/b1", "carrier", 2)
    reg.add_leg(live, "OUT-1/a1", "agent", 2)
    assert reg.of_leg("OUT-1/a1") is live and reg.role_of("OUT-1/a1") == "agent"
    assert (live.carrier_leg, live.agent_leg, live.leg_worker("OUT-1/b1")) == (
        "OUT-1/b1",
        "OUT-1/a1",
        2,
    )
    live.attempt = Attempt(1, ["t"], 0.0, leg_id="OUT-1/b1")
    assert reg.carrier_legs_up() == 1
    reg.end_leg("OUT-1/b1")
    assert live.carrier_leg is None and reg.call_sid_of("OUT-1/b1", "-") == "-"
    reg.settle("OUT-1")
    assert "OUT-1" in reg  # attempt and agent leg still live
    live.end_attempt()
    reg.settle("OUT-1")
    assert "OUT-1" in reg  # the agent leg is still up
    reg.end_leg("OUT-1/a1")
    reg.settle("OUT-1")
    assert len(reg) == 0 and reg.of_leg("OUT-1/a1") is None


def test_outbound_call_is_forgotten_when_its_legs_are_down(tmp_path):
    h = CallHarness(tmp_path, cfg(), t=MON_15_UTC)
    sid, plan = h.dial()
    agent = h.connect(plan)
    assert sid in h.svc.registry
    h.end(plan, 200, "remote_bye", answered=True)
    assert sid in h.svc.registry  # its agent leg is still up
    h.end(agent, 200, "bridged_bye", answered=True)
    assert h.rec(sid).status == "success"
    assert len(h.svc.registry) == 0 and len(h.svc.policies) == 0


def test_sip_triggered_call_is_forgotten(tmp_path):
    """The inbound leg's worker stayed behind after every SIP-triggered call."""
    config = cfg(inbound={"enabled": True}, sip={"inbound_allow": ["127.0.0.0/8"]})
    h = CallHarness(tmp_path, config, t=MON_15_UTC)
    h.svc.on_sip_event(
        InboundCall(
            "in-1",
            3,
            h.clock(),
            "sip:+12125550123@127.0.0.1",
            "<sip:agent@127.0.0.1>",
            "<sip:+12125550123@127.0.0.1>",
            "cid-1",
            "127.0.0.1:5070",
            (),
        )
    )
    plan = h.pool.plans[0]
    assert plan.role == "carrier"
    h.answer(plan)
    assert ("in-1", 200, "OK") in h.pool.responses
    h.answer("in-1")  # the agent platform's ACK
    h.end(plan, 200, "remote_bye", answered=True)
    h.end("in-1", 200, "bridged_bye", answered=True)
    assert h.rec(plan.call_sid).status == "success"
    assert len(h.svc.registry) == 0


def test_api_hangup_between_failover_hops_is_forgotten(tmp_path):
    """The hang-up request stayed behind when it came between two hops."""
    h = CallHarness(tmp_path, cfg(), t=MON_15_UTC)
    sid, plan = h.dial()
    h.end(plan, 503)  # failover to trunk b, waiting for the next pass
    h.svc.hangup(sid)
    assert (h.rec(sid).status, h.rec(sid).reason) == ("failure", "canceled")
    assert len(h.svc.registry) == 0
    h.svc.dispatch_once()
    assert len(h.pool.plans) == 1  # the next hop is never dialled


def test_retry_and_internal_error_are_forgotten(tmp_path):
    h = CallHarness(
        tmp_path, cfg(retry={"max_attempts": 2, "base_s": 1, "jitter": 0}), t=MON_15_UTC
    )
    sid, plan = h.dial()
    h.end(plan, 486)
    assert h.rec(sid).status == "queued" and len(h.svc.registry) == 0
    h.clock.advance(2)
    h.svc.dispatch_once()
    plan2 = h.pool.plans[-1]
    h.answer(plan2)
    agent = h.pool.agent_of(plan2)
    h.svc.on_sip_event(DetectionReport(plan2.leg_id, sid, 0, h.clock(), "answer", "decision", None))  # type: ignore[arg-type]
    assert h.rec(sid).reason == "internal error"
    h.end(plan2, 200, "local_hangup", answered=True)
    h.end(agent, 487, "local_hangup")
    assert len(h.svc.registry) == 0
