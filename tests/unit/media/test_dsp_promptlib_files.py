"""The prompt library's folder is operator-supplied, hence hostile: labels are checked against
the known set (spelling normalised), and each WAV is bounded in bytes and duration, read at a
usable sample rate, and refused with an error naming the file otherwise."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from sipbridge.media.promptlib import LABEL_RESULTS, PromptLibrary, normalise_label


def _wav(path: Path, seconds: float, rate: int = 8000, channels: int = 1, seed: int = 1) -> Path:
    """Pink-ish noise at about -20 dBFS: sound in every frame, so it fingerprints."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    x = np.cumsum(rng.standard_normal((n, channels)), axis=0)
    x -= np.convolve(x[:, 0], np.ones(64) / 64, mode="same")[:, None]
    x = x / (np.max(np.abs(x)) + 1e-9) * 0.3
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return path


@pytest.mark.parametrize(
    ("given", "label"),
    [
        ("Not_In_Service", "not_in_service"),
        (" IVR ", "ivr"),
        ("not-in-service", "not_in_service"),
        ("Voicemail", "voicemail"),
        ("unknown", "unknown"),
    ],
)
def test_labels_are_normalised(tmp_path: Path, given: str, label: str) -> None:
    """Case, surrounding blanks and hyphens do not change what a label means: a folder named
    ``IVR`` or a labels.json value ``Not_In_Service`` used to report ``unknown``."""
    assert normalise_label(given) == label
    _wav(tmp_path / "a.wav", 2.0)
    (tmp_path / "labels.json").write_text(json.dumps({"a.wav": given}))
    lib = PromptLibrary.from_folder(tmp_path)
    assert [(p.name, p.label) for p in lib.prompts] == [("a", label)]


def test_a_label_folder_is_normalised_too(tmp_path: Path) -> None:
    _wav(tmp_path / "Screening" / "pixel.wav", 2.0)
    lib = PromptLibrary.from_folder(tmp_path)
    assert [(p.name, p.label) for p in lib.prompts] == [("pixel", "screening")]


@pytest.mark.parametrize("given", ["not_in_servce", "voice mail box", "acme"])
def test_an_unknown_label_is_refused_naming_the_file(tmp_path: Path, given: str) -> None:
    """A typo in a label silently made the prompt report ``unknown`` (an intercept the
    operator meant to end the call went on as an unclassified answer): refused at load,
    naming the file and the known labels."""
    _wav(tmp_path / "acme.wav", 2.0)
    (tmp_path / "labels.json").write_text(json.dumps({"acme.wav": given}))
    with pytest.raises(ValueError, match=r"acme\.wav: unknown label") as ei:
        PromptLibrary.from_folder(tmp_path)
    for known in LABEL_RESULTS:
        assert known in str(ei.value)


def test_an_unknown_label_folder_is_refused_naming_the_file(tmp_path: Path) -> None:
    _wav(tmp_path / "intercepts" / "acme.wav", 2.0)
    with pytest.raises(ValueError, match=r"intercepts/acme\.wav: unknown label 'intercepts'"):
        PromptLibrary.from_folder(tmp_path)


def test_add_refuses_an_unknown_label() -> None:
    lib = PromptLibrary()
    with pytest.raises(ValueError, match="unknown label"):
        lib.add("p", "acme", np.zeros(8000))


def test_a_prompt_longer_than_the_limit_is_refused_naming_the_file(tmp_path: Path) -> None:
    """A WAV's length was unbounded: a 2 GB file was decoded whole into memory (as float64,
    four times its size). Its duration is now capped (decoding stops past the cap)."""
    _wav(tmp_path / "ivr" / "long-menu.wav", 5.0)
    with pytest.raises(ValueError, match=r"long-menu\.wav: longer than 3 s") as ei:
        PromptLibrary.from_folder(tmp_path, max_s=3.0)
    assert "media.prompt_max_s" in str(ei.value)
    lib = PromptLibrary.from_folder(tmp_path, max_s=5.5)
    assert lib.prompts[0].duration_ms == 5000


def test_a_file_larger_than_the_byte_limit_is_refused_before_reading(tmp_path: Path) -> None:
    wav = _wav(tmp_path / "ivr" / "big.wav", 2.0)
    with open(wav, "ab") as f:  # a trailing chunk (cover art, junk): bytes, no audio
        f.write(b"junk" + (200_000).to_bytes(4, "little") + bytes(200_000))
    with pytest.raises(ValueError, match=r"big\.wav: \d+ bytes, over the 100000-byte limit"):
        PromptLibrary.from_folder(tmp_path, max_bytes=100_000)
    assert len(PromptLibrary.from_folder(tmp_path)) == 1


def test_a_huge_declared_wav_is_not_decoded_whole(tmp_path: Path) -> None:
    """A header that declares a 2 GB data chunk (a truncated or hostile file): only up to the
    duration cap is read, and the file is refused for its length, not loaded."""
    wav = _wav(tmp_path / "ivr" / "huge.wav", 70.0)
    data = bytearray(wav.read_bytes())
    pos = data.index(b"data")
    data[pos + 4 : pos + 8] = (2_000_000_000).to_bytes(4, "little")
    wav.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"huge\.wav: longer than 60 s"):
        PromptLibrary.from_folder(tmp_path)


def test_a_low_sample_rate_is_refused_naming_the_file(tmp_path: Path) -> None:
    """The fingerprint reads 300-3400 Hz: a recording below 8 kHz lacks its top bands and
    could never match what the line carries."""
    _wav(tmp_path / "ivr" / "narrow.wav", 2.0, rate=6000)
    with pytest.raises(ValueError, match=r"narrow\.wav: sample rate 6000 Hz"):
        PromptLibrary.from_folder(tmp_path)


def test_other_rates_and_stereo_are_converted(tmp_path: Path) -> None:
    """16/44.1/48 kHz are resampled to 8 kHz and channels averaged (documented): the prompt
    loads at its own duration."""
    _wav(tmp_path / "ivr" / "wide.wav", 2.0, rate=44100)
    _wav(tmp_path / "ivr" / "stereo.wav", 2.0, rate=16000, channels=2)
    lib = PromptLibrary.from_folder(tmp_path)
    assert {p.name: p.duration_ms for p in lib.prompts} == {"stereo": 2000, "wide": 2000}


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "not a WAV file"),
        (b"ID3\x04\x00" + bytes(2000), "not a WAV file"),  # an MP3 renamed .wav
        (b"RIFF\x10\x00\x00\x00WAVEfmt \x04\x00\x00\x00abcd", "corrupt WAV"),
    ],
)
def test_non_wav_and_corrupt_files_are_refused_naming_the_file(
    tmp_path: Path, content: bytes, why: str
) -> None:
    (tmp_path / "ivr").mkdir()
    (tmp_path / "ivr" / "bad.wav").write_bytes(content)
    with pytest.raises(ValueError, match=rf"bad\.wav: {why}"):
        PromptLibrary.from_folder(tmp_path)


def _config(media: Path, **limits: float) -> dict[str, object]:
    return {
        "agent": {"uri": "sip:agent@127.0.0.1:5070"},
        "api": {"tokens": [{"value": "secret"}]},
        "trunks": [{"name": "t1", "address": "127.0.0.1:5060", "caller_id": "+14155550100"}],
        "routes": [{"prefix": "+1", "trunk": "t1"}],
        "media": {"dir": str(media), "prompt_dir": "prompts", **limits},
    }


def test_the_limits_are_config_and_a_refusal_names_the_key_and_file(tmp_path: Path) -> None:
    from sipbridge.calls.policy import prompt_limits
    from sipbridge.config import ConfigError, parse_config

    _wav(tmp_path / "prompts" / "ivr" / "menu.wav", 5.0)
    with pytest.raises(ConfigError, match=r"media\.prompt_dir: .*menu\.wav: longer than 4 s"):
        parse_config(_config(tmp_path, prompt_max_s=4), "c")
    with pytest.raises(ConfigError, match=r"media\.prompt_dir: .*menu\.wav: \d+ bytes, over"):
        parse_config(_config(tmp_path, prompt_max_bytes=50_000), "c")
    cfg = parse_config(_config(tmp_path, prompt_max_s=10, prompt_max_bytes=200_000), "c")
    # the workers load the library with the same limits (plans, fork-server preload)
    assert prompt_limits(cfg) == (10.0, 200_000)
    for bad in ({"prompt_max_s": 0}, {"prompt_max_s": 1e9}, {"prompt_max_bytes": 10}):
        with pytest.raises(ConfigError, match=rf"media\.{next(iter(bad))}"):
            parse_config(_config(tmp_path, **bad), "c")


def test_workers_load_with_the_configured_limits(tmp_path: Path) -> None:
    """A library the config accepts with raised limits must not vanish in the workers,
    which load it again (lazily or in the fork server) with the limits the plan carries."""
    from sipbridge.sip.tap import prompt_library

    folder = tmp_path / "prompts"
    _wav(folder / "ivr" / "long.wav", 65.0)
    assert prompt_library(str(folder)) is None  # over the default 60 s
    lib = prompt_library(str(folder), [70.0, 64 * 1024 * 1024])
    assert lib is not None and [p.name for p in lib.prompts] == ["long"]
