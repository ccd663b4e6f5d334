"""The call stores, each test run against SQLite and a real PostgreSQL server (the
``open_store`` fixture): durability, retention, unique keys, the typed record parts
(request, legs, attempt history) written as JSON and read back equal; an unreadable row
is marked damaged, never half-read."""

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipbridge.callsettings import DetectionSettings, RetryConfig, WindowConfig
from sipbridge.errors import DuplicateCall, StoreError
from sipbridge.records import AttemptRecord, CallRequest, LegRecord
from sipbridge.store import CallEvent, CallRecord, CallStore, SQLiteStore
from tests.doubles import detection


def _rec(sid="OUT-1", status="queued", t=1000.0, **kw):
    return CallRecord(
        call_sid=sid,
        status=status,
        to_number="+14155552671",
        from_number="+14155550100",
        created_at=t,
        last_updated=t,
        **kw,
    )


def test_survives_reopen(open_store):
    s = open_store()
    s.create(_rec(request=CallRequest(metadata={"a": "b"}), polyai_call_id="P1"))
    s.add_event("OUT-1", CallEvent(1001.0, "status", {"to": "queued"}))
    s.close()
    s2 = open_store()
    rec = s2.get("OUT-1", now=1002.0)
    assert rec is not None and rec.request == CallRequest(metadata={"a": "b"})
    assert [e.kind for e in s2.events("OUT-1")] == ["status"]
    assert s2.find_by_polyai_call_id("P1").call_sid == "OUT-1"
    assert [r.call_sid for r in s2.by_status("queued")] == ["OUT-1"]
    assert s2.by_status("calling") == []


def test_retention_hides_then_purges(open_store):
    s = open_store(retention_s=100)
    s.create(_rec())
    s.save(replace(_rec(), status="success", ended_at=2000.0))
    assert s.get("OUT-1", now=2099.0) is not None
    assert s.get("OUT-1", now=2101.0) is None
    assert s.purge_expired(now=2050.0) == 0
    assert s.purge_expired(now=2101.0) == 1
    assert s.events("OUT-1") == []


def test_unknown_is_none(open_store):
    s = open_store()
    assert s.get("OUT-nope") is None and s.ping()


def test_both_stores_are_call_stores(tmp_path, pg_server):
    from sipbridge.pgstore import PostgresStore

    stores: list[CallStore] = [
        SQLiteStore(tmp_path / "s.db"),  # the protocol, checked by mypy
        PostgresStore(pg_server.new_database()),
    ]
    assert all(s.ping() for s in stores)


def test_typed_parts_round_trip(open_store):
    s = open_store()
    request = CallRequest(
        metadata={"k": "v"},
        encryption="UDP/RTP",
        from_number="+14155550100",
        timezone="America/Chicago",
        calling_window=WindowConfig(days="mon-fri"),
        retry=RetryConfig(max_attempts=3),
        detection=DetectionSettings(connect_on="human"),
        status_callback="https://example.com/cb",
        copy_headers={"X-A": "1"},
        inbound_leg="in-1",
    )
    legs = {
        "OUT-1/b1": LegRecord(
            trunk="t1",
            worker=0,
            attempt=1,
            invite_at=1.5,
            ring_at=2.0,
            answered_at=3.0,
            ended_at=9.0,
            cause="remote_bye",
            sip_status=200,
            detection={"answer": detection("machine", decided_at_ms=2400, beep_ms=5200)},
        ),
        "OUT-1/a1": LegRecord(
            role="agent", worker=0, bridge_with="OUT-1/b1", ended_at=9.1, sip_reason=""
        ),
    }
    history = (
        AttemptRecord(
            1,
            "failure",
            "busy",
            "SIP 486 Busy Here",
            "busy",
            486,
            "2026-01-01T00:00:00Z",
            ("t1", "t2"),
        ),
    )
    rec = _rec(request=request, legs=legs, attempt_history=history)
    s.create(rec)
    back = s.get("OUT-1", now=1001.0)
    assert back == rec and not back.damaged


def test_duplicate_sid_and_idempotency_key_refused(open_store):
    s = open_store()
    s.create(_rec("OUT-1", idempotency_key="k1"))
    with pytest.raises(DuplicateCall):
        s.create(_rec("OUT-1"))
    with pytest.raises(DuplicateCall):
        s.create(_rec("OUT-2", idempotency_key="k1"))
    s.create(_rec("OUT-3"))  # no key: any number of calls without one
    s.create(_rec("OUT-4"))
    assert s.find_by_idempotency_key("k1").call_sid == "OUT-1"
    assert s.get("OUT-2") is None


def test_save_of_unknown_call_is_a_store_error(open_store):
    s = open_store()
    with pytest.raises(StoreError, match="does not exist"):
        s.save(_rec("OUT-nope"))


def test_cdrs_by_time_window_survive_purge(open_store):
    s = open_store(retention_s=10)
    s.create(_rec())
    s.save(replace(_rec(), status="success", ended_at=1000.0))
    for i, t in enumerate((1000.0, 1005.0, 2000.0)):
        s.add_cdr({"call_sid": "OUT-1", "attempt": i + 1, "ended_at": t, "x": "é"})
    assert [c["attempt"] for c in s.cdrs(1000.0, 2000.0)] == [1, 2]
    assert [c["attempt"] for c in s.cdrs(1001.0)] == [2, 3]
    assert s.purge_expired(now=5000.0) == 1
    assert [c["x"] for c in s.cdrs(0)] == ["é"] * 3


def test_leg_json_shows_what_is_known():
    leg = LegRecord(trunk="t1", worker=0, attempt=1, invite_at=1.0)
    assert leg.to_json() == {
        "role": "carrier",
        "trunk": "t1",
        "worker": 0,
        "attempt": 1,
        "invite_at": 1.0,
    }
    ended = replace(leg, ended_at=2.0)
    assert ended.to_json()["cause"] is None and ended.to_json()["sip_status"] is None


def test_unreadable_parts_mark_the_row_damaged(open_store):
    s = open_store()
    s.create(_rec())
    s._one(
        "UPDATE calls SET status='ringing', "
        'legs=\'{"l": {"role": "robot"}}\', '
        'request=\'{"retry": {"max_attempts": 0}}\''
    )
    rec = s.get("OUT-1", now=1001.0)
    assert "column status" in rec.damaged and "column legs" in rec.damaged
    assert "column request" in rec.damaged
    assert rec.legs == {} and rec.request == CallRequest()


_times = st.none() | st.floats(0, 2e9, allow_nan=False)


@given(
    st.builds(
        LegRecord,
        role=st.sampled_from(["carrier", "agent"]),
        trunk=st.none() | st.text(max_size=8),
        worker=st.none() | st.integers(0, 64),
        invite_at=_times,
        ended_at=_times,
        sip_status=st.none() | st.integers(100, 699),
        sip_reason=st.none() | st.text(max_size=8),
        detection=st.dictionaries(
            st.sampled_from(["early", "answer", "hold"]),
            st.builds(
                detection,
                st.sampled_from(["human", "machine", "sit"]),
                decided_at_ms=st.integers(0, 10**6),
            ),
        ),
    )
)
def test_leg_json_round_trip(leg):
    assert LegRecord.from_json(leg.to_json()) == leg
