"""``sipbridge analyze FILE.wav --plot out.png``: a picture of what the detector heard.

Three lanes on one time axis: the waveform with the speech words (VAD) shaded; the
spectrogram with the tone runs drawn at their frequency; an event lane with the call-progress
bursts, the greeting's end, the beep (onset to end), SIT, prompt-library matches and the
decision. Needs matplotlib (``pip install 'sipbridge[plot]'``); renders with the Agg backend
(no display).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from sipbridge.media.frames import SAMPLE_RATE, FloatArray
from sipbridge.media.result import Detection, TimelineEntry


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _spans(timeline: list[TimelineEntry], start: str, end: str) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    open_t: float | None = None
    for e in timeline:
        if e.kind == start and open_t is None:
            open_t = e.t_ms / 1000
        elif e.kind == end and open_t is not None:
            out.append((open_t, e.t_ms / 1000))
            open_t = None
    if open_t is not None:
        out.append((open_t, float("inf")))
    return out


def plot_analysis(
    x: FloatArray,
    det: Detection,
    timeline: list[TimelineEntry],
    out: str | Path,
    title: str = "",
    dpi: int = 80,
) -> Path:
    """Render the analysis of ``x`` (8 kHz) to ``out`` (PNG); returns the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'sipbridge[plot]'") from err
    dur = max(x.size / SAMPLE_RATE, 0.1)
    fig, (ax_w, ax_s, ax_e) = plt.subplots(
        3, 1, figsize=(12, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 3, 1.3]}
    )
    t = np.arange(x.size) / SAMPLE_RATE
    ax_w.plot(t, x, lw=0.4, color="#333")
    for a, b in _spans(timeline, "speech_start", "speech_end"):
        ax_w.axvspan(a, min(b, dur), color="#4c9be8", alpha=0.25, lw=0)
    ax_w.set_ylabel("waveform\n(speech shaded)")
    ax_w.set_ylim(-1, 1)
    if x.size >= 256:  # (a -110 dBFS dither under digital silence keeps log10 finite)
        dither = np.random.default_rng(0).standard_normal(x.size) * 3e-6
        ax_s.specgram(x + dither, NFFT=256, Fs=SAMPLE_RATE, noverlap=192, cmap="magma")
    ax_s.set_ylabel("Hz")
    ax_s.set_ylim(0, 4000)
    for e in timeline:
        # a run ends in tone_end, or in beep_end when it was the beep (followed to its end)
        hz = e.detail.get("hz") if e.kind == "tone_end" else det.beep_hz
        if e.kind in ("tone_end", "beep_end") and hz is not None:
            end = e.t_ms / 1000
            ax_s.plot(
                [end - e.detail["ms"] / 1000, end],
                [hz] * 2,
                color="#00e5ff",
                lw=2.5,
                solid_capstyle="butt",
            )
    _events(ax_e, det, timeline, dur)
    for ax in (ax_w, ax_s, ax_e):
        _marks(ax, det)
    ax_e.set_xlabel("seconds")
    ax_e.set_xlim(0, dur)
    head = f"{title}  " if title else ""
    fig.suptitle(
        f"{head}answered_by={det.answered_by}"
        + (f" ({det.hint})" if det.hint else "")
        + f" at {det.decided_at_ms / 1000:.2f} s — {det.reason[:90]}",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(out)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    from PIL import Image  # (a matplotlib dependency)

    buf.seek(0)
    # a 128-colour palette: a third of the size, no visible loss on a spectrogram
    Image.open(buf).convert("RGB").quantize(colors=128).save(path, format="PNG", optimize=True)
    return path


def _marks(ax: Any, det: Detection) -> None:
    if det.greeting_end_ms is not None:
        ax.axvline(det.greeting_end_ms / 1000, color="#2ca02c", ls="--", lw=1)
    if det.beep_ms is not None:
        end = (det.beep_end_ms or det.beep_ms + 150) / 1000
        ax.axvspan(det.beep_ms / 1000, end, color="#ff7f0e", alpha=0.35, lw=0)
    ax.axvline(det.decided_at_ms / 1000, color="#d62728", lw=1.2)


def _events(ax: Any, det: Detection, timeline: list[TimelineEntry], dur: float) -> None:
    ax.set_yticks([])
    ax.set_ylim(0, 4)
    for a, b in _spans(timeline, "cp_on", "cp_off"):
        ax.axvspan(a, min(b, dur), ymin=0.75, ymax=1.0, color="#9467bd", alpha=0.6, lw=0)
    labels: list[tuple[float, str]] = [(det.decided_at_ms / 1000, f"decision: {det.answered_by}")]
    if det.greeting_end_ms is not None:
        labels.append((det.greeting_end_ms / 1000, "greeting end"))
    if det.beep_ms is not None:
        labels.append((det.beep_ms / 1000, f"beep {det.beep_hz or ''} Hz"))
    for e in timeline:
        if e.kind == "sit":
            labels.append((e.t_ms / 1000, f"SIT {e.detail.get('code')}"))
        elif e.kind == "prompt":
            labels.append((e.t_ms / 1000, f"prompt {e.detail.get('name')}"))
        elif e.kind == "live_voice":
            labels.append((e.t_ms / 1000, "live voice"))
    for i, (tx, text) in enumerate(sorted(labels)):
        ax.text(tx, 0.3 + (i % 3) * 0.9, text, fontsize=7, ha="left", va="bottom")
    ax.set_ylabel("events\n(call progress\nat top)")
