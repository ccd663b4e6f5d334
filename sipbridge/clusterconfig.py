"""Cluster mode settings (``cluster:`` in the config): several nodes on one PostgreSQL
store and one Redis.

The store holds calls, the queue and the outbox; Redis holds what must be counted across
nodes in real time (carrier CPS, concurrency slots, the API rate). A node is a member for
as long as its heartbeat lease is fresh.
"""

from __future__ import annotations

import re
import socket
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from sipbridge.callsettings import StrictModel
from sipbridge.secretref import SecretRef

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class RedisConfig(StrictModel):
    """Where the cluster's Redis is. ``url`` is a secret reference (it may hold a password),
    e.g. ``{env: SIPBRIDGE_REDIS_URL}`` with ``redis://127.0.0.1:6379/0``."""

    url: SecretRef
    # Every key sipbridge writes starts with this, so one Redis can serve several clusters.
    key_prefix: Annotated[
        str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9:._-]+$")
    ] = "sipbridge:"
    # A Redis call that takes longer counts as Redis being unreachable (fail closed).
    timeout_s: Annotated[float, Field(gt=0, le=30)] = 1.0

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretRef) -> SecretRef:
        # checked here, not at start-up; never echoed (it may hold a password)
        if not v.resolve().startswith(_REDIS_SCHEMES):
            raise ValueError(
                "not a Redis URL: it must start with redis://, rediss:// or unix:// "
                "(e.g. redis://:password@127.0.0.1:6379/0)"
            )
        return v


class ClusterConfig(StrictModel):
    # This node's name, unique in the cluster (default: the host name). It is written on
    # every claim and heartbeat, so keep it stable across restarts of the same node.
    node_id: Annotated[str, Field(max_length=63)] = Field(
        default_factory=lambda: socket.gethostname().split(".")[0] or "node"
    )
    # A node whose heartbeat is older than lease_s is dead: another node takes over its
    # calls. Shorter = faster takeover, but a node paused longer than this (GC, VM steal,
    # partition) loses its calls. 15 s is five missed heartbeats.
    lease_s: Annotated[float, Field(ge=2, le=600)] = 15.0
    heartbeat_s: Annotated[float, Field(gt=0, le=120)] = 3.0
    redis: RedisConfig | None = None

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, v: str) -> str:
        if not _NODE_ID_RE.match(v):
            raise ValueError(
                f"{v!r} is not a node id (letters, digits, '.', '_', '-'; at most 63 characters)"
            )
        return v

    @model_validator(mode="after")
    def _timing(self) -> ClusterConfig:
        if self.heartbeat_s * 2 > self.lease_s:
            raise ValueError(
                f"heartbeat_s: {self.heartbeat_s} must be at most half of lease_s "
                f"({self.lease_s}), so one late heartbeat does not end a live node's lease"
            )
        return self
