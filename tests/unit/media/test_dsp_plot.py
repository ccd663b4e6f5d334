"""`sipbridge analyze FILE.wav --plot out.png` renders a picture, and fails cleanly."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sipbridge.corpus.synth import cadence, sil, tone, write_wav
from sipbridge.media.analyze import analyze_main


def _wav(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    voice = np.concatenate(
        [rng.standard_normal(8000 * 2) * 0.05 * np.sin(np.linspace(0, 40 * np.pi, 8000 * 2)) ** 2]
    )
    x = np.concatenate(
        [
            cadence((440.0, 480.0), [2000, 4000], 3000, -22),
            sil(500),
            voice,
            sil(600),
            tone((1000.0,), 400, -18),
            sil(1000),
        ]
    )
    p = tmp_path / "call.wav"
    write_wav(p, x)
    return p


def test_plot_renders_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "out.png"
    assert analyze_main([str(_wav(tmp_path)), "--plot", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert "decision:" in capsys.readouterr().out


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_import = builtins.__import__

    def no_mpl(name: str, *a: Any, **kw: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    assert analyze_main([str(_wav(tmp_path)), "--plot", str(tmp_path / "x.png")]) == 2
    assert "sipbridge[plot]" in capsys.readouterr().err


def test_plot_to_an_unwritable_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "missing-dir" / "x.png"
    assert analyze_main([str(_wav(tmp_path)), "--plot", str(out)]) == 2
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["out.svg", "out.pdf", "out", ""])
def test_plot_to_a_name_that_is_not_png_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """The picture is always a PNG: another name is refused before any work (it used to
    write PNG bytes into out.svg, or draw nothing for an empty name)."""
    wav = _wav(tmp_path)
    with pytest.raises(SystemExit) as e:
        analyze_main([str(wav), "--plot", str(tmp_path / name) if name else ""])
    assert e.value.code == 2
    assert "name the file *.png" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["call.wav"]


def test_bad_prompt_library_is_a_clean_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert analyze_main([str(_wav(tmp_path)), "--prompts", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_the_beep_run_is_drawn_on_the_spectrogram(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A beep's tone run ends in ``beep_end`` (the detector follows it to its end), not in
    ``tone_end``: it is drawn at its frequency, onset to end (it was left out)."""
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    lines: list[tuple[list[float], list[float]]] = []
    real_plot = Axes.plot

    def spy(self: Axes, *args: Any, **kw: Any) -> Any:
        if len(args) >= 2 and kw.get("color") == "#00e5ff":
            lines.append((list(args[0]), list(args[1])))
        return real_plot(self, *args, **kw)

    monkeypatch.setattr(Axes, "plot", spy)
    assert analyze_main([str(_wav(tmp_path)), "--plot", str(tmp_path / "o.png")]) == 0
    beeps = [xs for xs, ys in lines if ys == [1000.0, 1000.0]]
    assert len(beeps) == 1 and 0.35 <= beeps[0][1] - beeps[0][0] <= 0.45, lines


def test_the_marks_are_drawn_where_the_detector_put_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The picture marks what the decision rests on, on the shared time axis: the speech
    (VAD) shaded, the greeting's end, the beep from onset to end and the decision, each at the
    time the analysis reported (a PNG of blank axes passed the render test)."""
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    from sipbridge.media.analyze import analyze_wav

    vlines: list[float] = []
    spans: list[tuple[float, float]] = []
    texts: list[str] = []
    real_vline, real_span, real_text = Axes.axvline, Axes.axvspan, Axes.text

    def vline(self: Axes, x: float = 0, *a: Any, **kw: Any) -> Any:
        vlines.append(round(float(x), 3))
        return real_vline(self, x, *a, **kw)

    def span(self: Axes, a: float, b: float, *args: Any, **kw: Any) -> Any:
        spans.append((round(float(a), 3), round(float(b), 3)))
        return real_span(self, a, b, *args, **kw)

    def text(self: Axes, x: float, y: float, s: str, *a: Any, **kw: Any) -> Any:
        texts.append(s)
        return real_text(self, x, y, s, *a, **kw)

    monkeypatch.setattr(Axes, "axvline", vline)
    monkeypatch.setattr(Axes, "axvspan", span)
    monkeypatch.setattr(Axes, "text", text)
    wav = _wav(tmp_path)
    det, timeline = analyze_wav(wav)
    assert det.greeting_end_ms is not None and det.beep_ms is not None and det.beep_end_ms
    assert analyze_main([str(wav), "--plot", str(tmp_path / "o.png")]) == 0
    # greeting end and decision: one line on each of the three lanes
    assert vlines.count(det.greeting_end_ms / 1000) == 3, (vlines, det)
    assert vlines.count(det.decided_at_ms / 1000) == 3, (vlines, det)
    assert spans.count((det.beep_ms / 1000, det.beep_end_ms / 1000)) == 3, spans
    starts = [e.t_ms / 1000 for e in timeline if e.kind == "speech_start"]
    assert starts and all(any(a == s for a, _ in spans) for s in starts), (starts, spans)
    assert f"decision: {det.answered_by}" in texts and "greeting end" in texts, texts
