"""The SIP workers' fork server loads the prompt library once: a worker forked from it
finds the library ready (a 100-prompt library, measured in fresh interpreters)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.preload_probe import write_library

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _probe(folder: Path, mode: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.preload_probe", str(folder), mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_workers_find_the_prompt_library_preloaded(tmp_path: Path) -> None:
    folder = write_library(tmp_path / "prompts", n=100)
    pre = _probe(folder, "preload")
    lazy = _probe(folder, "lazy")
    for run in [pre["first"], *pre["next"]]:
        assert run["cached"] and run["prompts"] == 100, pre
    for run in [lazy["first"], *lazy["next"]]:
        assert not run["cached"] and run["prompts"] == 100, lazy
    # a preloaded worker has nothing left to load; a lazy one pays the whole load
    pre_load = max(r["load_s"] for r in [pre["first"], *pre["next"]])
    lazy_load = statistics.median(r["load_s"] for r in lazy["next"])
    pre_ready = statistics.median(r["ready_s"] for r in pre["next"])
    lazy_ready = statistics.median(r["ready_s"] for r in lazy["next"])
    print(
        f"100 prompts: worker ready in {pre_ready * 1000:.0f} ms preloaded, "
        f"{lazy_ready * 1000:.0f} ms lazy (library load in the worker "
        f"{pre_load * 1000:.2f} ms / {lazy_load * 1000:.0f} ms); first fork incl. the fork "
        f"server: {pre['first']['ready_s']:.2f} s / {lazy['first']['ready_s']:.2f} s"
    )
    assert pre_load < 0.005 < lazy_load, (pre, lazy)
    assert pre_ready < lazy_ready, (pre, lazy)
