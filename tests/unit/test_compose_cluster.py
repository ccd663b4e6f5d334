"""docker/compose.cluster.yaml: each node's start command turns config/cluster.yaml into a
valid config of its own (node id, API, SIP and RTP ports), and the three do not collide."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from sipbridge.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_three_nodes_get_distinct_valid_configs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in {
        "SIPBRIDGE_API_TOKEN": "t",
        "SIPBRIDGE_PG_DSN": "postgresql://u@127.0.0.1:5432/db",
        "SIPBRIDGE_REDIS_URL": "redis://127.0.0.1:6379/0",
    }.items():
        monkeypatch.setenv(k, v)
    compose = yaml.safe_load((ROOT / "docker" / "compose.cluster.yaml").read_text())
    seen: list[tuple[str, int, int, int]] = []
    for n in (1, 2, 3):
        svc = compose["services"][f"node{n}"]
        assert svc["network_mode"] == "service:carrier"
        out = tmp_path / f"node{n}.yaml"
        script = (
            svc["command"][0]
            .replace("$$", "$")
            .replace("/etc/sipbridge/cluster.yaml", str(ROOT / "config" / "cluster.yaml"))
            .replace("/tmp/config.yaml", str(out))
            .split(" && exec ")[0]
        )
        env = {**os.environ, **svc["environment"]}
        subprocess.run(["/bin/sh", "-c", script], env=env, check=True, timeout=10)
        cfg = load_config(out)
        assert cfg.cluster is not None and cfg.cluster.redis is not None
        assert cfg.store.kind == "postgresql"
        seen.append((cfg.cluster.node_id, cfg.api.port, cfg.sip.port_min, cfg.sip.rtp_port_min))
        assert f"127.0.0.1:{cfg.api.port}:{cfg.api.port}" in compose["services"]["carrier"]["ports"]
        # the image's HEALTHCHECK (docker/Dockerfile) probes SIPBRIDGE_API_PORT, default 8080
        assert svc["environment"].get("SIPBRIDGE_API_PORT") == str(cfg.api.port)
    assert seen == [
        ("node1", 8081, 5110, 21000),
        ("node2", 8082, 5120, 22000),
        ("node3", 8083, 5130, 23000),
    ]
