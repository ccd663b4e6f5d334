"""Hold on request from the agent, in the worker: listen to the carrier leg for a live
person while the agent hears nothing, then give the agent the call back with the speech
that woke the bridge.

How a hold starts (each becomes a :class:`~sipbridge.holdcontrol.HoldRequest`, handled on
the loop, never inside the pjsua callback that saw it):

* the agent's re-INVITE with ``a=sendonly`` / ``a=inactive``: pjsua answers it itself
  (RFC 3264 8.4: ``a=recvonly`` / ``a=inactive``); :meth:`AgentHold.on_request` only reads
  the offer's direction. A later sendrecv re-INVITE from the agent takes the call back;
* the agent's INFO ``application/vnd.sipbridge.control+json`` ``{"action": "hold"}``
  (``"resume"`` takes the call back), answered 200 / 400 / 409 from ``onCallTsxState``
  like the INFO DTMF (pjsip would answer 500 otherwise);
* the supervisor's ``Listen(carrier leg, "agent_hold")`` (the REST ``/hold``).

A session's states (:meth:`AgentHold._to` is the only setter; it logs old -> new)::

    off --request--> holding --person--> resuming --agent sendrecv--> catching_up
    catching_up --backlog gone--> done
    holding --agent takes the call back--> done
    any --a leg ended--> done

* holding: the carrier <-> agent audio is cut both ways (the carrier hears the null
  port's silence, the agent silence or, when it held with a re-INVITE, no RTP at all);
  a tap copies the carrier's audio to a :class:`~sipbridge.sip.tap.PhaseListener` "hold"
  (:class:`sipbridge.media.hold.HoldListener`), the last :data:`_KEEP_MS` of it kept;
* resuming: a person was decided. The agent -> carrier audio is joined again, a re-INVITE
  (``a=sendrecv``, header ``X-Sipbridge-Answered-By: human``) goes to the agent, and a
  :class:`~sipbridge.media.delayline.DelayLine` is filled with the carrier audio from the
  person's onset (minus :data:`_PREROLL_MS`);
* catching_up: the agent's stream sends again: a :class:`DelayPort` plays the delay line
  to the agent (tap frames keep coming in behind); pauses are shortened until the backlog
  is down to 60 ms at a pause, then the direct carrier -> agent audio replaces it.

Every change goes to the supervisor as :class:`~sipbridge.ipc.AgentHoldEvent` (it keeps
the escape hatch: a hold longer than the call's ``max_ivr_s`` ends the call).
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pjsua2 as pj

from sipbridge import ipc
from sipbridge.holdcontrol import (
    ANSWERED_BY_HEADER,
    Action,
    ControlError,
    HoldRequest,
    is_control_type,
    is_hold_offer,
    parse_control,
    sdp_direction,
    speech_onset_ms,
)
from sipbridge.media.delayline import DelayLine
from sipbridge.sip.leg import Leg
from sipbridge.sip.pjbind import pj_error_text, respond_in_dialog
from sipbridge.sip.sdp import sdp_of
from sipbridge.sip.tap import CLOCK_RATE_HZ, FAST_COPY, FRAME_MS, PhaseListener, pcm_port_format
from sipbridge.sipmsg import header, split_message

if TYPE_CHECKING:
    from sipbridge.sip.worker import Worker

# Carrier audio kept while holding (the delay line takes it from the person's onset).
_KEEP_MS = 4000
# Audio before the listener's speech onset also given to the agent: the VAD marks an
# onset after a soft first phoneme ("h", "s"; ~100 ms seen). Free when it is a pause:
# the delay line skips pause frames first.
_PREROLL_MS = 200
# If the hold listener's decision text has no onset: it decides ~700 ms into the speech.
_ONSET_FALLBACK_MS = 700
# The resume re-INVITE is retried while another INVITE transaction is in progress
# (RFC 3261 14.1: one at a time per dialog), for at most this long.
_REINVITE_RETRY_S = 3.0
_FRAME_BYTES = CLOCK_RATE_HZ * FRAME_MS // 1000 * 2
# The hold listener judges a speech segment after 700 ms of it here (800 ms for the IVR
# hold step): the agent, not a scripted flow, is waiting, and the person's first word must
# reach it within 1 s (~100 ms go to the tap batch, the re-INVITE and the lead-in). On the
# generated hold corpus (3 seeds: 54 person files, 30 with music, looping prompts, ringback
# and no person) 700 ms still gives 0 false persons and 0 misses, decided 698 ms (median)
# after the onset, max 814; 600 ms gave a false person.
_LISTENER_CONFIG = {"decide_after_ms": 700}


class DelayPort(pj.AudioMediaPort):
    """A source port on the conference bridge that plays a :class:`DelayLine`."""

    def __init__(self, name: str) -> None:
        pj.AudioMediaPort.__init__(self)
        self.line: DelayLine | None = None
        self._vec = pj.ByteVector(_FRAME_BYTES)
        self.createPort(name, pcm_port_format())

    def onFrameRequested(self, frame: Any) -> None:
        # pjmedia's clock thread; nothing may raise out of a director callback (see
        # sipbridge.sip.tap.FrameTap).
        try:
            line = self.line
            data = line.pop() if line is not None else None
            if data is None or len(data) != _FRAME_BYTES:
                frame.type = pj.PJMEDIA_FRAME_TYPE_NONE
                frame.size = 0
                return
            vec = self._vec
            begin = 0
            if FAST_COPY:  # libstdc++ vector: its first word is the data pointer
                begin = (ctypes.c_void_p * 2).from_address(int(vec.this))[0] or 0
            if begin:
                ctypes.memmove(begin, data, _FRAME_BYTES)
            else:
                vec = pj.ByteVector(data)
            frame.buf = vec
            frame.size = _FRAME_BYTES
            frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        except BaseException:
            pass

    def onFrameReceived(self, frame: Any) -> None:
        pass  # nothing is transmitted to this port


@dataclass
class HoldSession:
    carrier_id: str
    agent_id: str
    via: str
    started: float  # monotonic
    state: str = "off"
    tap: Any = None  # FrameTap lent by the mixer
    listener: PhaseListener | None = None
    kept: deque[bytes] = field(default_factory=lambda: deque(maxlen=_KEEP_MS // FRAME_MS))
    frames_fed: int = 0
    line: DelayLine | None = None
    port: DelayPort | None = None
    onset_ms: int = 0
    decided_ms: int = 0
    decided_at: float = 0.0  # monotonic
    reinvite_sent_at: float = 0.0
    reinvite_until: float = 0.0
    playing_at: float = 0.0
    history: list[str] = field(default_factory=list)


class AgentHold:
    """The agent holds of one worker, by carrier leg id (loop thread only)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.legs = worker.legs
        self.sessions: dict[str, HoldSession] = {}
        # pjsua2 pitfall (see Mixer.spare_taps): ports are reused, never destroyed
        # while the worker runs.
        self.spare_ports: list[DelayPort] = []
        self.all_ports: list[DelayPort] = []

    @property
    def active(self) -> bool:
        return bool(self.sessions)

    # ----------------------------------------------------------------- requests
    def on_request(self, leg: Leg, rdata: Any, whole: str) -> bool:
        """An in-dialog request on ``leg`` (inside onCallTsxState): note a hold /
        resume for the loop. True when the request was answered here (a control INFO)."""
        if not leg.is_agent:
            return False
        if whole.startswith("INVITE "):
            direction = sdp_direction(sdp_of(whole))
            if direction is None:
                return False  # no offer (RFC 3261 14.2: the offer comes in the ACK)
            action: Action = "hold" if is_hold_offer(direction) else "resume"
            # pjsua answers the re-INVITE itself (recvonly / inactive / sendrecv)
            if action == "hold" or self._session_of(leg.leg_id) is not None:
                self._later(HoldRequest(leg.leg_id, action, "reinvite"))
            return False
        if not whole.startswith("INFO "):
            return False
        _start, headers, body = split_message(whole)
        if not is_control_type(header(headers, "content-type")):
            return False
        try:
            action = parse_control(body)
        except ControlError as e:
            self.worker.log("warning", f"{leg.leg_id}: control INFO refused: {e}")
            respond_in_dialog(rdata, 400)
            return True
        if leg.link.partner is None:
            respond_in_dialog(rdata, 409)  # not bridged to a carrier leg
            return True
        if not respond_in_dialog(rdata, 200):
            self.worker.log("warning", f"could not answer a control INFO on {leg.leg_id}")
        self._later(HoldRequest(leg.leg_id, action, "info"))
        return True

    def _later(self, req: HoldRequest) -> None:
        self.worker.soon.append(lambda: self.apply(req))

    def command(self, leg_id: str) -> None:
        """``Listen(carrier leg, "agent_hold")`` from the supervisor (the REST API)."""
        self.apply(HoldRequest(leg_id, "hold", "api"))

    def apply(self, req: HoldRequest) -> None:
        pair = self._pair(req.leg_id)
        if isinstance(pair, str):
            self._refuse(req, pair)
            return
        carrier, agent = pair
        session = self.sessions.get(carrier.leg_id)
        if req.action == "resume":
            # A sendrecv re-INVITE only ends a hold started by a re-INVITE (else it is a
            # session refresh, RFC 4028, of an agent that held by INFO or API).
            if req.via == "reinvite" and session is not None and session.via != "reinvite":
                return
            if session is not None and session.state == "holding":
                self._event(carrier, "resumed", "agent", "the agent took the call back")
                self._finish(session, direct=True)
            return
        if session is not None:
            return  # already on hold (e.g. a re-INVITE refresh during the hold)
        self._start(carrier, agent, req.via)

    def _pair(self, leg_id: str) -> tuple[Leg, Leg] | str:
        """(carrier, agent) of a bridged, answered call, or why there is none."""
        leg = self.legs.get(leg_id)
        if leg is None or not leg.live:
            return f"leg {leg_id} is not live"
        other = self.legs.get(leg.link.partner or "")
        if other is None or not other.live:
            return "the call is not bridged to an agent"
        carrier, agent = (other, leg) if leg.is_agent else (leg, other)
        if carrier.answered_at is None or agent.answered_at is None:
            return "the call is not bridged yet (a leg is not answered)"
        return carrier, agent

    def _refuse(self, req: HoldRequest, why: str) -> None:
        leg = self.legs.get(req.leg_id)
        self.worker.log("warning", f"hold request on {req.leg_id} ({req.via}) refused: {why}")
        if leg is not None:
            self._event(leg, "refused", req.via, why)

    # ----------------------------------------------------------------- states
    def _to(self, s: HoldSession, state: str) -> None:
        if state != s.state:
            s.history.append(f"{s.state} -> {state}")
            self.worker.log(
                "info", f"agent hold {s.carrier_id} (via {s.via}): {s.state} -> {state}"
            )
            s.state = state

    def _start(self, carrier: Leg, agent: Leg, via: str) -> None:
        mixer = self.worker.mixer
        s = HoldSession(carrier.leg_id, agent.leg_id, via, time.monotonic())
        self.sessions[carrier.leg_id] = s
        self._cut(carrier, agent, both=True)
        s.listener = PhaseListener("hold", _LISTENER_CONFIG)
        s.tap = mixer.take_tap()
        try:
            carrier.call.getAudioMedia(-1).startTransmit(s.tap)
        except pj.Error as e:
            self.worker.log("warning", f"agent hold tap on {carrier.leg_id}: {pj_error_text(e)}")
        self._to(s, "holding")
        self._event(carrier, "holding", via)

    def _cut(self, carrier: Leg, agent: Leg, both: bool) -> None:
        """Stop carrier -> agent audio (and agent -> carrier with ``both``)."""
        mixer = self.worker.mixer
        pairs = [(carrier, agent)] + ([(agent, carrier)] if both else [])
        for src, dst in pairs:
            mixer.edges.discard((src.leg_id, dst.leg_id))
            with contextlib.suppress(pj.Error):
                src.call.getAudioMedia(-1).stopTransmit(dst.call.getAudioMedia(-1))

    def _join(self, src: Leg, dst: Leg) -> None:
        self.worker.mixer.edges.add((src.leg_id, dst.leg_id))
        self.worker.mixer.connect_edges(src.leg_id)

    def pump(self) -> None:
        """Loop: drain each session's tap into its listener or delay line."""
        for s in list(self.sessions.values()):
            carrier, agent = self.legs.get(s.carrier_id), self.legs.get(s.agent_id)
            if carrier is None or agent is None or not carrier.live or not agent.live:
                self._finish(s, direct=False)  # the call is ending: nothing to restore
                continue
            frames: list[bytes] = []
            tap = s.tap
            while tap is not None and tap.frames:
                frames.append(tap.frames.popleft())
            if s.state == "holding":
                self._listen(s, carrier, frames)
            elif s.line is not None:
                for f in frames:
                    s.line.push(f)
            if s.state == "resuming" and s.reinvite_sent_at == 0.0:
                self._reinvite(s, agent)
            if s.state == "resuming" and s.reinvite_sent_at < 0:
                self._finish(s, direct=True)  # no re-INVITE possible: join the audio
                continue
            if s.state == "catching_up" and s.line is not None and s.line.caught_up:
                self._event(carrier, "caught_up", "person", timings=self._timings(s))
                self._finish(s, direct=True)

    def _listen(self, s: HoldSession, carrier: Leg, frames: list[bytes]) -> None:
        listener = s.listener
        if listener is None:
            return
        s.kept.extend(frames)
        s.frames_fed += len(frames)
        w = self.worker
        for ev in listener.feed(frames):
            w.send(
                ipc.DetectionReport(
                    leg_id=carrier.leg_id,
                    call_sid=carrier.plan.call_sid,
                    worker_id=w.worker_id,
                    ts=time.time(),
                    phase="agent_hold",
                    kind=ev.kind,
                    detection=ev.detection,
                )
            )
            if ev.kind == "decision" and ev.detection.answered_by == "human":
                self._person(s, ev.detection.decided_at_ms, ev.detection.reason)
                return
        if not listener.active:
            # it gave up (its max_hold_ms) without a person: listen on; the supervisor's
            # escape hatch (max_ivr_s) bounds the hold
            s.listener = PhaseListener("hold", _LISTENER_CONFIG)

    def _person(self, s: HoldSession, decided_ms: int, reason: str) -> None:
        """A person spoke: queue their speech from its onset, give the agent the call back."""
        carrier, agent = self.legs[s.carrier_id], self.legs[s.agent_id]
        s.decided_at = time.monotonic()
        s.decided_ms = decided_ms
        s.onset_ms = speech_onset_ms(reason, decided_ms, _ONSET_FALLBACK_MS)
        # kept[-1] is the frame heard at frames_fed * 20 ms
        first = max(0, s.onset_ms - _PREROLL_MS) // FRAME_MS
        skip = max(0, len(s.kept) - (s.frames_fed - first))
        s.line = DelayLine(list(s.kept)[skip:])
        s.kept.clear()
        s.listener = None
        if s.port is None:
            s.port = self.spare_ports.pop() if self.spare_ports else self._new_port()
        s.port.line = s.line
        self._join(agent, carrier)  # the person hears the agent at once
        self._to(s, "resuming")
        s.reinvite_until = time.monotonic() + _REINVITE_RETRY_S
        self._reinvite(s, agent)
        self._event(carrier, "resumed", "person", timings=self._timings(s))
        # The delay port goes on the agent once the re-INVITE's answer is applied
        # (on_media): pjsua may re-create the stream then, and frames played to it
        # meanwhile would be lost.

    def _new_port(self) -> DelayPort:
        port = DelayPort(f"delay-{self.worker.worker_id}-{len(self.all_ports)}")
        self.all_ports.append(port)
        return port

    def _reinvite(self, s: HoldSession, agent: Leg) -> None:
        """re-INVITE the agent back to sendrecv, saying a person answered."""
        prm = pj.CallOpParam(True)
        prm.opt.flag = pj.PJSUA_CALL_UNHOLD
        h = pj.SipHeader()
        h.hName = ANSWERED_BY_HEADER
        h.hValue = "human"
        prm.txOption.headers.append(h)
        try:
            agent.call.reinvite(prm)
        except pj.Error as e:
            if time.monotonic() >= s.reinvite_until:
                s.reinvite_sent_at = -1.0  # give up; the delay port still plays if it can
                self.worker.log("warning", f"resume re-INVITE {agent.leg_id}: {pj_error_text(e)}")
            return  # retried on the next pump
        s.reinvite_sent_at = time.monotonic()

    def on_media(self, leg: Leg) -> None:
        """Media changed on a leg (its audio port may be new): keep the delay port on the
        agent once its stream sends (after the resume re-INVITE)."""
        for s in self.sessions.values():
            if leg.leg_id == s.agent_id and s.state in ("resuming", "catching_up"):
                if leg.rtp.live and s.reinvite_sent_at > 0:
                    self._play(s, leg)
            elif leg.leg_id == s.carrier_id and s.tap is not None:
                with contextlib.suppress(pj.Error):
                    leg.call.getAudioMedia(-1).startTransmit(s.tap)

    def _play(self, s: HoldSession, agent: Leg) -> None:
        if s.port is None:
            return
        try:
            s.port.startTransmit(agent.call.getAudioMedia(-1))
        except pj.Error as e:
            self.worker.log("warning", f"delay port to {agent.leg_id}: {pj_error_text(e)}")
            return
        if s.playing_at == 0.0:
            s.playing_at = time.monotonic()
        self._to(s, "catching_up")

    def _finish(self, s: HoldSession, direct: bool) -> None:
        """End the session; with ``direct`` the carrier and agent hear each other again."""
        self.sessions.pop(s.carrier_id, None)
        carrier, agent = self.legs.get(s.carrier_id), self.legs.get(s.agent_id)
        if s.port is not None:
            if agent is not None and not agent.ended:
                with contextlib.suppress(pj.Error):
                    s.port.stopTransmit(agent.call.getAudioMedia(-1))
            s.port.line = None
            self.spare_ports.append(s.port)
            s.port = None
        if s.line is not None:
            s.line.clear()
        if s.tap is not None:
            if carrier is not None and not carrier.ended:
                with contextlib.suppress(pj.Error):
                    carrier.call.getAudioMedia(-1).stopTransmit(s.tap)
            self.worker.mixer.give_back_tap(s.tap)
            s.tap = None
        if direct and carrier is not None and agent is not None:
            self._join(carrier, agent)
            self._join(agent, carrier)
        self._to(s, "done")

    # ----------------------------------------------------------------- reports
    @staticmethod
    def _timings(s: HoldSession) -> dict[str, int]:
        def ms(a: float, b: float) -> int:
            return round((a - b) * 1000) if a > 0 and b > 0 else -1

        t: dict[str, int] = {
            "hold_ms": int((time.monotonic() - s.started) * 1000),
            "onset_ms": s.onset_ms,
            "decided_ms": s.decided_ms,
        }
        if s.line is not None:
            t.update(
                buffered_ms=s.line.initial_ms,
                skipped_ms=s.line.skipped * FRAME_MS,
                underrun_ms=s.line.underruns * FRAME_MS,
            )
        if s.playing_at:
            t["decision_to_audio_ms"] = ms(s.playing_at, s.decided_at)
            t["catch_up_ms"] = ms(time.monotonic(), s.playing_at)
        return t

    def _event(
        self,
        leg: Leg,
        state: str,
        via: str,
        detail: str = "",
        timings: dict[str, int] | None = None,
    ) -> None:
        w = self.worker
        w.send(
            ipc.AgentHoldEvent(
                leg_id=leg.leg_id,
                call_sid=leg.plan.call_sid,
                worker_id=w.worker_id,
                ts=time.time(),
                state=state,
                via=via,
                detail=detail,
                timings=dict(timings or {}),
            )
        )

    def _session_of(self, leg_id: str) -> HoldSession | None:
        for s in self.sessions.values():
            if leg_id in (s.carrier_id, s.agent_id):
                return s
        return None

    def drop_ports(self) -> None:
        """At shutdown (after the calls): drop every port."""
        self.sessions.clear()
        self.spare_ports.clear()
        self.all_ports.clear()


__all__ = ["AgentHold", "DelayPort", "HoldSession"]
