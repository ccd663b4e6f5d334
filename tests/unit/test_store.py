from dataclasses import replace

from sipbridge.store import CallEvent, CallRecord, SQLiteStore


def _rec(sid="OUT-1", status="queued", t=1000.0, **kw):
    return CallRecord(call_sid=sid, status=status, to_number="+14155552671",
                      from_number="+14155550100", created_at=t, last_updated=t, **kw)


def test_survives_reopen(tmp_path):
    db = tmp_path / "s.db"
    s = SQLiteStore(db)
    s.create(_rec(request={"metadata": {"a": "b"}}, polyai_call_id="P1"))
    s.add_event("OUT-1", CallEvent(1001.0, "status", {"to": "queued"}))
    s.close()
    s2 = SQLiteStore(db)
    rec = s2.get("OUT-1", now=1002.0)
    assert rec is not None and rec.request == {"metadata": {"a": "b"}}
    assert [e.kind for e in s2.events("OUT-1")] == ["status"]
    assert s2.find_by_polyai_call_id("P1").call_sid == "OUT-1"
    assert [r.call_sid for r in s2.by_status("queued")] == ["OUT-1"]
    assert s2.by_status("calling") == []


def test_retention_hides_then_purges(tmp_path):
    s = SQLiteStore(tmp_path / "s.db", retention_s=100)
    s.create(_rec())
    s.save(replace(_rec(), status="success", ended_at=2000.0))
    assert s.get("OUT-1", now=2099.0) is not None
    assert s.get("OUT-1", now=2101.0) is None
    assert s.purge_expired(now=2050.0) == 0
    assert s.purge_expired(now=2101.0) == 1
    assert s.events("OUT-1") == []


def test_unknown_is_none(tmp_path):
    s = SQLiteStore(tmp_path / "s.db")
    assert s.get("OUT-nope") is None and s.ping()
