"""What every part of the call manager shares: config, SIP engine, the record writer,
live calls, policies, the clock and the random source. Built once by CallService."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from sipbridge.calls.engine import Pool
from sipbridge.calls.journal import Journal
from sipbridge.calls.live import CallRegistry
from sipbridge.calls.policy import PolicyBook
from sipbridge.config import Config


@dataclass
class CallContext:
    cfg: Config
    pool: Pool
    journal: Journal
    registry: CallRegistry
    policies: PolicyBook
    clock: Callable[[], float]
    rng: random.Random
    bridge_host: str  # our host in From/Contact URIs
    node_id: str | None = None  # cluster mode: this node (sipbridge.cluster.node.attach)


__all__ = ["CallContext"]
