"""A seeded generator of hostile SIP messages, for the guard's unit tests and the worker
fuzz test. Same seed, same messages: a failure reproduces from the seed alone.

Kinds (see :meth:`SipFuzzer.message`): well-formed requests of many methods, offer-less
and bad-SDP INVITEs, truncated, oversize, binary, byte-flipped, missing and duplicated
headers, hostile Vias (other transport, maddr, host names), responses, CRLF keep-alives,
and in-dialog requests that reuse a live call's Call-ID with wrong tags (or its right
tags, for requests that must not end it: OPTIONS, INFO).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

METHODS = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "INFO",
    "UPDATE",
    "PRACK",
    "REGISTER",
    "SUBSCRIBE",
    "NOTIFY",
    "MESSAGE",
    "REFER",
    "PUBLISH",
    "FOO",
]
SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)
BAD_SDPS = [
    "garbage",
    "v=0\r\n",
    "v=0\r\nm=audio 99999999 RTP/AVP 0\r\n",
    "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nm=audio 4000 RTP/AVP\r\n",
    "v=0\r\no=- 1 1 IN IP4 x\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 0\r\na=ice-ufrag:" + "u" * 900 + "\r\n",
    "v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::zz\r\nt=0 0\r\nm=video 0 RTP/SAVP 96\r\n",
    "v=0\r\n" + "a=x\r\n" * 400,
]


def request(
    method: str,
    *,
    call_id: str = "fuzz-1@127.0.0.1",
    to_tag: str | None = None,
    from_tag: str = "f1",
    via: str = "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK1",
    target: str = "127.0.0.1:5060",
    body: bytes = b"",
    extra: list[str] | None = None,
    cseq: int = 1,
) -> bytes:
    """A well-formed request (``extra`` headers appended; a Content-Length is added unless
    one is in ``extra``; Content-Type application/sdp for a body unless given)."""
    to = f"<sip:bridge@{target}>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} sip:bridge@{target} SIP/2.0",
        f"Via: {via}",
        "Max-Forwards: 70",
        f"From: <sip:fuzz@127.0.0.1>;tag={from_tag}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:fuzz@127.0.0.1:5999>",
    ]
    extra = list(extra or [])
    names = {e.split(":", 1)[0].strip().lower() for e in extra}
    if body and not names & {"content-type", "c"}:
        extra.append("Content-Type: application/sdp")
    if not names & {"content-length", "l"}:
        extra.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines + extra) + "\r\n\r\n").encode() + body


@dataclass
class LiveDialog:
    """A call the fuzz test keeps up: its Call-ID and tags as the carrier sees them."""

    call_id: str
    bridge_tag: str  # the bridge's tag (From of its INVITE; To of carrier requests)
    carrier_tag: str  # the carrier's tag (To of its 200 OK)


@dataclass
class SipFuzzer:
    seed: int
    target: str  # host:port of the worker
    live_call_ids: list[str] = field(default_factory=list)
    live: list[LiveDialog] = field(default_factory=list)
    source: str = "127.0.0.1:5999"  # what Vias and Contacts claim
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # ----------------------------------------------------------------- pieces
    def _token(self, n: int = 10) -> str:
        return "".join(self.rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=n))

    def _via(self, transport: str) -> str:
        r = self.rng.random()
        t = transport.upper()
        branch = f"z9hG4bK{self._token()}"
        if r < 0.6:
            return f"SIP/2.0/{t} {self.source};branch={branch};rport"
        if r < 0.7:  # response would go over another transport
            other = self.rng.choice([x for x in ("UDP", "TCP", "TLS", "SCTP", "WS") if x != t])
            return f"SIP/2.0/{other} {self.source};branch={branch}"
        if r < 0.8:  # maddr: the response would go elsewhere (loopback only here)
            maddr = f"127.0.0.{self.rng.randint(2, 9)}"
            return f"SIP/2.0/{t} {self.source};branch={branch};maddr={maddr}"
        if r < 0.9:  # a host name (never resolved: "received" is used)
            return f"SIP/2.0/{t} host-{self._token(5)}.invalid:5060;branch={branch}"
        return f"SIP/2.0/{t} {self.source};branch={branch}, SIP/2.0/{t} 127.0.0.9;branch=z9hG4bKx"

    def _body(self, method: str) -> bytes:
        r = self.rng.random()
        if method not in ("INVITE", "UPDATE", "ACK", "PRACK") or r < 0.3:
            return b""  # INVITE: a delayed offer (RFC 3261 13.2.1)
        if r < 0.6:
            return SDP.format(port=self.rng.randrange(1024, 65535, 2)).encode()
        return self.rng.choice(BAD_SDPS).encode()

    def _well_formed(self, transport: str) -> bytes:
        r = self.rng.random()
        method = self.rng.choice(METHODS)
        call_id, to_tag, from_tag = f"{self._token()}@fuzz", None, self._token(6)
        if r < 0.35 and (self.live or self.live_call_ids):
            if self.live and self.rng.random() < 0.3:  # the live call, right tags
                d = self.rng.choice(self.live)
                method = self.rng.choice(["OPTIONS", "INFO"])
                call_id, to_tag, from_tag = d.call_id, d.bridge_tag, d.carrier_tag
            else:  # the live call's Call-ID, wrong tags
                call_id = self.rng.choice([d.call_id for d in self.live] + list(self.live_call_ids))
                to_tag = self._token(8)
        elif r < 0.5:
            to_tag = self._token(8)  # a dialog nobody has
        extra = []
        if method == "INFO" and self.rng.random() < 0.5:
            extra.append("Content-Type: application/dtmf-relay")
        body = self._body(method)
        if method == "INFO" and extra:
            body = self.rng.choice(
                [b"Signal=5\r\nDuration=160\r\n", b"Signal=\xff\r\n", b"Signal=5", b"Signal=1\n"]
            )
        return request(
            method,
            call_id=call_id,
            to_tag=to_tag,
            from_tag=from_tag,
            via=self._via(transport),
            target=self.target,
            body=body,
            extra=extra,
            cseq=self.rng.randint(1, 2**31 - 1),
        )

    # ----------------------------------------------------------------- mutations
    def _mutate(self, msg: bytes) -> bytes:
        kind = self.rng.randrange(11)
        lines = msg.split(b"\r\n")
        head_end = lines.index(b"") if b"" in lines else len(lines)
        if kind == 0:  # truncated anywhere
            return msg[: self.rng.randrange(1, len(msg))]
        if kind == 1:  # oversize: a header beyond pjsip's 4000-byte packet buffer
            pad = b"X-Pad: " + b"a" * self.rng.randint(3000, 9000)
            return b"\r\n".join([*lines[:2], pad, *lines[2:]])
        if kind == 2:  # a mandatory header removed
            i = self.rng.randrange(1, max(2, head_end))
            return b"\r\n".join(lines[:i] + lines[i + 1 :])
        if kind == 3:  # a header repeated
            i = self.rng.randrange(1, max(2, head_end))
            return b"\r\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])
        if kind == 4:  # bytes flipped
            b = bytearray(msg)
            for _ in range(self.rng.randint(1, 8)):
                b[self.rng.randrange(len(b))] = self.rng.randrange(256)
            return bytes(b)
        if kind == 5:  # a lying Content-Length
            n = self.rng.choice([b"-1", b"99999999", b"abc", b"1000"])
            return msg.replace(b"Content-Length: ", b"Content-Length: " + n + b"0", 1)
        if kind == 6:  # binary noise
            return self.rng.randbytes(self.rng.randint(0, 1500))
        if kind == 7:  # CRLF keep-alives, empty lines
            return self.rng.choice([b"\r\n", b"\r\n\r\n", b"", b"\n"])
        if kind == 8:  # a response nobody asked for
            return b"SIP/2.0 200 OK\r\n" + b"\r\n".join(lines[1:])
        if kind == 9:  # odd start lines
            start = self.rng.choice(
                [
                    b"INVITE  SIP/2.0",
                    b"INVITE sip:a@b SIP/9.9",
                    b"INVITE sip:%00@b SIP/2.0",
                    b"\x00INVITE x SIP/2.0",
                ]
            )
            return b"\r\n".join([start, *lines[1:]])
        return msg.replace(b"\r\n", b"\n")  # bare LF line ends

    def message(self, transport: str = "udp") -> bytes:
        """One message: well-formed (40 %) or mutated (60 %)."""
        msg = self._well_formed(transport)
        if self.rng.random() < 0.4:
            return msg
        return self._mutate(msg)


__all__ = ["BAD_SDPS", "LiveDialog", "SipFuzzer", "request"]
