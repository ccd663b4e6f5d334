"""The ``edge:`` section of the bridge's config: a Kamailio SIP edge with rtpengine in
front of the bridge nodes (README "Edge proxy"). Pure pydantic models, no I/O beyond
checking that named certificate files are readable PEM.

The generator (:mod:`sipbridge.edge.generate`) turns a validated :class:`Config` into the
edge's files; the bridge (:mod:`sipbridge.routing`) sends carrier INVITEs through it.
"""

from __future__ import annotations

import ipaddress
import ssl
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from sipbridge.callsettings import StrictModel
from sipbridge.netpolicy import networks_field
from sipbridge.tlsca import check_ca_file

Port = Annotated[int, Field(ge=1, le=65535)]


def _ip(v: str) -> str:
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise ValueError(f"{v!r} is not an IP address") from None


class EdgeNode(StrictModel):
    """One bridge node behind the edge. Every worker SIP port of the node is a
    dispatcher destination (probed with OPTIONS); ports default to the ``sip`` section's
    worker ports (``port_min`` .. ``port_min + max_workers - 1``)."""

    address: str
    port_min: Port | None = None
    port_max: Port | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return _ip(v)

    @model_validator(mode="after")
    def _range(self) -> EdgeNode:
        if (self.port_min is None) != (self.port_max is None):
            raise ValueError("give both port_min and port_max, or neither")
        if self.port_min is not None and self.port_max is not None:
            if self.port_min > self.port_max:
                raise ValueError("port_min must be <= port_max")
            if self.port_max - self.port_min >= 64:
                raise ValueError("at most 64 worker ports per node")
        return self


class EdgeTls(StrictModel):
    """The edge's own certificate: served on its TLS port (carriers' in-dialog requests
    over new connections) and presented to carriers that ask for a client certificate."""

    certificate: str
    private_key: str
    # Oldest TLS version spoken with carriers (Debian's OpenSSL 3).
    min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"

    @field_validator("certificate")
    @classmethod
    def _cert(cls, v: str) -> str:
        return check_ca_file(v)  # a readable PEM file holding a certificate

    @field_validator("private_key")
    @classmethod
    def _key(cls, v: str) -> str:
        try:
            with open(v, encoding="ascii", errors="replace") as f:
                head = f.read(8192)
        except OSError as e:
            raise ValueError(f"{v!r}: cannot read: {e.strerror}") from None
        if "PRIVATE KEY-----" not in head:
            raise ValueError(f"{v!r} holds no PEM private key")
        return v

    @model_validator(mode="after")
    def _pair(self) -> EdgeTls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(self.certificate, self.private_key)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(f"private_key: does not match certificate: {e}") from None
        return self


class EdgeFlood(StrictModel):
    """Flood guard (Kamailio pike) for sources that are neither nodes nor the agent
    platform: a source IP sending more than ``max_requests`` requests in ``window_s``
    seconds is dropped, unanswered, until it stays under the limit for ``block_s``."""

    window_s: Annotated[int, Field(ge=1, le=60)] = 2
    max_requests: Annotated[int, Field(ge=1, le=10_000)] = 40
    block_s: Annotated[int, Field(ge=1, le=3600)] = 120


class EdgeRtpengine(StrictModel):
    """rtpengine (userspace forwarding): ng control on 127.0.0.1, media ports."""

    control_port: Port = 22222
    port_min: Annotated[int, Field(ge=1024, le=65535)] = 30000
    port_max: Annotated[int, Field(ge=1024, le=65535)] = 39999
    # A call whose media stopped this long is torn down by rtpengine.
    media_timeout_s: Annotated[int, Field(ge=10, le=86400)] = 60

    @model_validator(mode="after")
    def _ports(self) -> EdgeRtpengine:
        if self.port_max - self.port_min < 3:
            raise ValueError("port_max: the range needs at least 4 ports")
        return self


class EdgeConfig(StrictModel):
    """A Kamailio + rtpengine edge between the carriers and the bridge nodes."""

    # The one address carriers see and allow-list (signalling and media).
    public_address: str
    # The address nodes and the agent platform reach the edge on (plain SIP/RTP).
    inside_address: str
    inside_port: Port = 5060
    public_udp_port: Port = 5060  # UDP and TCP
    public_tls_port: Port = 5061
    nodes: Annotated[list[EdgeNode], Field(min_length=1, max_length=64)]
    # Sources (CIDRs) that may send SIP-triggered INVITEs to the edge's inside port.
    agent_allow: Annotated[list[str], Field(max_length=256)] = Field(default_factory=list)
    tls: EdgeTls | None = None
    # Dispatcher: OPTIONS to every destination this often; a destination that fails
    # ``probe_failures`` probes in a row is out until it answers again.
    probe_interval_s: Annotated[int, Field(ge=1, le=3600)] = 10
    probe_failures: Annotated[int, Field(ge=1, le=10)] = 2
    # A node that sends no response to an INVITE this long: the next node is tried.
    node_timeout_s: Annotated[float, Field(ge=0.5, le=60)] = 2.0
    # A carrier that sends no response to an INVITE this long: 408 to the node.
    carrier_timeout_s: Annotated[float, Field(ge=0.5, le=60)] = 5.0
    flood: EdgeFlood = Field(default_factory=EdgeFlood)
    rtpengine: EdgeRtpengine = Field(default_factory=EdgeRtpengine)

    @field_validator("public_address", "inside_address")
    @classmethod
    def _addr(cls, v: str) -> str:
        return _ip(v)

    @field_validator("agent_allow")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return networks_field(v)

    @model_validator(mode="after")
    def _sockets(self) -> EdgeConfig:
        if self.public_udp_port == self.public_tls_port:
            raise ValueError("public_tls_port: must differ from public_udp_port")
        if (self.inside_address, self.inside_port) == (self.public_address, self.public_udp_port):
            raise ValueError("inside_port: the inside and public sockets must differ")
        return self


__all__ = ["EdgeConfig", "EdgeFlood", "EdgeNode", "EdgeRtpengine", "EdgeTls"]
