"""A call leg inside a worker: one :class:`Leg` per ``pj.Call``, whatever its role.

Pure (no pjsua2 import: the pj objects a leg holds are typed ``Any``), so the timer
arithmetic is unit-tested on its own.

A leg is created by the worker's dial (carrier and agent legs, ``plan.role``) or by
:mod:`sipbridge.sip.inbound` (an INVITE we received, SIP-triggered mode), lives in
``Worker.legs`` (its only table) and is dropped from there at DISCONNECTED (or at
shutdown). The fields common to every leg belong to the worker; each sub-state object has
one owner, the only module that changes it:

- :class:`InboundState` (only on inbound legs): :mod:`sipbridge.sip.inbound`;
- :class:`PeerReplies` (what the peer answered): the worker's call-state callbacks;
- :class:`BridgeLink` (bridge partner, DTMF relay): :mod:`sipbridge.sip.mixer`;
- :class:`Listening` (tap, detection, Listen phase): :mod:`sipbridge.sip.detection`;
- :class:`RtpWatch` (media timeout): :mod:`sipbridge.sip.mediawatch`;
- ``dtmf_jobs`` (digits to send): :mod:`sipbridge.sip.dtmf`;
- ``sip_call_id`` (the dialog the packet guard lets through): :mod:`sipbridge.sip.guardlink`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sipbridge import ipc
from sipbridge.plan import DialPlan

if TYPE_CHECKING:
    from sipbridge.sip.tap import LegAnalysis, PhaseListener

# An account is shared by every leg with the same transport, SRTP use, credentials and
# session timers: (transport key, SRTP mode, (username, password, realm) or None,
# RFC 4028 (Session-Expires, Min-SE) or None for the sip-wide values).
# (transport kind, srtp, auth, session timers, next hop): sipbridge.sip.accounts
AccountKey = tuple[str, str, tuple[str, str, str] | None, tuple[int, int] | None, str]


@dataclass
class InboundState:
    """An INVITE we received, waiting for the supervisor's Respond."""

    deadline: float | None  # monotonic time by which a Respond is due (None: answered)
    provisional_sent: bool = False  # a 18x went out
    final_sent: bool = False  # a final response went out


@dataclass
class PeerReplies:
    """What the peer sent on this leg, for the ``ended`` event."""

    rx_any: bool = False  # did we ever receive a response from the peer
    answer_received: bool = False  # a 2xx to our INVITE arrived (pjsua may still refuse it)
    retry_after_s: float | None = None  # Retry-After of the last final non-2xx response
    remote_sdp: str = ""  # the last SDP the peer sent (for a negotiation failure text)


@dataclass
class BridgeLink:
    """The leg's place in a bridge."""

    partner: str | None = None  # the other leg of the bridge: its end ends this leg
    relay_to: str | None = None  # DTMF received here is relayed to this leg (RFC 4733)


@dataclass
class Listening:
    """Recipient detection and Listen phases on the leg's audio tap."""

    tap: Any = None  # FrameTap, lent by the mixer's tap pool
    tap_connected: bool = False
    analysis: LegAnalysis | None = None  # recipient detection (early / answer phases)
    listener: PhaseListener | None = None  # Listen: a later phase ("hold")
    repeat: Any = None  # Listen "repeat": a RepeatDetector over the IVR phase (looping menus)

    def wants_tap(self) -> bool:
        """Something still needs the tap (an early phase keeps it for the answer)."""
        if self.listener is not None and self.listener.active:
            return True
        if self.repeat is not None and self.repeat.done is None:
            return True
        a = self.analysis
        return a is not None and (a.active or a.phase == "early")


@dataclass
class RtpWatch:
    """Media timeout: the answered leg's audio is sendrecv (not on hold), the stream's RX
    packet count at the last check, when it last changed, when to check next."""

    live: bool = False
    audio_idx: int = -1
    rx_pkts: int = -1
    seen_at: float = 0.0
    check_at: float = 0.0


@dataclass
class DtmfJob:
    """A SendDtmf string being sent, step by step (see :mod:`sipbridge.sip.dtmf`)."""

    digits: str
    steps: list[tuple[str | None, float]]
    duration_ms: int
    index: int = 0
    next_at: float = 0.0


@dataclass
class Leg:
    plan: DialPlan
    call: Any  # pjbind.LegCall; Any because pj.Call is untyped
    started: float  # monotonic time of makeCall (or of the INVITE's arrival)
    acc_key: AccountKey | None = None
    inbound: InboundState | None = None  # only for an INVITE we received
    answered_at: float | None = None
    end_cause: ipc.EndCause | None = None  # decided locally before DISCONNECTED
    end_detail: str = ""  # the ended event's detail for a locally decided cause
    ended: bool = False
    sent_states: set[str] = field(default_factory=set)
    sip_call_id: str = ""  # known to the packet guard while the leg lives
    peer: PeerReplies = field(default_factory=PeerReplies)
    link: BridgeLink = field(default_factory=BridgeLink)
    listening: Listening = field(default_factory=Listening)
    rtp: RtpWatch = field(default_factory=RtpWatch)
    dtmf_jobs: deque[DtmfJob] = field(default_factory=deque)

    @property
    def leg_id(self) -> str:
        return self.plan.leg_id

    @property
    def is_agent(self) -> bool:
        """The agent side of a bridge: a dialled agent leg or an inbound one."""
        return self.plan.role == "agent" or self.inbound is not None

    @property
    def live(self) -> bool:
        """Not ended, and no end decided yet."""
        return not self.ended and self.end_cause is None

    def dial_times(self) -> tuple[float, float]:
        """(leg start, now) in monotonic time: reported with "trying" right after
        makeCall returned (sipbridge.dialstages)."""
        return self.started, time.monotonic()


def next_deadline(leg: Leg, media_timeout_s: float) -> tuple[float, ipc.EndCause] | None:
    """The leg's next own deadline and the cause it ends with then (None: none); for
    "media_timeout" the deadline is the next media check, which may end it."""
    if not leg.live:
        return None
    if leg.inbound is not None and leg.answered_at is None:
        deadline = leg.inbound.deadline
        return None if deadline is None else (deadline, "ring_timeout")
    if leg.answered_at is None:
        return leg.started + leg.plan.ring_timeout_s, "ring_timeout"
    ends = leg.answered_at + leg.plan.max_duration_s
    if leg.rtp.live and media_timeout_s > 0 and leg.rtp.check_at < ends:
        return leg.rtp.check_at, "media_timeout"
    return ends, "max_duration"


__all__ = [
    "AccountKey",
    "BridgeLink",
    "DtmfJob",
    "InboundState",
    "Leg",
    "Listening",
    "PeerReplies",
    "RtpWatch",
    "next_deadline",
]
