"""Prompt library (known prompts by fingerprint) and the looping-menu repeat detector."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from sipbridge.corpus.prompts import render_prompts, sentences
from sipbridge.corpus.synth import codec, noise, sil, trim, write_wav
from sipbridge.media.analyze import load_audio
from sipbridge.media.detect import Detector
from sipbridge.media.frames import scale_to_dbfs
from sipbridge.media.promptlib import PromptLibrary, RepeatDetector

TEXTS = {
    "acme-intercept": (
        "not_in_service",
        "en-us",
        "The number you have reached is not in service. Please check the number.",
    ),
    "pixel-screen": (
        "screening",
        "en+f3",
        "Hi, the person you're calling is using a screening service. Go ahead and "
        "say your name and why you're calling.",
    ),
    "bank-menu": (
        "ivr",
        "en-gb",
        "Welcome to Northern Bank. For balances press one. For cards "
        "press two. For anything else, stay on the line.",
    ),
    "clinic-menu": (
        "ivr",
        "en+m3",
        "You have reached the city clinic. To book an appointment, "
        "press one. To speak to a nurse, press two.",
    ),
}
OTHER = (
    "Hello, this is Sam. I was calling about the parcel that came yesterday, can you call me back?"
)


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    out = {}
    with tempfile.TemporaryDirectory() as td:
        for name, (_, voice, text) in [*TEXTS.items(), ("other", ("", "en-us", OTHER))]:
            p = Path(td) / f"{name}.wav"
            subprocess.run(
                ["espeak-ng", "-v", voice, "-s", "165", "-w", str(p), text],
                check=True,
                capture_output=True,
            )
            out[name] = trim(load_audio(p))
    return out


@pytest.fixture(scope="module")
def library(
    clips: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> PromptLibrary:
    root = tmp_path_factory.mktemp("prompts")
    for name, (label, _, _) in TEXTS.items():
        (root / label).mkdir(exist_ok=True)
        write_wav(root / label / f"{name}.wav", scale_to_dbfs(clips[name], -18))
    lib = PromptLibrary.from_folder(root)
    assert sorted(p.name for p in lib.prompts) == sorted(TEXTS)
    return lib


def heard(
    x: np.ndarray,
    lead_ms: float = 700,
    level: float = -20,
    snr_db: float | None = None,
    late_ms: float = 0,
    codec_kind: str = "ulaw",
    seed: int = 1,
) -> np.ndarray:
    """The prompt as a call hears it: later start, another level, line noise, G.711."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([sil(lead_ms), scale_to_dbfs(x, level)[round(late_ms * 8) :], sil(1500)])
    if snr_db is not None:
        y = y + noise(y.size, "pink", rng) * 10 ** ((level - snr_db - 3) / 20)
    return codec(y, codec_kind)


def match(lib: PromptLibrary, y: np.ndarray) -> tuple[str, int] | None:
    m = lib.matcher()
    for k in range(0, y.size - 160, 160):
        hit = m.feed(y[k : k + 160])
        if hit is not None:
            return hit.name, hit.decided_ms
    return None


@pytest.mark.parametrize("name", list(TEXTS))
@pytest.mark.parametrize(
    "cond",
    [
        {},
        {"level": -38.0},
        {"snr_db": 15.0},
        {"late_ms": 1200.0},
        {"codec_kind": "alaw"},
        {"lead_ms": 713.0, "snr_db": 20.0, "level": -30.0},
    ],
)
def test_prompt_recognised_within_about_a_second(
    library: PromptLibrary, clips: dict[str, np.ndarray], name: str, cond: dict[str, float]
) -> None:
    lead = cond.get("lead_ms", 700)
    got = match(library, heard(clips[name], **cond))  # type: ignore[arg-type]
    assert got is not None and got[0] == name
    assert got[1] - lead <= 2000  # decided ≤ 2 s after the (possibly late) prompt start


def test_other_speech_and_noise_match_nothing(
    library: PromptLibrary, clips: dict[str, np.ndarray]
) -> None:
    rng = np.random.default_rng(7)
    y = np.concatenate(
        [
            heard(clips["other"]),
            noise(8000 * 5, "pink", rng) * 0.01,
            heard(clips["other"], level=-30, snr_db=10),
        ]
    )
    assert match(library, y) is None


def test_labels_json_layout_and_hostile_files(tmp_path: Path, clips: dict[str, np.ndarray]) -> None:
    write_wav(tmp_path / "a.wav", clips["bank-menu"])
    (tmp_path / "labels.json").write_text(json.dumps({"a.wav": "ivr"}))
    lib = PromptLibrary.from_folder(tmp_path)
    assert [(p.name, p.label) for p in lib.prompts] == [("a", "ivr")]
    (tmp_path / "labels.json").write_text(json.dumps({"../etc/passwd": "ivr"}))
    with pytest.raises(ValueError, match="outside the library"):
        PromptLibrary.from_folder(tmp_path)
    (tmp_path / "labels.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"labels\.json"):
        PromptLibrary.from_folder(tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps({"a.wav": 3}))
    with pytest.raises(ValueError, match="label strings"):
        PromptLibrary.from_folder(tmp_path)
    (tmp_path / "labels.json").unlink()
    (tmp_path / "a.wav").unlink()  # (a WAV beside the label folders is an error of its own)
    (tmp_path / "ivr").mkdir()
    (tmp_path / "ivr" / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    with pytest.raises(ValueError, match=r"broken\.wav"):
        PromptLibrary.from_folder(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        PromptLibrary.from_folder(tmp_path / "missing")


def test_folders_that_would_load_nothing_are_errors(
    tmp_path: Path, clips: dict[str, np.ndarray]
) -> None:
    """An empty library, a WAV beside the label folders and a prompt too short to ever be
    recognised were loaded silently and never matched; each is now an error naming it. A
    ``.WAV`` file counts."""
    with pytest.raises(ValueError, match="no prompts"):
        PromptLibrary.from_folder(tmp_path)
    (tmp_path / "ivr").mkdir()
    with pytest.raises(ValueError, match="no prompts"):
        PromptLibrary.from_folder(tmp_path)
    write_wav(tmp_path / "acme.wav", clips["bank-menu"])
    with pytest.raises(ValueError, match=r"acme\.wav not in a label sub-folder"):
        PromptLibrary.from_folder(tmp_path)
    (tmp_path / "acme.wav").rename(tmp_path / "ivr" / "ACME.WAV")
    lib = PromptLibrary.from_folder(tmp_path)
    assert [(p.name, p.label) for p in lib.prompts] == [("ACME", "ivr")]
    write_wav(tmp_path / "ivr" / "blip.wav", clips["bank-menu"][:4000])  # 0.5 s
    with pytest.raises(ValueError, match=r"blip\.wav: \d+ ms of sound, too short"):
        PromptLibrary.from_folder(tmp_path)
    (tmp_path / "ivr" / "blip.wav").unlink()
    for label in ("ivr\nFAKE LOG LINE", "x" * 65):
        (tmp_path / "labels.json").write_text(json.dumps({"ivr/ACME.WAV": label}))
        with pytest.raises(ValueError, match="must be printable and at most 64 characters"):
            PromptLibrary.from_folder(tmp_path)


def test_prompt_names_are_checked_like_labels(tmp_path: Path, clips: dict[str, np.ndarray]) -> None:
    """A prompt's name (its file name) ends up in statuses, CDRs, reasons and logs like its
    label: a control character or an endless name is refused, and so is a name two files
    share (the result would not say which prompt was heard)."""
    (tmp_path / "ivr").mkdir()
    for bad in ("menu\nFAKE LOG LINE", "menu\x1b[31m", "m" * 129):
        wav = tmp_path / "ivr" / f"{bad}.wav"
        write_wav(wav, clips["bank-menu"])
        with pytest.raises(ValueError, match=r"name .* must be printable and at most 128"):
            PromptLibrary.from_folder(tmp_path)
        wav.unlink()
    write_wav(tmp_path / "ivr" / f"{'m' * 128}.wav", clips["bank-menu"])
    assert [len(p.name) for p in PromptLibrary.from_folder(tmp_path).prompts] == [128]
    (tmp_path / "ivr" / f"{'m' * 128}.wav").unlink()
    (tmp_path / "voicemail").mkdir()
    write_wav(tmp_path / "ivr" / "acme.wav", clips["bank-menu"])
    write_wav(tmp_path / "voicemail" / "acme.wav", clips["clinic-menu"])
    with pytest.raises(ValueError, match=r"acme\.wav.*acme\.wav.*same name 'acme'"):
        PromptLibrary.from_folder(tmp_path)
    (tmp_path / "labels.json").write_text(
        json.dumps({"ivr/acme.wav": "ivr", "acme.WAV": "voicemail"})
    )
    write_wav(tmp_path / "acme.WAV", clips["clinic-menu"])
    with pytest.raises(ValueError, match="same name 'acme'"):
        PromptLibrary.from_folder(tmp_path)


@pytest.mark.parametrize(
    "name,answered_by,hint",
    [
        ("acme-intercept", "sit", "prompt"),
        ("pixel-screen", "human", "screening"),
        ("bank-menu", "ivr", "prompt"),
    ],
)
def test_detector_applies_the_prompt_label(
    library: PromptLibrary, clips: dict[str, np.ndarray], name: str, answered_by: str, hint: str
) -> None:
    det = Detector(mode="answer", prompts=library)
    det.feed(heard(clips[name], snr_db=20.0))
    r = det.finish()
    assert (r.answered_by, r.hint, r.prompt, r.prompt_label) == (
        answered_by,
        hint,
        name,
        TEXTS[name][0],
    )
    assert r.decided_at_ms - 700 <= 1700


def test_repeat_detector_finds_the_menu_again(clips: dict[str, np.ndarray]) -> None:
    menu = clips["clinic-menu"]
    rd = RepeatDetector()
    before = heard(menu, snr_db=25.0, seed=2)
    for k in range(0, before.size - 160, 160):
        assert rd.feed(before[k : k + 160]) is None
    assert rd.mark()
    after = np.concatenate([sil(800), heard(menu, snr_db=25.0, seed=3)])
    hits = [rd.feed(after[k : k + 160]) for k in range(0, after.size - 160, 160)]
    found = [h for h in hits if h is not None]
    assert len(found) == 1 and abs(found[0].earlier_ms - 700) <= 1200
    assert found[0].decided_ms - before.size // 8 - 800 - 700 <= 1500


def test_repeat_detector_ignores_a_new_prompt(clips: dict[str, np.ndarray]) -> None:
    rd = RepeatDetector()
    for x, mark in ((heard(clips["clinic-menu"]), True), (heard(clips["bank-menu"]), False)):
        for k in range(0, x.size - 160, 160):
            assert rd.feed(x[k : k + 160]) is None
        if mark:
            assert rd.mark()
    assert rd.done is None


def test_repeat_detector_needs_something_before_the_digits() -> None:
    rd = RepeatDetector()
    for _ in range(100):
        rd.feed(np.zeros(160))
    assert not rd.mark()


def test_hundred_prompts_each_found_as_itself() -> None:
    """A library of 100 prompts (the benchmark's size), searched the way a call does it
    (through the detector, index looked up with speech frames only): each prompt played
    through G.711, at another level, with line noise or joined late, is found as itself."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    clips = render_prompts(sentences(100, 99))
    lib = PromptLibrary()
    for i, c in enumerate(clips):
        lib.add(f"p{i:03d}", "ivr", c)
    conds: list[dict[str, float]] = [
        {},
        {"level": -36.0},
        {"snr_db": 15.0},
        {"late_ms": 1500.0},
        {"level": -14.0, "snr_db": 20.0},
    ]
    after_start: list[int] = []
    for k, i in enumerate(range(3, 100, 8)):
        cond = conds[k % len(conds)]
        det = Detector(mode="answer", prompts=lib)
        y = heard(clips[i], codec_kind=("ulaw", "alaw")[k % 2], seed=k, **cond)
        det.feed(y)
        r = det.finish()
        assert (r.prompt, r.answered_by) == (f"p{i:03d}", "ivr"), (i, cond, r.reason)
        after_start.append(r.decided_at_ms - 700)
    # about a second after the prompt starts; a 15 dB SNR line needs up to ~3 s on some prompts
    assert float(np.median(after_start)) <= 1500 and max(after_start) <= 3000, after_start
