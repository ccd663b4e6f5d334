"""Shared pytest hooks and session fixtures.

``corpus`` and ``hold_corpus``: the generated detection and hold-step corpora
(:mod:`sipbridge.corpus`), built once per test session into a temp folder.

When a test fails, the logs it left under its ``tmp_path`` (SIPp message/error logs,
worker logs) are copied to ``test-logs/<test name>/`` so CI can keep them as artifacts.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Property tests check behaviour, not speed: on a loaded 2-core CI machine hypothesis's
# default 200 ms deadline per example fails tests that are correct (speed is benched).
settings.register_profile("sipbridge", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("sipbridge")

TEST_LOGS = Path(__file__).resolve().parent.parent / "test-logs"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    name = re.sub(r"[^A-Za-z0-9_.\-\[\]]+", "_", item.name)
    dest = TEST_LOGS / name
    # the test's own tmp_path, and the log folders of shared fixtures (a module-scoped
    # bridge with its SIPp carriers exposes .log_dir)
    sources = [("", funcargs.get("tmp_path"))]
    sources += [(key, getattr(v, "log_dir", None)) for key, v in funcargs.items()]
    for key, src in sources:
        if isinstance(src, Path) and src.exists():
            with contextlib.suppress(OSError):
                shutil.copytree(src, dest / report.when / key, dirs_exist_ok=True)


Corpus = tuple[Path, dict[str, dict[str, Any]]]


def _build_corpus(tmp_path_factory: pytest.TempPathFactory, kind: str) -> Corpus:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    from sipbridge.corpus import detection, hold, regress

    out = tmp_path_factory.mktemp(f"{kind}_corpus")
    labels = {"detection": detection.generate, "hold": hold.generate, "regress": regress.generate}[
        kind
    ](out)
    assert json.loads((out / "labels.json").read_text()) == labels
    return out, labels


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The generated detection corpus: (folder, labels by file name)."""
    return _build_corpus(tmp_path_factory, "detection")


@pytest.fixture(scope="session")
def regress_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The generated regression corpus of issue #12's classes: (folder, labels by name)."""
    return _build_corpus(tmp_path_factory, "regress")


@pytest.fixture(scope="session")
def hold_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The generated IVR hold-step corpus: (folder, labels by file name)."""
    return _build_corpus(tmp_path_factory, "hold")


# ---- call stores: SQLite and a real PostgreSQL server ---------------------------------


def _running(server: Callable[[], Any], unavailable: Callable[[], str | None]) -> Iterator[Any]:
    """A devtools server (PgServer, RedisServer) started for a fixture and closed after it;
    the test is skipped, with the reason, when the server's binaries are missing."""
    why = unavailable()
    if why:
        pytest.skip(why)
    srv = server().start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A PostgreSQL 15 server of this test session (sipbridge.devtools.pgserver): initdb in
    a temp folder, a free loopback port; stopped and deleted at the end."""
    from sipbridge.devtools.pgserver import PgServer, available

    yield from _running(PgServer, available)


@pytest.fixture
def own_pg_server() -> Iterator[Any]:
    """A PostgreSQL server of this test alone: it may stop and restart it."""
    from sipbridge.devtools.pgserver import PgServer, available

    yield from _running(PgServer, available)


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Opens the store under test, each backend in turn: ``open_store(retention_s=...)``;
    every call opens the same (fresh) database, so reopening is a restart."""
    from sipbridge.store import SQLiteStore

    opened: list[Any] = []
    if request.param == "sqlite":

        def make(retention_s: float = 7200.0) -> Any:
            return SQLiteStore(tmp_path / "s.db", retention_s)
    else:
        from sipbridge.pgstore import PostgresStore

        dsn = request.getfixturevalue("pg_server").new_database()

        def make(retention_s: float = 7200.0) -> Any:
            return PostgresStore(dsn, retention_s)

    def opener(retention_s: float = 7200.0) -> Any:
        opened.append(make(retention_s))
        return opened[-1]

    opener.backend = request.param  # type: ignore[attr-defined]
    yield opener
    for s in opened:
        with contextlib.suppress(Exception):
            s.close()


# ---- a real Redis server (cluster-wide limits) ----------------------------------------


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """A redis-server of this test (sipbridge.devtools.redisserver): a free loopback port,
    a temp folder, no persistence; tests may stop and restart it (same port)."""
    from sipbridge.devtools.redisserver import RedisServer, available

    yield from _running(RedisServer, available)
