"""The media timeout (``sip.media_timeout_s``): an answered leg that receives no RTP for
that long is hung up (cause ``media_timeout``; its bridge partner follows,
``bridged_bye``).

The leg's RTP receive counter is read (a stream-statistics read, ~1 µs) a few times per
``media_timeout_s``, so silence is noticed within 1.25 x ``media_timeout_s`` at worst. The
clock starts at the answer (early media may be silent) and restarts whenever the audio's
direction changes: a peer that holds the call (RFC 3264 8.4: ``a=sendonly`` or
``a=inactive``) or only receives is exempt while it does.

Owns: every leg's :class:`~sipbridge.sip.leg.RtpWatch`. The check's deadline is one of the
leg's timers (:func:`sipbridge.sip.leg.next_deadline`), run by the worker's loop.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import pjsua2 as pj

from sipbridge.sip.leg import Leg

if TYPE_CHECKING:
    from sipbridge.sip.worker import Worker

_CHECKS_PER_TIMEOUT = 4


class MediaWatch:
    """Media timeout checks of one worker's legs (loop thread only)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.timeout_s = worker.cfg.media_timeout_s

    def _check_s(self) -> float:
        return self.timeout_s / _CHECKS_PER_TIMEOUT

    @staticmethod
    def _rx_packets(leg: Leg) -> int:
        """RTP packets received on the leg's audio stream so far (-1: no stream)."""
        if leg.rtp.audio_idx < 0:
            return -1
        try:
            return int(leg.call.getStreamStat(leg.rtp.audio_idx).rtcp.rxStat.pkt)
        except Exception:
            return -1

    def _restart(self, leg: Leg, now: float) -> None:
        leg.rtp.rx_pkts = self._rx_packets(leg)
        leg.rtp.seen_at = now
        leg.rtp.check_at = now + self._check_s()

    def on_answer(self, leg: Leg) -> None:
        """The media timeout counts from the answer (early media may be silent)."""
        assert leg.answered_at is not None
        self._restart(leg, leg.answered_at)

    def on_media(self, leg: Leg, call: Any) -> None:
        """Note whether the peer should be sending RTP now: the audio stream is active
        and sendrecv. A peer that holds the call (pjsua then has the stream recvonly /
        inactive) or that only receives is exempt; the clock restarts on every change."""
        live, idx = False, -1
        with contextlib.suppress(Exception):
            # pjsua2 pitfall: keep the CallInfo referenced while reading its media
            # vector (``call.getInfo().media`` reads freed memory).
            ci = call.getInfo()
            for m in ci.media:
                if m.type == pj.PJMEDIA_TYPE_AUDIO:
                    idx = int(m.index)
                    live = (
                        m.status == pj.PJSUA_CALL_MEDIA_ACTIVE
                        and m.dir == pj.PJMEDIA_DIR_ENCODING_DECODING
                    )
                    break
        if live != leg.rtp.live or idx != leg.rtp.audio_idx:
            leg.rtp.live, leg.rtp.audio_idx = live, idx
            self._restart(leg, time.monotonic())

    def check(self, leg: Leg) -> None:
        """A media check is due: RTP since the last one restarts the clock; none for
        media_timeout_s ends the leg (its partner follows, ``bridged_bye``)."""
        now = time.monotonic()
        rtp = leg.rtp
        pkts = self._rx_packets(leg)
        if pkts != rtp.rx_pkts:
            rtp.rx_pkts, rtp.seen_at = pkts, now
        if now - rtp.seen_at >= self.timeout_s:
            leg.end_detail = f"no RTP received for {now - rtp.seen_at:.0f} s"
            self.worker.log("warning", f"{leg.leg_id}: {leg.end_detail}: media timeout")
            self.worker.hangup(leg.leg_id, "media_timeout")
            return
        rtp.check_at = min(now + self._check_s(), rtp.seen_at + self.timeout_s)


__all__ = ["MediaWatch"]
