"""Free loopback ports for the processes a development run starts (SIPp, the bridge's API)."""

from __future__ import annotations

import socket

ADDRESS = "127.0.0.1"


def free_port(kind: int = socket.SOCK_DGRAM, address: str = ADDRESS) -> int:
    """A port that was free a moment ago (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def free_even_port_pair(address: str = ADDRESS) -> int:
    """An even UDP port p with p and p+1 free (SIPp's -mp uses p for RTP, p+1 for RTCP)."""
    for _ in range(50):
        p = free_port(socket.SOCK_DGRAM, address) & ~1
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
            ):
                a.bind((address, p))
                b.bind((address, p + 1))
            return p
        except OSError:
            continue
    raise RuntimeError("no free even UDP port pair found")
