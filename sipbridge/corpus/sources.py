"""Where the real-audio corpus's recordings come from, and how they are read.

A source in ``bench/real_corpus.json`` is either a pinned commit of a public git repository
(``repo`` + ``commit``: read with ``git show`` from a local mirror, else a blob-less clone) or
a pinned Debian package (``deb`` + ``version`` + optional ``root`` folder inside it: the
``.deb`` is taken from a local folder, else fetched with ``apt-get download``, and unpacked
once with ``dpkg-deb -x``). With ``offline`` nothing is fetched: a missing mirror or ``.deb``
is an error naming it.

Files are decoded by extension: ``.wav`` (any rate/encoding, via
:func:`sipbridge.media.analyze.load_audio`), ``.ulaw`` / ``.ul`` (headerless 8 kHz G.711
µ-law), ``.raw`` / ``.sw`` (headerless 8 kHz 16-bit little-endian PCM), anything else through
``sox`` (e.g. Asterisk's ``.gsm`` prompts). Everything comes back as 8 kHz float samples.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sipbridge.corpus.synth import codec
from sipbridge.media.analyze import load_audio
from sipbridge.media.frames import FloatArray, ulaw_decode

FS = 8000


class SourceError(RuntimeError):
    """A source file could not be fetched or read; the message names it."""


def describe(src: dict[str, Any]) -> str:
    """A short, pinned name of a source (for labels and errors)."""
    if "deb" in src:
        return f"debian:{src['deb']}={src['version']}"
    return f"{src['repo']}@{src['commit'][:10]}"


def decode(data: bytes, path: str) -> FloatArray:
    """8 kHz float samples of a file's bytes, by the file's extension."""
    ext = Path(path).suffix.lower()
    if ext in (".ulaw", ".ul"):
        return ulaw_decode(data) / 32768.0
    if ext in (".raw", ".sw"):
        return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2") / 32768.0
    with tempfile.TemporaryDirectory() as td:
        f = Path(td) / f"in{ext}"
        f.write_bytes(data)
        if ext == ".wav":
            return load_audio(f)
        if shutil.which("sox") is None:
            raise SourceError(f"{path}: reading {ext} files needs sox (apt-get install sox)")
        out = Path(td) / "out.wav"
        r = subprocess.run(
            ["sox", str(f), "-r", str(FS), "-c", "1", "-b", "16", str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode:
            raise SourceError(f"{path}: sox cannot read it: {r.stderr.strip()}")
        return load_audio(out)


def _bandpass_kernel(lo_hz: float, hi_hz: float, taps: int = 255) -> FloatArray:
    """A windowed-sinc FIR band-pass (Blackman window), unit gain in the pass band."""
    n = np.arange(taps) - (taps - 1) / 2

    def lowpass(fc: float) -> FloatArray:
        return 2 * fc / FS * np.sinc(2 * fc / FS * n)

    return (lowpass(hi_hz) - lowpass(lo_hz)) * np.blackman(taps)


def phone_line(x: FloatArray) -> FloatArray:
    """What a microphone recording sounds like after a telephone channel: band-limited to
    300–3400 Hz (the G.712 voice band) and round-tripped through G.711 µ-law."""
    y = np.convolve(x, _bandpass_kernel(300.0, 3400.0), mode="same")
    return codec(y, "ulaw")


class Fetcher:
    """Files of pinned sources (git commits or Debian packages), cached per run."""

    def __init__(
        self,
        cache: Path,
        mirror_root: Path | None = None,
        deb_dir: Path | None = None,
        offline: bool = False,
    ) -> None:
        self.cache = cache
        self.mirror_root = mirror_root
        self.deb_dir = deb_dir if deb_dir is not None else cache / "deb"
        self.offline = offline
        self._audio: dict[tuple[str, str], FloatArray] = {}

    def _git_dir(self, repo: str) -> Path:
        if self.mirror_root is not None:
            m = self.mirror_root / repo.replace("/", "+") / "repo"
            if m.is_dir():
                return m
        d = self.cache / repo.replace("/", "+")
        if d.is_dir():
            return d
        if self.offline:
            where = f" under {self.mirror_root}" if self.mirror_root else ""
            raise SourceError(f"{repo}: no local mirror{where} (offline: not cloning)")
        self.cache.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            [
                "git",
                "clone",
                "--bare",
                "--filter=blob:none",
                "--quiet",
                f"https://github.com/{repo}.git",
                str(d),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode:
            raise SourceError(f"cannot clone {repo}: {r.stderr.strip()}")
        return d

    def _deb_file(self, name: str, version: str) -> Path:
        # apt-get names the file NAME_VERSION_ARCH.deb with ':' (an epoch) written as %3a
        pattern = f"{name}_{version.replace(':', '%3a')}_*.deb"
        found = sorted(self.deb_dir.glob(pattern))
        if found:
            return found[0]
        if self.offline:
            raise SourceError(f"{name}={version}: no {pattern} in {self.deb_dir} (offline)")
        self.deb_dir.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            ["apt-get", "download", f"{name}={version}"],
            cwd=self.deb_dir,
            capture_output=True,
            text=True,
            check=False,
        )
        found = sorted(self.deb_dir.glob(pattern))
        if r.returncode or not found:
            raise SourceError(
                f"{name}={version}: not in {self.deb_dir} and apt-get download failed "
                f"({r.stderr.strip() or 'no file'}); run apt-get update, or put the .deb there"
            )
        return found[0]

    def _deb_root(self, name: str, version: str) -> Path:
        d = self.cache / "debroot" / f"{name}_{version.replace(':', '%3a')}"
        if (d / ".unpacked").exists():
            return d
        deb = self._deb_file(name, version)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        r = subprocess.run(
            ["dpkg-deb", "-x", str(deb), str(d)], capture_output=True, text=True, check=False
        )
        if r.returncode:
            raise SourceError(f"{deb}: dpkg-deb cannot unpack it: {r.stderr.strip()}")
        (d / ".unpacked").touch()
        return d

    def read(self, src: dict[str, Any], path: str) -> bytes:
        """The bytes of ``path`` in a source."""
        if "deb" in src:
            root = self._deb_root(src["deb"], src["version"]) / src.get("root", "")
            f = root / path
            if not f.is_file():
                raise SourceError(f"{describe(src)}: no file {src.get('root', '')}/{path}")
            return f.read_bytes()
        r = subprocess.run(
            [
                "git",
                "--git-dir",
                str(self._git_dir(src["repo"])),
                "show",
                f"{src['commit']}:{path}",
            ],
            capture_output=True,
            check=False,
        )
        if r.returncode:
            raise SourceError(
                f"{describe(src)}:{path}: {r.stderr.decode(errors='replace').strip()}"
            )
        return r.stdout

    def audio(self, src: dict[str, Any], path: str) -> FloatArray:
        """A source file as 8 kHz float samples."""
        key = (describe(src), path)
        if key not in self._audio:
            self._audio[key] = decode(self.read(src, path), path)
        return self._audio[key]
