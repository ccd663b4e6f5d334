"""cluster: settings — validated at start-up like every other section."""

import pytest

from sipbridge.config import ConfigError, parse_config
from tests.unit.test_config import BASE

PG = {"backend": "postgresql", "dsn": {"value": "postgresql://u@127.0.0.1:1/db"}}


def _cfg(cluster, store=PG):
    return parse_config({**BASE, "store": store, "cluster": cluster}, "conf.yaml")


def test_cluster_defaults_and_redis(monkeypatch):
    monkeypatch.setenv("SB_TEST_REDIS", "redis://127.0.0.1:6379/0")
    cfg = _cfg({"node_id": "node-a", "redis": {"url": {"env": "SB_TEST_REDIS"}}})
    assert cfg.cluster is not None and cfg.cluster.node_id == "node-a"
    assert cfg.cluster.lease_s == 15.0 and cfg.cluster.heartbeat_s * 2 <= cfg.cluster.lease_s
    assert cfg.cluster.redis is not None
    assert cfg.cluster.redis.url.resolve() == "redis://127.0.0.1:6379/0"
    assert cfg.cluster.redis.key_prefix == "sipbridge:"


def test_single_node_has_no_cluster():
    assert parse_config(BASE).cluster is None


@pytest.mark.parametrize(
    ("cluster", "store", "key", "words"),
    [
        ({}, {"path": "x.db"}, "cluster", "postgresql"),
        ({"node_id": "a b"}, PG, "cluster.node_id", "not a node id"),
        ({"node_id": "-x"}, PG, "cluster.node_id", "not a node id"),
        ({"lease_s": 4, "heartbeat_s": 3}, PG, "cluster.heartbeat_s", "half of lease_s"),
        ({"lease_s": float("inf")}, PG, "cluster.lease_s", "finite"),
        ({"lease_s": True}, PG, "cluster.lease_s", "number"),
        ({"redis": {}}, PG, "cluster.redis.url", "Field required"),
        ({"redis": {"url": {"env": "SB_TEST_UNSET_VAR"}}}, PG, "cluster.redis.url", "not set"),
        (
            {"redis": {"url": {"value": "http://:s3cret@127.0.0.1:6379"}}},
            PG,
            "cluster.redis.url",
            "not a Redis URL: it must start with redis://",
        ),
        (
            {"redis": {"url": {"value": "redis://x"}, "key_prefix": "a b"}},
            PG,
            "cluster.redis.key_prefix",
            "pattern",
        ),
        ({"surprise": 1}, PG, "cluster.surprise", "Extra inputs"),
    ],
)
def test_bad_cluster_config_names_key(cluster, store, key, words):
    with pytest.raises(ConfigError) as ei:
        _cfg(cluster, store)
    msg = str(ei.value)
    assert f"conf.yaml: {key}" in msg, msg
    assert words in msg and "s3cret" not in msg, msg
