"""What a SIP worker does with each request it receives, before pjsip's transaction layer
sees it: pass it on, drop it silently, or answer it statelessly. Pure logic (no pjsua2):
:mod:`sipbridge.sip.guard` feeds it the raw bytes pjsip received and acts on the verdict.

Why a request is dropped (each a way one datagram or a flood could take a worker down or
starve it; see README "Security"):

- more messages than a token bucket allows: a message of one of this worker's calls
  (its Call-ID is live: in-dialog requests and responses) against that call's bucket,
  any other against its source IP's (bounded tables, least recently seen forgotten
  first). Per call, not per source, for our own calls: a carrier's SBC is one source
  for every call it carries (at 20 calls a second, 100+ messages a second), while a peer
  that loops on one call (a 2xx retransmitted on every ACK) is held to that call's
  budget;
- unreadable, oversize or missing/repeated mandatory headers (RFC 3261 8.1.1);
- a top Via whose transport is not the one the request came in on, or with ``maddr``
  (RFC 3261 18.2.2 would send the response to that address, resolving a host name on
  the worker's only thread);
- bodies known to abort pjsua 2.15.1: an INFO ``application/dtmf-relay`` whose first line
  is not followed by CRLF (:func:`sipbridge.sipmsg.dtmf_relay_crashes_pjsua`), SDP with
  absurd lines;
- an out-of-dialog request other than INVITE, OPTIONS, ACK and CANCEL;
- an in-dialog request (To tag, RFC 3261 12.2.2) for a Call-ID this worker has no call
  for (recently ended calls count for a while, so retransmitted BYEs get their answer).

Out-of-dialog INVITEs are answered statelessly before pjsua creates a call (no call slot,
no media sockets): 403 from a source outside ``sip.inbound_allow``, 486 when the worker
has no free slot, 503 while it shuts down, 488 for an unusable SDP offer.
"""

from __future__ import annotations

import enum
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sipbridge.limits import TokenBucket
from sipbridge.sip.agentleg import source_allowed
from sipbridge.sipmsg import SipParseError, dtmf_relay_crashes_pjsua, parse_request, sdp_problem

# The largest message pjsip reads into one rdata (PJSIP_MAX_PKT_LEN in the wheel).
MAX_MESSAGE_BYTES = 4000
# Out-of-dialog methods passed on. OPTIONS: carriers' trunk keep-alive pings (pjsua
# answers 200). ACK and CANCEL match transactions of INVITEs that were passed.
_OUT_OF_DIALOG = frozenset({"INVITE", "OPTIONS", "ACK", "CANCEL"})
# Methods that may carry an SDP offer or answer (RFC 3264, RFC 3311).
_SDP_METHODS = frozenset({"INVITE", "ACK", "UPDATE", "PRACK"})
# An ended call's Call-ID is still known this long: retransmitted BYE / ACK are answered
# by pjsip's transactions for 64*T1 = 32 s (RFC 3261 17.2.2 Timer J).
DIALOG_LINGER_S = 34.0
_MAX_SOURCES = 4096
_MAX_LINGERING = 4096
# The Call-ID header's value (compact form "i", RFC 3261 20.8), read before any parsing so
# that a flood is counted cheaply.
_CALL_ID_RE = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]{1,256})", re.IGNORECASE)


def call_id_of(raw: bytes) -> str:
    """The Call-ID of a raw SIP message ('' when none is found)."""
    m = _CALL_ID_RE.search(raw, 0, MAX_MESSAGE_BYTES)
    return m.group(1).strip().decode("utf-8", "replace") if m else ""


class Action(enum.Enum):
    PASS = "pass"
    DROP = "drop"
    RESPOND = "respond"  # a stateless final response, then drop


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str  # short, for counters and logs: "rate", "malformed", "via", ...
    status: int = 0  # RESPOND: the final response code

    @property
    def passes(self) -> bool:
        return self.action is Action.PASS


PASS = Verdict(Action.PASS, "ok")


class SourceLimiter:
    """A :class:`~sipbridge.limits.TokenBucket` per source IP (``rate_per_s`` sustained,
    ``burst`` at once). At most ``max_sources`` buckets are kept; the least recently seen
    is forgotten first (a new source starts full, so forgetting only lets a source in)."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        max_sources: int = _MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_sources = max_sources
        self.clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, source_ip: str) -> bool:
        b = self._buckets.get(source_ip)
        if b is None:
            b = TokenBucket(self.rate_per_s, self.burst, self.clock)
            self._buckets[source_ip] = b
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(source_ip)
        return b.try_take()

    def __len__(self) -> int:
        return len(self._buckets)


class KnownDialogs:
    """Call-IDs of this worker's calls: live ones, and ended ones for ``linger_s``."""

    def __init__(
        self,
        linger_s: float = DIALOG_LINGER_S,
        max_lingering: int = _MAX_LINGERING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.live: dict[str, int] = {}  # Call-ID -> number of legs using it
        self.ended: OrderedDict[str, float] = OrderedDict()  # Call-ID -> forget after
        self.linger_s = linger_s
        self.max_lingering = max_lingering
        self.clock = clock

    def add(self, call_id: str) -> None:
        if call_id:
            self.live[call_id] = self.live.get(call_id, 0) + 1
            self.ended.pop(call_id, None)

    def end(self, call_id: str) -> None:
        n = self.live.get(call_id, 0)
        if n > 1:
            self.live[call_id] = n - 1
            return
        self.live.pop(call_id, None)
        if call_id:
            self.ended[call_id] = self.clock() + self.linger_s
            self.ended.move_to_end(call_id)
            while len(self.ended) > self.max_lingering:
                self.ended.popitem(last=False)

    def __contains__(self, call_id: object) -> bool:
        if call_id in self.live:
            return True
        now = self.clock()
        while self.ended:
            _first, until = next(iter(self.ended.items()))
            if until > now:
                break
            self.ended.popitem(last=False)
        return call_id in self.ended


@dataclass
class RxPolicy:
    """The decision for one received request (see the module docstring)."""

    inbound_allow: list[str]
    limiter: SourceLimiter  # per source IP, for messages not of our own calls
    # Per Call-ID, for messages of our own calls (default: the same numbers as ``limiter``).
    dialog_limiter: SourceLimiter | None = None
    dialogs: KnownDialogs = field(default_factory=KnownDialogs)
    max_message_bytes: int = MAX_MESSAGE_BYTES
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        if self.dialog_limiter is None:
            self.dialog_limiter = SourceLimiter(self.limiter.rate_per_s, self.limiter.burst)

    def check_rate(self, raw: bytes, source_ip: str) -> Verdict | None:
        """The rate limit alone (requests and responses): a DROP verdict, or None. A
        message of a live or recently ended call of ours counts against that call's
        budget, any other against its source's."""
        call_id = call_id_of(raw)
        if call_id and call_id in self.dialogs:
            if (self.dialog_limiter or self.limiter).allow(call_id):
                return None
            return self._count(Verdict(Action.DROP, "dialog_rate"))
        if self.limiter.allow(source_ip):
            return None
        return self._count(Verdict(Action.DROP, "rate"))

    def decide(
        self, raw: bytes, source_ip: str, transport: str, accepting: Callable[[], str | None]
    ) -> Verdict:
        """``transport``: the receiving transport ("udp", "tcp", "tls"). ``accepting``:
        None when the worker can take a new inbound call, else why not ("full",
        "stopping"); called only for an INVITE that would otherwise pass."""
        limited = self.check_rate(raw, source_ip)
        if limited is not None:
            return limited
        return self._count(self._decide(raw, source_ip, transport, accepting))

    def _count(self, v: Verdict) -> Verdict:
        self.counts[v.reason if v.action is not Action.PASS else "pass"] += 1
        return v

    def _decide(
        self, raw: bytes, source_ip: str, transport: str, accepting: Callable[[], str | None]
    ) -> Verdict:
        if len(raw) > self.max_message_bytes:
            return Verdict(Action.DROP, "oversize")
        try:
            req = parse_request(raw)
        except SipParseError:
            return Verdict(Action.DROP, "malformed")
        if req.cseq_method != req.method and not (req.method == "ACK" and req.cseq_method == "ACK"):
            return Verdict(Action.DROP, "malformed")
        # RFC 3261 18.2.2: a Via naming another transport or a maddr would make pjsip
        # answer somewhere else than where the request came from.
        if req.via.transport != transport.upper() or "maddr" in req.via.params:
            return Verdict(Action.DROP, "via")
        if req.in_dialog:
            if req.call_id not in self.dialogs:
                return Verdict(Action.DROP, "unknown_dialog")
        elif req.method not in _OUT_OF_DIALOG:
            return Verdict(Action.DROP, "method")
        if req.method == "INVITE" and not req.in_dialog:
            refused = self._new_call_refusal(source_ip, accepting)
            if refused is not None:
                return refused
        if (
            req.method in _SDP_METHODS
            and req.body
            and (req.content_type != "application/sdp" or sdp_problem(req.body))
        ):
            # A new call, or an offer inside a live one (re-INVITE, RFC 3261 14.2; UPDATE,
            # RFC 3311 5.2), is refused with 488 and the session goes on unchanged: a
            # silently dropped offer would be retransmitted until Timer B and the carrier
            # would then end the call (RFC 3261 14.1). An ACK or PRACK cannot be refused.
            if req.method in ("INVITE", "UPDATE"):
                return Verdict(Action.RESPOND, "bad_sdp", 488)
            return Verdict(Action.DROP, "bad_sdp")
        if req.content_type == "application/dtmf-relay" and dtmf_relay_crashes_pjsua(req.body):
            return Verdict(Action.DROP, "bad_dtmf_relay")
        return PASS

    def _new_call_refusal(
        self, source_ip: str, accepting: Callable[[], str | None]
    ) -> Verdict | None:
        if not source_allowed(source_ip, self.inbound_allow):
            return Verdict(Action.RESPOND, "forbidden_source", 403)
        why = accepting()
        if why == "stopping":
            return Verdict(Action.RESPOND, "stopping", 503)
        if why is not None:
            return Verdict(Action.RESPOND, "full", 486)
        return None

    def take_counts(self) -> dict[str, int]:
        """Counts since the last call (for a periodic log line)."""
        out = dict(self.counts)
        self.counts.clear()
        return out


def summary(counts: Iterable[tuple[str, int]]) -> str:
    """``"rate=120 malformed=3"`` for a log line; passes left out."""
    return " ".join(f"{k}={n}" for k, n in sorted(counts) if k != "pass" and n)


__all__ = [
    "DIALOG_LINGER_S",
    "MAX_MESSAGE_BYTES",
    "PASS",
    "Action",
    "KnownDialogs",
    "RxPolicy",
    "SourceLimiter",
    "Verdict",
    "call_id_of",
    "summary",
]
