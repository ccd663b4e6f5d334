"""Fixtures shared by the integration tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipbridge.devtools.bridge import Stack
from tests.integration.harness import SippHarness


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """SIPp peers and bridges for one test, stopped when it ends."""
    s = Stack(tmp_path)
    yield s
    s.close()


@pytest.fixture
def h(tmp_path: Path) -> Iterator[SippHarness]:
    """SIPp peers, captures and tones for a test of the SIP engine, stopped when it ends."""
    if shutil.which("sipp") is None:
        pytest.skip("sipp (Debian sip-tester) is not installed")
    harness = SippHarness(tmp_path)
    yield harness
    harness.stop()
