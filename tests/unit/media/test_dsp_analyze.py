"""The offline analyze tool: WAV reading, errors, output."""

from __future__ import annotations

import json
import struct
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from sipbridge.media.analyze import AudioFormatError, analyze_main, analyze_wav, read_wav
from sipbridge.media.detect import DetectionConfig


def wav_bytes(tag: int, ch: int, rate: int, bits: int, data: bytes) -> bytes:
    block = ch * bits // 8
    fmt = struct.pack("<HHIIHH", tag, ch, rate, rate * block, block, bits)
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def sine(rate: int, f: float = 1000.0, sec: float = 0.5) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * f * np.arange(int(rate * sec)) / rate)


@pytest.mark.parametrize(
    "content,msg",
    [
        (b"", "not a WAV"),
        (b"hello world, not audio", "not a WAV"),
        (b"RIFF\x00\x00\x00\x00WAVE", "no fmt chunk"),
        (wav_bytes(1, 1, 8000, 16, b"")[:36], "no data chunk"),
        (wav_bytes(0x55, 1, 8000, 16, b"\x00" * 100), "unsupported WAV encoding"),
        (wav_bytes(1, 1, 8000, 12, b"\x00" * 100), "unsupported PCM sample size"),
        (wav_bytes(1, 1, 8000, 16, b""), "no audio samples"),
        (wav_bytes(1, 1, 100, 16, b"\x00" * 100), "unsupported sample rate"),
        (wav_bytes(1, 0, 8000, 16, b"\x00" * 100), "0 channels"),
        (wav_bytes(1, 4000, 8000, 16, b"\x00" * 100), "4000 channels"),
    ],
)
def test_bad_wavs_raise_clear_errors(tmp_path: Path, content: bytes, msg: str) -> None:
    p = tmp_path / "bad.wav"
    p.write_bytes(content)
    with pytest.raises(AudioFormatError, match=msg):
        read_wav(p)
    assert analyze_main([str(p)]) == 2


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert analyze_main([str(tmp_path / "nope.wav")]) == 2
    assert "file not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "tag,bits,conv",
    [
        (1, 16, lambda x: (x * 32767).astype("<i2").tobytes()),
        (1, 32, lambda x: (x * 2**31).astype("<i4").tobytes()),
        (3, 32, lambda x: x.astype("<f4").tobytes()),
        (1, 8, lambda x: (x * 127 + 128).astype(np.uint8).tobytes()),
    ],
)
def test_formats_read(
    tmp_path: Path, tag: int, bits: int, conv: Callable[[npt.NDArray[Any]], bytes]
) -> None:
    x = sine(16000)
    p = tmp_path / "ok.wav"
    p.write_bytes(wav_bytes(tag, 1, 16000, bits, conv(x)))
    y, rate = read_wav(p)
    assert rate == 16000 and y.size == x.size
    assert np.max(np.abs(y - x)) < 0.01


def test_stereo_48k(tmp_path: Path) -> None:
    x = sine(48000)
    st = np.stack([x, x], axis=1).reshape(-1)
    p = tmp_path / "st.wav"
    p.write_bytes(wav_bytes(1, 2, 48000, 16, (st * 32767).astype("<i2").tobytes()))
    det, tl = analyze_wav(p)
    assert det.answered_by in ("unknown", "silence")  # a lone tone, no speech
    assert any(e.kind == "tone_start" and abs(e.detail["hz"] - 1000) < 5 for e in tl)


def test_json_and_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "sil.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * 8000 * 8)
    assert analyze_main([str(p), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["detection"]["answered_by"] == "silence"
    assert out["detection"]["decided_at_ms"] == DetectionConfig().initial_silence_ms
    assert analyze_main([str(p)]) == 0
    assert "answered_by=silence" in capsys.readouterr().out


def test_corpus_file_timeline(
    corpus: tuple[Path, dict[str, dict[str, object]]], capsys: pytest.CaptureFixture[str]
) -> None:
    out, labels = corpus
    name = next(f for f, lab in labels.items() if lab["beep_ms"] is not None)
    assert analyze_main([str(out / name), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    kinds = {e["kind"] for e in data["timeline"]}
    assert {"speech_start", "speech_end", "tone_start", "beep", "decision"} <= kinds
    assert data["detection"]["answered_by"] == "machine"


def test_only_the_first_max_seconds_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A long recording is read up to ``max_s`` (the rest never decoded); the CLI's
    ``--max-seconds`` bounds it, refusing nonsense values."""
    p = tmp_path / "long.wav"
    p.write_bytes(wav_bytes(1, 2, 16000, 16, b"\x01\x00" * 2 * 16000 * 30))
    y, rate = read_wav(p, max_s=2.5)
    assert (rate, y.size) == (16000, 40000)
    assert read_wav(p)[0].size == 16000 * 30
    assert analyze_main([str(p), "--json", "--max-seconds", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["detection"]["decided_at_ms"] == 2000
    for bad in ("0", "-1", "nan", "1e9"):
        with pytest.raises(SystemExit) as e:
            analyze_main([str(p), "--max-seconds", bad])
        assert e.value.code == 2
        assert "--max-seconds must be" in capsys.readouterr().err
