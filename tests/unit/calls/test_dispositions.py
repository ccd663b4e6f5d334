"""The agent's disposition applied by the call manager (sipbridge/calls/dispositions.py):
the worker's ByeHeaders event, then the agent leg's end, then the carrier leg's end."""

from __future__ import annotations

from sipbridge import ipc
from sipbridge.callsettings import RetryConfig
from sipbridge.ipc import ByeHeaders
from sipbridge.plan import DialPlan
from tests.doubles import MON_15_UTC, CallHarness
from tests.doubles import call_config as cfg


def _agent_hangs_up(h: CallHarness, plan: DialPlan, *headers: tuple[str, str]) -> None:
    agent = h.connect(plan)
    assert agent.read_headers == ("X-Sipbridge-Disposition", "Reason")
    if headers:
        h.svc.on_sip_event(ByeHeaders(agent.leg_id, agent.call_sid, 0, h.clock(), headers))
    h.end(agent, 200, "remote_bye", answered=True)
    h.end(plan, 200, "bridged_bye", answered=True)


def test_not_in_service_ends_the_call_as_failure(tmp_path):
    h = CallHarness(tmp_path, cfg(), t=MON_15_UTC)
    sid, plan = h.dial(
        retry=RetryConfig.model_validate({"max_attempts": 3, "retry_on": ["not_in_service"]})
    )
    _agent_hangs_up(h, plan, ("Reason", "SIP;cause=404"))
    rec = h.rec(sid)
    # not retried by default, even though retry_on lists the kind: the table says so
    assert (rec.status, rec.reason) == ("failure", "number not in service (agent)")
    assert rec.detail == "agent disposition not_in_service; Reason SIP 404"


def test_retry_requeues_under_the_retry_policy(tmp_path):
    h = CallHarness(tmp_path, cfg(), t=MON_15_UTC)
    sid, plan = h.dial(
        retry=RetryConfig.model_validate({"max_attempts": 2, "base_s": 30, "jitter": 0})
    )
    _agent_hangs_up(h, plan, ("X-Sipbridge-Disposition", "retry; reason=callback"))
    rec = h.rec(sid)
    assert rec.status == "queued"
    assert rec.reason.startswith("retry requested by agent; attempt 2 of 2")
    assert rec.not_before == MON_15_UTC + 30
    assert rec.attempt_history[0].kind == "agent_retry"


def test_retry_false_and_last_attempt_end_the_call(tmp_path):
    h = CallHarness(tmp_path, cfg(), t=MON_15_UTC)
    sid, plan = h.dial(retry=RetryConfig.model_validate({"max_attempts": 3}))
    _agent_hangs_up(h, plan, ("X-Sipbridge-Disposition", "busy; retry=false"))
    assert (h.rec(sid).status, h.rec(sid).reason) == ("failure", "busy (agent)")
    sid, plan = h.dial("+12125550124")  # max_attempts 1: nothing left to retry
    _agent_hangs_up(h, plan, ("X-Sipbridge-Disposition", "retry"))
    assert (h.rec(sid).status, h.rec(sid).reason) == ("failure", "retry requested by agent")


def test_refused_or_absent_disposition_changes_nothing(tmp_path):
    h = CallHarness(tmp_path, cfg(), t=MON_15_UTC)
    sid, plan = h.dial()
    _agent_hangs_up(h, plan, ("X-Sipbridge-Disposition", "busy\x00"))
    assert (h.rec(sid).status, h.rec(sid).reason) == ("success", "ended by agent")
    sid, plan = h.dial("+12125550124")
    _agent_hangs_up(h, plan)
    assert (h.rec(sid).status, h.rec(sid).reason) == ("success", "ended by agent")
    # a late or stray event is dropped quietly
    h.svc.on_sip_event(ByeHeaders("nope/a1", "nope", 0, h.clock(), (("Reason", "x"),)))
    h.svc.on_sip_event(ByeHeaders(plan.leg_id, sid, 0, h.clock(), (("Reason", "Q.850;cause=1"),)))
    assert h.rec(sid).reason == "ended by agent"


def test_disabled_config_reads_nothing(tmp_path):
    c = cfg(agent={"uri": "sip:agent@127.0.0.1", "disposition": {"enabled": False}})
    h = CallHarness(tmp_path, c, t=MON_15_UTC)
    sid, plan = h.dial()
    h.answer(plan)
    agent = h.pool.agent_of(plan)
    assert agent.read_headers == ()
    h.answer(agent)
    h.svc.on_sip_event(ByeHeaders(agent.leg_id, sid, 0, h.clock(), (("Reason", "SIP;cause=486"),)))
    h.end(agent, 200, "remote_bye", answered=True)
    h.end(plan, 200, "bridged_bye", answered=True)
    assert (h.rec(sid).status, h.rec(sid).reason) == ("success", "ended by agent")


def test_ipc_round_trip():
    ev = ByeHeaders("c/a1", "c", 1, 2.0, (("Reason", "Q.850;cause=1"),))
    assert ipc.decode(ipc.encode(ev)) == ev
    plan = DialPlan("c", "c/a1", "agent", "sip:a@h", "<sip:x@h>", "<sip:a@h>", (), 1, 2)
    plan = DialPlan(**{**plan.__dict__, "read_headers": ("X-D", "Reason")})
    as_json = ipc.encode(ipc.Dial(plan))
    as_json["plan"]["read_headers"] = list(as_json["plan"]["read_headers"])  # JSON-style
    assert ipc.decode(as_json) == ipc.Dial(plan)
