"""scripts/real_corpus: sources from Debian packages and git, decoding, labels, idempotence and
clear errors for missing sources (no network: local .deb files and a local git repo)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sipbridge.corpus import real
from sipbridge.corpus.sources import FS, Fetcher, SourceError, decode, phone_line
from sipbridge.corpus.synth import tone, write_wav
from sipbridge.media.analyze import load_audio
from sipbridge.media.frames import float_to_pcm16, ulaw_encode

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def _speechlike(ms: float, seed: int = 1) -> np.ndarray:
    """Noise shaped into syllables: loud enough to count as speech for the envelope."""
    rng = np.random.default_rng(seed)
    n = round(ms * FS / 1000)
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(n) / FS)
    return 0.3 * env * rng.standard_normal(n)


def _line(ms: float, db: float = -60.0, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 10 ** (db / 20) * rng.standard_normal(round(ms * FS / 1000))


def _deb(
    tmp: Path, files: dict[str, bytes], name: str = "testsounds", ver: str = "1:1.0-1"
) -> Path:
    """A minimal binary package holding ``files`` under usr/share/testsounds."""
    root = tmp / "pkgroot"
    for rel, data in files.items():
        f = root / "usr/share/testsounds" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {ver}\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Description: test\n"
    )
    debs = tmp / "debs"
    debs.mkdir(exist_ok=True)
    out = debs / f"{name}_{ver.replace(':', '%3a')}_all.deb"
    subprocess.run(["dpkg-deb", "-b", str(root), str(out)], check=True, capture_output=True)
    return debs


def _wav_bytes(tmp: Path, x: np.ndarray) -> bytes:
    p = tmp / "w.wav"
    write_wav(p, x)
    return p.read_bytes()


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, Any]:
    greeting = np.concatenate([_line(300), _speechlike(1500), _line(200)])
    caller = np.concatenate([_line(500), _speechlike(700, 3), _line(600)])
    debs = _deb(
        tmp_path,
        {
            "greet.wav": _wav_bytes(tmp_path, greeting),
            "beep.wav": _wav_bytes(tmp_path, tone((1000.0,), 300, -12.0)),
            "calls/c1.ulaw": ulaw_encode(float_to_pcm16(caller)).tobytes(),
        },
    )
    manifest = {
        "sources": {
            "pkg": {
                "deb": "testsounds",
                "version": "1:1.0-1",
                "root": "usr/share/testsounds",
                "licence": "CC0 (test)",
                "speech_only": ["greet.wav", "calls/c1.ulaw"],
            }
        },
        "items": [
            {
                "name": "vm",
                "label": {"answered_by": "machine"},
                "notes": "n1",
                "segments": [
                    {"silence_ms": 500},
                    {"source": "pkg", "path": "greet.wav"},
                    {"source": "pkg", "path": "beep.wav", "speech": False, "beep": True},
                ],
            },
            {
                "name": "caller",
                "label": {"answered_by": "human"},
                "segments": [
                    {
                        "source": "pkg",
                        "path": "calls/c1.ulaw",
                        "speech_start_ms": 500,
                        "speech_end_ms": 1200,
                        "extend_line_ms": 2000,
                    }
                ],
            },
            {
                "name": "cut",
                "label": {"answered_by": "fax"},
                "segments": [{"source": "pkg", "path": "greet.wav", "from_ms": 100, "to_ms": 600}],
            },
        ],
    }
    mf = tmp_path / "manifest.json"
    mf.write_text(json.dumps(manifest))
    return {"manifest": mf, "debs": debs, "out": tmp_path / "out", "greeting": greeting}


def test_builds_labelled_items_from_a_debian_package(corpus: dict[str, Any]) -> None:
    labels = real.build(
        corpus["out"], manifest=corpus["manifest"], deb_dir=corpus["debs"], offline=True
    )
    vm, caller, cut = labels["vm.wav"], labels["caller.wav"], labels["cut.wav"]
    # beep right after the greeting: 500 ms silence + the greeting file's length
    assert vm["beep_ms"] == 500 + round(corpus["greeting"].size * 1000 / FS)
    assert 500 + 300 + 1400 <= vm["greeting_end_ms"] <= 500 + 300 + 1500
    assert vm["licences"] == ["CC0 (test)"]
    assert vm["sources"] == [
        "debian:testsounds=1:1.0-1:usr/share/testsounds/beep.wav",
        "debian:testsounds=1:1.0-1:usr/share/testsounds/greet.wav",
    ]
    assert vm["notes"] == "n1"
    # the source's time stamp wins over the envelope; the line is extended by 2 s
    assert caller["greeting_end_ms"] == 1200
    x = load_audio(corpus["out"] / "caller.wav")
    assert x.size == round((1800 + 2000) * FS / 1000)
    # the extension is the line's own noise, not speech
    assert np.sqrt(np.mean(x[-2 * FS :] ** 2)) < 10 ** (-50 / 20)
    assert load_audio(corpus["out"] / "cut.wav").size == round(0.5 * FS)
    assert cut["greeting_end_ms"] is None
    assert sorted(p.name for p in (corpus["out"] / "speech").glob("*.wav")) == [
        "pkg-calls-c1.ulaw.wav",
        "pkg-greet.wav",
    ]
    assert json.loads((corpus["out"] / "labels.json").read_text()) == labels


def test_rebuild_is_idempotent_and_drops_items_no_longer_listed(corpus: dict[str, Any]) -> None:
    args = {"manifest": corpus["manifest"], "deb_dir": corpus["debs"], "offline": True}
    first = real.build(corpus["out"], **args)
    before = (corpus["out"] / "vm.wav").read_bytes()
    spec = json.loads(corpus["manifest"].read_text())
    spec["items"] = spec["items"][:1]
    corpus["manifest"].write_text(json.dumps(spec))
    second = real.build(corpus["out"], **args)
    assert set(second) == {"vm.wav"} and second["vm.wav"] == first["vm.wav"]
    assert (corpus["out"] / "vm.wav").read_bytes() == before
    assert sorted(p.name for p in corpus["out"].glob("*.wav")) == ["vm.wav"]


def test_missing_package_offline_names_it(
    corpus: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "nodebs"
    empty.mkdir()
    rc = real.main(
        [
            str(corpus["out"]),
            "--manifest",
            str(corpus["manifest"]),
            "--deb-dir",
            str(empty),
            "--offline",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "testsounds=1:1.0-1" in err and "testsounds_1%3a1.0-1_*.deb" in err


def test_missing_file_and_unknown_source_are_named(corpus: dict[str, Any]) -> None:
    spec = json.loads(corpus["manifest"].read_text())
    spec["items"][0]["segments"][1]["path"] = "nope.wav"
    corpus["manifest"].write_text(json.dumps(spec))
    with pytest.raises(SourceError, match=re.escape("no file usr/share/testsounds/nope.wav")):
        real.build(corpus["out"], manifest=corpus["manifest"], deb_dir=corpus["debs"], offline=True)
    spec["items"][0]["segments"][1] = {"source": "other", "path": "x.wav"}
    corpus["manifest"].write_text(json.dumps(spec))
    with pytest.raises(SourceError, match=re.escape("item vm: unknown source 'other'")):
        real.build(corpus["out"], manifest=corpus["manifest"], deb_dir=corpus["debs"], offline=True)


def test_git_source_offline_without_mirror_is_an_error(tmp_path: Path) -> None:
    f = Fetcher(tmp_path / "cache", mirror_root=tmp_path / "mirrors", offline=True)
    with pytest.raises(SourceError, match="owner/repo: no local mirror"):
        f.read({"repo": "owner/repo", "commit": "0" * 40}, "a.wav")


def test_git_source_reads_a_pinned_commit_from_a_mirror(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "a.raw").write_bytes(np.array([0, 16384, -16384], dtype="<i2").tobytes())
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "a.raw"], check=True)
    subprocess.run([*git, "commit", "-qm", "a"], check=True)
    commit = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    mirror = tmp_path / "mirrors" / "owner+repo" / "repo"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(mirror)], check=True)
    f = Fetcher(tmp_path / "cache", mirror_root=tmp_path / "mirrors", offline=True)
    src = {"repo": "owner/repo", "commit": commit}
    assert np.allclose(f.audio(src, "a.raw"), [0.0, 0.5, -0.5])
    with pytest.raises(SourceError, match="owner/repo@"):
        f.read(src, "missing.wav")


def test_decode_ulaw_and_phone_line_band() -> None:
    x = 0.25 * np.sin(2 * np.pi * 1000 * np.arange(FS) / FS)
    y = decode(ulaw_encode(float_to_pcm16(x)).tobytes(), "x.ulaw")
    assert np.max(np.abs(y - x)) < 0.01

    def level(f_hz: float) -> float:
        s = np.sin(2 * np.pi * f_hz * np.arange(FS) / FS) * 0.25
        return float(np.sqrt(np.mean(phone_line(s)[FS // 4 : -FS // 4] ** 2)))

    assert level(1000) > 0.15
    assert level(100) < 0.2 * level(1000)  # below the 300 Hz edge
    assert level(3900) < 0.2 * level(1000)  # above the 3400 Hz edge


def test_help_names_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    """(`scripts/real_corpus -h` said `usage: -c`: the script runs the module with python -c.)"""
    with pytest.raises(SystemExit):
        real.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: scripts/real_corpus ")
