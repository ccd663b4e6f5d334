"""OPTIONS health checks of a trunk (RFC 3261 11): the request, the reply's status, and
the up/down decision over consecutive results (pure; the asyncio client is
sipbridge.calls.probe)."""

from __future__ import annotations

from dataclasses import dataclass

from sipbridge.sipmsg import header, split_message, status_code


def split_hostport(address: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` (validated by the config)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, sep, port = address.rpartition(":")
    return (host, int(port)) if sep else (address, default_port)


def options_request(
    *,
    host: str,
    port: int,
    transport: str,
    via_host: str,
    via_port: int,
    call_id: str,
    branch: str,
    tag: str,
    user_agent: str,
    extra_headers: tuple[tuple[str, str], ...] = (),
    from_host: str = "",
) -> bytes:
    """An out-of-dialog OPTIONS to ``host:port``. ``;rport`` (RFC 3581): a UDP reply comes
    back to the port it was sent from. ``extra_headers`` go after User-Agent; ``from_host``
    (default: the Via host) is the From URI's host."""
    name = f"[{host}]" if ":" in host else host
    scheme = "sips" if transport == "tls" else "sip"
    uri = f"{scheme}:{name}:{port}" + (";transport=tcp" if transport == "tcp" else "")
    vhost = f"[{via_host}]" if ":" in via_host else via_host
    fhost = vhost if not from_host else f"[{from_host}]" if ":" in from_host else from_host
    lines = [
        f"OPTIONS {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} {vhost}:{via_port};branch=z9hG4bK{branch};rport",
        "Max-Forwards: 70",
        f"From: <sip:sipbridge@{fhost}>;tag={tag}",
        f"To: <{uri}>",
        f"Call-ID: {call_id}",
        "CSeq: 1 OPTIONS",
        "Accept: application/sdp",
        f"User-Agent: {user_agent}",
        *(f"{k}: {v}" for k, v in extra_headers),
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def reply_status(data: bytes, call_id: str) -> int | None:
    """The final status of a reply to our OPTIONS ``call_id``; None for anything else
    (provisional, another call's, a request, garbage)."""
    text = data[:65536].decode("utf-8", "replace")
    status = status_code(text)
    if status is None or status < 200:
        return None
    try:
        _first, headers, _body = split_message(text)
    except Exception:
        return None
    if header(headers, "call-id").strip() != call_id:
        return None
    return status


def answered_alive(status: int | None) -> bool:
    """Any final answer shows the trunk is there (405/404 included: it parsed our
    request), except 408 and 5xx (overloaded or broken: do not send calls)."""
    return status is not None and status != 408 and not 500 <= status < 600


@dataclass
class ProbeCounter:
    """Consecutive results: ``failures_to_down`` failures mark a trunk down,
    ``successes_to_up`` answers mark it up again. Trunks start up."""

    failures_to_down: int
    successes_to_up: int
    up: bool = True
    _run: int = 0  # consecutive results against the current state

    def record(self, ok: bool) -> bool:
        """Count one probe; True when the state flipped."""
        if ok == self.up:
            self._run = 0
            return False
        self._run += 1
        if self._run >= (self.successes_to_up if ok else self.failures_to_down):
            self.up, self._run = ok, 0
            return True
        return False


__all__ = ["ProbeCounter", "answered_alive", "options_request", "reply_status", "split_hostport"]
