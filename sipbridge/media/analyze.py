"""Offline analysis: run the detection pipeline over a WAV file and print the timeline.

``sipbridge analyze FILE.wav [--mode answer|early] [--json]`` (wired by the CLI through
:func:`analyze_main`). Any WAV is accepted — PCM 8/16/24/32-bit, IEEE float, G.711 µ-law/A-law,
WAVE_FORMAT_EXTENSIBLE, any rate, any channel count — and converted to 8 kHz mono (channels
averaged, FFT resampling) before analysis.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sipbridge.errors import AudioFormatError
from sipbridge.media.detect import Detection, DetectionConfig, Detector, Mode, TimelineEntry
from sipbridge.media.frames import (
    SAMPLE_RATE,
    FloatArray,
    alaw_decode,
    resample,
    ulaw_decode,
)
from sipbridge.media.promptlib import PromptLibrary

_FMT_PCM, _FMT_FLOAT, _FMT_ALAW, _FMT_MULAW, _FMT_EXT = 1, 3, 6, 7, 0xFFFE
# WAVE_FORMAT_EXTENSIBLE names 18 speaker positions; more is a corrupt header.
MAX_CHANNELS = 64
# `sipbridge analyze` reads this much of a recording by default: a decision needs well under
# a minute (a greeting, then at most max_beep_wait_ms for its beep); a whole hour's recording
# would take gigabytes as float samples and an unreadable plot.
ANALYZE_MAX_S = 120.0


def read_wav(path: str | Path, max_s: float | None = None) -> tuple[FloatArray, int]:
    """Read a WAV file into float64 mono samples in [-1, 1) and its sample rate; with
    ``max_s``, only its first ``max_s`` seconds (the rest is never read into memory).

    Raises :class:`AudioFormatError` for missing files, non-RIFF/WAVE data, truncated chunks,
    unsupported encodings and empty audio.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            # mapped, not read: a huge file's audio past ``max_s`` is never paged in
            data: bytes | mmap.mmap = (
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            )
    except FileNotFoundError:
        raise AudioFormatError(f"{p}: file not found") from None
    except IsADirectoryError:
        raise AudioFormatError(f"{p}: is a directory, not a WAV file") from None
    except (OSError, ValueError) as e:
        raise AudioFormatError(f"{p}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        return _parse_wav(p, data, max_s)
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


def _parse_wav(p: Path, data: bytes | mmap.mmap, max_s: float | None) -> tuple[FloatArray, int]:
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        raise AudioFormatError(f"{p}: not a WAV file (no RIFF/WAVE header)")
    if data[:4] == b"RIFX":
        raise AudioFormatError(f"{p}: big-endian RIFX WAV is not supported")
    fmt: tuple[int, int, int, int] | None = None
    pcm_at: tuple[int, int] | None = None  # the data chunk's offset and length in the file
    pos = 12
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        if cid == b"fmt ":
            body = data[pos + 8 : pos + 8 + size]
            if len(body) < 16:
                raise AudioFormatError(f"{p}: corrupt WAV: fmt chunk is {len(body)} bytes")
            tag, ch, rate, _, _, bits = struct.unpack_from("<HHIIHH", body, 0)
            if tag == _FMT_EXT and len(body) >= 26:
                (tag,) = struct.unpack_from("<H", body, 24)
            fmt = (tag, ch, rate, bits)
        elif cid == b"data":
            n = min(size, len(data) - pos - 8)
            if n < size:
                n -= n % 2  # tolerate a truncated data chunk
            pcm_at = (pos + 8, n)
            if fmt is not None:
                break
        pos += 8 + size + (size & 1)
    if fmt is None:
        raise AudioFormatError(f"{p}: corrupt WAV: no fmt chunk")
    if pcm_at is None:
        raise AudioFormatError(f"{p}: corrupt WAV: no data chunk")
    tag, ch, rate, bits = fmt
    if ch < 1 or ch > MAX_CHANNELS:
        raise AudioFormatError(f"{p}: unsupported WAV: {ch} channels (1-{MAX_CHANNELS})")
    if rate < 4000 or rate > 384000:
        raise AudioFormatError(f"{p}: unsupported sample rate {rate} Hz")
    start, n = pcm_at
    if max_s is not None:
        frame_bytes = ch * max(1, bits // 8)
        n = min(n, int(max_s * rate) * frame_bytes)
    x = _decode(p, bytes(data[start : start + n]), tag, bits)
    n = x.size // ch
    if n == 0:
        raise AudioFormatError(f"{p}: WAV contains no audio samples")
    x = x[: n * ch].reshape(n, ch).mean(axis=1) if ch > 1 else x
    return np.asarray(x, dtype=np.float64), rate


def _decode(p: Path, pcm: bytes, tag: int, bits: int) -> FloatArray:
    if tag == _FMT_PCM:
        if bits == 8:
            return (np.frombuffer(pcm, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
        if bits == 16:
            return np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2") / 32768.0
        if bits == 24:
            b = np.frombuffer(pcm[: len(pcm) // 3 * 3], dtype=np.uint8).reshape(-1, 3)
            v = (
                b[:, 0].astype(np.int32)
                | (b[:, 1].astype(np.int32) << 8)
                | (b[:, 2].astype(np.int32) << 16)
            )
            v = np.where(v >= 1 << 23, v - (1 << 24), v)
            return v / float(1 << 23)
        if bits == 32:
            return np.frombuffer(pcm[: len(pcm) // 4 * 4], dtype="<i4") / float(1 << 31)
        raise AudioFormatError(f"{p}: unsupported PCM sample size {bits} bits")
    if tag == _FMT_FLOAT:
        if bits == 32:
            x = np.frombuffer(pcm[: len(pcm) // 4 * 4], dtype="<f4").astype(np.float64)
        elif bits == 64:
            x = np.frombuffer(pcm[: len(pcm) // 8 * 8], dtype="<f8").astype(np.float64)
        else:
            raise AudioFormatError(f"{p}: unsupported float sample size {bits} bits")
        if not np.all(np.isfinite(x)):
            raise AudioFormatError(f"{p}: float WAV contains NaN/inf samples")
        return np.clip(x, -1.0, 1.0)
    if tag == _FMT_MULAW:
        return ulaw_decode(pcm) / 32768.0
    if tag == _FMT_ALAW:
        return alaw_decode(pcm) / 32768.0
    raise AudioFormatError(f"{p}: unsupported WAV encoding (format tag 0x{tag:04x})")


def load_audio(path: str | Path, max_s: float | None = None) -> FloatArray:
    """Read a WAV file (its first ``max_s`` seconds) and convert it to 8 kHz mono float
    samples."""
    x, rate = read_wav(path, max_s)
    return resample(x, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else x


def analyze_samples(
    x: FloatArray,
    mode: Mode = "answer",
    config: DetectionConfig | None = None,
    stop_when_done: bool = True,
    prompts: PromptLibrary | None = None,
) -> tuple[Detection, list[TimelineEntry]]:
    """Run the detector over 8 kHz float samples; returns the final detection and timeline.

    Provisional results (machine before its beep, ringback) are refined while audio lasts; at
    the end of the audio :meth:`Detector.finish` settles whatever is still open.
    """
    det = Detector(config, mode=mode, prompts=prompts)
    step = 160 * 50  # feed one second at a time (the detector buffers into 20 ms frames)
    for i in range(0, x.size, step):
        det.feed(x[i : i + step])
        if det.done and stop_when_done:
            break
    return det.finish(), det.timeline


def analyze_wav(
    path: str | Path, mode: Mode = "answer", config: DetectionConfig | None = None
) -> tuple[Detection, list[TimelineEntry]]:
    """Analyse a WAV file (any rate/channels/encoding) with the streaming detector."""
    return analyze_samples(load_audio(path), mode=mode, config=config)


def _fmt_detail(d: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v}" for k, v in d.items() if v is not None and v is not False and v != ""
    )


def format_report(path: str, det: Detection, timeline: list[TimelineEntry]) -> str:
    """Human-readable timeline and decision."""
    lines = [f"{path}"]
    for e in timeline:
        if e.kind in ("decision", "progress"):
            continue
        lines.append(f"  {e.t_ms / 1000:8.3f}s  {e.kind:<13} {_fmt_detail(e.detail)}")
    lines.append("decision:")
    d = det.to_dict()
    lines.append(
        f"  answered_by={det.answered_by} decided_at={det.decided_at_ms} ms "
        + _fmt_detail({k: v for k, v in d.items() if k not in ("answered_by", "decided_at_ms")})
    )
    return "\n".join(lines)


def analyze_main(argv: list[str]) -> int:
    """Entry point for ``sipbridge analyze``; returns a process exit code (0 ok, 2 bad input)."""
    ap = argparse.ArgumentParser(
        prog="sipbridge analyze", description="Run recipient detection over a WAV recording."
    )
    ap.add_argument("file", help="WAV file (any rate/channels; PCM, float, µ-law or A-law)")
    ap.add_argument(
        "--mode",
        choices=["answer", "early"],
        default="answer",
        help="answer: after 200 OK (human/machine/...); early: 183 early media "
        "(SIT, ringback/busy/reorder)",
    )
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument(
        "--plot",
        metavar="OUT.png",
        help="also draw waveform, spectrogram, speech, tone runs, greeting end, beep "
        "and decision on a time axis (needs matplotlib: sipbridge[plot])",
    )
    ap.add_argument(
        "--prompts",
        metavar="DIR",
        help="a prompt library folder (labels.json, or one sub-folder per label)",
    )
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=ANALYZE_MAX_S,
        metavar="S",
        help=f"analyse at most the recording's first S seconds (default {ANALYZE_MAX_S:.0f})",
    )
    args = ap.parse_args(argv)
    if args.plot is not None and Path(args.plot).suffix.lower() != ".png":
        ap.error(f"--plot writes a PNG image: name the file *.png (got {args.plot!r})")
    if not 0 < args.max_seconds <= 86400:  # (NaN fails too)
        ap.error(f"--max-seconds must be in (0, 86400], got {args.max_seconds}")
    try:
        lib = PromptLibrary.from_folder(args.prompts) if args.prompts else None
        x = load_audio(args.file, args.max_seconds)
        det, timeline = analyze_samples(x, mode=args.mode, prompts=lib)
    except (AudioFormatError, ValueError) as e:
        print(f"sipbridge analyze: error: {e}", file=sys.stderr)
        return 2
    if args.plot is not None:
        from sipbridge.media.plot import PlotUnavailable, plot_analysis

        try:
            plot_analysis(x, det, timeline, args.plot, title=Path(args.file).name)
        except PlotUnavailable as e:
            print(f"sipbridge analyze: error: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            print(
                f"sipbridge analyze: error: cannot write {args.plot}: {e.strerror or e}",
                file=sys.stderr,
            )
            return 2
    if args.json:
        out = {
            "file": args.file,
            "mode": args.mode,
            "detection": det.to_dict(),
            "timeline": [e.to_dict() for e in timeline],
        }
        print(json.dumps(out, indent=2))
    else:
        print(format_report(args.file, det, timeline))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sipbridge.media.analyze FILE.wav``."""
    return analyze_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(main())
