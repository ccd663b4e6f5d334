"""The SIP engine (worker pool + pjsua2 workers) against SIPp UAS scenarios on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from typing import Any

import pytest

from sipbridge.devtools.sipp import SipMessage, SippUas
from sipbridge.plan import DialPlan
from sipbridge.sip.pool import PoolFull, WorkerPool
from tests.doubles import EventRecorder as Recorder
from tests.integration.harness import CALLEE, CALLER, SippHarness, run, sip_cfg, with_pool

pytestmark = pytest.mark.integration


def plan(
    uas: SippUas,
    leg_id: str,
    *,
    ring_timeout_s: float = 10.0,
    max_duration_s: float = 30.0,
    headers: tuple[tuple[str, str], ...] = (),
    request_uri: str | None = None,
) -> DialPlan:
    ruri = request_uri or f"sip:{CALLEE}@{uas.uri_hostport};transport=udp"
    return DialPlan(
        call_sid=leg_id.split("/")[0],
        leg_id=leg_id,
        trunk="sipp",
        request_uri=ruri,
        from_uri=f"<sip:{CALLER}@127.0.0.1>",
        to_uri=f"<sip:{CALLEE}@{uas.uri_hostport}>",
        headers=headers,
        ring_timeout_s=ring_timeout_s,
        max_duration_s=max_duration_s,
    )


def invites(uas: SippUas) -> list[SipMessage]:
    return uas.received("INVITE")


# --------------------------------------------------------------------------- tests


def test_answer_headers_and_local_hangup(h: SippHarness) -> None:
    uas = h.sipp("uas_answer_wait_bye.xml")
    hdrs = (("X-Call-Sid", "OUT-1234"), ("X-Customer-Ref", "a b;c=d"), ("P-Test", "1"))

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas, "c1/b1", headers=hdrs))
        ans = await rec.state("c1/b1", "answered")
        assert ans.sip_status == 200 and ans.sip_call_id
        inv = await uas.async_wait_for(lambda m: m.method == "INVITE", 2)
        assert inv.request_uri == f"sip:{CALLEE}@{uas.uri_hostport};transport=udp"
        assert CALLER in (inv.header("From") or "")
        assert CALLEE in (inv.header("to") or "")
        for name, value in hdrs:
            assert inv.header(name) == value
        assert inv.call_id == ans.sip_call_id
        assert pool.hangup("c1/b1") is True
        end = await rec.state("c1/b1", "ended")
        assert (end.cause, end.answered) == ("local_hangup", True)
        await uas.async_wait_for(lambda m: m.direction == "received" and m.method == "BYE", 2)
        assert rec.states("c1/b1") == ["trying", "ringing", "answered", "ended"]
        assert pool.hangup("c1/b1") is False  # already ended
        assert pool.free_slots() == pool.capacity() == 8

    run(with_pool(body))


@pytest.mark.parametrize(
    ("scenario", "status"),
    [("uas_busy.xml", 486), ("uas_not_found.xml", 404), ("uas_unavailable.xml", 503)],
)
def test_remote_final_failure(h: SippHarness, scenario: str, status: int) -> None:
    uas = h.sipp(scenario)

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas, "c2/b1"))
        end = await rec.state("c2/b1", "ended")
        assert (end.cause, end.sip_status, end.answered) == ("remote_final", status, False)
        assert rec.states("c2/b1") == ["trying", "ended"]
        assert len(rec.ended("c2/b1")) == 1
        # RFC 3261 17.1.1.3: the client ACKs a non-2xx final response.
        await uas.async_wait_for(lambda m: m.direction == "received" and m.method == "ACK", 2)

    run(with_pool(body))


def test_ring_timeout_sends_cancel(h: SippHarness) -> None:
    uas = h.sipp("uas_ring_no_answer.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        t0 = time.monotonic()
        pool.dial(plan(uas, "c3/b1", ring_timeout_s=1.5))
        await rec.state("c3/b1", "ringing")
        end = await rec.state("c3/b1", "ended", timeout=6)
        elapsed = time.monotonic() - t0
        assert (end.cause, end.sip_status, end.answered) == ("ring_timeout", 487, False)
        assert 1.4 <= elapsed < 3.5, elapsed
        await uas.async_wait_for(lambda m: m.direction == "received" and m.method == "CANCEL", 2)
        assert rec.states("c3/b1") == ["trying", "ringing", "ended"]

    run(with_pool(body))


def test_max_duration_sends_bye(h: SippHarness) -> None:
    uas = h.sipp("uas_answer_wait_bye.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas, "c4/b1", max_duration_s=1.0))
        ans = await rec.state("c4/b1", "answered")
        end = await rec.state("c4/b1", "ended", timeout=5)
        assert (end.cause, end.answered) == ("max_duration", True)
        assert 0.9 <= end.ts - ans.ts < 3.0
        await uas.async_wait_for(lambda m: m.direction == "received" and m.method == "BYE", 2)

    run(with_pool(body))


def test_remote_bye(h: SippHarness) -> None:
    uas = h.sipp("uas_answer_then_bye.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas, "c5/b1"))
        end = await rec.state("c5/b1", "ended", timeout=5)
        assert (end.cause, end.answered) == ("remote_bye", True)
        assert rec.states("c5/b1") == ["trying", "ringing", "answered", "ended"]
        # pjsua answered SIPp's BYE with 200 (RFC 3261 15.1.2).
        await uas.async_wait_for(
            lambda m: m.direction == "received" and m.status == 200 and m.method == "BYE", 2
        )

    run(with_pool(body))


def test_early_media_then_answer(h: SippHarness) -> None:
    uas = h.sipp("uas_early_media_answer.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas, "c6/b1"))
        early = await rec.state("c6/b1", "early")
        assert early.sip_status == 183
        await rec.state("c6/b1", "answered")
        assert pool.hangup("c6/b1")
        end = await rec.state("c6/b1", "ended")
        assert end.cause == "local_hangup"
        assert rec.states("c6/b1") == ["trying", "early", "answered", "ended"]

    run(with_pool(body))


def test_dial_error_bad_uri(h: SippHarness) -> None:
    uas = h.sipp("uas_answer_wait_bye.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas, "c7/b1", request_uri="this is not a uri"))
        end = await rec.state("c7/b1", "ended")
        assert end.cause == "dial_error" and end.detail
        assert pool.free_slots() == 8

    run(with_pool(body))


def test_concurrent_calls_span_workers(h: SippHarness) -> None:
    uas = h.sipp("uas_answer_wait_bye.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        legs = [f"c8-{i}/b1" for i in range(6)]
        used = {pool.dial(plan(uas, leg)) for leg in legs}
        assert used == {0, 1}
        answered = await asyncio.gather(*(rec.state(leg, "answered", 8) for leg in legs))
        assert {e.worker_id for e in answered} == {0, 1}
        assert len({e.sip_call_id for e in answered}) == 6
        assert pool.free_slots() == 2
        assert len(invites(uas)) == 6
        for leg in legs:
            assert pool.hangup(leg)
        ends = await asyncio.gather(*(rec.state(leg, "ended", 8) for leg in legs))
        assert {e.cause for e in ends} == {"local_hangup"}
        assert pool.free_slots() == 8

    run(with_pool(body))


def test_pool_full(h: SippHarness) -> None:
    uas = h.sipp("uas_answer_wait_bye.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        legs = [f"c9-{i}/b1" for i in range(8)]
        for leg in legs:
            pool.dial(plan(uas, leg))
        await asyncio.gather(*(rec.state(leg, "answered", 8) for leg in legs))
        assert pool.free_slots() == 0
        with pytest.raises(PoolFull):
            pool.dial(plan(uas, "c9-8/b1"))
        with pytest.raises(PoolFull):
            pool.dial(plan(uas, "c9-9/b1"), prefer_worker=1)
        # Ending one leg frees a slot on its worker.
        assert pool.hangup(legs[0])
        first = await rec.state(legs[0], "ended")
        assert pool.free_slots() == 1
        assert pool.dial(plan(uas, "c9-10/b1")) == first.worker_id
        await rec.state("c9-10/b1", "answered")
        # The rest are hung up by stop(): each still gets exactly one ended.

    rec_pool = run(with_pool(body))
    assert rec_pool.free_slots() == 0  # stopped


def test_worker_death_is_reported_and_worker_restarted(h: SippHarness) -> None:
    uas = h.sipp("uas_answer_wait_bye.xml")

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        port0 = pool.worker_ports()[0]
        pid0 = pool.worker_pid(0)
        assert pid0 is not None
        for leg in ("c10/b1", "c10/b2"):
            assert pool.dial(plan(uas, leg), prefer_worker=0) == 0
        pool.dial(plan(uas, "c11/b1"), prefer_worker=1)
        for leg in ("c10/b1", "c10/b2", "c11/b1"):
            await rec.state(leg, "answered")
        os.kill(pid0, signal.SIGKILL)
        for leg in ("c10/b1", "c10/b2"):
            end = await rec.state(leg, "ended")
            assert end.cause == "worker_died" and end.worker_id == 0
            assert "exited with code -9" in end.detail
        assert rec.ended("c11/b1") == []  # the other worker's leg is untouched

        deadline = time.monotonic() + 10
        while pool.free_slots() < 7:  # worker 0 back (4) + worker 1 (3)
            assert time.monotonic() < deadline, "worker 0 was not restarted"
            await asyncio.sleep(0.05)
        assert pool.worker_pid(0) not in (None, pid0)
        assert pool.worker_ports()[0] == port0  # same SIP port after restart
        assert pool.dial(plan(uas, "c12/b1"), prefer_worker=0) == 0
        await rec.state("c12/b1", "answered")
        assert pool.hangup("c12/b1")
        assert (await rec.state("c12/b1", "ended")).cause == "local_hangup"

    run(with_pool(body))


def test_stop_hangs_up_live_legs(h: SippHarness) -> None:
    uas = h.sipp("uas_answer_wait_bye.xml")
    recorded: dict[str, Any] = {}

    async def body(pool: WorkerPool, rec: Recorder) -> None:
        pool.dial(plan(uas, "c13/b1"))
        await rec.state("c13/b1", "answered")
        recorded["rec"] = rec

    run(with_pool(body))
    rec = recorded["rec"]
    ends = rec.ended("c13/b1")
    assert len(ends) == 1 and ends[0].cause == "local_hangup" and ends[0].answered
    uas.wait_for(lambda m: m.direction == "received" and m.method == "BYE", 2)


def test_transport_error_tcp_connection_refused(h: SippHarness) -> None:
    """A TCP connect that is refused ends the leg as transport_error (no SIP response)."""
    from sipbridge.devtools.ports import free_port

    cfg = sip_cfg(workers=1).model_copy(update={"transport": "tcp"})
    dead = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"

    async def go() -> None:
        rec = Recorder()
        pool = WorkerPool(cfg, rec)
        await pool.start()
        try:
            p = DialPlan(
                call_sid="c14",
                leg_id="c14/b1",
                trunk="dead",
                request_uri=f"sip:{CALLEE}@{dead};transport=tcp",
                from_uri=f"<sip:{CALLER}@127.0.0.1>",
                to_uri=f"<sip:{CALLEE}@{dead}>",
                headers=(),
                ring_timeout_s=10,
                max_duration_s=10,
                transport="tcp",
            )
            pool.dial(p)
            end = await rec.state("c14/b1", "ended", timeout=8)
            assert end.cause == "transport_error", end
            assert end.sip_status in (408, 503), end
        finally:
            await pool.stop()
        assert pool.exit_codes == {0: 0}

    run(go())
