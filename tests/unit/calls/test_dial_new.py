"""A trigger is dialled at once when nothing waits ahead of it (Dispatcher.dial_new), and
left to the scheduler's pass otherwise: FIFO kept, admission's pause and cluster claims
respected. Driven through CallService's public API with the recording pool double."""

from __future__ import annotations

from tests.doubles import CallHarness
from tests.doubles import call_config as cfg


def _dialled(h: CallHarness) -> list[str]:
    return [p.call_sid for p in h.pool.plans]


def test_after_a_clear_pass_a_trigger_is_dialled_before_the_handler_returns(tmp_path):
    h = CallHarness(tmp_path, cfg())
    first = h.trigger("+12125550123")
    assert _dialled(h) == []  # no pass has run yet: nothing is known about the queue
    h.svc.dispatch_once()
    assert _dialled(h) == [first]
    sid = h.trigger("+12125550124")  # the last pass left nothing waiting
    assert _dialled(h) == [first, sid]
    assert h.rec(sid).status == "calling"
    stages = h.svc.dispatcher.stages.finish(sid, 0.0, 0.0)  # its stages were all marked
    assert stages is not None and set(stages) >= {"api", "queue", "place"}


def test_a_call_waiting_for_a_slot_is_not_overtaken(tmp_path):
    h = CallHarness(tmp_path, cfg(), slots=1)  # room for one carrier leg
    h.svc.dispatch_once()
    one = h.trigger("+12125550123")
    two = h.trigger("+12125550124")  # no slot: waits in the queue
    assert _dialled(h) == [one]
    h.end(h.pool.plans[0], 486)  # a slot is free again
    three = h.trigger("+12125550125")
    assert _dialled(h) == [one]  # not ahead of the call that waited
    h.svc.dispatch_once()
    assert _dialled(h) == [one, two]
    assert h.rec(three).status == "queued"


def test_not_while_admission_pauses_the_scheduler(tmp_path):
    h = CallHarness(tmp_path, cfg())
    h.svc.dispatch_once()
    h.svc.dispatcher.paused = lambda: True
    sid = h.trigger()
    assert _dialled(h) == [] and h.rec(sid).status == "queued"


def test_a_trigger_admission_let_in_is_dialled_even_if_the_node_filled_since(tmp_path):
    """The API handler awaits between admission's check and storing the call (the rate
    limit): triggers admitted meanwhile may have filled the node's headroom. The call the
    client got a 200 for is dialled, not left in the queue until room comes back."""
    from sipbridge.calls.trigger import TriggerInput

    h = CallHarness(tmp_path, cfg())
    h.svc.dispatch_once()
    h.svc.dispatcher.paused = lambda: True
    sid = h.svc.trigger(TriggerInput("+12125550123"), admitted=True).call_sid
    assert _dialled(h) == [sid] and h.rec(sid).status == "calling"


def test_not_in_cluster_mode(tmp_path):
    h = CallHarness(tmp_path, cfg())
    h.svc.dispatch_once()
    h.svc.dispatcher.ctx.node_id = "node-a"  # a call is dialled by the node that claims it
    h.trigger()
    assert _dialled(h) == []


def test_a_retry_in_backoff_is_not_in_the_way_until_it_is_due(tmp_path):
    retry = {"max_attempts": 2, "base_s": 10, "jitter": 0, "retry_on": ["busy"]}
    h = CallHarness(tmp_path, cfg(retry=retry), slots=1)
    h.svc.dispatch_once()
    busy = h.trigger("+12125550123")
    h.end(h.pool.plans[0], 486)  # queued again, not before +10 s
    h.svc.dispatch_once()  # the pass sees it waiting for its time
    new = h.trigger("+12125550124")
    assert _dialled(h) == [busy, new]  # dialled at once: the retry was not due
    h.end(h.pool.plans[1], 486)
    h.clock.t += 10.5  # the retry is due now: a newer call does not overtake it
    later = h.trigger("+12125550125")
    assert _dialled(h) == [busy, new]
    h.svc.dispatch_once()
    assert _dialled(h) == [busy, new, busy]
    assert h.rec(later).status == "queued"
