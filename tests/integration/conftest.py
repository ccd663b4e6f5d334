"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sipbridge.devtools.bridge import Stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """SIPp peers and bridges for one test, stopped when it ends."""
    s = Stack(tmp_path)
    yield s
    s.close()
