"""Running an ONNX session over a :class:`~toolchain.data.dataset.Dataset` and measuring how close a
candidate's outputs are to a reference's (cosine, top-1 agreement, accuracy against labels)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.data.dataset import Dataset


@dataclass
class Fidelity:
    """INT8 against FP32 on held-out samples: ``agreement`` is top-1 agreement of the first output's
    last axis (classifiers), ``cosine`` the mean per-sample cosine of the first output (of mean-pooled
    sentence embeddings for token-embedding outputs); ``accuracy_*`` are task accuracy in [0, 1] when
    labels are given."""

    samples: int
    cosine: float
    agreement: float | None
    accuracy_fp32: float | None = None
    accuracy_int8: float | None = None

    @property
    def accuracy_drop_points(self) -> float | None:
        if self.accuracy_fp32 is None or self.accuracy_int8 is None:
            return None
        return 100 * (self.accuracy_fp32 - self.accuracy_int8)


def run_outputs(session, data: Dataset, batch: int = 32) -> np.ndarray:
    """The first output of ``session`` over every sample of ``data``, concatenated on axis 0."""
    return np.concatenate([session.run(None, b)[0] for b in data.batches(batch)])


def pooled(output: np.ndarray, data: Dataset) -> np.ndarray:
    """Token embeddings (batch, seq, hidden) -> sentence embeddings: the mean over unmasked tokens,
    as sentence-transformers pools MiniLM. Other outputs are returned as they are."""
    mask = data.feeds.get("attention_mask")
    if output.ndim != 3 or mask is None or mask.shape != output.shape[:2]:
        return output
    m = mask.astype(output.dtype)[..., None]
    return (output * m).sum(1) / np.maximum(m.sum(1), 1e-9)


def fidelity(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None, classifier: bool) -> Fidelity:
    """Compare two stacks of outputs (sample axis first)."""
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = candidate.reshape(len(candidate), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = float(np.mean(np.where(denom > 0, (a * b).sum(1) / np.where(denom > 0, denom, 1), 1.0)))
    agreement = acc_a = acc_b = None
    if classifier:
        pa, pb = reference.argmax(-1), candidate.argmax(-1)
        agreement = float((pa == pb).mean())
        if labels is not None:
            acc_a, acc_b = float((pa == labels).mean()), float((pb == labels).mean())
    return Fidelity(len(reference), cos, agreement, acc_a, acc_b)


def is_classifier(onnx_path: str | Path) -> bool:
    """True when the first output is (batch, classes) logits."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return len(model.graph.output[0].type.tensor_type.shape.dim) == 2
