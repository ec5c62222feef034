"""The :class:`Dataset` every stage passes around (named arrays with a leading sample axis, optional labels,
where they came from) and the :class:`DataOptions` that say how raw data becomes model inputs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass
class Dataset:
    """Samples for a model. ``feeds[name]`` has a leading sample axis; ``labels`` (one int per sample)
    is None when the data has none. ``source`` says where the samples came from; ``synthetic`` marks
    random data; ``subset_of`` names the training set the samples were drawn from, when they are part of
    one (``builtin:mnist``: never an accuracy claim for a model trained on that set)."""

    source: str
    feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    synthetic: bool = False
    subset_of: str | None = None

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
                       self.subset_of)


@dataclass
class DataOptions:
    """How to turn raw data into model inputs. ``image_size`` (H, W), ``mean``/``std`` per channel and
    ``scale`` apply to images; ``seq_len`` and ``tokenizer`` (a directory) to text. None means: from the
    model's metadata, else ImageNet statistics / the exported model's tokenizer."""

    samples: int | None = None
    seq_len: int = 128
    tokenizer: str | None = None
    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    seed: int = 0
