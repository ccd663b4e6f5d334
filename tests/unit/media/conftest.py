"""Shared fixtures of the DSP tests (the corpora are in tests/conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def speech() -> Any:
    """Function (text, voice, speed) -> trimmed 8 kHz float speech clip, cached."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    from sipbridge.corpus.synth import trim
    from sipbridge.media.analyze import load_audio

    @lru_cache(maxsize=16)
    def render(text: str, voice: str = "en-us", speed: int = 160) -> np.ndarray:
        with tempfile.TemporaryDirectory() as td:
            p = Path(td) / "s.wav"
            subprocess.run(
                ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(p), text],
                check=True,
                capture_output=True,
            )
            return np.asarray(trim(load_audio(p)))

    return render
