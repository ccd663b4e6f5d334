"""Hold on request in the call manager (sipbridge.calls.agenthold): the REST request's
checks, the events recorded from the worker, and the escape hatch (a hold longer than
the call's max_ivr_s ends it as the retryable "IVR/hold time limit exceeded")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sipbridge.callsettings import IvrSettings
from sipbridge.errors import CallNotFound, InvalidTransition
from sipbridge.ipc import AgentHoldEvent, DetectionReport
from tests.doubles import CallHarness, call_config, detection


def _hold_event(h: CallHarness, leg: str, sid: str, state: str, via: str = "api") -> None:
    h.svc.on_sip_event(AgentHoldEvent(leg, sid, 0, h.clock(), state, via, timings={"hold_ms": 5}))


def test_rest_hold_needs_a_bridged_call(tmp_path: Path) -> None:
    h = CallHarness(tmp_path, call_config())
    with pytest.raises(CallNotFound):
        h.svc.hold("OUT-00000000-0000-4000-8000-000000000000")
    sid, plan = h.dial()
    with pytest.raises(InvalidTransition, match="not bridged"):
        h.svc.hold(sid)  # ringing
    h.answer(plan)
    with pytest.raises(InvalidTransition, match="not bridged"):
        h.svc.hold(sid)  # the agent has not answered yet
    h.answer(h.pool.agent_of(plan))
    h.svc.hold(sid)
    assert h.pool.listens[-1] == (plan.leg_id, "agent_hold")


def test_escape_hatch_ends_a_long_hold(tmp_path: Path) -> None:
    h = CallHarness(tmp_path, call_config())

    async def body() -> None:
        sid, plan = h.dial(ivr=IvrSettings(max_ivr_s=30))
        h.connect(plan)
        _hold_event(h, plan.leg_id, sid, "holding", "reinvite")
        with pytest.raises(InvalidTransition, match="on hold already"):
            h.svc.hold(sid)
        holds = h.svc.events.agent_holds
        live = h.svc.registry.get(sid)
        assert live is not None and live.flow is not None
        # the limit is the call's max_ivr_s
        assert [round(t.when() - asyncio.get_running_loop().time()) for t in live.timers] == [30]
        holds._expired(sid, holds.current[sid], live.flow)
        assert plan.leg_id in h.pool.hung
        h.end(plan, 200, cause="local_hangup", answered=True)
        rec = h.rec(sid)
        assert (rec.status, rec.reason) == ("failure", "IVR/hold time limit exceeded")
        kinds = [e.kind for e in h.store.events(sid)]
        assert "agent.hold.holding" in kinds

    asyncio.run(body())


def test_a_resumed_hold_is_not_ended(tmp_path: Path) -> None:
    h = CallHarness(tmp_path, call_config())

    async def body() -> None:
        sid, plan = h.dial()
        h.connect(plan)
        _hold_event(h, plan.leg_id, sid, "holding")
        holds = h.svc.events.agent_holds
        hold = holds.current[sid]
        live = h.svc.registry.get(sid)
        assert live is not None
        _hold_event(h, plan.leg_id, sid, "resumed", "person")
        holds._expired(sid, hold, live.flow)  # the old timer fires: nothing happens
        assert plan.leg_id not in h.pool.hung
        ev = [e for e in h.store.events(sid) if e.kind == "agent.hold.resumed"]
        assert ev and ev[0].data["via"] == "person" and ev[0].data["hold_ms"] == 5
        # what the agent's header says, the status (and so CDR and metrics) says
        assert h.rec(sid).answered_by == "human"
        # and keeps saying: the answer-phase detector taking the person's next words for
        # "the machine spoke again" neither re-labels the call nor informs the agent
        infos = len(h.pool.infos)
        h.svc.on_sip_event(
            DetectionReport(plan.leg_id, sid, 0, h.clock(), "answer", "update", detection("ivr"))
        )
        assert h.rec(sid).answered_by == "human" and len(h.pool.infos) == infos

    asyncio.run(body())
