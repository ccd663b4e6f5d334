"""The call manager keeps every call's outcome honest with the project's test doubles
(recording pool, injectable clock, real SQLite): an exception in a leg-event handler
ends that call as "internal error", start-up recovery fails a poisoned record and goes
on, success needs the agent connected, an agent leg never outlives its carrier leg,
reasons come from the outcomes table with the technical text in ``detail``."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipbridge.ipc import DetectionReport, LegEvent
from sipbridge.records import CallRecord
from sipbridge.sip.sdp import audio_codecs, audio_connection, negotiation_detail, sdp_of
from sipbridge.store import SQLiteStore
from tests.doubles import MON_15_UTC, CallHarness
from tests.doubles import call_config as cfg


def _dialled(tmp_path, config=None, **trigger):
    h = CallHarness(tmp_path, config or cfg(), t=MON_15_UTC)
    sid, plan = h.dial("+12125550123", **trigger)
    return h, sid, plan


def test_handler_exception_ends_the_call_as_internal_error(tmp_path, caplog):
    h, sid, plan = _dialled(tmp_path)
    h.answer(plan)
    agent = h.pool.plans[1]
    # a malformed report from a worker: its detection is not a Detection
    with caplog.at_level(logging.ERROR, "sipbridge.calls"):
        h.svc.on_sip_event(
            DetectionReport(
                plan.leg_id,
                sid,
                0,
                h.clock(),
                "answer",
                "decision",
                ["not", "a", "dict"],  # type: ignore[arg-type]
            )
        )
    rec = h.rec(sid)
    assert (rec.status, rec.reason) == ("failure", "internal error")
    assert "AttributeError" in rec.detail
    assert "Traceback" in caplog.text and "AttributeError" in caplog.text
    assert set(h.pool.hung) == {plan.leg_id, agent.leg_id}  # both legs hung up
    # the legs' ends arrive later and change nothing; the slot is given back
    h.end(plan, 200, "local_hangup", answered=True)
    assert h.rec(sid).reason == "internal error"
    assert h.svc.limiter.active("a") == 0


def test_action_exception_ends_the_call(tmp_path):
    h, sid, plan = _dialled(tmp_path)
    h.pool.fail_dial = RuntimeError("pool exploded")  # the agent leg's dial raises
    h.answer(plan)
    rec = h.rec(sid)
    assert (rec.status, rec.reason, rec.detail) == (
        "failure",
        "internal error",
        "RuntimeError: pool exploded",
    )
    assert h.pool.hung == [plan.leg_id]


def test_recover_fails_poisoned_records_and_goes_on(tmp_path):
    db = tmp_path / "s.db"
    store = SQLiteStore(db)
    t = 1_790_000_000.0
    for sid in ("OUT-a", "OUT-b", "OUT-c"):
        store.create(
            CallRecord(
                call_sid=sid,
                status="calling",
                to_number="+12125550123",
                from_number="+14155550100",
                created_at=t,
                last_updated=t,
                attempts=1,
            )
        )
    store.close()
    con = sqlite3.connect(db)
    # a retry policy out of bounds (the backoff would overflow), and unparseable JSON
    con.execute(
        "UPDATE calls SET request=? WHERE call_sid='OUT-a'",
        (
            '{"retry": {"max_attempts": 3, "base_s": 1e308, "cap_s": 1e308, '
            '"jitter": 0, "retry_on": ["bridge_error"]}}',
        ),
    )
    con.execute("UPDATE calls SET request='{oops' WHERE call_sid='OUT-b'")
    con.commit()
    con.close()
    h = CallHarness(tmp_path, cfg(retry={"max_attempts": 1}))

    async def start_stop():
        await h.svc.start()  # recovery: does not raise
        await h.svc.stop()

    asyncio.run(start_stop())
    a, b, c = (h.rec(s) for s in ("OUT-a", "OUT-b", "OUT-c"))
    assert (a.status, a.reason) == ("failure", "internal error")
    assert (b.status, b.reason) == ("failure", "internal error")
    assert "column request" in b.detail
    assert (c.status, c.reason) == ("failure", "bridge restarted")


def test_damaged_queued_record_fails_alone(tmp_path):
    h = CallHarness(tmp_path, cfg(), t=MON_15_UTC)
    bad = h.trigger("+12125550123")
    good = h.trigger("+12125550124")
    h.store._db.execute("UPDATE calls SET attempt_history='[1' WHERE call_sid=?", (bad,))
    h.svc.dispatch_once()
    assert h.rec(bad).reason == "internal error"
    assert [p.call_sid for p in h.pool.plans] == [good]


def test_carrier_bye_before_the_agent_answers_is_not_a_success(tmp_path):
    h, sid, plan = _dialled(tmp_path)
    h.answer(plan)
    agent = h.pool.plans[1]
    h.end(plan, 200, "remote_bye", answered=True)
    rec = h.rec(sid)
    assert (rec.status, rec.reason) == ("failure", "hung up before the agent was connected")
    assert agent.leg_id in h.pool.hung  # the agent leg does not outlive the carrier
    # the agent leg answers after all (its 200 crossed our CANCEL): it is hung up again
    h.pool.hung.clear()
    h.svc.on_sip_event(LegEvent(agent.leg_id, sid, "answered", 0, h.clock(), 200))
    assert h.pool.hung == [agent.leg_id]
    assert h.rec(sid).status == "failure"


def test_connected_then_bye_is_success(tmp_path):
    h, sid, plan = _dialled(tmp_path)
    h.connect(plan)
    h.end(plan, 200, "remote_bye", answered=True)
    assert (h.rec(sid).status, h.rec(sid).reason) == ("success", "")


def test_agent_header_failing_at_dial_time_is_a_failure(tmp_path):
    # the trunk does not carry polyai_call_id, the agent leg does (X-PolyAI-Call-ID). The
    # trigger refuses CR/LF (400), so the bad value comes from a record stored before that
    # check existed: the dial-time check is the last line of defence.
    h = CallHarness(tmp_path, cfg(), t=MON_15_UTC)
    sid = h.trigger("+12125550123", polyai_call_id="P-1")
    h.store.save(replace(h.rec(sid), polyai_call_id="P-1\r\nX-Evil: 1"))
    h.svc.dispatch_once()
    plan = h.pool.plans[0]
    h.answer(plan)
    assert len(h.pool.plans) == 1  # no agent INVITE
    assert h.pool.hung == [plan.leg_id]
    h.end(plan, 200, "local_hangup", answered=True)
    rec = h.rec(sid)
    assert (rec.status, rec.reason) == ("failure", "agent leg failed")
    assert "cannot dial the agent" in rec.detail and rec.attempts == 1


def test_agent_media_timeout_ends_the_call(tmp_path):
    h, sid, plan = _dialled(tmp_path)
    h.connect(plan)
    agent = h.pool.plans[1]
    h.svc.on_sip_event(
        LegEvent(
            agent.leg_id,
            sid,
            "ended",
            0,
            h.clock(),
            200,
            "",
            "",
            "media_timeout",
            True,
            "no RTP received for 30 s",
        )
    )
    assert plan.leg_id in h.pool.hung
    h.end(plan, 200, "bridged_bye", answered=True)
    rec = h.rec(sid)
    assert (rec.status, rec.reason) == ("failure", "media timeout")
    assert "no RTP" in rec.detail


@pytest.mark.parametrize(
    ("status", "phrase"), [(403, "Forbidden"), (503, "Busy Out"), (480, "Temporarily Unavailable")]
)
def test_reasons_never_carry_the_carrier_text(tmp_path, status, phrase):
    h, sid, plan = _dialled(tmp_path, config=cfg(routes=[{"prefix": "+1", "trunk": "a"}]))
    h.svc.on_sip_event(
        LegEvent(plan.leg_id, sid, "ended", 0, h.clock(), status, phrase, "", "remote_final", False)
    )
    body = h.rec(sid)
    assert phrase not in body.reason and body.detail == f"SIP {status} {phrase}"
    assert body.sip_status == status


def test_store_migrates_a_version_1_file(tmp_path):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript("""
        CREATE TABLE calls (call_sid TEXT PRIMARY KEY, status TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '', to_number TEXT NOT NULL,
            from_number TEXT NOT NULL, trunk TEXT NOT NULL DEFAULT '', sip_status INTEGER,
            answered_by TEXT, polyai_call_id TEXT, attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL, last_updated REAL NOT NULL, ended_at REAL,
            request TEXT NOT NULL DEFAULT '{}', legs TEXT NOT NULL DEFAULT '{}',
            not_before REAL, idempotency_key TEXT,
            attempt_history TEXT NOT NULL DEFAULT '[]');
        INSERT INTO calls (call_sid, status, reason, to_number, from_number, created_at,
            last_updated) VALUES ('OUT-old', 'failure', 'busy', '+1', '+2', 1, 2);
        PRAGMA user_version=1;""")
    con.commit()
    con.close()
    store = SQLiteStore(db)
    rec = store.get("OUT-old", now=3)
    assert rec is not None and (rec.reason, rec.detail) == ("busy", "")
    store.save(CallRecord(**{**rec.__dict__, "detail": "SIP 486 Busy Here"}))
    store.close()
    again = SQLiteStore(db)
    migrated = again.get("OUT-old", now=3)
    assert migrated is not None and migrated.detail == "SIP 486 Busy Here"
    assert again._db.execute("PRAGMA user_version").fetchone()[0] == 3


# ---- SDP helpers ---------------------------------------------------------------------

G729_200 = (
    "SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n\r\n"
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 18 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    "m=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
)


def test_audio_codecs_of_an_answer():
    sdp = sdp_of(G729_200)
    assert audio_codecs(sdp) == ("RTP/AVP", ["G729/8000", "telephone-event/8000"])
    assert negotiation_detail(["PCMU/8000", "PCMA/8000"], sdp) == (
        "offered PCMU/8000, PCMA/8000; answered G729/8000, telephone-event/8000 (RTP/AVP)"
    )
    assert sdp_of("BYE sip:x SIP/2.0\r\nCSeq: 2 BYE\r\n\r\n") == ""
    assert negotiation_detail(["PCMU/8000"], "") == (
        "offered PCMU/8000; answered with no usable SDP"
    )
    assert negotiation_detail(["PCMU/8000"], "v=0\r\nm=video 4 RTP/AVP 96\r\n") == (
        "offered PCMU/8000; answered no audio codec"
    )


def test_audio_connection_of_an_answer():
    v6 = (
        "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP6 ::1\r\n"
        "m=audio 5000 RTP/AVP 0\r\nc=IN IP4 127.0.0.1\r\n"
    )
    assert audio_connection(v6) == "IN IP6 ::1"  # media level wins, first audio stream
    assert audio_connection(sdp_of(G729_200)) == "IN IP4 127.0.0.1"  # session level
    assert audio_connection("v=0\r\nm=audio 4000 RTP/AVP 0\r\n") == ""
    assert negotiation_detail(["PCMU/8000"], v6) == (
        "offered PCMU/8000; answered PCMU/8000 (RTP/AVP, c=IN IP6 ::1)"
    )


@given(st.text(max_size=2000))
def test_sdp_helpers_never_raise(text):
    _proto, names = audio_codecs(text)
    assert len(names) <= 16 and all(len(n) <= 40 for n in names)
    negotiation_detail(["PCMU/8000"], sdp_of(text))
