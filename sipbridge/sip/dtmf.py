"""DTMF in a worker: sending digit strings, receiving digits, relaying them across a
bridge.

- ``SendDtmf``: digits are sent one by one (``CallSendDtmfParam``, RFC 2833 method, the
  given duration) from the loop against monotonic deadlines (``gap_ms``; ``w`` 0.5 s,
  ``W`` 1 s); ``DtmfSent`` when the string is done. Invalid characters are logged and
  skipped.
- DTMF in: RFC 4733 events (reported once, at their end, with their duration) and SIP
  INFO ``application/dtmf-relay`` come from pjsua's ``onDtmfEvent``; INFO
  ``application/dtmf`` is parsed here and answered 200 through pjsip's C API (ctypes),
  since pjsua2 cannot answer an in-dialog request.
- Relay: DTMF received on a leg with a :attr:`~sipbridge.sip.leg.BridgeLink.relay_to`
  (the agent leg of a bridge) is sent on that leg as RFC 4733 with the received duration
  (``DtmfReceived.relayed_to``), from the loop (never inside the callback).

Owns: every leg's ``dtmf_jobs``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import pjsua2 as pj

from sipbridge import ipc
from sipbridge.sip.agentleg import dtmf_steps, event_digit, parse_info_dtmf
from sipbridge.sip.leg import DtmfJob, Leg
from sipbridge.sip.pjbind import pj_error_text, respond_in_dialog
from sipbridge.sipmsg import header, split_message

if TYPE_CHECKING:
    from sipbridge.sip.worker import Worker

_DTMF_IS_END = 2  # PJMEDIA_STREAM_DTMF_IS_END (OnDtmfEventParam.flags)


class Dtmf:
    """DTMF sender and receiver of one worker (loop thread only)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.legs = worker.legs

    def queue(self, leg_id: str, digits: str, duration_ms: int = 160, gap_ms: int = 80) -> None:
        """``SendDtmf``: queue a DTMF string; :meth:`run` sends it digit by digit."""
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended:
            self.worker.log("warning", f"DTMF for unknown leg {leg_id!r}")
            return
        steps, invalid = dtmf_steps(digits, duration_ms, gap_ms)
        if invalid:
            self.worker.log("warning", f"DTMF {leg_id}: invalid characters {invalid!r} ignored")
        job = DtmfJob(digits, steps, int(duration_ms), next_at=time.monotonic())
        leg.dtmf_jobs.append(job)

    def _send_digit(self, leg: Leg, digit: str, duration_ms: int) -> None:
        if leg.ended:
            return
        prm = pj.CallSendDtmfParam()
        prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
        prm.duration = int(duration_ms)
        prm.digits = digit
        try:
            leg.call.sendDtmf(prm)
        except pj.Error as e:
            self.worker.log("warning", f"DTMF {leg.leg_id}: {pj_error_text(e)}")

    def run(self) -> None:
        """Send the digits whose time has come (never waits: monotonic deadlines)."""
        now = time.monotonic()
        w = self.worker
        for leg in list(self.legs.values()):
            while leg.dtmf_jobs and not leg.ended:
                job = leg.dtmf_jobs[0]
                if now < job.next_at:
                    break
                if job.index >= len(job.steps):
                    leg.dtmf_jobs.popleft()
                    w.detection.mark_digits_sent(leg)
                    w.send(
                        ipc.DtmfSent(
                            leg_id=leg.leg_id,
                            call_sid=leg.plan.call_sid,
                            worker_id=w.worker_id,
                            ts=time.time(),
                            digits=job.digits,
                        )
                    )
                    continue
                digit, wait_s = job.steps[job.index]
                job.index += 1
                floor = now
                if digit is not None:
                    self._send_digit(leg, digit, job.duration_ms)
                    # A late loop must not squash the tone: the next step (or DtmfSent,
                    # after which the call may be hung up) waits for its end at least.
                    floor = now + job.duration_ms / 1000
                # From the previous deadline, so steps do not drift with loop latency.
                job.next_at = max(job.next_at + wait_s, floor)

    def on_dtmf_event(self, leg_id: str, prm: Any) -> None:
        """pjsua2 callback: a digit received on a leg (RFC 4733 or SIP INFO dtmf-relay,
        parsed by pjsua)."""
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended:
            return
        flags = int(getattr(prm, "flags", 0) or 0)
        method = "info" if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc2833"
        # RFC 4733 events are reported at their start (flags 0), while updating
        # (IS_UPDATE) and at their end (IS_END, with the full duration): report the end.
        if method == "rfc2833" and not flags & _DTMF_IS_END:
            return
        digit = event_digit(str(prm.digit))
        if not digit:
            return
        self._received(leg, digit, int(prm.duration), method)

    def on_info(self, leg: Leg, rdata: Any, whole: str) -> None:
        """An in-dialog INFO (from onCallTsxState, which holds ``rdata``). pjsua itself
        parses ``application/dtmf-relay`` (answers it 200 and reports it through
        onDtmfEvent); ``application/dtmf`` is parsed and answered here (else pjsip answers
        500 "Unhandled by dialog usages")."""
        _start, headers, body = split_message(whole)
        ctype = header(headers, "content-type")
        if ctype.split(";", 1)[0].strip().lower() != "application/dtmf":
            return
        parsed = parse_info_dtmf(ctype, body)
        ok = respond_in_dialog(rdata, 200 if parsed is not None else 400)
        if not ok:
            self.worker.log("warning", f"could not answer an INFO on {leg.leg_id}")
        if parsed is not None:
            self._received(leg, parsed[0], parsed[1], "info")

    def _received(self, leg: Leg, digit: str, duration_ms: int, method: str) -> None:
        w = self.worker
        relay = leg.link.relay_to
        target = self.legs.get(relay) if relay else None
        if target is not None and not target.ended:
            dur = max(40, duration_ms or 160)
            w.soon.append(lambda: self._send_digit(target, digit, dur))
        else:
            relay = None
        w.send(
            ipc.DtmfReceived(
                leg_id=leg.leg_id,
                call_sid=leg.plan.call_sid,
                worker_id=w.worker_id,
                ts=time.time(),
                digit=digit,
                duration_ms=int(duration_ms),
                method=method,
                relayed_to=relay,
            )
        )


__all__ = ["Dtmf"]
