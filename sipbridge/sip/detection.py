"""Recipient detection and ``Listen`` phases on a leg's audio, in the worker.

A leg whose plan asks for detection gets a :class:`~sipbridge.sip.tap.FrameTap` (lent by
the mixer's tap pool) on its audio when media becomes active (183 early media or the
answer). The loop drains the tap in batches and feeds the frames to the leg's
:class:`~sipbridge.sip.tap.LegAnalysis` (phases "early", then "answer" with t = 0 at the
200 OK) and to a ``Listen`` phase's :class:`~sipbridge.sip.tap.PhaseListener` ("hold":
``sipbridge.media.hold.HoldListener``); what they find is reported as
``DetectionReport(phase=...)``. Once nothing needs the tap any more it is disconnected
(decided: stop paying for it), and at the leg's end it goes back to the pool.

Owns: every leg's :class:`~sipbridge.sip.leg.Listening`.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import pjsua2 as pj

from sipbridge import ipc
from sipbridge.holdcontrol import AGENT_HOLD_PHASE
from sipbridge.media.result import Detection as MediaDetection
from sipbridge.media.result import DetectionEvent
from sipbridge.sip.leg import Leg
from sipbridge.sip.menuwatch import MenuWatch
from sipbridge.sip.pjbind import pj_error_text
from sipbridge.sip.tap import LegAnalysis, PhaseListener

if TYPE_CHECKING:
    from sipbridge.sip.worker import Worker


class Detection:
    """Feeds each leg's tap to its analysis and listener (loop thread only)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.legs = worker.legs

    def listen(self, leg_id: str, phase: str, config: dict[str, Any]) -> None:
        """``Listen``: start a later analysis phase on the leg ("agent_hold": hold the
        leg's agent, :mod:`sipbridge.sip.agenthold`)."""
        if phase == AGENT_HOLD_PHASE:
            self.worker.agent_hold.command(leg_id)
            return
        leg = self.legs.get(leg_id)
        if leg is None or leg.ended:
            self.worker.log("warning", f"Listen for unknown leg {leg_id!r}")
            return
        ls = leg.listening
        if phase == "repeat" and config.get("mark"):
            self.mark_digits_sent(leg)  # a say step starts the script: the menu ends now
            return
        if phase == "repeat":
            # the IVR phase: is the menu heard before the digits heard again after them?
            # (after a repeat: watch again from the same menu, see menuwatch)
            old = ls.repeat
            ls.repeat = old.rearmed() if isinstance(old, MenuWatch) else MenuWatch()
            if not ls.tap_connected:
                self._connect_tap(leg, leg.call)
            return
        try:
            ls.listener = PhaseListener(phase, config)
        except Exception as e:
            self.worker.log("error", f"Listen {leg_id} phase {phase!r}: {e!r}")
            return
        if ls.tap is not None:
            ls.tap.frames.clear()  # the new phase starts now
        if not ls.tap_connected:
            self._connect_tap(leg, leg.call)

    def on_media(self, leg: Leg, call: Any) -> None:
        """Media became active: connect the tap if a phase wants the audio."""
        ls = leg.listening
        if ls.listener is not None and ls.listener.active:
            self._connect_tap(leg, call)
        if not leg.plan.detection:
            return
        if ls.analysis is None:
            ls.analysis = LegAnalysis(leg.plan.detection, leg.leg_id)
            phase = "answer" if leg.answered_at is not None else "early"
            started = ls.analysis.start_phase(phase)
            # No analysis wanted now: still tap if an answer phase will follow.
            if not started and (phase == "answer" or not leg.plan.detection.get("answer")):
                return
        self._connect_tap(leg, call)

    def on_answer(self, leg: Leg) -> None:
        """At answer: finish the early phase with the frames already queued, then start
        the answer phase (t = 0 at the 200 OK)."""
        ls = leg.listening
        if ls.analysis is None:
            if not (leg.plan.detection and leg.plan.detection.get("answer")):
                return
            ls.analysis = LegAnalysis(leg.plan.detection, leg.leg_id)
        self.pump(leg)
        if ls.tap is not None:
            ls.tap.frames.clear()
        if not ls.analysis.start_phase("answer") and not ls.wants_tap():
            self._disconnect_tap(leg)

    def on_end(self, leg: Leg) -> None:
        """The leg is ending: report what a Listen phase found in its last frames."""
        if leg.listening.listener is not None and leg.listening.listener.active:
            self.pump(leg)

    def pump_all(self) -> None:
        for leg in list(self.legs.values()):
            if leg.listening.tap_connected and not leg.ended:
                self.pump(leg)
        self.worker.agent_hold.pump()

    def pump(self, leg: Leg) -> None:
        """Feed a leg's queued frames to its detector/listener and report what they find."""
        ls = leg.listening
        tap = ls.tap
        if tap is None:
            return
        frames: list[bytes] = []
        while tap.frames:
            frames.append(tap.frames.popleft())
        if not frames:
            return
        found: list[tuple[str, Any]] = []
        analysis = ls.analysis
        if analysis is not None:
            found += [(analysis.phase or "", ev) for ev in analysis.feed(frames)]
        listener = ls.listener
        if listener is not None and listener.active:
            found += [(listener.phase, ev) for ev in listener.feed(frames)]
        if ls.repeat is not None and ls.repeat.done is None:
            found += self._feed_repeat(ls.repeat, frames)
        w = self.worker
        for phase, ev in found:
            w.send(
                ipc.DetectionReport(
                    leg_id=leg.leg_id,
                    call_sid=leg.plan.call_sid,
                    worker_id=w.worker_id,
                    ts=time.time(),
                    phase=phase,
                    kind=ev.kind,
                    detection=ev.detection,
                )
            )
        if not ls.wants_tap():
            self._disconnect_tap(leg)  # decided: stop paying for the tap

    @staticmethod
    def _feed_repeat(repeat: MenuWatch, frames: list[bytes]) -> list[tuple[str, Any]]:
        for data in frames:
            hit = repeat.feed(data)
            if hit is not None:
                det = MediaDetection(
                    "ivr",
                    hit.decided_ms,
                    ivr_hint=True,
                    reason=f"IVR menu repeated: audio heard at {hit.earlier_ms} ms came "
                    f"again after the digits (bit error rate {hit.ber:.2f})",
                )
                return [("repeat", DetectionEvent("decision", hit.decided_ms, det))]
        return []

    def mark_digits_sent(self, leg: Leg) -> None:
        """Digits were sent on the leg: what was heard so far is the menu to watch for.
        Only the first step of a script marks (a script of several steps sends several
        digit strings; what the IVR says between them is not the menu)."""
        repeat = leg.listening.repeat
        if repeat is not None and repeat.done is None and not repeat.marked:
            self.pump(leg)  # frames heard before the mark belong to the menu
            repeat.mark()

    def _connect_tap(self, leg: Leg, call: Any) -> None:
        ls = leg.listening
        try:
            aud = call.getAudioMedia(-1)
        except pj.Error:
            return  # no active audio yet
        if ls.tap is None:
            ls.tap = self.worker.mixer.take_tap()
        try:
            aud.startTransmit(ls.tap)
            ls.tap_connected = True
        except pj.Error as e:
            self.worker.log("warning", f"detection tap for {leg.leg_id}: {pj_error_text(e)}")

    def _disconnect_tap(self, leg: Leg) -> None:
        ls = leg.listening
        if not ls.tap_connected:
            return
        ls.tap_connected = False
        with contextlib.suppress(pj.Error):
            leg.call.getAudioMedia(-1).stopTransmit(ls.tap)
        ls.tap.frames.clear()

    def finish(self, leg: Leg) -> None:
        """The leg was DISCONNECTED: :meth:`release`, and close its analysis (writes the
        debug audio dump, if any)."""
        self.release(leg)
        if leg.listening.analysis is not None:
            leg.listening.analysis.close()

    def release(self, leg: Leg) -> None:
        """The leg ended: give its tap back to the pool."""
        ls = leg.listening
        tap = ls.tap
        if tap is not None:
            if ls.tap_connected and not leg.ended:
                # (an ended call's stream port left the bridge with its connections)
                with contextlib.suppress(pj.Error):
                    leg.call.getAudioMedia(-1).stopTransmit(tap)
            ls.tap_connected = False
            ls.tap = None
            self.worker.mixer.give_back_tap(tap)


__all__ = ["Detection"]
