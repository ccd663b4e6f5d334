"""An answered agent leg whose dialog dies under the call (the agent answered the detection
INFO, or a refresh, with 481: RFC 3261 12.2.1.2) ends the call failure "call lost", never
success "ended by agent". The worker reports the agent leg's end before the carrier leg's
("bridged_bye": it hangs the carrier up because the agent leg ended). (Over SIP:
tests/integration/test_agent_bridge.py.)"""

from __future__ import annotations

from tests.doubles import MON_15_UTC, CallHarness
from tests.doubles import call_config as cfg

LOST = "session ended by the SIP stack: 481 Call/Transaction Does Not Exist"


def test_a_dead_agent_dialog_loses_the_call(tmp_path) -> None:
    h = CallHarness(tmp_path, cfg(), t=MON_15_UTC)
    sid, plan = h.dial()
    agent = h.connect(plan)
    h.end(agent, 481, "transport_error", answered=True, detail=LOST)
    assert plan.leg_id in h.pool.hung  # ended at once, not left to the worker alone
    h.end(plan, 200, "bridged_bye", answered=True)
    rec = h.rec(sid)
    assert (rec.status, rec.reason) == ("failure", "call lost"), rec
    assert rec.detail.startswith("agent leg: ") and "481" in rec.detail, rec.detail


def test_the_agent_hanging_up_is_still_a_success(tmp_path) -> None:
    h = CallHarness(tmp_path, cfg(), t=MON_15_UTC)
    sid, plan = h.dial()
    agent = h.connect(plan)
    h.end(agent, 200, "remote_bye", answered=True)
    h.end(plan, 200, "bridged_bye", answered=True)
    assert (h.rec(sid).status, h.rec(sid).reason) == ("success", "ended by agent")
