"""Per-trunk codec order on an endpoint-wide setting.

pjsua codec priorities belong to the Endpoint, not to an account or a call. The worker
is single-threaded and pjsua builds the SDP offer inside ``makeCall`` (no ICE or STUN,
so no asynchronous media transport): the trunk's order is set just before its
``makeCall`` and pjsua's defaults are put back right after, so an offer from a peer
(an inbound INVITE, a re-INVITE) is answered from every codec the bridge has.
"""

from __future__ import annotations

from typing import Any

from sipbridge.sip.endpoint import DialRefused

# pjsua priorities: 0 disables a codec; higher is offered first (max 255).
_TOP = 254


def priorities(defaults: dict[str, int], order: tuple[str, ...]) -> dict[str, int]:
    """The priority of every pjsua codec id (``PCMU/8000/1``) for an offer of exactly
    ``order`` (``PCMU/8000`` ...), in that order; ``defaults`` when ``order`` is empty.
    :class:`DialRefused` names a codec this pjsua does not have."""
    if not order:
        return dict(defaults)
    out = dict.fromkeys(defaults, 0)
    for rank, want in enumerate(order):
        ids = [cid for cid in defaults if cid == want or cid.startswith(want + "/")]
        if not ids:
            raise DialRefused(f"codec {want} is not available in this pjsua build")
        for cid in ids:
            out[cid] = _TOP - rank
    return out


class CodecOrder:
    """Applies a leg's codec order to the Endpoint (only when it changes)."""

    def __init__(self, ep: Any) -> None:
        self.ep = ep
        self.defaults = {str(c.codecId): int(c.priority) for c in ep.codecEnum2()}
        self.current: tuple[str, ...] = ()

    def apply(self, order: tuple[str, ...]) -> None:
        order = tuple(order)
        if order == self.current:
            return
        want = priorities(self.defaults, order)
        for cid, prio in want.items():
            self.ep.codecSetPriority(cid, prio)
        self.current = order


__all__ = ["CodecOrder", "priorities"]
