"""Shared fixtures: the generated corpus (built once per session into a tmp dir)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]


def load_gen_corpus() -> Any:
    """Import scripts/gen_corpus.py as a module."""
    spec = importlib.util.spec_from_file_location("gen_corpus", ROOT / "scripts" / "gen_corpus.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    out = tmp_path_factory.mktemp("corpus")
    labels = load_gen_corpus().generate(out)
    assert json.loads((out / "labels.json").read_text()) == labels
    return out, labels


@pytest.fixture(scope="session")
def speech() -> Any:
    """Function (text, voice, speed) -> trimmed 8 kHz float speech clip, cached."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    from sipbridge.media.analyze import load_audio

    mod = load_gen_corpus()

    @lru_cache(maxsize=16)
    def render(text: str, voice: str = "en-us", speed: int = 160) -> np.ndarray:
        with tempfile.TemporaryDirectory() as td:
            p = Path(td) / "s.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(p), text],
                           check=True, capture_output=True)
            return np.asarray(mod.trim(load_audio(p)))

    return render
