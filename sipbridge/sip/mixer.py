"""The worker's conference bridge: bridges between legs, WAV players, the pool of
detection taps, and the cooling of audio ports before they are destroyed.

- Bridge (``BridgeLegs``, or a plan's ``bridge_with`` once both legs are CONFIRMED): the
  two calls' ``AudioMedia`` transmit to each other on the conference bridge (kept as
  "edges", re-connected on every media change). A plan with ``bridge_with`` is paired at
  dial time, so either leg's end ends the other (``bridged_bye``: BYE, or CANCEL before
  answer) even before the audio is joined. DTMF received on the agent leg is relayed to
  the carrier leg (:attr:`sipbridge.sip.leg.BridgeLink.relay_to`).
- Every call gets the null sound device's capture port (silence) as a transmitter:
  without any transmitter the conference bridge clocks a stream only now and then, and
  RFC 4733 digits queued after the stream went quiet were never sent.
- ``PlayAudio``: an ``AudioMediaPlayer`` (no loop) into the leg; ``onEof2`` sets a flag,
  the loop reports ``PlaybackDone`` and drops the player (never inside the callback).

Owns: the edges, the players, the tap pool, the cooling list, and every leg's
:class:`~sipbridge.sip.leg.BridgeLink`.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import pjsua2 as pj

from sipbridge import ipc
from sipbridge.sip.leg import Leg
from sipbridge.sip.pjbind import pj_error_text
from sipbridge.sip.tap import FrameTap

if TYPE_CHECKING:
    from sipbridge.sip.worker import Worker

# How long a disconnected audio port is kept before it is destroyed: the bridge applies
# queued operations on its next 20 ms tick; 0.5 s leaves a wide margin.
PORT_COOLING_S = 0.5


class Player(pj.AudioMediaPlayer):
    """A WAV player into one leg; ``onEof2`` only sets a flag (the loop reports it)."""

    def __init__(self, leg_id: str, call_sid: str, path: str) -> None:
        pj.AudioMediaPlayer.__init__(self)
        self.leg_id = leg_id
        self.call_sid = call_sid
        self.path = path
        self.eof = False

    def onEof2(self) -> None:
        # Media clock thread, possibly while this object is being torn down: never raise.
        with contextlib.suppress(BaseException):
            self.eof = True


class Mixer:
    """Audio connections of one worker's legs (loop thread only)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.legs = worker.legs
        # Audio connections between legs: (source leg, destination leg).
        self.edges: set[tuple[str, str]] = set()
        self.players: list[Player] = []
        # pjsua2 pitfall (PJSIP 2.14+): the conference bridge applies connect, disconnect
        # and remove-port operations later, on its clock thread. Destroying an audio port
        # frees its pjmedia port at once, so the bridge can still call into freed memory
        # (seen as SIGSEGV under load). Detection taps are therefore pooled and reused,
        # never destroyed while the worker runs; players are disconnected first and
        # destroyed only after the bridge has had time to apply that.
        self.spare_taps: list[FrameTap] = []
        self.all_taps: list[FrameTap] = []
        self.cooling: list[tuple[float, Any]] = []  # (destroy after, pj object)

    @property
    def busy(self) -> bool:
        """Players to watch or ports to destroy: the loop must not sleep long."""
        return bool(self.players or self.cooling)

    # ----------------------------------------------------------------- bridges
    def pair(self, a_id: str, b_id: str, connect: bool) -> None:
        """Make two legs a bridge: each one's end ends the other; the agent leg's DTMF is
        relayed to the carrier leg; with ``connect`` their audio is joined both ways."""
        a, b = self.legs.get(a_id), self.legs.get(b_id)
        if a is None or b is None:
            return
        a.link.partner, b.link.partner = b_id, a_id
        agent, carrier = (a, b) if a.is_agent else (b, a)
        if agent.is_agent:
            agent.link.relay_to = carrier.leg_id
        if connect:
            self.edges.add((a_id, b_id))
            self.edges.add((b_id, a_id))
            self.connect_edges(a_id)

    def bridge(self, carrier_id: str, agent_id: str) -> None:
        """``BridgeLegs``: join two live legs; DTMF flows agent -> carrier only."""
        carrier, agent = self.legs.get(carrier_id), self.legs.get(agent_id)
        if carrier is None or agent is None or carrier.ended or agent.ended:
            self.worker.log("warning", f"bridge {carrier_id!r} <-> {agent_id!r}: leg not live")
            return
        self.pair(carrier_id, agent_id, connect=True)
        agent.link.relay_to = carrier_id
        carrier.link.relay_to = None

    def answer_bridge(self, source_id: str, leg_id: str) -> None:
        """An inbound leg answered with ``media_from``: bridged, its DTMF relayed there."""
        self.pair(source_id, leg_id, connect=True)
        self.legs[source_id].link.relay_to = None
        self.legs[leg_id].link.relay_to = source_id

    def early_media(self, source_id: str, leg_id: str) -> None:
        """One way, before an answer: the leg hears ``source_id`` (e.g. its ringback)."""
        self.edges.add((source_id, leg_id))

    def maybe_auto_bridge(self, leg: Leg) -> None:
        """``bridge_with``: join the audio once both legs are answered."""
        other_id = leg.plan.bridge_with or leg.link.partner
        other = self.legs.get(other_id) if other_id else None
        if other is None or other.answered_at is None or leg.answered_at is None:
            return
        if not (leg.plan.bridge_with or other.plan.bridge_with):
            return
        if (leg.leg_id, other.leg_id) not in self.edges:
            self.pair(leg.leg_id, other.leg_id, connect=True)

    def connect_edges(self, leg_id: str) -> None:
        """(Re)connect every audio connection touching this leg whose two ends have
        active audio (called on media changes; connecting twice is harmless)."""
        for src_id, dst_id in list(self.edges):
            if leg_id not in (src_id, dst_id):
                continue
            src, dst = self.legs.get(src_id), self.legs.get(dst_id)
            if src is None or dst is None or src.ended or dst.ended:
                continue
            # No active audio on one side yet: retried on its media state.
            with contextlib.suppress(pj.Error):
                src.call.getAudioMedia(-1).startTransmit(dst.call.getAudioMedia(-1))

    def unlink(self, leg: Leg) -> None:
        """A leg ended: drop its audio connections and end its bridge partner (from the
        loop: this runs inside onCallState)."""
        leg_id = leg.leg_id
        self.edges = {e for e in self.edges if leg_id not in e}
        partner_id, leg.link.partner = leg.link.partner, None
        if not partner_id:
            return
        partner = self.legs.get(partner_id)
        if partner is None or partner.ended:
            return
        partner.link.partner = None
        if partner.link.relay_to == leg_id:
            partner.link.relay_to = None
        self.worker.soon.append(lambda: self.worker.hangup(partner_id, "bridged_bye"))

    def feed_silence(self, call: Any) -> None:
        """Connect the null sound device's capture port (silence) to the call.

        pjsua2 pitfall: the conference bridge only calls a port's put_frame every tick
        while something transmits to it; with no transmitter it sends NULL frames only
        now and then, so RFC 4733 digits queued by ``sendDtmf`` after the stream went
        quiet (VAD) are not sent (seen: digits after a 0.5 s pause never left). A
        permanent transmitter keeps the stream clocked.
        """
        with contextlib.suppress(pj.Error):
            self.worker.ep.audDevManager().getCaptureDevMedia().startTransmit(
                call.getAudioMedia(-1)
            )

    # ----------------------------------------------------------------- players
    def play(self, leg_id: str, path: str) -> None:
        leg = self.legs.get(leg_id)
        call_sid = leg.plan.call_sid if leg is not None else ""
        if leg is None or leg.ended:
            self._play_done(leg_id, call_sid, path, "leg is not live")
            return
        try:
            aud = leg.call.getAudioMedia(-1)
        except pj.Error as e:
            self._play_done(leg_id, call_sid, path, f"no active audio: {pj_error_text(e)}")
            return
        player = Player(leg_id, call_sid, path)
        try:
            player.createPlayer(path, pj.PJMEDIA_FILE_NO_LOOP)
            player.startTransmit(aud)
        except pj.Error as e:
            self.cool(player)
            self._play_done(leg_id, call_sid, path, f"cannot play: {pj_error_text(e)}")
            return
        self.players.append(player)

    def _play_done(self, leg_id: str, call_sid: str, path: str, error: str = "") -> None:
        self.worker.send(
            ipc.PlaybackDone(
                leg_id=leg_id,
                call_sid=call_sid,
                worker_id=self.worker.worker_id,
                ts=time.time(),
                path=path,
                error=error,
            )
        )

    def _drop_player(self, player: Player) -> None:
        self.players.remove(player)
        leg = self.legs.get(player.leg_id)
        if leg is not None and not leg.ended:
            with contextlib.suppress(pj.Error):
                player.stopTransmit(leg.call.getAudioMedia(-1))
        self.cool(player)  # destroyed later, outside callbacks (never in onEof2)

    def check_players(self) -> None:
        for player in list(self.players):
            if player.eof:
                self._drop_player(player)
                self._play_done(player.leg_id, player.call_sid, player.path)

    def end_players(self, leg_id: str) -> None:
        for player in list(self.players):
            if player.leg_id == leg_id:
                self._drop_player(player)
                self._play_done(
                    player.leg_id,
                    player.call_sid,
                    player.path,
                    "leg ended before the end of the file",
                )

    # ----------------------------------------------------------------- ports
    def take_tap(self) -> FrameTap:
        if self.spare_taps:
            tap = self.spare_taps.pop()
            tap.frames.clear()
            return tap
        tap = FrameTap(f"tap-{self.worker.worker_id}-{len(self.all_taps)}")
        self.all_taps.append(tap)
        return tap

    def give_back_tap(self, tap: FrameTap) -> None:
        """A disconnected tap goes back to the pool (see ``spare_taps``)."""
        tap.frames.clear()
        self.spare_taps.append(tap)

    def cool(self, obj: Any) -> None:
        """Destroy a disconnected audio port once the bridge has applied the disconnect."""
        self.cooling.append((time.monotonic() + PORT_COOLING_S, obj))

    def drop_cooled(self) -> None:
        now = time.monotonic()
        if self.cooling and self.cooling[0][0] <= now:
            self.cooling = [(t, o) for t, o in self.cooling if t > now]

    def drop_players(self) -> None:
        """At shutdown, after the legs: disconnect every player (destroyed by drop_ports)."""
        for player in list(self.players):
            self._drop_player(player)

    def drop_ports(self) -> None:
        """At shutdown, once the bridge has applied the calls' disconnects: drop every
        audio port (no variable may keep a port alive past libDestroy)."""
        self.spare_taps.clear()
        self.all_taps.clear()
        self.cooling.clear()


__all__ = ["PORT_COOLING_S", "Mixer", "Player"]
