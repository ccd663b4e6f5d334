"""Every labelled corpus file is classified correctly, within the timing targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sipbridge.corpus.score import check, class_of

CLASSES = ["human", "machine", "ivr", "fax", "silence", "unknown", "sit", "progress"]


def test_corpus_covers_every_class(corpus: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    _, labels = corpus
    present = {class_of(v) for v in labels.values()}
    assert present == set(CLASSES)
    codes = {v["sit_code"] for v in labels.values() if v["sit_code"]}
    assert {"IC", "VC", "RO", "NC", "ITU"} <= codes
    regions = {v.get("progress_region") for v in labels.values() if v["progress"]}
    assert {"us", "uk", "425"} <= regions
    assert len(labels) >= 60


@pytest.mark.parametrize("cls", CLASSES)
def test_corpus_class(cls: str, corpus: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    out, labels = corpus
    files = [(f, lab) for f, lab in sorted(labels.items()) if class_of(lab) == cls]
    assert files, f"no {cls} files in corpus"
    errs = [e for f, lab in files for e in check(out / f, lab)]
    assert not errs, "\n".join(errs)
