#!/usr/bin/env python3
"""Per-frame DSP cost of this tree against another revision (default ``main``), same moment.

Run: ``.venv/bin/python bench/dsp_ab.py [--ref main] [--rounds 3] [--frames 30000] [--no-write]``

On a shared machine absolute timings move with the load; a comparison holds when both sides
run in the same moment. The revision's ``sipbridge`` and ``bench`` are exported with
``git archive`` into a temporary folder; then, round after round (alternating which side goes
first), each side runs in its own process the CPU section of *its own* ``bench/dsp.py``
(``bench_frames``: every detector on every frame, no early stop) over the same audio: the 74
files of the generated detection corpus, without and with a library of the same 100 espeak-ng
prompts. Reported per side and round: median / mean / p99 ``feed()`` wall time per 20 ms
frame and process CPU time per frame, with the load average.

Writes the ``dsp-ab`` section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
N_PROMPTS = 100
LABELS = ("ivr", "not_in_service", "screening")


def child(root: Path, data: Path, frames: int) -> None:
    """Time one tree (``root``) with its own bench code; prints JSON."""
    sys.path.insert(0, str(root / "bench"))
    import dsp  # the tree's own bench (it puts the tree's sipbridge first on sys.path)
    import numpy as np

    assert Path(dsp.__file__).resolve().parents[1] == root.resolve(), dsp.__file__
    from sipbridge.media.promptlib import PromptLibrary

    z = np.load(data)
    audio = [z[k] for k in sorted(z.files) if k.startswith("a")]
    lib = PromptLibrary()
    for i, k in enumerate(sorted(k for k in z.files if k.startswith("p"))):
        lib.add(f"prompt{i:03d}", LABELS[i % 3], z[k])
    out = {
        "nolib": dsp.bench_frames(audio, frames, None),
        "lib": dsp.bench_frames(audio, frames, lib),
    }
    print(json.dumps(out))


def prepare(tmp: Path, ref: str) -> tuple[Path, Path]:
    """Export ``ref`` and render the shared audio; returns (ref tree, audio file)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from sipbridge.corpus import detection
    from sipbridge.corpus.prompts import render_prompts, sentences
    from sipbridge.media.analyze import load_audio

    tree = tmp / "ref"
    tree.mkdir()
    arch = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "sipbridge", "bench"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=arch, check=True)
    labels = detection.generate(tmp / "det")
    arrays = {f"a{i:03d}": load_audio(tmp / "det" / f) for i, f in enumerate(sorted(labels))}
    clips = render_prompts(sentences(N_PROMPTS, 99))  # the prompts bench/dsp.py uses
    arrays.update({f"p{i:03d}": c for i, c in enumerate(clips)})
    data = tmp / "audio.npz"
    np.savez(data, **arrays)  # type: ignore[arg-type]
    return tree, data


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def run_side(root: Path, data: Path, frames: int) -> dict[str, Any]:
    load0 = os.getloadavg()[0]
    args = ["--child", str(root), "--data", str(data), "--frames", str(frames)]
    p = subprocess.run(
        [sys.executable, __file__, *args],
        check=True,
        capture_output=True,
        text=True,
    )
    res: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    res["load"] = (load0 + os.getloadavg()[0]) / 2
    return res


def cell(r: dict[str, float]) -> str:
    return f"**{r['median']:.1f}** / {r['mean']:.1f} / {r['p99']:.0f} / {r['cpu']:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="DSP per-frame cost against another revision")
    ap.add_argument("--ref", default="main", help="git revision to compare with (default main)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=30_000, help="frames timed per side and run")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child is not None:
        child(a.child, a.data, a.frames)
        return 0
    ref_rev = git("rev-parse", "--short", a.ref)
    here_rev = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "sipbridge", "bench")
    here_name = f"{here_rev}{' + uncommitted changes' if dirty else ''}"
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tree, data = prepare(Path(td), a.ref)
        for rnd in range(a.rounds):
            sides = [("ref", tree), ("here", ROOT)]
            if rnd % 2:
                sides.reverse()
            got = {name: run_side(root, data, a.frames) for name, root in sides}
            load = (got["ref"]["load"] + got["here"]["load"]) / 2
            rows.append(
                f"| {rnd + 1} | {load:.1f} | {cell(got['ref']['nolib'])} | "
                f"{cell(got['ref']['lib'])} | {cell(got['here']['nolib'])} | "
                f"{cell(got['here']['lib'])} |"
            )
            print(rows[-1], flush=True)
    text = f"""### DSP cost against {a.ref}, same machine, same moment (`bench/dsp_ab.py`)

{a.rounds} rounds, each side in its own process running its own `bench/dsp.py` CPU section
(every detector on every frame, no early stop) over the same 74 generated corpus files, without
and with the same {N_PROMPTS}-prompt library; {a.frames} frames timed per cell. Cells: `feed()`
wall time per 20 ms frame, **median** / mean / p99, then process CPU time per frame (µs). The
machine is shared (load average in the second column, 2 cores): compare within a row.
{a.ref} is {ref_rev}; this branch is {here_name}.

| round | load | {a.ref}, no library | {a.ref}, 100 prompts | this branch, no library \
| this branch, 100 prompts |
|---|---|---|---|---|---|
{chr(10).join(rows)}
"""
    print(text)
    if not a.no_write:
        sys.path.insert(0, str(ROOT / "bench"))
        from results import write_section

        write_section("dsp-ab", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
