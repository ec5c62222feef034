"""The :class:`Dataset` every stage passes around (named arrays with a leading sample axis, optional labels,
where they came from) and the :class:`DataOptions` that say how raw data becomes model inputs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from toolchain.core.errors import ToolchainError


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Indices of ``labels`` split into ``len(fractions)`` disjoint parts, each class divided in the same
    proportions (rounded per class, the remainder going to the last part), shuffled with ``seed``; each
    part's indices sorted."""
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) <= 0:
        raise ValueError(f"fractions {fractions} must be positive and sum to 1")
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for i, frac in enumerate(fractions):
            stop = len(idx) if i == len(fractions) - 1 else start + int(round(frac * len(idx)))
            parts[i].extend(idx[start:stop].tolist())
            start = stop
    return [np.asarray(sorted(p), dtype=np.int64) for p in parts]


@dataclass
class Dataset:
    """Samples for a model. ``feeds[name]`` has a leading sample axis; ``labels`` (one int per sample)
    is None when the data has none. ``source`` says where the samples came from; ``synthetic`` marks
    random data; ``subset_of`` names the training set the samples were drawn from, when they are part of
    one (``builtin:mnist``: never an accuracy claim for a model trained on that set); ``classes`` names
    the classes the labels index, when the data names them (string labels, class sub-folders)."""

    source: str
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    synthetic: bool = False
    subset_of: str | None = None
    classes: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(next(iter(self.feeds.values()))) if self.feeds else 0

    @property
    def sha256(self) -> str:
        """Hash of the sample arrays (names, dtypes, shapes, bytes), for provenance."""
        h = hashlib.sha256()
        for name in sorted(self.feeds):
            arr = np.ascontiguousarray(self.feeds[name])
            h.update(f"{name}|{arr.dtype}|{arr.shape}".encode())
            h.update(arr.tobytes())
        return h.hexdigest()

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive batches of at most ``batch_size`` samples."""
        for start in range(0, len(self), batch_size):
            yield {k: v[start:start + batch_size] for k, v in self.feeds.items()}

    def take(self, start: int, stop: int | None) -> Dataset:
        """Samples ``start:stop`` as a new dataset."""
        labels = None if self.labels is None else self.labels[start:stop]
        return Dataset(self.source, {k: v[start:stop] for k, v in self.feeds.items()}, labels, self.synthetic,
                       self.subset_of, self.classes)

    def select(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """The samples at ``indices`` (in that order) as a new dataset."""
        idx = np.asarray(indices, dtype=np.int64)
        labels = None if self.labels is None else self.labels[idx]
        return Dataset(self.source, {k: v[idx] for k, v in self.feeds.items()}, labels, self.synthetic,
                       self.subset_of, self.classes)

    def split_stratified(self, fractions: tuple[float, ...], seed: int) -> list[Dataset]:
        """Disjoint parts holding ``fractions`` of the samples (positive, summing to 1), drawn with ``seed``:
        each class divided in the same proportions when the data is labelled (:func:`stratified_split`),
        a random split otherwise; each part keeps the samples' order. One clear error when a part would be
        empty."""
        fractions = tuple(float(f) for f in fractions)
        if len(fractions) < 2 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
            raise ToolchainError(f"cannot split {self.source} into fractions {list(fractions)}: "
                                 "give two or more positive fractions that sum to 1")
        fractions = tuple(f / sum(fractions) for f in fractions)
        labels = np.zeros(len(self), np.int64) if self.labels is None else np.asarray(self.labels)
        parts = stratified_split(labels, fractions, seed)
        if any(len(p) == 0 for p in parts):
            raise ToolchainError(f"{self.source}: {len(self)} samples are too few to split into "
                                 f"{' / '.join(f'{f:.0%}' for f in fractions)}; one part would be empty")
        return [self.select(p) for p in parts]


@dataclass
class DataOptions:
    """How to turn raw data into model inputs. ``image_size`` (H, W), ``mean``/``std`` per channel and
    ``scale`` apply to images; ``seq_len`` and ``tokenizer`` (a directory) to text; ``text_field`` and
    ``label_field`` name the column (CSV/TSV) or key (JSON Lines) holding each row's text and label. None
    means: from the model's metadata, else ImageNet statistics / the exported model's tokenizer."""

    samples: int | None = None
    seq_len: int = 128
    tokenizer: str | None = None
    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    seed: int = 0
    text_field: str = "text"
    label_field: str = "label"
