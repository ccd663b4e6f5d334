"""The PostgreSQL store against real servers (sipbridge.devtools.pgserver): numbered
migrations applied once in a transaction, nodes starting together, a lost server (the
store raises StoreError, the API answers 503, both recover when it returns), the DSN kept
secret, and ``sipbridge cdr`` reading from it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from sipbridge.api import create_app
from sipbridge.calls import CallService
from sipbridge.devtools.pgserver import available
from sipbridge.errors import StoreError
from sipbridge.pgstore import SCHEMA_VERSION, PostgresStore
from tests.doubles import RecordingPool
from tests.unit.test_outbox import AUTH, _cfg, _rec

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


def test_migrations_applied_once_and_recorded(pg_server):
    dsn = pg_server.new_database()
    s = PostgresStore(dsn)
    rows = s._one("SELECT version FROM schema_version ORDER BY version")
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))
    s.close()
    s2 = PostgresStore(dsn)  # a restart applies nothing again
    assert len(s2._one("SELECT version FROM schema_version")) == SCHEMA_VERSION
    s2._one("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="upgrade sipbridge"):
        PostgresStore(dsn)


def test_nodes_starting_together_migrate_once(pg_server):
    dsn = pg_server.new_database()
    errors: list[BaseException] = []
    stores: list[PostgresStore] = []

    def start() -> None:
        try:
            stores.append(PostgresStore(dsn))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(stores) == 4
    assert stores[0].schema_version() == SCHEMA_VERSION
    for s in stores:
        s.close()


def test_unreachable_server_is_a_clear_store_error():
    with pytest.raises(StoreError, match="PostgreSQL store unavailable") as e:
        PostgresStore("postgresql://sipbridge:hunter2@127.0.0.1:1/x")
    assert "hunter2" not in str(e.value)


def test_server_down_means_503_then_recovery(tmp_path, own_pg_server):
    srv = own_pg_server  # its own server: this test stops it
    store = PostgresStore(srv.new_database())
    svc = CallService(_cfg(), store, RecordingPool())
    with TestClient(create_app(svc, ["tok"])) as client:
        r = client.post(
            "/v1/outbound-calling/trigger", headers=AUTH, json={"to_number": "+14155552671"}
        )
        sid = r.json()["callSid"]
        srv.stop()
        with pytest.raises(StoreError, match="PostgreSQL store unavailable"):
            store.get(sid)
        assert not store.ping()
        for call in (
            lambda: client.get(f"/v1/outbound-calling/{sid}/status", headers=AUTH),
            lambda: client.post(
                "/v1/outbound-calling/trigger", headers=AUTH, json={"to_number": "+14155552672"}
            ),
        ):
            r = call()
            assert r.status_code == 503, r.text
            assert "call store unavailable" in r.json()["error"]
            assert r.headers["retry-after"] == "5"
        assert client.get("/readyz").status_code == 503
        srv.restart()
        deadline = time.monotonic() + 10
        while not store.ping() and time.monotonic() < deadline:
            time.sleep(0.1)  # reconnects are rate-limited to one a second
        r = client.get(f"/v1/outbound-calling/{sid}/status", headers=AUTH)
        assert r.status_code == 200 and r.json()["callSid"] == sid


def _write_config(tmp_path: Path, dsn_ref: dict[str, str]) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "agent": {"uri": "sip:agent@127.0.0.1"},
                "api": {"tokens": [{"value": "tok"}]},
                "trunks": [
                    {"name": "t1", "address": "127.0.0.1:5060", "caller_id": "+14155550100"}
                ],
                "routes": [{"prefix": "+", "trunk": "t1"}],
                "store": {"backend": "postgresql", "dsn": dsn_ref},
            }
        )
    )
    return path


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "sipbridge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_check_config_never_prints_the_dsn(tmp_path):
    secret_dsn = "postgresql://u:s3cret@127.0.0.1:5432/db"
    out = _cli("check-config", str(_write_config(tmp_path, {"value": secret_dsn})))
    assert out.returncode == 0, out.stderr
    assert "s3cret" not in out.stdout and json.loads(out.stdout)["store"]["kind"] == "postgresql"
    out = _cli(
        "check-config",
        str(_write_config(tmp_path, {"env": "SB_TEST_DSN"})),
        env={"SB_TEST_DSN": secret_dsn},
    )
    assert out.returncode == 0 and "s3cret" not in out.stdout
    out = _cli("check-config", str(_write_config(tmp_path, {"env": "SB_NOT_SET_DSN"})))
    assert out.returncode == 2 and "store.dsn" in out.stderr


def test_cdr_export_reads_postgresql(tmp_path, pg_server):
    dsn = pg_server.new_database()
    s = PostgresStore(dsn)
    s.create(_rec())
    s.add_cdr(
        {"call_sid": "OUT-1", "attempt": 1, "ended_at": 1_700_000_000.0, "outcome": "success"}
    )
    s.close()
    out = _cli(
        "cdr",
        "-c",
        str(_write_config(tmp_path, {"env": "SB_TEST_DSN"})),
        "--since",
        "2023-01-01T00:00:00Z",
        "--format",
        "jsonl",
        env={"SB_TEST_DSN": dsn},
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["call_sid"] for r in rows] == ["OUT-1"] and "1 CDRs" in out.stderr


@pytest.mark.parametrize("cluster", [False, True])
def test_run_with_an_unreachable_store_says_why_and_exits_3(tmp_path, cluster):
    path = _write_config(tmp_path, {"value": "postgresql://u:s3cret@127.0.0.1:1/x"})
    if cluster:
        cfg = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({**cfg, "cluster": {"node_id": "a"}}))
    out = _cli("run", "-c", str(path))
    assert out.returncode == 3, out.stderr
    assert "sipbridge run: cannot start: PostgreSQL store unavailable" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "s3cret" not in out.stderr


def test_a_server_older_than_13_is_refused_naming_its_version(pg_server):
    from sipbridge.pgstore import check_server_version

    for version, shown in ((120010, "12.10"), (90624, "9.6")):
        with pytest.raises(StoreError, match=rf"PostgreSQL {shown} is too old: .* 13 or newer"):
            check_server_version(version)
    check_server_version(130000)
    s = PostgresStore(pg_server.new_database())  # the test server (15) passes
    try:
        assert int(s._one("SHOW server_version_num")[0][0]) >= 130000
    finally:
        s.close()
