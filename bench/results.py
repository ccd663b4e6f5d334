"""The one writer of ``bench/RESULTS.md``: each benchmark owns a section between
``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` and replaces only that section."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(name: str, text: str, path: Path = RESULTS) -> Path:
    """Replace (or append) section ``name`` of the results file with ``text``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    cur = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in cur and end in cur:
        cur = cur[: cur.index(start)] + block + cur[cur.index(end) + len(end) :]
    else:
        cur = cur.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(cur)
    return path
