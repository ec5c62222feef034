"""Outlier input channels of a MatMul kept in FP32 (LLM.int8()-style decomposition) on an ONNX graph.

Dynamic INT8 gives each activation tensor one range; a single channel far above the rest (MiniLM's GELU
outputs reach 25 where the median channel peaks at 2) spends most of the 256 levels on itself. For a
MatMul ``Y = X @ W`` with a constant weight whose input has a few such channels ``O`` (from calibration),
``Y = X_rest @ W_rest + X[..., O] @ W[O, :]`` with ``X_rest`` the input with channels ``O`` set to zero
and ``W_rest`` the weight with rows ``O`` set to zero: the first MatMul is quantized as usual, now over
the tame channels only, the second (``k`` channels deep) stays FP32. Exact in float; numpy only.

Layer-norm outputs are better served by :mod:`toolchain.quantize.smooth` (free when folded); this is for
MatMuls whose input no linear operation precedes (after GELU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from toolchain.data.dataset import Dataset
from toolchain.quantize.smooth import channel_max


@dataclass
class SplitResult:
    """What :func:`split_outliers` did: ``{MatMul name: [outlier channel, ...]}``."""

    ratio: float
    channels: dict[str, list[int]] = field(default_factory=dict)

    @property
    def fp32_nodes(self) -> list[str]:
        """The outlier MatMuls, which quantization must leave in FP32."""
        return [f"{name}_outlier_matmul" for name in self.channels]

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "nodes": len(self.channels), "channels": sum(map(len, self.channels.values()))}


def outlier_channels(peaks: np.ndarray, ratio: float, most: int) -> list[int]:
    """Channels whose peak exceeds ``ratio`` times the median channel's, largest first, at most ``most``."""
    median = float(np.median(peaks))
    if median <= 0:
        return []
    order = np.argsort(-peaks)
    return [int(j) for j in order[:most] if peaks[j] > ratio * median]


def split_outliers(model, data: Dataset, *, ratio: float = 6.0, most: int = 8, nodes: tuple[str, ...] | None = None,
                   exclude: tuple[str, ...] = (), batch: int = 8) -> SplitResult:
    """Split the outlier input channels (peak above ``ratio`` x the median channel's peak on ``data``, at
    most ``most`` per MatMul) of MatMuls with a constant 2-D weight out into FP32 MatMuls: see the module
    docstring. ``nodes`` limits it to those names (None: every such MatMul not in ``exclude``).
    ``model`` (an FP32 ``onnx.ModelProto``) is changed in place; returns what was split."""
    import onnx
    from onnx import numpy_helper

    result = SplitResult(ratio)
    inits = {t.name: t for t in model.graph.initializer}
    candidates = [n for n in model.graph.node if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in inits
                  and len(inits[n.input[1]].dims) == 2 and n.name not in exclude
                  and (nodes is None or n.name in nodes)]
    if not candidates or len(data) == 0:
        return result
    peaks = channel_max(model, sorted({n.input[0] for n in candidates}), data, batch)
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for node in candidates:
        x, w_name = node.input
        weight = numpy_helper.to_array(inits[w_name])
        if x not in peaks or peaks[x].shape[0] != weight.shape[0]:
            continue
        channels = outlier_channels(peaks[x], ratio, most)
        if not channels:
            continue
        tag = node.name or node.output[0]
        index = np.array(channels, np.int64)
        keep = np.ones(weight.shape[0], weight.dtype)
        keep[index] = 0
        rest = weight * keep[:, None]
        if uses[w_name] > 1:  # a shared weight stays as it is for its other readers
            w_name = f"{w_name}_rest_{tag}"
            model.graph.initializer.append(numpy_helper.from_array(rest, w_name))
            node.input[1] = w_name
        else:
            inits[w_name].CopyFrom(numpy_helper.from_array(rest, w_name))
        model.graph.initializer.extend([
            numpy_helper.from_array(index, f"{tag}_outlier_index"),
            numpy_helper.from_array(keep, f"{tag}_outlier_keep"),
            numpy_helper.from_array(np.ascontiguousarray(weight[index]), f"{tag}_outlier_weight")])
        out = node.output[0]
        node.input[0], node.output[0] = f"{tag}_tame_input", f"{tag}_tame_output"
        before = [onnx.helper.make_node("Mul", [x, f"{tag}_outlier_keep"], [node.input[0]], name=f"{tag}_tame"),
                  onnx.helper.make_node("Gather", [x, f"{tag}_outlier_index"], [f"{tag}_outlier_input"],
                                        name=f"{tag}_outlier_gather", axis=-1),
                  onnx.helper.make_node("MatMul", [f"{tag}_outlier_input", f"{tag}_outlier_weight"],
                                        [f"{tag}_outlier_output"], name=f"{tag}_outlier_matmul")]
        after = onnx.helper.make_node("Add", [node.output[0], f"{tag}_outlier_output"], [out], name=f"{tag}_outlier_add")
        position = list(model.graph.node).index(node)
        for offset, extra in enumerate(before):
            model.graph.node.insert(position + offset, extra)
        model.graph.node.insert(position + len(before) + 1, after)
        result.channels[tag] = channels
    return result
